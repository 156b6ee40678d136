// Launching executable graphs, and retargeting one kernel node of them, through the driver API
// (entry points resolved once with cudaGetDriverEntryPointByVersion, so nothing links libcuda).
// Retargeting replaces the node's arguments (cuGraphExecKernelNodeSetParams): run() does this on
// the serving path whenever a bucket's count changes, and the driver call took 0.32-0.37 us of
// host time per update on the H200 where cudaGraphExecKernelNodeSetParams took 0.56-0.66
// (2026-12-02, six rounds; the runtime call also translates the node's host-side kernel handle
// each time).
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

namespace moe_dispatch::detail {

// Launches `exec` on `stream` through the driver's cuGraphLaunch (resolved once, as the update's
// call is): a median of 0.05 us less host time per launch than cudaGraphLaunch over 15
// interleaved rounds in three runs (bench/floor_bench, H200, 2026-12-03 17:38Z-18:52Z; less in 13
// rounds, by up to 0.36 us, more in 2, by 0.05 and 0.13). The stream's meaning is this library's,
// as with the runtime call (legacy default stream for 0). Throws CudaError naming the call.
void launch_graph(cudaGraphExec_t exec, cudaStream_t stream);

// Holds the node's handle: the node's graph outlives the object. Used by one thread at a time.
class KernelNodeUpdate {
 public:
  // Reads the launch shape and kernel of `node`, a kernel node of the graph the executable graphs
  // it updates were instantiated from. Throws CudaError naming the call (the entry points'
  // lookup included).
  explicit KernelNodeUpdate(cudaGraphNode_t node);

  // Replaces the node's arguments in `exec` with `args` (one pointer per kernel parameter, values
  // copied by the call); later launches of `exec` use them, launches already made do not. Throws
  // CudaError naming the call.
  void set_args(cudaGraphExec_t exec, void** args) const;

 private:
  CUgraphNode node_;
  CUDA_KERNEL_NODE_PARAMS params_{};
};

}  // namespace moe_dispatch::detail
