// A backend runs one engine step through every MoE layer: route, dispatch, consume. The GPU
// backend uses one moe_dispatch::DispatchStage per layer; the host backend runs the same pipeline
// on the CPU with the host reference as its dispatch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "moe_dispatch/config.hpp"

namespace serving_loop {

struct LoopSettings {
  int layers = 4;
  std::uint32_t seed = 1;
};

struct StepResult {
  int bucket = 0;                    // the bucket that served the step (every layer uses the same)
  std::span<const double> stage_us;  // dispatch time of each layer; valid until the next step()
  double step_us = 0.0;              // host wall time of the step, check work excluded
};

// Runs of one bucket, summed over the layers.
struct BucketUse {
  int tokens = 0;
  std::int64_t replays = 0;     // graph replays
  std::int64_t eager_runs = 0;  // runs without a graph (a bucket whose capture failed)
  // Updates of a bucket graph's count (buckets of up to fixed_count_graphs_up_to tokens, 64 by
  // default, launch a graph per count and make none).
  std::int64_t count_updates = 0;
};

struct DeviceMemory {
  std::int64_t stage_bytes = 0;          // device memory held by the stages, summed
  std::int64_t allocations_in_loop = 0;  // stats().device_allocations: end minus construction
};

class Backend {
 public:
  virtual ~Backend() = default;
  // How the stage time of StepResult is measured, for the summary.
  virtual std::string stage_timer() const = 0;
  // Once, before the first step: warm-up and the baselines of the summary.
  virtual void start() = 0;
  // One step of `num_tokens` (> 0) through every layer. With `check`, compares everything the step
  // computed with the host reference and throws CheckFailure on a difference.
  virtual StepResult step(int step, int num_tokens, bool check) = 0;
  // Per-bucket use since start(); empty when there are no graphs (host).
  virtual std::vector<BucketUse> bucket_use() const = 0;
  // Device memory since start(); nullopt on the host.
  virtual std::optional<DeviceMemory> device_memory() const = 0;
  // cudaMemGetInfo's free bytes of the device, now (device-wide: other processes count too);
  // nullopt on the host.
  virtual std::optional<std::int64_t> free_device_bytes() const = 0;
};

std::unique_ptr<Backend> make_host_backend(const moe_dispatch::DispatchConfig& config,
                                           const LoopSettings& settings);
// Allocates and captures everything on config.device.
std::unique_ptr<Backend> make_gpu_backend(const moe_dispatch::DispatchConfig& config,
                                          const LoopSettings& settings);

// CUDA devices visible (0 when there is no driver or no device).
int cuda_device_count();
std::string cuda_device_name(int device);

}  // namespace serving_loop
