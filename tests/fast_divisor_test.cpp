// The division the kernels use for divisors known before launch (kernels/fast_divisor.hpp) must
// equal integer division for every numerator the kernels can pass (0 <= n < 2^31).
#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/fast_divisor.hpp"

extern const bool kNeedsGpu;
const bool kNeedsGpu = false;

namespace mk = moe_dispatch::kernels;

namespace {

constexpr int kMaxNumerator = std::numeric_limits<int>::max();

// Numerators around the multiples of d where a rounding error would show, plus the extremes.
std::vector<int> edge_numerators(int d) {
  std::vector<int> out{0, 1, d - 1, d, kMaxNumerator, kMaxNumerator - 1, kMaxNumerator - d};
  for (std::int64_t q : {std::int64_t{2}, std::int64_t{3}, std::int64_t{1} << 10,
                         std::int64_t{1} << 20, std::int64_t{kMaxNumerator} / d}) {
    for (std::int64_t delta = -1; delta <= 1; ++delta) {
      const std::int64_t n = q * d + delta;
      if (n >= 0 && n <= kMaxNumerator) out.push_back(static_cast<int>(n));
    }
  }
  return out;
}

void check_divisor(int d, std::mt19937& rng) {
  const mk::FastDivisor divisor = mk::make_divisor(static_cast<std::uint32_t>(d));
  for (const int n : edge_numerators(d)) {
    if (n < 0) continue;
    INFO("n = " << n << ", d = " << d);
    REQUIRE(mk::divide(n, divisor) == n / d);
  }
  std::uniform_int_distribution<int> any(0, kMaxNumerator);
  for (int i = 0; i < 2000; ++i) {
    const int n = any(rng);
    INFO("n = " << n << ", d = " << d);
    REQUIRE(mk::divide(n, divisor) == n / d);
  }
}

}  // namespace

TEST_CASE("fast divisor equals integer division for every block size") {
  std::mt19937 rng(11);
  for (int d = 1; d <= 1024; ++d) check_divisor(d, rng);
}

TEST_CASE("fast divisor equals integer division for large and awkward divisors") {
  std::mt19937 rng(12);
  for (int shift = 11; shift < 31; ++shift) {
    const int power = 1 << shift;
    for (const int d : {power - 1, power, power + 1}) check_divisor(d, rng);
  }
  check_divisor(kMaxNumerator, rng);
  std::uniform_int_distribution<int> any(1, kMaxNumerator);
  for (int i = 0; i < 200; ++i) check_divisor(any(rng), rng);
}

TEST_CASE("default fast divisor divides by one") {
  const mk::FastDivisor one;
  for (const int n : {0, 1, 7, 1 << 20, kMaxNumerator}) CHECK(mk::divide(n, one) == n);
}
