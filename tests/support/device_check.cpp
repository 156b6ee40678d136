#include "support/device_check.hpp"

#include "moe_dispatch/errors.hpp"

namespace moe_dispatch::test {
namespace {

std::string diff_in(const char* name, const std::vector<std::int32_t>& expected,
                    const std::vector<std::int32_t>& actual) {
  if (actual.size() < expected.size()) {
    return std::string(name) + ": buffer of " + std::to_string(actual.size()) +
           " entries is smaller than the " + std::to_string(expected.size()) + " defined";
  }
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] != actual[i]) {
      return std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(actual[i]) +
             ", expected " + std::to_string(expected[i]) + " (of " +
             std::to_string(expected.size()) + " defined)";
    }
  }
  for (std::size_t i = expected.size(); i < actual.size(); ++i) {
    if (actual[i] != kPoison) {
      return std::string(name) + "[" + std::to_string(i) + "] past the defined " +
             std::to_string(expected.size()) + " entries was written: " + std::to_string(actual[i]);
    }
  }
  return {};
}

}  // namespace

std::string compare(const HostAlignResult& expected, const DeviceResult& actual,
                    std::int32_t expected_tokens, bool expected_clamped) {
  std::string d = diff_in("sorted_token_ids", expected.sorted_token_ids, actual.sorted_token_ids);
  if (d.empty()) d = diff_in("expert_ids", expected.expert_ids, actual.expert_ids);
  if (d.empty() && expected.num_tokens_post_pad != actual.num_tokens_post_pad) {
    d = "num_tokens_post_pad = " + std::to_string(actual.num_tokens_post_pad) + ", expected " +
        std::to_string(expected.num_tokens_post_pad);
  }
  if (d.empty() && expected.num_invalid_ids != actual.counters[0]) {
    d = "invalid id counter = " + std::to_string(actual.counters[0]) + ", expected " +
        std::to_string(expected.num_invalid_ids);
  }
  if (d.empty() && actual.counters[2] != expected_tokens) {
    d = "token count used = " + std::to_string(actual.counters[2]) + ", expected " +
        std::to_string(expected_tokens);
  }
  if (d.empty() && actual.counters[1] != (expected_clamped ? 1 : 0)) {
    d = "count clamped flag = " + std::to_string(actual.counters[1]) + ", expected " +
        (expected_clamped ? "1" : "0");
  }
  return d;
}

DeviceResult copy_back(const std::int32_t* sorted, std::size_t sorted_size,
                       const std::int32_t* expert_ids, std::size_t expert_ids_size,
                       const std::int32_t* post_pad, const std::int32_t* counters) {
  DeviceResult r;
  r.sorted_token_ids.resize(sorted_size);
  r.expert_ids.resize(expert_ids_size);
  MOE_DISPATCH_CUDA_CHECK(cudaDeviceSynchronize());
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(r.sorted_token_ids.data(), sorted, sorted_size * 4, cudaMemcpyDeviceToHost));
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(r.expert_ids.data(), expert_ids, expert_ids_size * 4, cudaMemcpyDeviceToHost));
  MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(&r.num_tokens_post_pad, post_pad, 4, cudaMemcpyDeviceToHost));
  MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(r.counters, counters, 12, cudaMemcpyDeviceToHost));
  return r;
}

}  // namespace moe_dispatch::test
