// GPU-suite helpers: run an alignment on the device and compare every defined entry with the host
// reference; poison before, and check nothing was written past the contract's extent.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "moe_dispatch/align.hpp"
#include "moe_dispatch/reference.hpp"

namespace moe_dispatch::test {

// Byte pattern written over outputs before each run: 0xA5A5A5A5 is no valid id, count or sentinel.
inline constexpr int kPoisonByte = 0xA5;
inline constexpr std::int32_t kPoison = static_cast<std::int32_t>(0xA5A5A5A5u);

// Device outputs copied back to the host.
struct DeviceResult {
  std::vector<std::int32_t> sorted_token_ids;  // the whole buffer
  std::vector<std::int32_t> expert_ids;        // the whole buffer
  std::int32_t num_tokens_post_pad = 0;
  std::int32_t counters[3] = {0, 0, 0};  // invalid ids, clamped, count used
};

// Empty when equal; else a description of the first difference. Entries of the buffers past the
// extent defined for `expected` must still hold the poison; the counters must say that
// expected_tokens were aligned, clamped into the capacity only when `expected_clamped`.
std::string compare(const HostAlignResult& expected, const DeviceResult& actual,
                    std::int32_t expected_tokens, bool expected_clamped = false);

DeviceResult copy_back(const std::int32_t* sorted, std::size_t sorted_size,
                       const std::int32_t* expert_ids, std::size_t expert_ids_size,
                       const std::int32_t* post_pad, const std::int32_t* counters);

}  // namespace moe_dispatch::test
