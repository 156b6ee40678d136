// The rules a DispatchConfig must follow, written once: validate() checks configs built in code and
// the YAML loader (config_yaml.cpp) runs the same function, mapping the key path each message names
// back to the node it came from.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "moe_dispatch/align.hpp"
#include "moe_dispatch/config.hpp"
#include "moe_dispatch/errors.hpp"

namespace moe_dispatch {
namespace {

// Every message is "config: <key path>: <what is wrong>; allowed: <what is accepted>". The key path
// names the field ("top_k", "expert_map.rank", "buckets[3]" for a list entry); it is also the YAML
// key path, except that YAML spells expert_map.global_to_local as expert_map.experts. The loader
// relies on this shape to point at the offending node.
[[noreturn]] void fail(std::string_view key, std::string_view problem, std::string_view allowed) {
  std::string message = "config: ";
  message.append(key).append(": ").append(problem).append("; allowed: ").append(allowed);
  throw ConfigError(message);
}

std::string entry_key(std::string_view key, std::size_t index) {
  return std::string(key) + "[" + std::to_string(index) + "]";
}

std::string range_text(std::int64_t lo, std::int64_t hi) {
  return std::to_string(lo) + ".." + std::to_string(hi);
}

void check_range(std::string_view key, std::int64_t value, std::int64_t lo, std::int64_t hi,
                 std::string_view why = {}) {
  if (value >= lo && value <= hi) return;
  std::string allowed = range_text(lo, hi);
  if (!why.empty()) allowed.append(" (").append(why).append(")");
  fail(key, std::to_string(value) + " is out of range", allowed);
}

// An enum field holds one of its enumerators (a config built in code may cast any int into it).
template <typename Enum>
void check_enum(std::string_view key, Enum value, std::initializer_list<Enum> known) {
  if (std::find(known.begin(), known.end(), value) != known.end()) return;
  std::string allowed;
  for (const Enum e : known) allowed.append(allowed.empty() ? "" : " or ").append(to_string(e));
  fail(key, std::to_string(static_cast<int>(value)) + " is not a known value", allowed);
}

void check_num_experts(int num_experts) { check_range("num_experts", num_experts, 1, kMaxExperts); }

void check_top_k(const DispatchConfig& cfg) {
  const std::string why = "at most num_experts = " + std::to_string(cfg.num_experts) +
                          " and at most " + std::to_string(kMaxTopK);
  check_range("top_k", cfg.top_k, 1, std::min(kMaxTopK, cfg.num_experts), why);
}

void check_buckets(const std::vector<int>& buckets) {
  constexpr std::string_view kAllowed =
      "a non-empty list of ascending, unique, positive token counts";
  if (buckets.empty()) fail("buckets", "the list is empty", kAllowed);
  for (std::size_t i = 0; i < buckets.size(); ++i) {
    if (buckets[i] <= 0) {
      fail(entry_key("buckets", i), std::to_string(buckets[i]) + " is not positive", kAllowed);
    }
    if (i > 0 && buckets[i] <= buckets[i - 1]) {
      fail(entry_key("buckets", i),
           std::to_string(buckets[i]) + " does not exceed the bucket before it (" +
               std::to_string(buckets[i - 1]) + ")",
           kAllowed);
    }
  }
}

// The kernels index sorted_token_ids with 32-bit offsets bounded by kMaxNumel; the largest bucket
// sets its capacity (DESIGN.md §1): numel + E*(B-1), rounded up to a multiple of B when padded.
// The capacity is never below numel, so this bound covers numel as well. With expert parallelism
// buckets count tokens per rank and the stage that aligns is the local one, which may receive a
// row from every rank for each token: world_size * bucket rows.
void check_capacity(const DispatchConfig& cfg) {
  const std::int64_t top_k = cfg.top_k;
  const std::int64_t ranks = cfg.expert_parallel ? cfg.expert_parallel->world_size : 1;
  const std::int64_t largest = cfg.buckets.back();
  const std::int64_t numel = largest * ranks * top_k;
  const AlignShape align_shape = shape_of(cfg);
  const std::int64_t capacity = sorted_capacity(align_shape, numel);
  if (capacity <= kMaxNumel) return;
  const std::int64_t max_bucket =
      std::max<std::int64_t>(0, max_numel_within_limit(align_shape) / (top_k * ranks));
  std::string problem = "largest bucket " + std::to_string(largest);
  std::string shape = "num_experts, top_k, block_size and pad_sorted_ids";
  if (cfg.expert_parallel) {
    problem += " (" + std::to_string(largest * ranks) +
               " rows received, from expert_parallel.world_size = " + std::to_string(ranks) +
               " ranks)";
    shape = "num_experts, top_k, block_size, pad_sorted_ids and expert_parallel.world_size";
  }
  fail(entry_key("buckets", cfg.buckets.size() - 1),
       problem + " needs " + std::to_string(numel) + " slots and a sorted_token_ids capacity of " +
           std::to_string(capacity) + ", above the limit of " + std::to_string(kMaxNumel),
       "a largest bucket of at most " + std::to_string(max_bucket) + " for this " + shape);
}

void check_expert_map(const ExpertMap& map, int num_experts) {
  constexpr std::string_view kKey = "expert_map.global_to_local";
  const std::vector<std::int32_t>& local = map.global_to_local;
  if (local.size() != static_cast<std::size_t>(num_experts)) {
    fail(kKey, "has " + std::to_string(local.size()) + " entries",
         "exactly num_experts = " + std::to_string(num_experts) + " entries");
  }
  const std::string allowed =
      "-1 (expert on another rank) or a unique local id in " + range_text(0, num_experts - 1);
  std::vector<int> owner(local.size(), -1);  // local id -> the global expert that claimed it
  for (std::size_t global = 0; global < local.size(); ++global) {
    const std::int32_t id = local[global];
    if (id < -1 || id >= num_experts) {
      fail(entry_key(kKey, global), std::to_string(id) + " is out of range", allowed);
    }
    if (id == -1) continue;
    if (owner[id] != -1) {
      fail(entry_key(kKey, global),
           "local id " + std::to_string(id) + " is already used by global expert " +
               std::to_string(owner[id]),
           allowed);
    }
    owner[id] = static_cast<int>(global);
  }
}

// The rules of ExpertParallelDispatch, for configs from YAML and code alike (validate() of an
// ExpertParallelConfig comes here too).
void check_expert_parallel(const ExpertParallelSection& ep, int num_experts) {
  const bool contiguous = ep.placement.empty();
  check_range("expert_parallel.world_size", ep.world_size, 1,
              contiguous ? std::min(kMaxWorldSize, num_experts) : kMaxWorldSize,
              contiguous ? "at most num_experts = " + std::to_string(num_experts) +
                               " for the contiguous placement, and at most " +
                               std::to_string(kMaxWorldSize)
                         : std::string{});
  check_range("expert_parallel.rank", ep.rank, 0, ep.world_size - 1,
              "world_size = " + std::to_string(ep.world_size));
  check_enum("expert_parallel.hidden_type", ep.hidden_type,
             {HiddenType::kFloat32, HiddenType::kBFloat16});
  if (!contiguous) {
    constexpr std::string_view kKey = "expert_parallel.placement";
    if (ep.placement.size() != static_cast<std::size_t>(num_experts)) {
      fail(kKey, "has " + std::to_string(ep.placement.size()) + " entries",
           "contiguous, or exactly num_experts = " + std::to_string(num_experts) + " owner ranks");
    }
    for (std::size_t e = 0; e < ep.placement.size(); ++e) {
      check_range(entry_key(kKey, e), ep.placement[e], 0, ep.world_size - 1,
                  "the owner rank of global expert " + std::to_string(e));
    }
  }
  const auto multiple = static_cast<int>(16 / element_bytes(ep.hidden_type));
  if (ep.hidden_size <= 0 || ep.hidden_size > kMaxHiddenSize || ep.hidden_size % multiple != 0) {
    fail("expert_parallel.hidden_size",
         std::to_string(ep.hidden_size) + " is not allowed for hidden_type " +
             std::string(to_string(ep.hidden_type)),
         "a positive multiple of " + std::to_string(multiple) + " up to " +
             std::to_string(kMaxHiddenSize) + " (rows are copied as 16-byte vectors)");
  }
}

// What expert parallelism needs of the rest of the config.
void check_with_expert_parallel(const DispatchConfig& cfg) {
  if (cfg.expert_map) {
    fail("expert_map", "is given together with expert_parallel",
         "no expert_map with expert_parallel (its placement decides which experts are local)");
  }
  if (cfg.overflow != OverflowPolicy::kError) {
    fail("overflow", "is eager with expert_parallel",
         "error with expert_parallel (every rank of a step needs the same bucket; counts above the "
         "largest bucket have none)");
  }
}

}  // namespace

void validate(const DispatchConfig& cfg) {
  check_num_experts(cfg.num_experts);
  check_top_k(cfg);
  check_range("block_size", cfg.block_size, 1, kMaxBlockSize);
  check_buckets(cfg.buckets);
  if (cfg.expert_parallel) check_expert_parallel(*cfg.expert_parallel, cfg.num_experts);
  check_capacity(cfg);  // after expert_parallel: it needs a valid world_size
  if (cfg.expert_map) {
    check_enum("expert_map.mode", cfg.expert_map->mode,
               {ExpertMapMode::kDrop, ExpertMapMode::kMapAfter});
    check_expert_map(*cfg.expert_map, cfg.num_experts);
  }
  check_enum("overflow", cfg.overflow, {OverflowPolicy::kError, OverflowPolicy::kEager});
  check_enum("capture", cfg.capture, {CaptureMode::kEager, CaptureMode::kLazy});
  if (cfg.expert_parallel) check_with_expert_parallel(cfg);
  check_range("fixed_count_graphs_up_to", cfg.fixed_count_graphs_up_to, 0, kMaxFixedCountTokens);
  if (cfg.device < 0) {
    fail("device", std::to_string(cfg.device) + " is negative", "a CUDA device ordinal >= 0");
  }
}

ExpertMap split_experts(int num_experts, int rank, int world_size, ExpertMapMode mode) {
  check_num_experts(num_experts);
  check_range("expert_map.world_size", world_size, 1, num_experts,
              "every rank owns at least one of num_experts = " + std::to_string(num_experts));
  check_range("expert_map.rank", rank, 0, world_size - 1,
              "world_size = " + std::to_string(world_size));
  const int base = num_experts / world_size;
  const int extra = num_experts % world_size;
  const int first = rank * base + std::min(rank, extra);
  const int count = base + (rank < extra ? 1 : 0);
  ExpertMap map;
  map.mode = mode;
  map.global_to_local.assign(static_cast<std::size_t>(num_experts), -1);
  for (int local = 0; local < count; ++local) map.global_to_local[first + local] = local;
  return map;
}

std::string_view to_string(ExpertMapMode mode) {
  switch (mode) {
    case ExpertMapMode::kDrop:
      return "drop";
    case ExpertMapMode::kMapAfter:
      return "map_after";
  }
  return "?";
}

std::string_view to_string(OverflowPolicy policy) {
  switch (policy) {
    case OverflowPolicy::kError:
      return "error";
    case OverflowPolicy::kEager:
      return "eager";
  }
  return "?";
}

std::size_t element_bytes(HiddenType type) {
  return type == HiddenType::kBFloat16 ? 2 : sizeof(float);
}

std::string_view to_string(HiddenType type) {
  switch (type) {
    case HiddenType::kFloat32:
      return "float32";
    case HiddenType::kBFloat16:
      return "bf16";
  }
  return "?";
}

std::string_view to_string(CaptureMode mode) {
  switch (mode) {
    case CaptureMode::kEager:
      return "eager";
    case CaptureMode::kLazy:
      return "lazy";
  }
  return "?";
}

namespace {

template <typename T>
void write_flow_list(std::ostream& out, const std::vector<T>& values) {
  out << '[';
  for (std::size_t i = 0; i < values.size(); ++i) out << (i == 0 ? "" : ", ") << values[i];
  out << ']';
}

}  // namespace

// Keys follow the order of configs/default.yaml. The expert map is always written as its explicit
// list (a rank/world_size split is resolved by then), which reads back to the same map; an empty
// placement is written as contiguous.
std::string to_yaml(const DispatchConfig& cfg) {
  std::ostringstream out;
  out << "num_experts: " << cfg.num_experts << '\n';
  out << "top_k: " << cfg.top_k << '\n';
  out << "block_size: " << cfg.block_size << '\n';
  out << "buckets: ";
  write_flow_list(out, cfg.buckets);
  out << '\n';
  out << "pad_sorted_ids: " << (cfg.pad_sorted_ids ? "true" : "false") << '\n';
  out << "overflow: " << to_string(cfg.overflow) << '\n';
  out << "capture: " << to_string(cfg.capture) << '\n';
  out << "fixed_count_graphs_up_to: " << cfg.fixed_count_graphs_up_to << '\n';
  out << "device: " << cfg.device << '\n';
  out << "log: " << (cfg.log ? "true" : "false") << '\n';
  if (cfg.expert_map) {
    out << "expert_map:\n";
    out << "  mode: " << to_string(cfg.expert_map->mode) << '\n';
    out << "  experts: ";
    write_flow_list(out, cfg.expert_map->global_to_local);
    out << '\n';
  } else {
    out << (cfg.expert_parallel ? "expert_map: null  # expert_parallel's placement decides\n"
                                : "expert_map: null  # every expert is local\n");
  }
  if (const std::optional<ExpertParallelSection>& ep = cfg.expert_parallel) {
    out << "expert_parallel:\n";
    out << "  world_size: " << ep->world_size << '\n';
    out << "  rank: " << ep->rank << '\n';
    out << "  placement: ";
    if (ep->placement.empty()) {
      out << "contiguous";
    } else {
      write_flow_list(out, ep->placement);
    }
    out << '\n';
    out << "  hidden_size: " << ep->hidden_size << '\n';
    out << "  hidden_type: " << to_string(ep->hidden_type) << '\n';
  } else {
    out << "expert_parallel: null  # one GPU holds every expert\n";
  }
  return out.str();
}

}  // namespace moe_dispatch
