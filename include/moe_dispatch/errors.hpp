// Exceptions thrown by moe-dispatch. Every error is one of these; messages name what was wrong and,
// for bad input, what is allowed.
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace moe_dispatch {

// Base of every exception this library throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A configuration (YAML or built in code) that breaks a rule. For YAML input the message begins
// "FILE:LINE:COL: " (1-based line and column of the offending node); for configs built in code it
// begins "config: ".
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A bad argument to a public call (count out of range, null pointer, wrong device, ...).
class ArgumentError : public Error {
 public:
  using Error::Error;
};

// A CUDA runtime call failed. Carries the call's text, the error code, and where it was made.
class CudaError : public Error {
 public:
  CudaError(cudaError_t code, const char* call, const char* file, int line);
  cudaError_t code() const noexcept { return code_; }
  // True when the error is sticky: the CUDA context is unusable and so is every stage on it.
  bool sticky() const noexcept;

 private:
  cudaError_t code_;
};

namespace detail {
[[noreturn]] void throw_cuda_error(cudaError_t code, const char* call, const char* file, int line);
}  // namespace detail

}  // namespace moe_dispatch

// Checks a cudaError_t-returning expression; throws moe_dispatch::CudaError naming the call, the
// error, the file and the line.
#define MOE_DISPATCH_CUDA_CHECK(expr)                                                            \
  do {                                                                                           \
    const cudaError_t moe_dispatch_status_ = (expr);                                             \
    if (moe_dispatch_status_ != cudaSuccess) {                                                   \
      ::moe_dispatch::detail::throw_cuda_error(moe_dispatch_status_, #expr, __FILE__, __LINE__); \
    }                                                                                            \
  } while (false)
