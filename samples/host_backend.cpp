// The host backend: the sample's pipeline on the CPU, for machines without a GPU. The router is
// routing.hpp's, the dispatch is moe_dispatch::align_reference, and the consumer walks the dispatch
// tile by tile like the GPU consumer. Its checks compare that consumer with the direct computation
// (the dispatch is the reference itself here, so there is nothing else to compare it with).
#include <algorithm>
#include <chrono>

#include "backend.hpp"
#include "moe_dispatch/align.hpp"
#include "moe_dispatch/reference.hpp"
#include "pipeline_check.hpp"
#include "routing.hpp"

namespace serving_loop {
namespace {

using Clock = std::chrono::steady_clock;

double microseconds_since(Clock::time_point start) {
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
}

class HostBackend final : public Backend {
 public:
  HostBackend(const moe_dispatch::DispatchConfig& config, const LoopSettings& settings)
      : config_(config),
        seed_(settings.seed),
        expert_scales_(make_expert_scales(config.num_experts)),
        checker_(config, expert_scales_),
        stage_us_(static_cast<std::size_t>(settings.layers)) {
    for (int layer = 0; layer < settings.layers; ++layer) {
      gates_.push_back(make_gate_table(config.num_experts, settings.seed, layer));
    }
  }

  std::string stage_timer() const override {
    return "host wall clock around align_reference, per layer";
  }

  void start() override {}

  StepResult step(int step, int num_tokens, bool check) override {
    const auto step_start = Clock::now();
    double check_us = 0.0;
    const auto top_k = static_cast<std::size_t>(config_.top_k);
    const auto tokens = static_cast<std::size_t>(num_tokens);
    topk_ids_.resize(tokens * top_k);
    topk_weights_.resize(tokens * top_k);
    activations_.resize(tokens);

    for (std::size_t layer = 0; layer < gates_.size(); ++layer) {
      const std::uint32_t seed = step_seed(seed_, step, static_cast<int>(layer));
      for (int t = 0; t < num_tokens; ++t) {
        const std::size_t first = static_cast<std::size_t>(t) * top_k;
        route_token(gates_[layer].data(), config_.num_experts, config_.top_k, seed, t,
                    &topk_ids_[first], &topk_weights_[first]);
        activations_[static_cast<std::size_t>(t)] = token_activation(seed, t);
      }

      const auto stage_start = Clock::now();
      moe_dispatch::align_reference(topk_ids_, moe_dispatch::shape_of(config_), expert_map(),
                                    dispatch_, counts_);
      stage_us_[layer] = microseconds_since(stage_start);

      consume_dispatch(config_, dispatch_, topk_weights_, activations_, expert_scales_,
                       slot_outputs_, token_outputs_);

      if (check) {
        const auto check_start = Clock::now();
        LayerResult result;
        result.num_tokens = num_tokens;
        result.bucket = bucket_for(num_tokens);
        result.topk_ids = topk_ids_;
        result.topk_weights = topk_weights_;
        result.activations = activations_;
        result.token_outputs = token_outputs_;
        checker_.check_outputs(result, step, static_cast<int>(layer));
        check_us += microseconds_since(check_start);
      }
    }
    return StepResult{bucket_for(num_tokens), stage_us_, microseconds_since(step_start) - check_us};
  }

  std::vector<BucketUse> bucket_use() const override { return {}; }
  std::optional<DeviceMemory> device_memory() const override { return std::nullopt; }
  std::optional<std::int64_t> free_device_bytes() const override { return std::nullopt; }

 private:
  const moe_dispatch::ExpertMap* expert_map() const {
    return config_.expert_map ? &*config_.expert_map : nullptr;
  }
  // The bucket a DispatchStage would replay: the smallest one holding num_tokens.
  int bucket_for(int num_tokens) const {
    const auto it = std::lower_bound(config_.buckets.begin(), config_.buckets.end(), num_tokens);
    return it == config_.buckets.end() ? 0 : *it;
  }

  moe_dispatch::DispatchConfig config_;
  std::uint32_t seed_;
  std::vector<float> expert_scales_;
  std::vector<std::vector<float>> gates_;  // one gate table per layer
  PipelineChecker checker_;
  // One step's scratch, reused by every layer and step.
  std::vector<std::int32_t> topk_ids_;
  std::vector<float> topk_weights_;
  std::vector<float> activations_;
  moe_dispatch::HostAlignResult dispatch_;
  std::vector<std::int32_t> counts_;
  std::vector<float> slot_outputs_;
  std::vector<float> token_outputs_;
  std::vector<double> stage_us_;
};

}  // namespace

std::unique_ptr<Backend> make_host_backend(const moe_dispatch::DispatchConfig& config,
                                           const LoopSettings& settings) {
  return std::make_unique<HostBackend>(config, settings);
}

}  // namespace serving_loop
