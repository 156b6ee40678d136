// The graph of one bucket: the alignment kernels captured once, instantiated and uploaded, then
// retargeted when the count source changes. Only the first kernel node reads the count
// (AlignParams::host_num_tokens or AlignParams::num_tokens); a launch with another count updates
// that node's parameters in the executable graph (cudaGraphExecKernelNodeSetParams), which affects
// only later launches, so back-to-back launches with different counts do not race. Measured against
// a memset node that writes the count into device memory before the kernels: one node fewer per
// replay. The update costs 0.65-1.2 us of host time (bench/floor_bench), so a bucket may also hold
// one executable graph per count it takes, each with its count fixed: a launch then updates
// nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "kernels/align.hpp"
#include "moe_dispatch/cuda_raii.hpp"

namespace moe_dispatch::detail {

// Instantiates `graph` and uploads it on `upload_stream`, so its first launch pays no upload.
GraphExec instantiate_uploaded(cudaGraph_t graph, cudaStream_t upload_stream);

class BucketGraph {
 public:
  // Captures the kernels for `params`/`plan` on `capture_stream` (thread-local capture mode),
  // instantiates and uploads the graph, and `num_fixed` more with the counts first_fixed,
  // first_fixed + 1, ... fixed in them.
  BucketGraph(const kernels::AlignParams& params, const kernels::AlignPlan& plan,
              cudaStream_t capture_stream, int first_fixed, int num_fixed);

  // Launches with the count given on the host, or read from device memory at replay.
  void launch(int num_tokens, cudaStream_t stream);
  void launch_device_count(const std::int32_t* d_num_tokens, cudaStream_t stream);

  // Executable graphs with a fixed count, and updates of the other one's count source so far.
  int fixed_count_graphs() const { return static_cast<int>(fixed_.size()); }
  std::int64_t parameter_updates() const { return parameter_updates_; }

  // Adds a copy of the graph to `parent` as a child node, with the count fixed or read from
  // d_num_tokens at replay.
  cudaGraphNode_t add_child(cudaGraph_t parent, const cudaGraphNode_t* deps, std::size_t num_deps,
                            int num_tokens);
  cudaGraphNode_t add_child_device_count(cudaGraph_t parent, const cudaGraphNode_t* deps,
                                         std::size_t num_deps, const std::int32_t* d_num_tokens);

 private:
  // Node parameters of the first kernel retargeted to a count source; points into args_.
  cudaKernelNodeParams retarget(const std::int32_t* d_num_tokens, int num_tokens);
  // Sets the executable graph's count source unless it already holds it (a steady decode loop
  // repeats counts; the update is a host call on the serving path).
  void bind(const std::int32_t* d_num_tokens, int num_tokens);

  Graph graph_;
  GraphExec exec_;
  std::vector<GraphExec> fixed_;  // fixed_[i]: count first_fixed_ + i
  int first_fixed_ = 0;
  std::int64_t parameter_updates_ = 0;
  cudaGraphNode_t first_kernel_ = nullptr;
  cudaKernelNodeParams first_params_{};  // function and launch shape of the first kernel
  kernels::AlignParams args_;
  void* arg_pointers_[1] = {nullptr};
  // The count source the executable graph holds now.
  const std::int32_t* bound_pointer_ = nullptr;
  int bound_count_ = 0;
};

}  // namespace moe_dispatch::detail
