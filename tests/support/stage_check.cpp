#include "support/stage_check.hpp"

#include <algorithm>

#include "moe_dispatch/errors.hpp"
#include "moe_dispatch/reference.hpp"

namespace moe_dispatch::test {

DispatchConfig small_config() {
  DispatchConfig c;
  c.num_experts = 64;
  c.top_k = 2;
  c.block_size = 16;
  c.buckets = {1, 8, 64, 256};
  c.log = false;
  return c;
}

void poison(const DispatchOutputs& out, cudaStream_t stream) {
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemsetAsync(const_cast<std::int32_t*>(out.sorted_token_ids), kPoisonByte,
                      static_cast<std::size_t>(out.sorted_token_ids_size) * 4, stream));
  MOE_DISPATCH_CUDA_CHECK(cudaMemsetAsync(const_cast<std::int32_t*>(out.expert_ids), kPoisonByte,
                                          static_cast<std::size_t>(out.expert_ids_size) * 4,
                                          stream));
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemsetAsync(const_cast<std::int32_t*>(out.num_tokens_post_pad), kPoisonByte, 16, stream));
}

DeviceResult fetch(const DispatchOutputs& out) {
  return copy_back(out.sorted_token_ids, static_cast<std::size_t>(out.sorted_token_ids_size),
                   out.expert_ids, static_cast<std::size_t>(out.expert_ids_size),
                   out.num_tokens_post_pad, reinterpret_cast<const std::int32_t*>(out.counters));
}

DeviceResult fetch_defined(const DispatchOutputs& out, const HostAlignResult& expected) {
  return copy_back(
      out.sorted_token_ids,
      std::min(static_cast<std::size_t>(out.sorted_token_ids_size),
               expected.sorted_token_ids.size()),
      out.expert_ids,
      std::min(static_cast<std::size_t>(out.expert_ids_size), expected.expert_ids.size()),
      out.num_tokens_post_pad, reinterpret_cast<const std::int32_t*>(out.counters));
}

std::string run_and_compare(DispatchStage& stage, const std::vector<std::int32_t>& ids,
                            cudaStream_t stream) {
  const DispatchConfig& cfg = stage.config();
  const int tokens = static_cast<int>(ids.size()) / cfg.top_k;
  std::int32_t* input = stage.input_for(tokens);
  if (!ids.empty()) {
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemcpyAsync(input, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice, stream));
  }
  const ExpertMap* map = cfg.expert_map ? &*cfg.expert_map : nullptr;
  const HostAlignResult expected = align_reference(ids, shape_of(cfg), map);
  // The first run (the first at this count, or the one that captures a lazy bucket, or the first
  // eager one) is compared as it comes; then its outputs are poisoned and a second run must write
  // every entry again.
  // Its defined entries only: past them lies what earlier runs left.
  const DispatchOutputs first = stage.run(tokens, stream);
  const std::string first_diff = compare(expected, fetch_defined(first, expected), tokens);
  if (!first_diff.empty()) return "first run: " + first_diff;
  poison(first, stream);
  const DispatchOutputs out = stage.run(tokens, stream);
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::string diff = compare(expected, fetch(out), tokens);
  return diff.empty() ? diff : "second run, after poisoning: " + diff;
}

}  // namespace moe_dispatch::test
