// DispatchConfig: the model shape, token-count buckets and runtime options of one DispatchStage.
// Plain data. load_config() fills it from YAML; validate() checks one built in code. Both throw
// ConfigError; see configs/default.yaml for every key with its meaning.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moe_dispatch {

// Limits of the implementation (kernels use 32-bit indices and shared-memory counters).
inline constexpr int kMaxExperts = 4096;
inline constexpr int kMaxTopK = 32;
inline constexpr int kMaxBlockSize = 1024;
// Largest numel (= tokens * top_k) and largest sorted_token_ids capacity the kernels support.
inline constexpr std::int64_t kMaxNumel = std::int64_t{1} << 24;

// How expert_map applies (DESIGN.md §1).
enum class ExpertMapMode {
  kDrop,      // newest vLLM: map ids to local experts before counting; unmapped slots are dropped
  kMapAfter,  // legacy: align over global ids, then expert_ids = expert_map[global]
};

// Global expert -> local expert (or -1 when the expert lives on another rank). Length num_experts;
// local ids are unique and in [0, num_experts).
struct ExpertMap {
  std::vector<std::int32_t> global_to_local;
  ExpertMapMode mode = ExpertMapMode::kDrop;
};

// Contiguous split of num_experts over world_size ranks: the first (num_experts % world_size) ranks
// own one expert more. Throws ConfigError when rank/world_size are out of range.
ExpertMap split_experts(int num_experts, int rank, int world_size,
                        ExpertMapMode mode = ExpertMapMode::kDrop);

// What run() does with a count above the largest bucket.
enum class OverflowPolicy {
  kError,  // throw ArgumentError naming the count and the capacity
  kEager,  // launch the kernels without a graph into overflow buffers grown to the high-water mark
};

// When bucket graphs are captured.
enum class CaptureMode {
  kEager,  // all at construction (default: nothing is captured on the serving path)
  kLazy,   // on a bucket's first use (faster start; the first run of each bucket pays the capture)
};

struct DispatchConfig {
  int num_experts = 0;       // E, 1..kMaxExperts
  int top_k = 0;             // 1..min(kMaxTopK, E)
  int block_size = 0;        // B, GEMM tile rows, 1..kMaxBlockSize
  std::vector<int> buckets;  // ascending, unique, positive token counts; the last is the capacity
  bool pad_sorted_ids = false;  // round the sorted_token_ids capacity up to a multiple of B
  std::optional<ExpertMap> expert_map;
  OverflowPolicy overflow = OverflowPolicy::kError;
  CaptureMode capture = CaptureMode::kEager;
  int device = 0;   // CUDA device ordinal the stage lives on
  bool log = true;  // one line on stderr for each fallback or overflow event

  int max_tokens() const { return buckets.empty() ? 0 : buckets.back(); }
};

// Throws ConfigError ("config: <key>: ...") when cfg breaks a rule.
void validate(const DispatchConfig& cfg);

// Parses YAML text; `source_name` is used as FILE in error messages. Validates.
DispatchConfig parse_config(std::string_view yaml_text, const std::string& source_name);

// Reads and parses a YAML file. Errors begin "FILE:LINE:COL: ".
DispatchConfig load_config(const std::filesystem::path& path);

// The resolved configuration as YAML (every key, defaults included); parse_config() reads it back.
std::string to_yaml(const DispatchConfig& cfg);

std::string_view to_string(ExpertMapMode mode);
std::string_view to_string(OverflowPolicy policy);
std::string_view to_string(CaptureMode mode);

}  // namespace moe_dispatch
