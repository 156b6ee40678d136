#include "moe_dispatch/reference.hpp"

#include <string>

#include "moe_dispatch/errors.hpp"

namespace moe_dispatch {
namespace {

void check_shape(const AlignShape& s, std::size_t numel) {
  auto fail = [](const std::string& what) { throw ArgumentError("align_reference: " + what); };
  if (s.num_experts < 1 || s.num_experts > kMaxExperts) {
    fail("num_experts " + std::to_string(s.num_experts) + " outside [1, " +
         std::to_string(kMaxExperts) + "]");
  }
  if (s.top_k < 1 || s.top_k > kMaxTopK) {
    fail("top_k " + std::to_string(s.top_k) + " outside [1, " + std::to_string(kMaxTopK) + "]");
  }
  if (s.block_size < 1 || s.block_size > kMaxBlockSize) {
    fail("block_size " + std::to_string(s.block_size) + " outside [1, " +
         std::to_string(kMaxBlockSize) + "]");
  }
  if (numel % static_cast<std::size_t>(s.top_k) != 0) {
    fail("topk_ids has " + std::to_string(numel) + " entries, not a multiple of top_k " +
         std::to_string(s.top_k));
  }
  if (numel > static_cast<std::size_t>(kMaxNumel)) {
    fail("numel " + std::to_string(numel) + " above the supported " + std::to_string(kMaxNumel));
  }
}

// Every entry -1 or a local id in [0, E), local ids unique (`seen` is scratch).
void check_map(const ExpertMap& map, int num_experts, std::vector<std::int32_t>& seen) {
  seen.assign(static_cast<std::size_t>(num_experts), 0);
  for (std::size_t g = 0; g < map.global_to_local.size(); ++g) {
    const std::int32_t local = map.global_to_local[g];
    if (local == -1) continue;
    if (local < 0 || local >= num_experts || seen[static_cast<std::size_t>(local)]++ != 0) {
      throw ArgumentError("align_reference: expert_map[" + std::to_string(g) +
                          "] = " + std::to_string(local) + "; allowed: -1 or a local id in [0, " +
                          std::to_string(num_experts) + ") used by no other expert");
    }
  }
}

}  // namespace

void align_reference(std::span<const std::int32_t> topk_ids, const AlignShape& shape,
                     const ExpertMap* expert_map, HostAlignResult& out,
                     std::vector<std::int32_t>& counts) {
  check_shape(shape, topk_ids.size());
  const int num_experts = shape.num_experts;
  const std::int32_t block = shape.block_size;
  if (expert_map != nullptr &&
      expert_map->global_to_local.size() != static_cast<std::size_t>(num_experts)) {
    throw ArgumentError("align_reference: expert_map has " +
                        std::to_string(expert_map->global_to_local.size()) +
                        " entries, expected num_experts = " + std::to_string(num_experts));
  }
  if (expert_map != nullptr) check_map(*expert_map, num_experts, counts);
  const bool map_first = expert_map != nullptr && expert_map->mode == ExpertMapMode::kDrop;
  const auto numel = static_cast<std::int32_t>(topk_ids.size());

  // The expert a slot is counted under, or -1 when it is skipped (invalid id or dropped).
  auto bucket_of = [&](std::int32_t id) -> std::int32_t {
    if (id < 0 || id >= num_experts) return -1;
    return map_first ? expert_map->global_to_local[static_cast<std::size_t>(id)] : id;
  };

  counts.assign(static_cast<std::size_t>(num_experts), 0);
  std::int32_t invalid = 0;
  for (const std::int32_t id : topk_ids) {
    if (id < 0 || id >= num_experts) {
      ++invalid;
      continue;
    }
    const std::int32_t e = bucket_of(id);
    if (e >= 0) ++counts[static_cast<std::size_t>(e)];
  }

  out.sorted_token_ids.assign(static_cast<std::size_t>(sorted_capacity(shape, numel)), numel);
  out.expert_ids.assign(static_cast<std::size_t>(expert_ids_capacity(shape, numel)), -1);

  // counts[e] becomes expert e's write cursor: the start of its padded segment.
  std::int32_t offset = 0;
  for (int e = 0; e < num_experts; ++e) {
    const std::int32_t blocks = (counts[static_cast<std::size_t>(e)] + block - 1) / block;
    const std::int32_t owner =
        (expert_map != nullptr && !map_first) ? expert_map->global_to_local[e] : e;
    for (std::int32_t b = 0; b < blocks; ++b) {
      out.expert_ids[static_cast<std::size_t>(offset / block + b)] = owner;
    }
    counts[static_cast<std::size_t>(e)] = offset;
    offset += blocks * block;
  }
  out.num_tokens_post_pad = offset;
  out.num_invalid_ids = invalid;

  for (std::int32_t i = 0; i < numel; ++i) {
    const std::int32_t e = bucket_of(topk_ids[static_cast<std::size_t>(i)]);
    if (e >= 0) out.sorted_token_ids[static_cast<std::size_t>(counts[e]++)] = i;
  }
}

HostAlignResult align_reference(std::span<const std::int32_t> topk_ids, const AlignShape& shape,
                                const ExpertMap* expert_map) {
  HostAlignResult out;
  std::vector<std::int32_t> counts;
  align_reference(topk_ids, shape, expert_map, out, counts);
  return out;
}

}  // namespace moe_dispatch
