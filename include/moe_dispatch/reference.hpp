// Host reference of the dispatch stage: the full contract of DESIGN.md §1 on the CPU, in linear
// time. It is the oracle of every GPU test and the host backend of the sample on machines without
// a GPU.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "moe_dispatch/align.hpp"
#include "moe_dispatch/config.hpp"

namespace moe_dispatch {

struct HostAlignResult {
  // sorted_capacity(numel) entries: slot indices grouped by expert, ascending within each expert,
  // each expert's segment padded to a multiple of B with the sentinel `numel`; sentinel after.
  std::vector<std::int32_t> sorted_token_ids;
  // expert_ids_capacity(numel) entries: the expert owning each block, -1 past the valid blocks
  // (and, in ExpertMapMode::kMapAfter, for blocks of experts that are not local).
  std::vector<std::int32_t> expert_ids;
  std::int32_t num_tokens_post_pad = 0;
  // Slots whose id was outside [0, num_experts): skipped, never written.
  std::int32_t num_invalid_ids = 0;
};

// Computes the contract for `topk_ids` (num_tokens * top_k entries, row-major). `expert_map` may be
// null. `out` is reused: its vectors are resized, so a caller that keeps one result allocates only
// when the extent grows. `counts` is scratch of the same kind (resized to num_experts).
// Throws ArgumentError if topk_ids.size() is not a multiple of top_k, if the shape is out of range,
// if numel exceeds kMaxNumel, or if expert_map has the wrong length or an entry that is neither -1
// nor a unique local id in [0, num_experts).
void align_reference(std::span<const std::int32_t> topk_ids, const AlignShape& shape,
                     const ExpertMap* expert_map, HostAlignResult& out,
                     std::vector<std::int32_t>& counts);

// Convenience form that owns its scratch.
HostAlignResult align_reference(std::span<const std::int32_t> topk_ids, const AlignShape& shape,
                                const ExpertMap* expert_map = nullptr);

}  // namespace moe_dispatch
