// Division by a divisor fixed before launch, as a multiply-high, an add and a shift. A runtime
// integer division is a chain of about 20 dependent instructions on the H100, and the alignment
// kernels are latency-bound (docs/KERNELS.md), so divisors known on the host (the block size) are
// prepared there once.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MOE_DISPATCH_HOST_DEVICE __host__ __device__
#else
#define MOE_DISPATCH_HOST_DEVICE
#endif

namespace moe_dispatch::kernels {

// q = (umulhi(n, multiplier) + n) >> shift equals n / d for every 0 <= n < 2^31, with
// shift = ceil(log2 d) and multiplier = floor(2^32 * (2^shift - d) / d) + 1 (Granlund and
// Montgomery's round-up method with a 33-bit multiplier whose top bit is the added n).
struct FastDivisor {
  std::uint32_t multiplier = 1;
  std::uint32_t shift = 0;  // divides by 1 when default-constructed
};

// d in [1, 2^31).
constexpr FastDivisor make_divisor(std::uint32_t d) {
  std::uint32_t shift = 0;
  while ((std::uint64_t{1} << shift) < d) ++shift;
  const std::uint64_t span = (std::uint64_t{1} << shift) - d;  // < d
  return {static_cast<std::uint32_t>((span << 32) / d + 1), shift};
}

// n / d for 0 <= n < 2^31.
MOE_DISPATCH_HOST_DEVICE inline int divide(int n, FastDivisor d) {
  const auto u = static_cast<std::uint32_t>(n);
#if defined(__CUDA_ARCH__)
  const std::uint32_t high = __umulhi(u, d.multiplier);
#else
  const auto high = static_cast<std::uint32_t>((std::uint64_t{u} * d.multiplier) >> 32);
#endif
  return static_cast<int>((high + u) >> d.shift);
}

}  // namespace moe_dispatch::kernels

#undef MOE_DISPATCH_HOST_DEVICE
