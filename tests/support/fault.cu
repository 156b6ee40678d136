#include "support/fault.hpp"

namespace moe_dispatch::test {
namespace {

// The target arrives as a parameter, so the compiler cannot see it is null and drop the store.
__global__ void store_through(int* target) { *target = 1; }

}  // namespace

cudaError_t launch_illegal_address_write(cudaStream_t stream) {
  store_through<<<1, 1, 0, stream>>>(nullptr);
  return cudaGetLastError();
}

}  // namespace moe_dispatch::test
