// Routing written by a kernel, reproducible on the host: for back-to-back tests where the host
// must not touch the input between steps.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define MOE_DISPATCH_TEST_HD __host__ __device__
#else
#define MOE_DISPATCH_TEST_HD
#endif

namespace moe_dispatch::test {

// The id of `slot` for `seed`: a hash into [0, E), except about 1 in 64 ids outside it.
MOE_DISPATCH_TEST_HD inline std::int32_t hashed_id(std::uint32_t seed, std::uint32_t slot,
                                                   std::int32_t num_experts) {
  std::uint32_t h = seed * 0x9E3779B9u ^ (slot + 0x7F4A7C15u);
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  if ((h & 63u) == 0u) return (h & 64u) ? -1 - static_cast<std::int32_t>(h >> 24) : num_experts;
  return static_cast<std::int32_t>((h >> 6) % static_cast<std::uint32_t>(num_experts));
}

// Writes hashed_id(seed, i, E) into ids[0, numel) on `stream`; returns the launch error.
cudaError_t launch_hashed_routing(std::int32_t* ids, int numel, std::uint32_t seed, int num_experts,
                                  cudaStream_t stream);

inline std::vector<std::int32_t> hashed_routing(int numel, std::uint32_t seed, int num_experts) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(numel));
  for (int i = 0; i < numel; ++i)
    ids[i] = hashed_id(seed, static_cast<std::uint32_t>(i), num_experts);
  return ids;
}

}  // namespace moe_dispatch::test
