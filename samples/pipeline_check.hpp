// The oracle side of the sample: the consumer computed on the host, and the checks that compare a
// step's results with the host reference (moe_dispatch::align_reference) and that host consumer.
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <vector>

#include "moe_dispatch/config.hpp"
#include "moe_dispatch/reference.hpp"

namespace serving_loop {

// A check found a difference. The message names the step, the layer and the first differing index.
class CheckFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What one layer computed at one step, as host memory (the GPU backend's pinned copies, or the
// host backend's vectors).
struct LayerResult {
  int num_tokens = 0;
  int bucket = 0;
  std::span<const std::int32_t> topk_ids;          // num_tokens * top_k
  std::span<const float> topk_weights;             // num_tokens * top_k
  std::span<const float> activations;              // num_tokens
  std::span<const std::int32_t> sorted_token_ids;  // sorted_capacity(shape, numel)
  std::span<const std::int32_t> expert_ids;        // expert_ids_capacity(shape, numel)
  std::int32_t num_tokens_post_pad = 0;
  std::int32_t invalid_ids = 0;          // DeviceCounters::invalid_ids
  std::int32_t counted_tokens = 0;       // DeviceCounters::num_tokens
  std::span<const float> token_outputs;  // num_tokens
};

// The consumer of router.hpp on the host, walking a dispatch tile by tile exactly as the GPU
// kernels do (same operations, same order). The host backend's consumer.
void consume_dispatch(const moe_dispatch::DispatchConfig& config,
                      const moe_dispatch::HostAlignResult& dispatch,
                      std::span<const float> topk_weights, std::span<const float> activations,
                      std::span<const float> expert_scales, std::vector<float>& slot_outputs,
                      std::vector<float>& token_outputs);

// Checks results against the host reference; throws CheckFailure on the first difference.
// Keeps its scratch between calls.
class PipelineChecker {
 public:
  PipelineChecker(const moe_dispatch::DispatchConfig& config, std::vector<float> expert_scales);

  // sorted_token_ids, expert_ids, num_tokens_post_pad and the counters against align_reference
  // of the same topk_ids, entry for entry.
  void check_dispatch(const LayerResult& result, int step, int layer);
  // token_outputs against the consumer computed directly from the routing (no dispatch involved),
  // bit for bit.
  void check_outputs(const LayerResult& result, int step, int layer);

 private:
  moe_dispatch::DispatchConfig config_;
  std::vector<float> expert_scales_;
  moe_dispatch::HostAlignResult reference_;
  std::vector<std::int32_t> counts_;
  std::vector<float> expected_;
};

}  // namespace serving_loop
