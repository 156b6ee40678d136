// What the serving loop shows: the live status line while it runs, and the summary at the end (as
// a table on stdout and, with --json, as a JSON file).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "backend.hpp"
#include "latency_histogram.hpp"

namespace serving_loop {

// The process's memory at one point of the run.
struct MemorySample {
  int step = 0;                                   // steps run before the sample
  std::optional<std::int64_t> host_rss_bytes;     // resident set size; nullopt if unreadable
  std::optional<std::int64_t> free_device_bytes;  // cudaMemGetInfo; nullopt on the host backend
};

// The soak's verdict on the memory between the baseline sample and the end (serving_loop.cpp).
struct SoakVerdict {
  bool passed = false;
  std::string rule;    // what was required
  std::string detail;  // what was found
};

struct BucketRow {
  int tokens = 0;
  std::int64_t steps = 0;              // steps served by this bucket
  std::optional<BucketUse> stage_use;  // graph replays summed over layers (GPU only)
};

struct RunSummary {
  std::string backend;  // "gpu" or "host"
  std::string device;   // the GPU's name, or why the host backend runs
  std::string config_path;
  std::string config_shape;  // e.g. "E 64, top_k 2, block 128, 15 buckets up to 16384"
  std::string trace;         // where the token counts came from
  int layers = 0;
  int steps = 0;
  int idle_steps = 0;  // steps with no tokens: nothing runs
  std::int64_t tokens = 0;
  double seconds = 0.0;  // wall time of the loop
  int check_every = 0;
  std::int64_t checks_passed = 0;  // steps checked (every layer of each)
  std::string stage_timer;
  Percentiles stage_us;
  Percentiles step_us;
  std::vector<BucketRow> buckets;
  std::optional<DeviceMemory> memory;  // GPU only
  // Memory after warm-up, at the baseline (step 1000, or after warm-up for shorter runs) and at
  // the end: flat from the baseline on is what a soak requires.
  MemorySample memory_at_warm_up;
  MemorySample memory_at_baseline;
  MemorySample memory_at_end;
  std::optional<SoakVerdict> soak;  // only with --soak
};

void print_summary(std::FILE* out, const RunSummary& summary);
// Throws std::runtime_error when the file cannot be written.
void write_json(const std::filesystem::path& path, const RunSummary& summary);
// "12.34 MiB", or "n/a" for nullopt.
std::string bytes_text(std::optional<std::int64_t> bytes);

// A live status line on stderr while the loop runs, only when stderr is a terminal: rewritten in
// place with '\r' at most once per `interval`.
class ProgressLine {
 public:
  explicit ProgressLine(std::chrono::milliseconds interval);
  void update(int step, int steps, std::int64_t tokens, double seconds, int bucket);
  void clear();

 private:
  std::chrono::milliseconds interval_;
  bool enabled_ = false;
  bool shown_ = false;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace serving_loop
