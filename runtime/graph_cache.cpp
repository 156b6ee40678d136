#include "runtime/graph_cache.hpp"

#include <cstring>

namespace moe_dispatch::detail {

GraphExec instantiate_uploaded(cudaGraph_t graph, cudaStream_t upload_stream) {
  cudaGraphExec_t exec = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  GraphExec owned(exec);
  MOE_DISPATCH_CUDA_CHECK(cudaGraphUpload(exec, upload_stream));
  return owned;
}

BucketGraph::BucketGraph(const kernels::AlignParams& params, const kernels::AlignPlan& plan,
                         cudaStream_t capture_stream, int first_fixed, int num_fixed)
    : first_fixed_(first_fixed) {
  MOE_DISPATCH_CUDA_CHECK(cudaStreamBeginCapture(capture_stream, cudaStreamCaptureModeThreadLocal));
  const cudaError_t launched = kernels::launch_align(params, plan, capture_stream);
  cudaGraph_t captured = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(capture_stream, &captured);
  graph_ = Graph(captured);  // released even when the launch failed
  if (launched != cudaSuccess) {
    throw_cuda_error(launched, "kernels::launch_align(params, plan, capture_stream)", __FILE__,
                     __LINE__);
  }
  if (ended != cudaSuccess) {
    throw_cuda_error(ended, "cudaStreamEndCapture(capture_stream, &captured)", __FILE__, __LINE__);
  }

  // The kernels form a chain; its root is the kernel that reads the count.
  std::size_t num_roots = 1;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphGetRootNodes(graph_.get(), &first_kernel_, &num_roots));
  MOE_DISPATCH_CUDA_CHECK(cudaGraphKernelNodeGetParams(first_kernel_, &first_params_));
  // The node's argument as launched, including the fields launch_align derives.
  std::memcpy(&args_, first_params_.kernelParams[0], sizeof(args_));

  update_.emplace(first_kernel_);
  for (Updatable& u : updatable_) {
    u.exec = instantiate_uploaded(graph_.get(), capture_stream);
    u.bound_pointer = args_.num_tokens;
    u.bound_count = args_.host_num_tokens;
  }
  for (int count = first_fixed; count < first_fixed + num_fixed; ++count) {
    const cudaKernelNodeParams p = retarget(nullptr, count);
    MOE_DISPATCH_CUDA_CHECK(cudaGraphKernelNodeSetParams(first_kernel_, &p));
    fixed_.push_back(instantiate_uploaded(graph_.get(), capture_stream));
  }
}

void** BucketGraph::retarget_args(const std::int32_t* d_num_tokens, int num_tokens) {
  args_.num_tokens = d_num_tokens;
  args_.host_num_tokens = num_tokens;
  arg_pointers_[0] = &args_;
  return arg_pointers_;
}

cudaKernelNodeParams BucketGraph::retarget(const std::int32_t* d_num_tokens, int num_tokens) {
  cudaKernelNodeParams p = first_params_;
  p.kernelParams = retarget_args(d_num_tokens, num_tokens);
  p.extra = nullptr;
  return p;  // the CUDA call that takes it copies the argument values
}

cudaGraphExec_t BucketGraph::bind(const std::int32_t* d_num_tokens, int num_tokens) {
  const auto holds = [&](const Updatable& u) {
    return u.bound_pointer == d_num_tokens && u.bound_count == num_tokens;
  };
  if (holds(updatable_[last_])) return updatable_[last_].exec.get();
  const std::size_t other = 1 - last_;
  Updatable& u = updatable_[other];
  if (!holds(u)) {
    // On a throw nothing below runs: u still records what its graph holds, last_ is unchanged.
    update_->set_args(u.exec.get(), retarget_args(d_num_tokens, num_tokens));
    u.bound_pointer = d_num_tokens;
    u.bound_count = num_tokens;
    ++parameter_updates_;
  }
  last_ = other;
  return u.exec.get();
}

void BucketGraph::launch(int num_tokens, cudaStream_t stream) {
  const auto fixed = static_cast<std::size_t>(num_tokens - first_fixed_);
  if (num_tokens >= first_fixed_ && fixed < fixed_.size()) {
    launch_graph(fixed_[fixed].get(), stream);
    return;
  }
  launch_graph(bind(nullptr, num_tokens), stream);
}

void BucketGraph::launch_device_count(const std::int32_t* d_num_tokens, cudaStream_t stream) {
  launch_graph(bind(d_num_tokens, 0), stream);
}

cudaGraphNode_t BucketGraph::add_child(cudaGraph_t parent, const cudaGraphNode_t* deps,
                                       std::size_t num_deps, int num_tokens) {
  const cudaKernelNodeParams p = retarget(nullptr, num_tokens);
  MOE_DISPATCH_CUDA_CHECK(cudaGraphKernelNodeSetParams(first_kernel_, &p));
  cudaGraphNode_t node = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphAddChildGraphNode(&node, parent, deps, num_deps, graph_.get()));
  return node;
}

cudaGraphNode_t BucketGraph::add_child_device_count(cudaGraph_t parent, const cudaGraphNode_t* deps,
                                                    std::size_t num_deps,
                                                    const std::int32_t* d_num_tokens) {
  const cudaKernelNodeParams p = retarget(d_num_tokens, 0);
  MOE_DISPATCH_CUDA_CHECK(cudaGraphKernelNodeSetParams(first_kernel_, &p));
  cudaGraphNode_t node = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphAddChildGraphNode(&node, parent, deps, num_deps, graph_.get()));
  return node;
}

}  // namespace moe_dispatch::detail
