#include "moe_dispatch/cuda_raii.hpp"

namespace moe_dispatch {

DeviceGuard::DeviceGuard(int device) {
  MOE_DISPATCH_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) {
    MOE_DISPATCH_CUDA_CHECK(cudaSetDevice(device));
    switched_ = true;
  }
}

DeviceGuard::~DeviceGuard() {
  if (switched_) cudaSetDevice(previous_);
}

Stream make_stream() {
  cudaStream_t s = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return Stream(s);
}

Event make_event(bool timing) {
  cudaEvent_t e = nullptr;
  MOE_DISPATCH_CUDA_CHECK(
      cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming));
  return Event(e);
}

}  // namespace moe_dispatch
