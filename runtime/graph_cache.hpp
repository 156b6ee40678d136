// The graph of one bucket: the alignment kernels captured once, instantiated and uploaded, then
// retargeted when the count source changes. Only the first kernel node reads the count
// (AlignParams::host_num_tokens or AlignParams::num_tokens); a launch with another count updates
// that node's parameters in an executable graph (KernelNodeUpdate), which affects only later
// launches, so back-to-back launches with different counts do not race. Measured against a memset
// node that writes the count into device memory before the kernels: one node fewer per replay.
// And against a stream write of the count (cuStreamWriteValue32) before an unchanged graph, which
// took 3.34-3.40 us of host time and 3.16-3.32 us of GPU time per call against 2.40-2.41 and
// 1.51-1.60 for the update and the launch (bench/floor_bench, H200, 2026-12-03 13:45Z, two runs).
//
// Two executable graphs take the updates in turn, so a count that returns every other step (two
// interleaved batch sizes) takes no update. The graph updated is then not the one launched last;
// that measured no cheaper than updating one graph (bench/floor_bench), and correctness does not
// depend on it: an update affects later launches only. The update (the driver call,
// KernelNodeUpdate) costs 0.14-0.37 us of host time alone on the H200, 2026-12-02
// (bench/floor_bench). A bucket may also hold one executable graph per count it takes, each with
// its count fixed: a launch then updates nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "kernels/align.hpp"
#include "moe_dispatch/cuda_raii.hpp"
#include "runtime/kernel_node_update.hpp"

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

  // Executable graphs with a fixed count, and updates of the others' count sources so far.
  int fixed_count_graphs() const { return static_cast<int>(fixed_.size()); }
  std::int64_t parameter_updates() const { return parameter_updates_; }

  // Adds a copy of the graph to `parent` as a child node, with the count fixed or read from
  // d_num_tokens at replay.
  cudaGraphNode_t add_child(cudaGraph_t parent, const cudaGraphNode_t* deps, std::size_t num_deps,
                            int num_tokens);
  cudaGraphNode_t add_child_device_count(cudaGraph_t parent, const cudaGraphNode_t* deps,
                                         std::size_t num_deps, const std::int32_t* d_num_tokens);

 private:
  // An executable graph whose count source run() updates, and the source it holds now.
  struct Updatable {
    GraphExec exec;
    const std::int32_t* bound_pointer = nullptr;
    int bound_count = 0;
  };

  // The first kernel's arguments retargeted to a count source (points into args_), and its node
  // parameters with them.
  void** retarget_args(const std::int32_t* d_num_tokens, int num_tokens);
  cudaKernelNodeParams retarget(const std::int32_t* d_num_tokens, int num_tokens);
  // The updatable graph to launch for a count source: the one launched last if it holds the
  // source (a steady loop repeats counts and pays no update), else the other, updated to it.
  cudaGraphExec_t bind(const std::int32_t* d_num_tokens, int num_tokens);

  Graph graph_;
  std::array<Updatable, 2> updatable_;
  std::size_t last_ = 0;  // updatable_[last_] went to the last launch (unless that launch threw)
  std::vector<GraphExec> fixed_;  // fixed_[i]: count first_fixed_ + i
  int first_fixed_ = 0;
  std::int64_t parameter_updates_ = 0;
  cudaGraphNode_t first_kernel_ = nullptr;
  cudaKernelNodeParams first_params_{};     // function and launch shape of the first kernel
  std::optional<KernelNodeUpdate> update_;  // of the first kernel; set once it is captured
  kernels::AlignParams args_;
  void* arg_pointers_[1] = {nullptr};
};

}  // namespace moe_dispatch::detail
