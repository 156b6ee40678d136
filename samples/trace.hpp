// Where the per-step token counts come from: a generated serving trace (requests arriving,
// prefilled in chunks and decoded under a token budget, as a continuous-batching server schedules
// them) or a recorded list of counts replayed from a file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <vector>

namespace serving_loop {

struct TraceOptions {
  std::uint64_t seed = 1;
  double arrival_rate = 0.5;  // mean requests arriving per step (Poisson)
  int token_budget = 2048;    // tokens per step, like vLLM's max_num_batched_tokens
  int max_running = 256;      // sequences running at once, like vLLM's max_num_seqs
};

// The tokens one step batches.
struct StepBatch {
  int decode_tokens = 0;   // one per running sequence past its prompt
  int prefill_tokens = 0;  // prompt chunks
  int running = 0;         // sequences running after the step's admissions
  int waiting = 0;         // requests queued for admission
  int tokens() const { return decode_tokens + prefill_tokens; }
};

// Requests arrive as a Poisson process; each has a log-normal prompt length (median 500 tokens,
// clipped to [1, 16384]) and output length (median 200 tokens, clipped to [1, 4096]). Each step
// schedules, within the token budget: first one decode token for every running sequence past its
// prompt, then the next prompt chunk of sequences still prefilling, then admits waiting requests
// (first come, first served) while fewer than max_running sequences run. A sequence emits its first
// output token on the step its last prompt chunk runs and finishes after its output length.
class ServingTrace {
 public:
  explicit ServingTrace(const TraceOptions& options);
  StepBatch next_step();

 private:
  struct Request {
    int prompt_left = 0;  // prompt tokens not yet prefilled
    int output_left = 0;  // output tokens still to generate
    int scheduled = 0;    // tokens scheduled in the current step
  };
  Request draw_request();

  TraceOptions options_;
  std::mt19937_64 rng_;
  std::poisson_distribution<int> arrivals_;
  std::lognormal_distribution<double> prompt_length_;
  std::lognormal_distribution<double> output_length_;
  std::vector<Request> waiting_;  // FIFO: admitted from the front
  std::vector<Request> running_;
};

// A recorded trace file has a problem; the message begins "FILE:LINE: " (or "FILE: ").
class TraceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Reads a recorded trace: one step's token count per line (a CSV of one column), each a
// non-negative integer no larger than `max_tokens`. Blank lines and lines starting with '#' are
// skipped. Throws TraceError.
std::vector<int> load_trace(const std::filesystem::path& path, int max_tokens);

}  // namespace serving_loop
