#include "support/device_routing.hpp"

namespace moe_dispatch::test {
namespace {

__global__ void hashed_routing_kernel(std::int32_t* ids, int numel, std::uint32_t seed,
                                      int num_experts) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < numel) ids[i] = hashed_id(seed, static_cast<std::uint32_t>(i), num_experts);
}

}  // namespace

cudaError_t launch_hashed_routing(std::int32_t* ids, int numel, std::uint32_t seed, int num_experts,
                                  cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  hashed_routing_kernel<<<(numel + 255) / 256, 256, 0, stream>>>(ids, numel, seed, num_experts);
  return cudaGetLastError();
}

}  // namespace moe_dispatch::test
