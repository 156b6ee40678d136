#include "moe_dispatch/errors.hpp"

#include <string>

namespace moe_dispatch {
namespace {

std::string describe(cudaError_t code, const char* call, const char* file, int line) {
  return std::string(file) + ":" + std::to_string(line) + ": " + call +
         " failed: " + cudaGetErrorName(code) + " (" + cudaGetErrorString(code) + ")";
}

}  // namespace

CudaError::CudaError(cudaError_t code, const char* call, const char* file, int line)
    : Error(describe(code, call, file, line)), code_(code) {}

bool CudaError::sticky() const noexcept {
  // These leave the context unusable; every later call on it fails with the same code.
  switch (code_) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
    case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable:
      return true;
    default:
      return false;
  }
}

namespace detail {
void throw_cuda_error(cudaError_t code, const char* call, const char* file, int line) {
  throw CudaError(code, call, file, line);
}
}  // namespace detail

}  // namespace moe_dispatch
