// An independent oracle of the dispatch contract (DESIGN.md §1), for the suites and the fuzzers.
//
// It is deliberately built differently from runtime/reference.cpp, so that a shared misreading of
// the contract is less likely to hide in both: the reference counts, scans and scatters (a counting
// sort); the oracle collects (expert, slot) pairs, orders them with std::stable_sort (slots are
// collected in ascending order, so stability alone gives the ascending order within an expert),
// then walks the runs of equal experts, emitting each run followed by its padding. Experts with no
// slots never form a run, so they take no blocks without a special case. The extents are computed
// here from the formulas of §1, not taken from align.hpp.
//
// Slow (n log n, allocates freely) and unchecked: callers pass a valid shape (E, top_k, B >= 1,
// topk_ids.size() a multiple of top_k) and, if any, an expert map of length E whose entries are -1
// or distinct local ids in [0, E). Header-only so GPU suites and fuzzers can use it without
// linking.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "moe_dispatch/config.hpp"
#include "moe_dispatch/reference.hpp"

namespace moe_dispatch::test {

// Expected outputs for `topk_ids` (num_tokens * top_k ids, row-major) under E experts, block size
// B, the pad_sorted_ids flag and an optional expert map. Same fields as the reference's result.
inline HostAlignResult align_oracle(std::span<const std::int32_t> topk_ids, int num_experts,
                                    int block_size, bool pad_sorted_ids,
                                    const ExpertMap* expert_map = nullptr) {
  const auto numel = static_cast<std::int64_t>(topk_ids.size());
  const std::int64_t block = block_size;
  const bool drop_mode = expert_map != nullptr && expert_map->mode == ExpertMapMode::kDrop;
  const bool map_after = expert_map != nullptr && expert_map->mode == ExpertMapMode::kMapAfter;

  HostAlignResult r;
  // (key the slot is grouped under, slot index), in slot order.
  std::vector<std::pair<std::int64_t, std::int32_t>> pairs;
  for (std::int64_t i = 0; i < numel; ++i) {
    const std::int32_t id = topk_ids[static_cast<std::size_t>(i)];
    if (id < 0 || id >= num_experts) {
      ++r.num_invalid_ids;
      continue;
    }
    std::int64_t key = id;
    if (drop_mode) {
      key = expert_map->global_to_local[static_cast<std::size_t>(id)];
      if (key < 0) continue;  // expert on another rank: dropped, not invalid
    }
    pairs.emplace_back(key, static_cast<std::int32_t>(i));
  }
  std::stable_sort(pairs.begin(), pairs.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });

  std::int64_t capacity = numel + std::int64_t{num_experts} * (block - 1);
  if (pad_sorted_ids && capacity % block != 0) capacity += block - capacity % block;
  const std::int64_t num_blocks = (capacity + block - 1) / block;

  const auto sentinel = static_cast<std::int32_t>(numel);
  std::vector<std::int32_t>& sorted = r.sorted_token_ids;
  std::vector<std::int32_t>& owners = r.expert_ids;
  for (std::size_t run_begin = 0; run_begin < pairs.size();) {
    const std::int64_t key = pairs[run_begin].first;
    std::size_t run_end = run_begin;
    while (run_end < pairs.size() && pairs[run_end].first == key) {
      sorted.push_back(pairs[run_end].second);
      ++run_end;
    }
    while (static_cast<std::int64_t>(sorted.size()) % block != 0) sorted.push_back(sentinel);
    const std::int32_t owner = map_after
                                   ? expert_map->global_to_local[static_cast<std::size_t>(key)]
                                   : static_cast<std::int32_t>(key);
    while (static_cast<std::int64_t>(owners.size()) * block <
           static_cast<std::int64_t>(sorted.size())) {
      owners.push_back(owner);
    }
    run_begin = run_end;
  }
  r.num_tokens_post_pad = static_cast<std::int32_t>(sorted.size());
  sorted.resize(static_cast<std::size_t>(std::max<std::int64_t>(capacity, 0)), sentinel);
  owners.resize(static_cast<std::size_t>(num_blocks), -1);
  return r;
}

inline HostAlignResult align_oracle(std::span<const std::int32_t> topk_ids, const AlignShape& shape,
                                    const ExpertMap* expert_map = nullptr) {
  return align_oracle(topk_ids, shape.num_experts, shape.block_size, shape.pad_sorted_ids,
                      expert_map);
}

// "" when `got` equals `want`; otherwise the first difference, in words (for test messages).
inline std::string first_difference(const HostAlignResult& got, const HostAlignResult& want) {
  auto vectors = [](const char* name, const std::vector<std::int32_t>& g,
                    const std::vector<std::int32_t>& w) -> std::string {
    if (g.size() != w.size()) {
      return std::string(name) + ": " + std::to_string(g.size()) + " entries, expected " +
             std::to_string(w.size());
    }
    const auto [gi, wi] = std::mismatch(g.begin(), g.end(), w.begin());
    if (gi == g.end()) return "";
    return std::string(name) + "[" + std::to_string(gi - g.begin()) + "] = " + std::to_string(*gi) +
           ", expected " + std::to_string(*wi);
  };
  if (got.num_tokens_post_pad != want.num_tokens_post_pad) {
    return "num_tokens_post_pad = " + std::to_string(got.num_tokens_post_pad) + ", expected " +
           std::to_string(want.num_tokens_post_pad);
  }
  if (got.num_invalid_ids != want.num_invalid_ids) {
    return "num_invalid_ids = " + std::to_string(got.num_invalid_ids) + ", expected " +
           std::to_string(want.num_invalid_ids);
  }
  if (std::string d = vectors("sorted_token_ids", got.sorted_token_ids, want.sorted_token_ids);
      !d.empty()) {
    return d;
  }
  return vectors("expert_ids", got.expert_ids, want.expert_ids);
}

}  // namespace moe_dispatch::test
