// serving_loop: the MoE dispatch stage inside a realistic engine loop.
//
// Each step of a serving trace batches decode tokens and prefill chunks. For every MoE layer, a
// router picks top_k experts per token, the layer's DispatchStage aligns that routing for the
// grouped expert GEMM (replaying the CUDA graph of the step's bucket), and a consumer uses the
// alignment the way the GEMM would. Every --check-every steps the whole pipeline is compared with
// the host reference. Without a GPU the same loop runs on the host. With --soak it runs a million
// steps and fails when memory grew after step 1000. See README.md.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"
#include "moe_dispatch/config.hpp"
#include "moe_dispatch/errors.hpp"
#include "options.hpp"
#include "pipeline_check.hpp"
#include "report.hpp"
#include "trace.hpp"

namespace {

using namespace serving_loop;
using Clock = std::chrono::steady_clock;

constexpr int kExitFailure = 1;    // a check failed, or a runtime error
constexpr int kExitBadInput = 2;   // bad config, trace or command line
constexpr int kExitNoDevice = 77;  // --backend gpu without a device (CTest's "skipped")

// Memory is compared from this step on: by then every bucket the trace reaches has run, the checks
// have run, and the host containers of the trace and the backends have reached their capacity.
constexpr int kSteadyStateStep = 1000;
// --soak's default steps: a million on the GPU (about a minute with one layer on an H100); the host
// backend is several times slower per step (0.29 ms against 0.05 on the machines measured).
constexpr int kSoakStepsGpu = 1'000'000;
constexpr int kSoakStepsHost = 100'000;
// Host RSS may move by a few pages without a leak (stdio buffers, malloc trimming; 128 KiB over the
// default soak on an H100). One leaked allocation per step (malloc's smallest chunk is 32 bytes)
// over a million steps is 30 MiB, far above this.
constexpr std::int64_t kSoakRssToleranceBytes = std::int64_t{1} << 20;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A relative --config path that does not exist from the working directory is looked up under the
// source directory, so the sample finds configs/default.yaml when run from anywhere.
std::filesystem::path resolve_config_path(const std::filesystem::path& path) {
  if (path.is_absolute() || std::filesystem::exists(path)) return path;
  std::filesystem::path in_source = std::filesystem::path(MOE_DISPATCH_SOURCE_DIR) / path;
  return std::filesystem::exists(in_source) ? in_source : path;
}

std::string describe_shape(const moe_dispatch::DispatchConfig& config) {
  return "E " + std::to_string(config.num_experts) + ", top_k " + std::to_string(config.top_k) +
         ", block " + std::to_string(config.block_size) + ", " +
         std::to_string(config.buckets.size()) + " buckets up to " +
         std::to_string(config.max_tokens()) + (config.expert_map ? ", expert map" : "");
}

// The resident set size of this process: resident pages (/proc/self/statm, second field) times the
// page size. getrusage's ru_maxrss would be the peak, which cannot show memory coming back.
std::optional<std::int64_t> host_resident_bytes() {
  std::FILE* statm = std::fopen("/proc/self/statm", "r");
  if (statm == nullptr) return std::nullopt;
  long long total_pages = 0;
  long long resident_pages = 0;
  const bool read = std::fscanf(statm, "%lld %lld", &total_pages, &resident_pages) == 2;
  std::fclose(statm);
  if (!read) return std::nullopt;
  return resident_pages * static_cast<std::int64_t>(sysconf(_SC_PAGESIZE));
}

MemorySample sample_memory(const Backend& backend, int step) {
  return MemorySample{step, host_resident_bytes(), backend.free_device_bytes()};
}

std::string signed_bytes(std::int64_t bytes) {
  return (bytes >= 0 ? "+" : "") + std::to_string(bytes) + " bytes";
}

// --soak's rule: from the baseline to the end, free device memory must not decrease at all and
// host RSS must not grow by more than kSoakRssToleranceBytes.
SoakVerdict judge_soak(const MemorySample& baseline, const MemorySample& end) {
  SoakVerdict verdict;
  verdict.rule = "from step " + std::to_string(baseline.step) +
                 " to the end, free device memory (cudaMemGetInfo) must not decrease and host RSS "
                 "(/proc/self/statm) must not grow by more than " +
                 bytes_text(kSoakRssToleranceBytes);
  if (!baseline.host_rss_bytes || !end.host_rss_bytes) {
    verdict.detail = "host RSS could not be read from /proc/self/statm";
    return verdict;
  }
  const std::int64_t rss_growth = *end.host_rss_bytes - *baseline.host_rss_bytes;
  std::int64_t device_decrease = 0;
  if (baseline.free_device_bytes && end.free_device_bytes) {
    device_decrease = *baseline.free_device_bytes - *end.free_device_bytes;
  }
  verdict.passed = rss_growth <= kSoakRssToleranceBytes && device_decrease <= 0;
  verdict.detail =
      "host RSS " + signed_bytes(rss_growth) + ", free device memory " +
      (end.free_device_bytes ? signed_bytes(-device_decrease) : std::string("n/a (host backend)")) +
      " over " + std::to_string(end.step - baseline.step) + " steps";
  return verdict;
}

// --soak's log on stdout, so that a run's memory can be followed in its log, not only at the end.
void print_memory_line(const MemorySample& sample, int steps, double seconds) {
  std::printf("  step %d/%d  %.1f s  host RSS %s  free device memory %s\n", sample.step, steps,
              seconds, bytes_text(sample.host_rss_bytes).c_str(),
              bytes_text(sample.free_device_bytes).c_str());
  std::fflush(stdout);
}

// The token count of each step: generated by a serving trace, or replayed from a file.
class TokenCounts {
 public:
  TokenCounts(const Options& options, const moe_dispatch::DispatchConfig& config) {
    if (options.trace) {
      recorded_ = load_trace(*options.trace, config.max_tokens());
      description_ = "replayed from " + options.trace->string() + " (" +
                     std::to_string(recorded_.size()) + " steps)";
      return;
    }
    TraceOptions trace;
    trace.seed = options.seed;
    trace.arrival_rate = options.arrival_rate;
    trace.token_budget = options.token_budget.value_or(std::min(2048, config.max_tokens()));
    trace.max_running = options.max_seqs;
    if (trace.token_budget > config.max_tokens()) {
      throw UsageError("--token-budget: " + std::to_string(trace.token_budget) +
                       " exceeds the largest bucket of the config (" +
                       std::to_string(config.max_tokens()) + ")");
    }
    generated_.emplace(trace);
    char text[160];
    std::snprintf(text, sizeof text,
                  "generated: seed %u, %.2f requests/step, budget %d tokens/step, "
                  "at most %d sequences",
                  options.seed, trace.arrival_rate, trace.token_budget, trace.max_running);
    description_ = text;
  }

  int next() {
    if (generated_) return generated_->next_step().tokens();
    return recorded_[next_recorded_++ % recorded_.size()];  // wraps around
  }
  bool recorded() const { return !recorded_.empty(); }
  int recorded_steps() const { return static_cast<int>(recorded_.size()); }
  const std::string& description() const { return description_; }

 private:
  std::optional<ServingTrace> generated_;
  std::vector<int> recorded_;
  std::size_t next_recorded_ = 0;
  std::string description_;
};

// How the loop runs, from the command line.
struct LoopPlan {
  int steps = 0;
  int check_every = 0;
  bool soak = false;
};

// What the loop collects for the summary. Its size does not grow with the steps: the soak watches
// this process's memory.
struct LoopRecord {
  int idle_steps = 0;
  std::int64_t tokens = 0;
  std::int64_t checks_passed = 0;
  double seconds = 0.0;
  LatencyHistogram stage_us;                   // one sample per layer of every busy step
  LatencyHistogram step_us;                    // one sample per busy step
  std::vector<std::int64_t> steps_per_bucket;  // parallel to config.buckets
  MemorySample memory_at_baseline;             // at kSteadyStateStep, or after warm-up if fewer
  MemorySample memory_at_end;
};

// The serving loop: every step takes its token count and runs all layers; step 0 and every
// check_every-th step after it is checked. A CheckFailure ends it.
LoopRecord run_loop(Backend& backend, TokenCounts& token_counts,
                    const moe_dispatch::DispatchConfig& config, const LoopPlan& plan,
                    const MemorySample& memory_at_warm_up) {
  LoopRecord record;
  record.steps_per_bucket.resize(config.buckets.size());
  record.memory_at_baseline = memory_at_warm_up;
  const int log_every = std::max(kSteadyStateStep, plan.steps / 10);
  ProgressLine progress(std::chrono::milliseconds(plan.soak ? 1000 : 100));
  const auto start = Clock::now();
  try {
    for (int step = 0; step < plan.steps; ++step) {
      if (step == kSteadyStateStep) record.memory_at_baseline = sample_memory(backend, step);
      if (plan.soak && step > 0 && step % log_every == 0) {
        progress.clear();
        print_memory_line(sample_memory(backend, step), plan.steps, seconds_since(start));
      }
      const int num_tokens = token_counts.next();
      if (num_tokens == 0) {  // an idle engine runs no layers
        ++record.idle_steps;
        continue;
      }
      const bool check = plan.check_every > 0 && step % plan.check_every == 0;
      const StepResult result = backend.step(step, num_tokens, check);

      record.tokens += num_tokens;
      record.checks_passed += check ? 1 : 0;
      for (const double us : result.stage_us) record.stage_us.add(us);
      record.step_us.add(result.step_us);
      const auto bucket =
          std::lower_bound(config.buckets.begin(), config.buckets.end(), result.bucket);
      if (bucket != config.buckets.end() && *bucket == result.bucket) {
        ++record.steps_per_bucket[static_cast<std::size_t>(bucket - config.buckets.begin())];
      }
      progress.update(step + 1, plan.steps, record.tokens, seconds_since(start), result.bucket);
    }
  } catch (...) {
    progress.clear();  // so the error starts on a clean line
    throw;
  }
  progress.clear();
  record.seconds = seconds_since(start);
  record.memory_at_end = sample_memory(backend, plan.steps);
  if (plan.soak) print_memory_line(record.memory_at_end, plan.steps, record.seconds);
  return record;
}

int run(const Options& options) {
  // The config. --check stops after it.
  const std::filesystem::path config_path = resolve_config_path(options.config);
  const moe_dispatch::DispatchConfig config = moe_dispatch::load_config(config_path);
  if (options.check_only) {
    std::fputs(moe_dispatch::to_yaml(config).c_str(), stdout);
    return 0;
  }

  // The backend: the GPU when asked for or (auto) when one is present, else the host.
  const int devices = options.backend == BackendChoice::kHost ? 0 : cuda_device_count();
  const bool use_gpu = options.backend == BackendChoice::kGpu ||
                       (options.backend == BackendChoice::kAuto && devices > 0);
  if (use_gpu && devices == 0) {
    std::printf("moe-dispatch serving_loop: --backend gpu, but no CUDA device found\n");
    return kExitNoDevice;
  }
  if (use_gpu && config.device >= devices) {
    std::fprintf(stderr, "%s: device %d is configured, but %d CUDA device(s) are visible\n",
                 config_path.string().c_str(), config.device, devices);
    return kExitBadInput;
  }
  RunSummary summary;
  summary.backend = use_gpu ? "gpu" : "host";
  if (use_gpu) {
    summary.device = cuda_device_name(config.device);
    std::printf("moe-dispatch serving_loop: GPU backend on %s (device %d)\n",
                summary.device.c_str(), config.device);
  } else {
    summary.device =
        options.backend == BackendChoice::kHost ? "--backend host" : "no CUDA device found";
    std::printf("moe-dispatch serving_loop: host backend (%s)\n", summary.device.c_str());
  }

  TokenCounts token_counts(options, config);
  int default_steps = use_gpu ? 2000 : 200;
  if (options.soak) {
    default_steps = use_gpu ? kSoakStepsGpu : kSoakStepsHost;
  } else if (token_counts.recorded()) {
    default_steps = token_counts.recorded_steps();
  }
  const int steps = options.steps.value_or(default_steps);
  if (options.soak && steps <= kSteadyStateStep) {
    throw UsageError("--soak compares memory from step " + std::to_string(kSteadyStateStep) +
                     " on: --steps must be larger");
  }
  summary.config_path = config_path.string();
  summary.config_shape = describe_shape(config);
  summary.trace = token_counts.description();
  std::printf("config: %s (%s)\n", summary.config_path.c_str(), summary.config_shape.c_str());
  std::printf("trace:  %s\n", summary.trace.c_str());
  std::fflush(stdout);

  // One DispatchStage per layer: construction allocates and captures everything.
  const auto setup_start = Clock::now();
  const LoopSettings settings{options.layers, options.seed};
  std::unique_ptr<Backend> backend =
      use_gpu ? make_gpu_backend(config, settings) : make_host_backend(config, settings);
  backend->start();
  const MemorySample memory_at_warm_up = sample_memory(*backend, 0);
  std::printf("setup:  %d layers ready in %.2f s; running %d steps%s\n", options.layers,
              seconds_since(setup_start), steps, options.soak ? " (soak)" : "");
  std::fflush(stdout);

  const LoopPlan plan{steps, options.check_every, options.soak};
  const LoopRecord record = run_loop(*backend, token_counts, config, plan, memory_at_warm_up);

  summary.layers = options.layers;
  summary.steps = steps;
  summary.idle_steps = record.idle_steps;
  summary.tokens = record.tokens;
  summary.seconds = record.seconds;
  summary.check_every = options.check_every;
  summary.checks_passed = record.checks_passed;
  summary.stage_timer = backend->stage_timer();
  summary.stage_us = record.stage_us.percentiles();
  summary.step_us = record.step_us.percentiles();
  const std::vector<BucketUse> use = backend->bucket_use();
  for (std::size_t i = 0; i < config.buckets.size(); ++i) {
    BucketRow row{config.buckets[i], record.steps_per_bucket[i], std::nullopt};
    const auto stage_use = std::find_if(
        use.begin(), use.end(), [&](const BucketUse& u) { return u.tokens == config.buckets[i]; });
    if (stage_use != use.end()) row.stage_use = *stage_use;
    summary.buckets.push_back(row);
  }
  summary.memory = backend->device_memory();
  summary.memory_at_warm_up = memory_at_warm_up;
  summary.memory_at_baseline = record.memory_at_baseline;
  summary.memory_at_end = record.memory_at_end;
  if (options.soak) summary.soak = judge_soak(record.memory_at_baseline, record.memory_at_end);
  print_summary(stdout, summary);
  if (options.json) write_json(*options.json, summary);

  if (summary.memory && summary.memory->allocations_in_loop != 0) {
    std::fprintf(stderr,
                 "serving_loop: the stages allocated device memory %lld times after construction\n",
                 static_cast<long long>(summary.memory->allocations_in_loop));
    return kExitFailure;
  }
  if (summary.soak && !summary.soak->passed) {
    std::fprintf(stderr, "serving_loop: soak failed: %s (rule: %s)\n", summary.soak->detail.c_str(),
                 summary.soak->rule.c_str());
    return kExitFailure;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse_options(argc, argv);
    if (options.help) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    return run(options);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "serving_loop: %s\n\n%s", e.what(), kUsage);
    return kExitBadInput;
  } catch (const moe_dispatch::ConfigError& e) {
    std::fprintf(stderr, "%s\n", e.what());  // "FILE:LINE:COL: message"
    return kExitBadInput;
  } catch (const TraceError& e) {
    std::fprintf(stderr, "%s\n", e.what());  // "FILE:LINE: message"
    return kExitBadInput;
  } catch (const CheckFailure& e) {
    std::fprintf(stderr, "serving_loop: %s\n", e.what());
    return kExitFailure;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "serving_loop: error: %s\n", e.what());
    return kExitFailure;
  }
}
