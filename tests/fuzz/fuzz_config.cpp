// libFuzzer target: arbitrary bytes as a YAML configuration.
//
// parse_config() may reject the input, but only with moe_dispatch::ConfigError; any other
// exception, a crash, a leak or undefined behaviour is a finding (the sanitizers and libFuzzer
// report those). When parsing succeeds, the resolved configuration must survive to_yaml() ->
// parse_config() unchanged, and to_yaml() must be a fixed point of that trip; a mismatch traps.
//
// Build and run: tests/fuzz/run_fuzzers.sh [seconds].
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "moe_dispatch/config.hpp"
#include "moe_dispatch/errors.hpp"

namespace {

bool same_map(const moe_dispatch::ExpertMap& a, const moe_dispatch::ExpertMap& b) {
  return a.mode == b.mode && a.global_to_local == b.global_to_local;
}

// DispatchConfig has no operator== (it is plain data that grows); every field is compared here.
bool same_section(const moe_dispatch::ExpertParallelSection& a,
                  const moe_dispatch::ExpertParallelSection& b) {
  return a.world_size == b.world_size && a.rank == b.rank && a.placement == b.placement &&
         a.hidden_size == b.hidden_size && a.hidden_type == b.hidden_type;
}

bool same_config(const moe_dispatch::DispatchConfig& a, const moe_dispatch::DispatchConfig& b) {
  if (a.expert_parallel.has_value() != b.expert_parallel.has_value()) return false;
  if (a.expert_parallel.has_value() && !same_section(*a.expert_parallel, *b.expert_parallel)) {
    return false;
  }
  if (a.expert_map.has_value() != b.expert_map.has_value()) return false;
  if (a.expert_map.has_value() && !same_map(*a.expert_map, *b.expert_map)) return false;
  return a.num_experts == b.num_experts && a.top_k == b.top_k && a.block_size == b.block_size &&
         a.buckets == b.buckets && a.pad_sorted_ids == b.pad_sorted_ids &&
         a.overflow == b.overflow && a.capture == b.capture &&
         a.fixed_count_graphs_up_to == b.fixed_count_graphs_up_to && a.device == b.device &&
         a.log == b.log;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  moe_dispatch::DispatchConfig cfg;
  try {
    cfg = moe_dispatch::parse_config(text, "fuzz.yaml");
  } catch (const moe_dispatch::ConfigError&) {
    return 0;  // rejected with the documented error: fine
  }

  // Accepted: the resolved config must round-trip. A ConfigError here is a finding too (to_yaml
  // wrote something parse_config refuses), so it is not caught.
  const std::string yaml = moe_dispatch::to_yaml(cfg);
  const moe_dispatch::DispatchConfig again =
      moe_dispatch::parse_config(yaml, "fuzz-roundtrip.yaml");
  if (!same_config(cfg, again)) __builtin_trap();
  if (moe_dispatch::to_yaml(again) != yaml) __builtin_trap();
  return 0;
}
