#include "trace.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <string>
#include <string_view>

namespace serving_loop {
namespace {

int clipped_length(double value, int lo, int hi) {
  return static_cast<int>(
      std::lround(std::clamp(value, static_cast<double>(lo), static_cast<double>(hi))));
}

std::string_view trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t\r");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t\r");
  return text.substr(first, last - first + 1);
}

}  // namespace

ServingTrace::ServingTrace(const TraceOptions& options)
    : options_(options),
      rng_(options.seed),
      arrivals_(options.arrival_rate),
      prompt_length_(std::log(500.0), 1.0),
      output_length_(std::log(200.0), 0.8) {}

ServingTrace::Request ServingTrace::draw_request() {
  Request request;
  request.prompt_left = clipped_length(prompt_length_(rng_), 1, 16384);
  request.output_left = clipped_length(output_length_(rng_), 1, 4096);
  return request;
}

StepBatch ServingTrace::next_step() {
  for (int n = arrivals_(rng_); n > 0; --n) waiting_.push_back(draw_request());

  StepBatch batch;
  int budget = options_.token_budget;
  // Decode first: one token for every sequence past its prompt (latency-critical).
  for (Request& r : running_) {
    r.scheduled = 0;
    if (r.prompt_left == 0 && budget > 0) {
      r.scheduled = 1;
      --budget;
      ++batch.decode_tokens;
    }
  }
  // Then continue the prompts already being prefilled, in admission order.
  for (Request& r : running_) {
    if (r.prompt_left > 0 && budget > 0) {
      r.scheduled = std::min(r.prompt_left, budget);
      budget -= r.scheduled;
      batch.prefill_tokens += r.scheduled;
    }
  }
  // Then admit waiting requests with the budget left.
  std::size_t admitted = 0;
  while (budget > 0 && admitted < waiting_.size() &&
         static_cast<int>(running_.size()) < options_.max_running) {
    Request r = waiting_[admitted++];
    r.scheduled = std::min(r.prompt_left, budget);
    budget -= r.scheduled;
    batch.prefill_tokens += r.scheduled;
    running_.push_back(r);
  }
  waiting_.erase(waiting_.begin(), waiting_.begin() + static_cast<std::ptrdiff_t>(admitted));
  batch.running = static_cast<int>(running_.size());
  batch.waiting = static_cast<int>(waiting_.size());

  // Run the step: decode emits a token; the last prompt chunk emits the first output token.
  for (Request& r : running_) {
    if (r.scheduled == 0) continue;
    if (r.prompt_left > 0) {
      r.prompt_left -= r.scheduled;
      if (r.prompt_left == 0) --r.output_left;
    } else {
      --r.output_left;
    }
  }
  std::erase_if(running_, [](const Request& r) { return r.output_left <= 0; });
  return batch;
}

std::vector<int> load_trace(const std::filesystem::path& path, int max_tokens) {
  std::ifstream file(path);
  if (!file) throw TraceError(path.string() + ": cannot open the trace file");
  std::vector<int> counts;
  std::string line;
  for (int line_number = 1; std::getline(file, line); ++line_number) {
    const std::string_view text = trim(line);
    if (text.empty() || text.front() == '#') continue;
    const std::string where = path.string() + ":" + std::to_string(line_number) + ": ";
    long long count = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), count);
    if (error != std::errc{} || end != text.data() + text.size() || count < 0) {
      throw TraceError(where + "expected a non-negative integer token count, got '" +
                       std::string(text) + "'");
    }
    if (count > max_tokens) {
      throw TraceError(where + "token count " + std::to_string(count) +
                       " exceeds the largest bucket of the config (" + std::to_string(max_tokens) +
                       ")");
    }
    counts.push_back(static_cast<int>(count));
  }
  if (counts.empty()) throw TraceError(path.string() + ": the trace holds no token counts");
  return counts;
}

}  // namespace serving_loop
