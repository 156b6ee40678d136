#include "pipeline_check.hpp"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <string>
#include <utility>

#include "moe_dispatch/align.hpp"

namespace serving_loop {
namespace {

using moe_dispatch::DispatchConfig;

// The expert (its index into expert_scales) that computes a slot routed to global expert `id`, or
// -1 when the slot contributes nothing: an id outside [0, E), or an expert of another rank.
int computing_expert(const DispatchConfig& config, std::int32_t id) {
  if (id < 0 || id >= config.num_experts) return -1;
  if (!config.expert_map) return id;
  return config.expert_map->global_to_local[static_cast<std::size_t>(id)];
}

std::string context(int step, int layer, const LayerResult& result) {
  return "check failed at step " + std::to_string(step) + ", layer " + std::to_string(layer) +
         " (num_tokens " + std::to_string(result.num_tokens) + ", bucket " +
         std::to_string(result.bucket) + "): ";
}

std::string float_text(float value) {
  char text[64];
  std::snprintf(text, sizeof text, "%.9g (bits 0x%08x)", static_cast<double>(value),
                std::bit_cast<std::uint32_t>(value));
  return text;
}

void compare_ids(std::span<const std::int32_t> got, std::span<const std::int32_t> expected,
                 const char* name, const std::string& where) {
  if (got.size() != expected.size()) {
    throw CheckFailure(where + name + " has " + std::to_string(got.size()) +
                       " entries, the reference " + std::to_string(expected.size()));
  }
  const auto [g, e] = std::mismatch(got.begin(), got.end(), expected.begin());
  if (g != got.end()) {
    throw CheckFailure(where + name + "[" + std::to_string(g - got.begin()) +
                       "] = " + std::to_string(*g) + ", expected " + std::to_string(*e));
  }
}

void compare_scalar(std::int32_t got, std::int32_t expected, const char* name,
                    const std::string& where) {
  if (got != expected) {
    throw CheckFailure(where + name + " = " + std::to_string(got) + ", expected " +
                       std::to_string(expected));
  }
}

}  // namespace

void consume_dispatch(const DispatchConfig& config, const moe_dispatch::HostAlignResult& dispatch,
                      std::span<const float> topk_weights, std::span<const float> activations,
                      std::span<const float> expert_scales, std::vector<float>& slot_outputs,
                      std::vector<float>& token_outputs) {
  const int top_k = config.top_k;
  const int block_size = config.block_size;
  const auto numel = static_cast<std::int64_t>(topk_weights.size());
  slot_outputs.assign(topk_weights.size(), 0.0f);

  const std::int64_t post_pad = dispatch.num_tokens_post_pad;
  const std::int64_t tiles = std::min(post_pad > 0 ? post_pad / block_size : 0,
                                      static_cast<std::int64_t>(dispatch.expert_ids.size()));
  const auto sorted_entries = static_cast<std::int64_t>(dispatch.sorted_token_ids.size());
  for (std::int64_t tile = 0; tile < tiles; ++tile) {
    const std::int32_t expert = dispatch.expert_ids[static_cast<std::size_t>(tile)];
    if (expert < 0 || expert >= config.num_experts) continue;
    const float scale = expert_scales[static_cast<std::size_t>(expert)];
    for (int row = 0; row < block_size; ++row) {
      const std::int64_t entry = tile * block_size + row;
      if (entry >= sorted_entries) break;
      const std::int32_t slot = dispatch.sorted_token_ids[static_cast<std::size_t>(entry)];
      if (slot < 0 || slot >= numel) continue;  // sentinel padding
      const auto s = static_cast<std::size_t>(slot);
      slot_outputs[s] =
          (topk_weights[s] * scale) * activations[s / static_cast<std::size_t>(top_k)];
    }
  }

  token_outputs.resize(activations.size());
  for (std::size_t t = 0; t < token_outputs.size(); ++t) {
    float sum = 0.0f;
    for (int k = 0; k < top_k; ++k) sum += slot_outputs[t * static_cast<std::size_t>(top_k) + k];
    token_outputs[t] = sum;
  }
}

PipelineChecker::PipelineChecker(const DispatchConfig& config, std::vector<float> expert_scales)
    : config_(config), expert_scales_(std::move(expert_scales)) {}

void PipelineChecker::check_dispatch(const LayerResult& result, int step, int layer) {
  const moe_dispatch::ExpertMap* map = config_.expert_map ? &*config_.expert_map : nullptr;
  moe_dispatch::align_reference(result.topk_ids, moe_dispatch::shape_of(config_), map, reference_,
                                counts_);
  const std::string where = context(step, layer, result);
  compare_scalar(result.counted_tokens, result.num_tokens, "counters.num_tokens", where);
  compare_scalar(result.num_tokens_post_pad, reference_.num_tokens_post_pad, "num_tokens_post_pad",
                 where);
  compare_ids(result.sorted_token_ids, reference_.sorted_token_ids, "sorted_token_ids", where);
  compare_ids(result.expert_ids, reference_.expert_ids, "expert_ids", where);
  compare_scalar(result.invalid_ids, reference_.num_invalid_ids, "counters.invalid_ids", where);
}

void PipelineChecker::check_outputs(const LayerResult& result, int step, int layer) {
  // The MoE layer computed directly from the routing: token t's output is the sum over its top_k
  // slots of weight * scale[expert] * x[t], in slot order, with the same roundings as the consumer.
  const auto top_k = static_cast<std::size_t>(config_.top_k);
  const auto num_tokens = static_cast<std::size_t>(result.num_tokens);
  expected_.resize(num_tokens);
  for (std::size_t t = 0; t < num_tokens; ++t) {
    float sum = 0.0f;
    for (std::size_t k = 0; k < top_k; ++k) {
      const std::size_t slot = t * top_k + k;
      const int expert = computing_expert(config_, result.topk_ids[slot]);
      const float value =
          expert < 0
              ? 0.0f
              : (result.topk_weights[slot] * expert_scales_[static_cast<std::size_t>(expert)]) *
                    result.activations[t];
      sum += value;
    }
    expected_[t] = sum;
  }

  const std::string where = context(step, layer, result);
  if (result.token_outputs.size() != num_tokens) {
    throw CheckFailure(where + "token_outputs has " + std::to_string(result.token_outputs.size()) +
                       " entries, expected " + std::to_string(num_tokens));
  }
  for (std::size_t t = 0; t < num_tokens; ++t) {
    if (std::bit_cast<std::uint32_t>(result.token_outputs[t]) !=
        std::bit_cast<std::uint32_t>(expected_[t])) {
      throw CheckFailure(where + "token_outputs[" + std::to_string(t) +
                         "] = " + float_text(result.token_outputs[t]) + ", expected " +
                         float_text(expected_[t]));
    }
  }
}

}  // namespace serving_loop
