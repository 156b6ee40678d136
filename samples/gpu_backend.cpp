// The GPU backend. Per layer and step, on one stream:
//   router kernel  -> writes the stage's persistent input (stage.input_for(n)) and the weights
//   stage.run(n)   -> replays the bucket's graph (between two timing events)
//   consumer       -> uses sorted_token_ids / expert_ids / num_tokens_post_pad like a grouped GEMM
//   (check steps)  -> copies the routing, the dispatch and the outputs to pinned host memory
// The host synchronizes once per step, at its end, to read the timing events (and the copies).
// A real engine would not wait there; the sample does so it can time and check every step.
#include <cuda_runtime_api.h>

#include <chrono>
#include <stdexcept>
#include <string>

#include "backend.hpp"
#include "moe_dispatch/align.hpp"
#include "moe_dispatch/cuda_raii.hpp"
#include "moe_dispatch/dispatch_stage.hpp"
#include "moe_dispatch/errors.hpp"
#include "pipeline_check.hpp"
#include "router.hpp"
#include "routing.hpp"

namespace serving_loop {
namespace {

using Clock = std::chrono::steady_clock;
using moe_dispatch::DeviceBuffer;
using moe_dispatch::DispatchConfig;
using moe_dispatch::PinnedBuffer;

double microseconds_since(Clock::time_point start) {
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
}

template <typename T>
DeviceBuffer<T> upload(const std::vector<T>& values) {
  DeviceBuffer<T> buffer(values.size());
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(buffer.get(), values.data(), buffer.bytes(), cudaMemcpyHostToDevice));
  return buffer;
}

template <typename T>
void copy_to_host(T* host, const T* device, std::int64_t count, cudaStream_t stream) {
  MOE_DISPATCH_CUDA_CHECK(cudaMemcpyAsync(host, device, static_cast<std::size_t>(count) * sizeof(T),
                                          cudaMemcpyDeviceToHost, stream));
}

// The entries of the dispatch outputs defined for one step (align.hpp), checked against what the
// stage allocated, so that no kernel or copy of the sample reads past the stage's buffers.
struct DefinedExtents {
  std::int64_t sorted_entries = 0;
  std::int64_t expert_blocks = 0;
};

DefinedExtents defined_extents(const DispatchConfig& config,
                               const moe_dispatch::DispatchOutputs& outputs) {
  if (outputs.sorted_token_ids == nullptr || outputs.expert_ids == nullptr ||
      outputs.num_tokens_post_pad == nullptr || outputs.counters == nullptr) {
    throw std::logic_error("DispatchStage::run returned a null output pointer");
  }
  const moe_dispatch::AlignShape shape = moe_dispatch::shape_of(config);
  const std::int64_t numel = std::int64_t{outputs.num_tokens} * config.top_k;
  const DefinedExtents extents{moe_dispatch::sorted_capacity(shape, numel),
                               moe_dispatch::expert_ids_capacity(shape, numel)};
  if (extents.sorted_entries > outputs.sorted_token_ids_size ||
      extents.expert_blocks > outputs.expert_ids_size) {
    throw std::logic_error("DispatchOutputs hold " + std::to_string(outputs.sorted_token_ids_size) +
                           " sorted_token_ids / " + std::to_string(outputs.expert_ids_size) +
                           " expert_ids entries, fewer than the " +
                           std::to_string(extents.sorted_entries) + " / " +
                           std::to_string(extents.expert_blocks) + " defined for " +
                           std::to_string(outputs.num_tokens) + " tokens");
  }
  return extents;
}

std::size_t max_slots(const DispatchConfig& config) {
  return static_cast<std::size_t>(config.max_tokens()) * static_cast<std::size_t>(config.top_k);
}

// Page-locked host copies of what one layer computed, for the checks; sized for the largest bucket.
struct HostCopies {
  explicit HostCopies(const DispatchConfig& config)
      : topk_ids(max_slots(config)),
        topk_weights(max_slots(config)),
        activations(static_cast<std::size_t>(config.max_tokens())),
        token_outputs(static_cast<std::size_t>(config.max_tokens())),
        sorted_token_ids(static_cast<std::size_t>(
            moe_dispatch::sorted_capacity(moe_dispatch::shape_of(config), max_slots(config)))),
        expert_ids(static_cast<std::size_t>(
            moe_dispatch::expert_ids_capacity(moe_dispatch::shape_of(config), max_slots(config)))),
        num_tokens_post_pad(1),
        counters(1) {}
  PinnedBuffer<std::int32_t> topk_ids;
  PinnedBuffer<float> topk_weights;
  PinnedBuffer<float> activations;
  PinnedBuffer<float> token_outputs;
  PinnedBuffer<std::int32_t> sorted_token_ids;
  PinnedBuffer<std::int32_t> expert_ids;
  PinnedBuffer<std::int32_t> num_tokens_post_pad;
  PinnedBuffer<moe_dispatch::DeviceCounters> counters;
};

// One MoE layer: its dispatch stage, its router weights and the buffers of its consumer.
struct Layer {
  Layer(const DispatchConfig& config, std::uint32_t seed, int index)
      : stage(config),
        gate(upload(make_gate_table(config.num_experts, seed, index))),
        topk_weights(max_slots(config)),
        activations(static_cast<std::size_t>(config.max_tokens())),
        slot_outputs(max_slots(config)),
        token_outputs(static_cast<std::size_t>(config.max_tokens())),
        before_run(moe_dispatch::make_event(true)),
        after_run(moe_dispatch::make_event(true)),
        host(config) {}

  moe_dispatch::DispatchStage stage;
  DeviceBuffer<float> gate;           // [num_experts][kGateStride]
  DeviceBuffer<float> topk_weights;   // [max_tokens][top_k]
  DeviceBuffer<float> activations;    // [max_tokens]
  DeviceBuffer<float> slot_outputs;   // [max_tokens][top_k]
  DeviceBuffer<float> token_outputs;  // [max_tokens]
  moe_dispatch::Event before_run;     // recorded just before and after stage.run(): the stage time
  moe_dispatch::Event after_run;
  HostCopies host;
  moe_dispatch::DispatchOutputs outputs;  // of the last run
};

class GpuBackend final : public Backend {
 public:
  GpuBackend(const DispatchConfig& config, const LoopSettings& settings)
      : config_(config),
        seed_(settings.seed),
        stream_(moe_dispatch::make_stream()),
        expert_scales_host_(make_expert_scales(config.num_experts)),
        expert_scales_(upload(expert_scales_host_)),
        checker_(config, expert_scales_host_),
        stage_us_(static_cast<std::size_t>(settings.layers)) {
    layers_.reserve(static_cast<std::size_t>(settings.layers));
    for (int layer = 0; layer < settings.layers; ++layer) {
      layers_.emplace_back(config, settings.seed, layer);
    }
    // The stages allocate everything at construction; the summary counts what comes after.
    allocations_at_construction_ = sum_allocations();
  }

  std::string stage_timer() const override {
    return "CUDA events recorded on the stream just before and after each layer's run(), one "
           "sample per layer per step";
  }

  // Warm-up: one step of one token through every layer loads the sample's kernels and runs each
  // stage once; the replay counts of the summary start after it.
  void start() override {
    for (std::size_t layer = 0; layer < layers_.size(); ++layer) {
      enqueue_layer(layers_[layer], -1, static_cast<int>(layer), 1, false);
    }
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    start_use_ = sum_bucket_use();
  }

  StepResult step(int step, int num_tokens, bool check) override {
    const auto start = Clock::now();
    int bucket = 0;
    for (std::size_t layer = 0; layer < layers_.size(); ++layer) {
      bucket = enqueue_layer(layers_[layer], step, static_cast<int>(layer), num_tokens, check);
    }
    // The step's one synchronization: after it the events and the host copies are complete.
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    const double step_us = microseconds_since(start);

    for (std::size_t layer = 0; layer < layers_.size(); ++layer) {
      float ms = 0.0f;
      MOE_DISPATCH_CUDA_CHECK(cudaEventElapsedTime(&ms, layers_[layer].before_run.get(),
                                                   layers_[layer].after_run.get()));
      stage_us_[layer] = 1000.0 * static_cast<double>(ms);
    }
    if (check) {
      for (std::size_t layer = 0; layer < layers_.size(); ++layer) {
        verify_layer(layers_[layer], step, static_cast<int>(layer));
      }
    }
    return StepResult{bucket, stage_us_, step_us};
  }

  std::vector<BucketUse> bucket_use() const override {
    std::vector<BucketUse> use = sum_bucket_use();
    for (std::size_t i = 0; i < use.size() && i < start_use_.size(); ++i) {
      use[i].replays -= start_use_[i].replays;
      use[i].eager_runs -= start_use_[i].eager_runs;
      use[i].count_updates -= start_use_[i].count_updates;
    }
    return use;
  }

  std::optional<DeviceMemory> device_memory() const override {
    DeviceMemory memory;
    for (const Layer& layer : layers_) memory.stage_bytes += layer.stage.stats().device_bytes;
    memory.allocations_in_loop = sum_allocations() - allocations_at_construction_;
    return memory;
  }

  std::optional<std::int64_t> free_device_bytes() const override {
    std::size_t free = 0;
    std::size_t total = 0;
    MOE_DISPATCH_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    return static_cast<std::int64_t>(free);
  }

 private:
  // Enqueues one layer's work for one step; returns the bucket the stage replayed.
  int enqueue_layer(Layer& layer, int step, int index, int num_tokens, bool check) {
    cudaStream_t stream = stream_.get();
    std::int32_t* topk_ids = layer.stage.input_for(num_tokens);

    RouterParams router;
    router.gate = layer.gate.get();
    router.num_tokens = num_tokens;
    router.num_experts = config_.num_experts;
    router.top_k = config_.top_k;
    router.step_seed = step_seed(seed_, step, index);
    router.topk_ids = topk_ids;
    router.topk_weights = layer.topk_weights.get();
    router.activations = layer.activations.get();
    launch_router(router, stream);

    MOE_DISPATCH_CUDA_CHECK(cudaEventRecord(layer.before_run.get(), stream));
    layer.outputs = layer.stage.run(num_tokens, stream);
    MOE_DISPATCH_CUDA_CHECK(cudaEventRecord(layer.after_run.get(), stream));

    const DefinedExtents extents = defined_extents(config_, layer.outputs);
    ConsumerParams consumer;
    consumer.sorted_token_ids = layer.outputs.sorted_token_ids;
    consumer.expert_ids = layer.outputs.expert_ids;
    consumer.num_tokens_post_pad = layer.outputs.num_tokens_post_pad;
    consumer.sorted_entries = extents.sorted_entries;
    consumer.expert_blocks = extents.expert_blocks;
    consumer.num_tokens = num_tokens;
    consumer.top_k = config_.top_k;
    consumer.block_size = config_.block_size;
    consumer.num_experts = config_.num_experts;
    consumer.topk_weights = layer.topk_weights.get();
    consumer.activations = layer.activations.get();
    consumer.expert_scales = expert_scales_.get();
    consumer.slot_outputs = layer.slot_outputs.get();
    consumer.token_outputs = layer.token_outputs.get();
    launch_consumer(consumer, stream);

    if (check) {
      const std::int64_t slots = std::int64_t{num_tokens} * config_.top_k;
      HostCopies& host = layer.host;
      copy_to_host(host.topk_ids.get(), topk_ids, slots, stream);
      copy_to_host(host.topk_weights.get(), layer.topk_weights.get(), slots, stream);
      copy_to_host(host.activations.get(), layer.activations.get(), num_tokens, stream);
      copy_to_host(host.token_outputs.get(), layer.token_outputs.get(), num_tokens, stream);
      copy_to_host(host.sorted_token_ids.get(), layer.outputs.sorted_token_ids,
                   extents.sorted_entries, stream);
      copy_to_host(host.expert_ids.get(), layer.outputs.expert_ids, extents.expert_blocks, stream);
      copy_to_host(host.num_tokens_post_pad.get(), layer.outputs.num_tokens_post_pad, 1, stream);
      copy_to_host(host.counters.get(), layer.outputs.counters, 1, stream);
    }
    return layer.outputs.bucket;
  }

  // Compares a layer's host copies (complete after the step's synchronization) with the reference.
  void verify_layer(const Layer& layer, int step, int index) {
    const DefinedExtents extents = defined_extents(config_, layer.outputs);
    const auto tokens = static_cast<std::size_t>(layer.outputs.num_tokens);
    const std::size_t slots = tokens * static_cast<std::size_t>(config_.top_k);
    const HostCopies& host = layer.host;
    LayerResult result;
    result.num_tokens = layer.outputs.num_tokens;
    result.bucket = layer.outputs.bucket;
    result.topk_ids = {host.topk_ids.get(), slots};
    result.topk_weights = {host.topk_weights.get(), slots};
    result.activations = {host.activations.get(), tokens};
    result.token_outputs = {host.token_outputs.get(), tokens};
    result.sorted_token_ids = {host.sorted_token_ids.get(),
                               static_cast<std::size_t>(extents.sorted_entries)};
    result.expert_ids = {host.expert_ids.get(), static_cast<std::size_t>(extents.expert_blocks)};
    result.num_tokens_post_pad = *host.num_tokens_post_pad.get();
    result.invalid_ids = host.counters.get()->invalid_ids;
    result.counted_tokens = host.counters.get()->num_tokens;
    checker_.check_dispatch(result, step, index);
    checker_.check_outputs(result, step, index);
  }

  std::vector<BucketUse> sum_bucket_use() const {
    std::vector<BucketUse> use;
    for (const Layer& layer : layers_) {
      const moe_dispatch::StageStats stats = layer.stage.stats();
      use.resize(stats.buckets.size());
      for (std::size_t i = 0; i < stats.buckets.size(); ++i) {
        use[i].tokens = stats.buckets[i].tokens;
        use[i].replays += stats.buckets[i].replays;
        use[i].eager_runs += stats.buckets[i].eager_runs;
        use[i].count_updates += stats.buckets[i].parameter_updates;
      }
    }
    return use;
  }

  std::int64_t sum_allocations() const {
    std::int64_t allocations = 0;
    for (const Layer& layer : layers_) allocations += layer.stage.stats().device_allocations;
    return allocations;
  }

  DispatchConfig config_;
  std::uint32_t seed_;
  moe_dispatch::Stream stream_;
  std::vector<float> expert_scales_host_;
  DeviceBuffer<float> expert_scales_;  // [num_experts]
  std::vector<Layer> layers_;
  PipelineChecker checker_;
  std::vector<double> stage_us_;
  // Baselines of the summary.
  std::int64_t allocations_at_construction_ = 0;
  std::vector<BucketUse> start_use_;  // after warm-up
};

}  // namespace

std::unique_ptr<Backend> make_gpu_backend(const DispatchConfig& config,
                                          const LoopSettings& settings) {
  // The sample's own buffers, stream and events live on the stage's device.
  MOE_DISPATCH_CUDA_CHECK(cudaSetDevice(config.device));
  return std::make_unique<GpuBackend>(config, settings);
}

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device: not an error for the sample
    return 0;
  }
  return count;
}

std::string cuda_device_name(int device) {
  cudaDeviceProp properties{};
  MOE_DISPATCH_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  return properties.name;
}

}  // namespace serving_loop
