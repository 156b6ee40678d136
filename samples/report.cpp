#include "report.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <stdexcept>

namespace serving_loop {
namespace {

double per_second(double count, double seconds) { return seconds > 0.0 ? count / seconds : 0.0; }

std::string baseline_label(const RunSummary& s) {
  return s.memory_at_baseline.step == s.memory_at_warm_up.step
             ? "after warm-up"
             : "at step " + std::to_string(s.memory_at_baseline.step);
}

// "A / B (+D bytes)": one quantity at the baseline and at the end.
std::string baseline_to_end(std::optional<std::int64_t> baseline, std::optional<std::int64_t> end) {
  std::string text = bytes_text(baseline) + " / " + bytes_text(end);
  if (!baseline || !end) return text;
  char delta[40];
  std::snprintf(delta, sizeof delta, " (%+lld bytes)", static_cast<long long>(*end - *baseline));
  return text + delta;
}

std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\u%04x", static_cast<unsigned>(c));
      out += escape;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string json_number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3f", std::isfinite(value) ? value : 0.0);
  return text;
}

std::string json_percentiles(const Percentiles& p) {
  return "{\"p50\": " + json_number(p.p50) + ", \"p99\": " + json_number(p.p99) +
         ", \"max\": " + json_number(p.max) + "}";
}

std::string json_bytes(std::optional<std::int64_t> bytes) {
  return bytes ? std::to_string(*bytes) : "null";
}

// {"warm_up": A, "baseline": B, "end": C} of one field of the memory samples.
template <typename Field>
std::string json_memory(const RunSummary& s, Field field) {
  return "{\"warm_up\": " + json_bytes(field(s.memory_at_warm_up)) +
         ", \"baseline\": " + json_bytes(field(s.memory_at_baseline)) +
         ", \"end\": " + json_bytes(field(s.memory_at_end)) + "}";
}

}  // namespace

std::string bytes_text(std::optional<std::int64_t> bytes) {
  if (!bytes) return "n/a";
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  auto value = static_cast<double>(*bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 3) {
    value /= 1024.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.2f %s", value, units[unit]);
  return text;
}

void print_summary(std::FILE* out, const RunSummary& s) {
  const int busy_steps = s.steps - s.idle_steps;
  std::fprintf(out, "\nsummary\n");
  std::fprintf(out, "  backend             %s (%s)\n", s.backend.c_str(), s.device.c_str());
  std::fprintf(out, "  config              %s (%s)\n", s.config_path.c_str(),
               s.config_shape.c_str());
  std::fprintf(out, "  trace               %s\n", s.trace.c_str());
  std::fprintf(out, "  layers              %d (%s)\n", s.layers,
               s.memory ? "one DispatchStage each" : "align_reference for each");
  std::fprintf(out, "  steps               %d (%d idle: no tokens, nothing runs) in %.2f s\n",
               s.steps, s.idle_steps, s.seconds);
  std::fprintf(out, "  tokens              %lld (%.1f per busy step, %.0f tokens/s)\n",
               static_cast<long long>(s.tokens),
               busy_steps > 0 ? static_cast<double>(s.tokens) / busy_steps : 0.0,
               per_second(static_cast<double>(s.tokens), s.seconds));
  if (s.check_every > 0) {
    const std::string cadence =
        s.check_every == 1 ? "every step" : "every " + std::to_string(s.check_every) + "th step";
    std::fprintf(out,
                 "  checks passed       %lld (%s, all layers; idle steps have nothing to check)\n",
                 static_cast<long long>(s.checks_passed), cadence.c_str());
  } else {
    std::fprintf(out, "  checks passed       0 (checks off)\n");
  }
  std::fprintf(out, "  stage time          p50 %8.2f us  p99 %8.2f us  max %8.2f us\n",
               s.stage_us.p50, s.stage_us.p99, s.stage_us.max);
  std::fprintf(out, "                      (%s)\n", s.stage_timer.c_str());
  std::fprintf(out, "  step time           p50 %8.2f us  p99 %8.2f us  max %8.2f us\n",
               s.step_us.p50, s.step_us.p99, s.step_us.max);
  std::fprintf(out,
               "                      (host wall clock of each busy step, all layers, check "
               "work excluded)\n");
  if (s.memory) {
    const DeviceMemory& m = *s.memory;
    std::fprintf(out, "  device bytes held   %lld (%s, %d stages)\n",
                 static_cast<long long>(m.stage_bytes), bytes_text(m.stage_bytes).c_str(),
                 s.layers);
    std::fprintf(out,
                 "  allocations         %lld after warm-up (stats().device_allocations since "
                 "construction)\n",
                 static_cast<long long>(m.allocations_in_loop));
  }
  // "at step 1000 / at end: A / B (+D bytes); after warm-up W" (the last part only when the
  // baseline is not the warm-up itself).
  const std::string label = baseline_label(s);
  const bool warm_up_apart = s.memory_at_baseline.step != s.memory_at_warm_up.step;
  auto print_memory = [&](const char* name, auto field) {
    std::string text = label + " / at end: " +
                       baseline_to_end(field(s.memory_at_baseline), field(s.memory_at_end));
    if (warm_up_apart) text += "; after warm-up " + bytes_text(field(s.memory_at_warm_up));
    std::fprintf(out, "  %-19s %s\n", name, text.c_str());
  };
  print_memory("host RSS", [](const MemorySample& m) { return m.host_rss_bytes; });
  if (s.memory_at_end.free_device_bytes) {
    print_memory("free device memory", [](const MemorySample& m) { return m.free_device_bytes; });
  } else {
    std::fprintf(out, "  free device memory  n/a (host backend)\n");
  }
  if (s.soak) {
    std::fprintf(out, "  soak                %s: %s\n", s.soak->passed ? "passed" : "FAILED",
                 s.soak->detail.c_str());
    std::fprintf(out, "                      (rule: %s)\n", s.soak->rule.c_str());
  }

  const bool stage_use = !s.buckets.empty() && s.buckets.front().stage_use.has_value();
  std::fprintf(out, "\n  %8s %8s %14s %11s %14s\n", "bucket", "steps", "graph replays",
               "eager runs", "count updates");
  for (const BucketRow& row : s.buckets) {
    if (row.stage_use) {
      std::fprintf(out, "  %8d %8lld %14lld %11lld %14lld\n", row.tokens,
                   static_cast<long long>(row.steps),
                   static_cast<long long>(row.stage_use->replays),
                   static_cast<long long>(row.stage_use->eager_runs),
                   static_cast<long long>(row.stage_use->count_updates));
    } else {
      std::fprintf(out, "  %8d %8lld %14s %11s %14s\n", row.tokens,
                   static_cast<long long>(row.steps), "-", "-", "-");
    }
  }
  if (stage_use) {
    std::fprintf(
        out,
        "  (graph replays, eager runs and count updates: DispatchStage::stats(), summed "
        "over the layers; buckets up to fixed_count_graphs_up_to tokens, 64 by default, launch a "
        "graph per count)\n");
  }
}

void write_json(const std::filesystem::path& path, const RunSummary& s) {
  std::ofstream file(path);
  if (!file) throw std::runtime_error(path.string() + ": cannot open for writing");
  file << "{\n";
  file << "  \"backend\": " << json_string(s.backend) << ",\n";
  file << "  \"device\": " << json_string(s.device) << ",\n";
  file << "  \"config\": " << json_string(s.config_path) << ",\n";
  file << "  \"config_shape\": " << json_string(s.config_shape) << ",\n";
  file << "  \"trace\": " << json_string(s.trace) << ",\n";
  file << "  \"layers\": " << s.layers << ",\n";
  file << "  \"steps\": " << s.steps << ",\n";
  file << "  \"idle_steps\": " << s.idle_steps << ",\n";
  file << "  \"tokens\": " << s.tokens << ",\n";
  file << "  \"seconds\": " << json_number(s.seconds) << ",\n";
  file << "  \"check_every\": " << s.check_every << ",\n";
  file << "  \"checks_passed\": " << s.checks_passed << ",\n";
  file << "  \"stage_time_us\": " << json_percentiles(s.stage_us) << ",\n";
  file << "  \"stage_timer\": " << json_string(s.stage_timer) << ",\n";
  file << "  \"step_time_us\": " << json_percentiles(s.step_us) << ",\n";
  if (s.memory) {
    file << "  \"device_bytes\": " << s.memory->stage_bytes << ",\n";
    file << "  \"allocations_after_warmup\": " << s.memory->allocations_in_loop << ",\n";
    file << "  \"free_bytes_before\": " << json_bytes(s.memory_at_warm_up.free_device_bytes)
         << ",\n";
    file << "  \"free_bytes_after\": " << json_bytes(s.memory_at_end.free_device_bytes) << ",\n";
  }
  file << "  \"memory_baseline_step\": " << s.memory_at_baseline.step << ",\n";
  file << "  \"host_rss_bytes\": "
       << json_memory(s, [](const MemorySample& m) { return m.host_rss_bytes; }) << ",\n";
  file << "  \"free_device_bytes\": "
       << (s.memory_at_end.free_device_bytes
               ? json_memory(s, [](const MemorySample& m) { return m.free_device_bytes; })
               : "null")
       << ",\n";
  if (s.soak) {
    file << "  \"soak\": {\"passed\": " << (s.soak->passed ? "true" : "false")
         << ", \"rule\": " << json_string(s.soak->rule)
         << ", \"detail\": " << json_string(s.soak->detail) << "},\n";
  }
  file << "  \"buckets\": [";
  for (std::size_t i = 0; i < s.buckets.size(); ++i) {
    const BucketRow& row = s.buckets[i];
    file << (i == 0 ? "\n" : ",\n") << "    {\"tokens\": " << row.tokens
         << ", \"steps\": " << row.steps;
    if (row.stage_use) {
      file << ", \"replays\": " << row.stage_use->replays
           << ", \"eager_runs\": " << row.stage_use->eager_runs
           << ", \"count_updates\": " << row.stage_use->count_updates;
    }
    file << "}";
  }
  file << "\n  ]\n}\n";
  if (!file) throw std::runtime_error(path.string() + ": write failed");
}

ProgressLine::ProgressLine(std::chrono::milliseconds interval)
    : interval_(interval), enabled_(isatty(fileno(stderr)) == 1) {}

void ProgressLine::update(int step, int steps, std::int64_t tokens, double seconds, int bucket) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (shown_ && now - last_ < interval_) return;
  last_ = now;
  shown_ = true;
  std::fprintf(stderr, "\rstep %d/%d  %.0f tokens/s  bucket %-6d", step, steps,
               per_second(static_cast<double>(tokens), seconds), bucket);
  std::fflush(stderr);
}

void ProgressLine::clear() {
  if (!shown_) return;
  std::fprintf(stderr, "\r%60s\r", "");
  std::fflush(stderr);
  shown_ = false;
}

}  // namespace serving_loop
