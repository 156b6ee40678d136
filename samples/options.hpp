// Command line of serving_loop (see kUsage, and README.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>

namespace serving_loop {

inline constexpr const char* kUsage = R"(usage: serving_loop [options]

Runs the MoE dispatch stage inside a realistic serving loop and checks it against the host
reference. Exit codes: 0 success, 1 check failure or runtime error, 2 bad config / trace / usage,
77 --backend gpu without a CUDA device.

  --config FILE        YAML config (default configs/default.yaml; a relative path that does not
                       exist is also looked up under the source directory)
  --check              validate the config, print the resolved configuration and exit
  --backend B          auto (default: gpu when a CUDA device is present), gpu or host
  --steps N            engine steps to run (default 2000 on the GPU, 200 on the host; with
                       --trace, the trace's length, wrapping around when N is longer)
  --seed S             seed of the generated trace and of the router (default 1)
  --layers L           MoE layers, one DispatchStage each (default 4)
  --check-every N      check the whole pipeline every N steps (default 100; 0: never)
  --trace FILE         replay per-step token counts (one non-negative integer per line)
  --rate R             generated trace: mean requests arriving per step (default 0.5)
  --token-budget N     generated trace: tokens per step (default min(2048, largest bucket))
  --max-seqs N         generated trace: sequences running at once (default 256)
  --json FILE          also write the summary as JSON
  --soak               a long run that watches memory: defaults become --steps 1000000 on the GPU
                       (100000 on the host), --layers 1, --check-every 1000, a status line at most
                       once a second and a memory line every tenth of the run; fails (exit 1) when
                       free device memory decreased at all, or host RSS grew by more than 1 MiB,
                       between step 1000 and the end. Flags given explicitly win.
  --help               this text
)";

enum class BackendChoice { kAuto, kGpu, kHost };

struct Options {
  std::filesystem::path config = "configs/default.yaml";
  bool check_only = false;
  BackendChoice backend = BackendChoice::kAuto;
  std::optional<int> steps;
  std::uint32_t seed = 1;
  int layers = 4;
  int check_every = 100;
  std::optional<std::filesystem::path> trace;
  double arrival_rate = 0.5;
  std::optional<int> token_budget;
  int max_seqs = 256;
  std::optional<std::filesystem::path> json;
  bool soak = false;
  bool help = false;
};

// A bad command line; the message says which option and what it accepts.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The defaults --soak changes (the steps depend on the backend: serving_loop.cpp).
inline constexpr int kSoakLayers = 1;
inline constexpr int kSoakCheckEvery = 1000;

// Accepts "--name value" and "--name=value". Throws UsageError.
Options parse_options(int argc, char** argv);

}  // namespace serving_loop
