#include "runtime/kernel_node_update.hpp"

#include <cudaTypedefs.h>

#include <source_location>

#include "moe_dispatch/errors.hpp"

namespace moe_dispatch::detail {
namespace {

// The driver's codes for what these calls return share the runtime's numbers.
static_assert(static_cast<int>(CUDA_ERROR_INVALID_VALUE) == cudaErrorInvalidValue);
static_assert(static_cast<int>(CUDA_ERROR_NOT_INITIALIZED) == cudaErrorInitializationError);
static_assert(static_cast<int>(CUDA_ERROR_DEINITIALIZED) == cudaErrorCudartUnloading);
static_assert(static_cast<int>(CUDA_ERROR_INVALID_HANDLE) == cudaErrorInvalidResourceHandle);
static_assert(static_cast<int>(CUDA_ERROR_INVALID_CONTEXT) == cudaErrorDeviceUninitialized);
static_assert(static_cast<int>(CUDA_ERROR_OUT_OF_MEMORY) == cudaErrorMemoryAllocation);
static_assert(static_cast<int>(CUDA_ERROR_ILLEGAL_ADDRESS) == cudaErrorIllegalAddress);
static_assert(static_cast<int>(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE) ==
              cudaErrorGraphExecUpdateFailure);

void check(CUresult result, const char* call,
           std::source_location where = std::source_location::current()) {
  if (result != CUDA_SUCCESS) {
    throw_cuda_error(static_cast<cudaError_t>(result), call, where.file_name(),
                     static_cast<int>(where.line()));
  }
}

template <typename Function>
Function entry_point(const char* symbol) {
  void* function = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  MOE_DISPATCH_CUDA_CHECK(
      cudaGetDriverEntryPointByVersion(symbol, &function, 12000, cudaEnableDefault, &found));
  if (found != cudaDriverEntryPointSuccess || function == nullptr) {
    throw_cuda_error(cudaErrorSymbolNotFound, symbol, __FILE__, __LINE__);
  }
  return reinterpret_cast<Function>(function);
}

struct DriverCalls {
  PFN_cuGraphKernelNodeGetParams_v12000 get_params;
  PFN_cuGraphExecKernelNodeSetParams_v12000 set_exec_params;
  PFN_cuGraphLaunch_v10000 graph_launch;
};

// Resolved on first use; immutable after.
const DriverCalls& driver() {
  static const DriverCalls calls{
      entry_point<PFN_cuGraphKernelNodeGetParams_v12000>("cuGraphKernelNodeGetParams"),
      entry_point<PFN_cuGraphExecKernelNodeSetParams_v12000>("cuGraphExecKernelNodeSetParams"),
      entry_point<PFN_cuGraphLaunch_v10000>("cuGraphLaunch")};
  return calls;
}

}  // namespace

void launch_graph(cudaGraphExec_t exec, cudaStream_t stream) {
  check(driver().graph_launch(exec, stream), "cuGraphLaunch(exec, stream)");
}

KernelNodeUpdate::KernelNodeUpdate(cudaGraphNode_t node) : node_(node) {
  check(driver().get_params(node_, &params_), "cuGraphKernelNodeGetParams(node_, &params_)");
  params_.kernelParams = nullptr;  // set_args supplies them
  params_.extra = nullptr;
}

void KernelNodeUpdate::set_args(cudaGraphExec_t exec, void** args) const {
  CUDA_KERNEL_NODE_PARAMS p = params_;
  p.kernelParams = args;
  check(driver().set_exec_params(exec, node_, &p),
        "cuGraphExecKernelNodeSetParams(exec, node_, &p)");
}

}  // namespace moe_dispatch::detail
