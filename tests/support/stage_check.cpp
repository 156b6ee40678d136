#include "support/stage_check.hpp"

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

std::string run_and_compare(DispatchStage& stage, const std::vector<std::int32_t>& ids,
                            cudaStream_t stream) {
  const DispatchConfig& cfg = stage.config();
  const int tokens = static_cast<int>(ids.size()) / cfg.top_k;
  std::int32_t* input = stage.input_for(tokens);
  if (!ids.empty()) {
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemcpyAsync(input, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice, stream));
  }
  // The first run tells where the outputs live; poison them, then run again.
  poison(stage.run(tokens, stream), stream);
  const DispatchOutputs out = stage.run(tokens, stream);
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
  const ExpertMap* map = cfg.expert_map ? &*cfg.expert_map : nullptr;
  return compare(align_reference(ids, shape_of(cfg), map), fetch(out), tokens);
}

}  // namespace moe_dispatch::test
