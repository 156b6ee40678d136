// The exact contract of the dispatch stage (DESIGN.md §1), shared by the host reference, the GPU
// kernels and the runtime: output extents and the shape of one alignment.
#pragma once

#include <cstdint>

#include "moe_dispatch/config.hpp"

namespace moe_dispatch {

// One alignment problem, independent of where it runs.
struct AlignShape {
  int num_experts = 0;
  int top_k = 0;
  int block_size = 0;
  bool pad_sorted_ids = false;
};

// Entries of sorted_token_ids defined for `numel` slots: numel + E*(B-1), rounded up to a multiple
// of B when pad_sorted_ids. Every entry not holding a slot index holds the sentinel `numel`.
inline std::int64_t sorted_capacity(const AlignShape& s, std::int64_t numel) {
  const std::int64_t cap = numel + std::int64_t{s.num_experts} * (s.block_size - 1);
  return s.pad_sorted_ids ? (cap + s.block_size - 1) / s.block_size * s.block_size : cap;
}

// The most slots whose sorted_capacity stays within kMaxNumel (the kernels' 32-bit offsets):
// kMaxNumel - E*(B-1), with kMaxNumel rounded down to a multiple of B when pad_sorted_ids.
// Negative when not even zero slots fit.
inline std::int64_t max_numel_within_limit(const AlignShape& s) {
  const std::int64_t limit = s.pad_sorted_ids ? kMaxNumel / s.block_size * s.block_size : kMaxNumel;
  return limit - std::int64_t{s.num_experts} * (s.block_size - 1);
}

// Entries of expert_ids defined for `numel` slots: ceil(sorted_capacity / B).
inline std::int64_t expert_ids_capacity(const AlignShape& s, std::int64_t numel) {
  return (sorted_capacity(s, numel) + s.block_size - 1) / s.block_size;
}

inline AlignShape shape_of(const DispatchConfig& cfg) {
  return AlignShape{cfg.num_experts, cfg.top_k, cfg.block_size, cfg.pad_sorted_ids};
}

}  // namespace moe_dispatch
