// DispatchConfig: the model shape, token-count buckets and runtime options of one DispatchStage.
// Plain data. load_config() fills it from YAML; validate() checks one built in code. Both throw
// ConfigError; see configs/default.yaml for every key with its meaning.
#pragma once

#include <cstddef>
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
// Expert parallelism: most ranks (a token's destinations are a 32-bit rank mask), and the largest
// hidden row in elements.
inline constexpr int kMaxWorldSize = 32;
inline constexpr int kMaxHiddenSize = 1 << 20;
// Most tokens a bucket may have and still hold one executable graph per count
// (DispatchConfig::fixed_count_graphs_up_to): up to that many graphs per bucket.
inline constexpr int kMaxFixedCountTokens = 4096;

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

// Element type of hidden states and expert outputs (moved between ranks by expert parallelism).
enum class HiddenType {
  kFloat32,
  kBFloat16,
};

std::size_t element_bytes(HiddenType type);

// Expert parallelism (docs/EXPERT_PARALLEL.md): world_size ranks, one GPU each, share the experts.
// Plain data: the core library validates it and reads/writes it as YAML; the NCCL library
// (moe_dispatch::ep, expert_parallel_config()) runs it. buckets then count tokens per rank.
struct ExpertParallelSection {
  int world_size = 1;  // 1..kMaxWorldSize; at most num_experts when the placement is contiguous
  int rank = 0;        // this process's rank, 0..world_size-1
  // Owner rank of each global expert: num_experts entries in [0, world_size). Empty: contiguous,
  // as split_experts() (the first num_experts % world_size ranks own one expert more).
  std::vector<std::int32_t> placement;
  // Elements per hidden row: positive, at most kMaxHiddenSize, and rows a multiple of 16 bytes
  // (they are copied as 16-byte vectors). No default: it is the model's.
  int hidden_size = 0;
  HiddenType hidden_type = HiddenType::kBFloat16;
};

struct DispatchConfig {
  int num_experts = 0;       // E, 1..kMaxExperts
  int top_k = 0;             // 1..min(kMaxTopK, E)
  int block_size = 0;        // B, GEMM tile rows, 1..kMaxBlockSize
  std::vector<int> buckets;  // ascending, unique, positive token counts; the last is the capacity
  bool pad_sorted_ids = false;          // round the sorted_token_ids capacity up to a multiple of B
  std::optional<ExpertMap> expert_map;  // not with expert_parallel (its placement decides)
  OverflowPolicy overflow = OverflowPolicy::kError;
  CaptureMode capture = CaptureMode::kEager;
  // Buckets of at most this many tokens hold one executable graph per count they take, so run()
  // with a changing count updates no kernel parameter; 0..kMaxFixedCountTokens, 0: none (for
  // callers that only use run_device_count(), which never needs them).
  int fixed_count_graphs_up_to = 64;
  int device = 0;   // CUDA device ordinal the stage lives on
  bool log = true;  // one line on stderr for each fallback or overflow event
  // Expert parallelism over NCCL; requires overflow kError and no expert_map. DispatchStage does
  // not read it: ExpertParallelDispatch (moe_dispatch::ep) does.
  std::optional<ExpertParallelSection> expert_parallel;

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
std::string_view to_string(HiddenType type);  // "float32", "bf16"

}  // namespace moe_dispatch
