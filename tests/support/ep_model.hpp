// Host model of expert-parallel dispatch and combine over all ranks (docs/EXPERT_PARALLEL.md), the
// oracle of the expert-parallel suites. Written from the definitions, as plain loops over ranks and
// tokens, not from the kernels' route / align-by-rank / pack / unpack steps:
// - a token of rank q goes to rank r when r owns at least one of its valid experts (ids outside
//   [0, E) go nowhere); each rank's sends are grouped by destination rank, tokens ascending;
// - rank p receives rank 0's tokens for p, then rank 1's, ...; their routing rows, aligned with
//   p's expert map (local ids in ascending global order), are its local alignment;
// - with experts f_e(x) = scale[e] * x, rank p's partial for a received row is the weighted sum
//   of its own experts' outputs (k ascending); token t's result is the sum of its partials over
//   its destination ranks (ascending), which must equal the single-GPU MoE result
//   sum_k w[t,k] * f_{id[t,k]}(x[t]).
// Header-only and slow; callers pass valid shapes (owner entries in [0, world_size)).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "moe_dispatch/align.hpp"
#include "moe_dispatch/config.hpp"
#include "moe_dispatch/reference.hpp"

namespace moe_dispatch::test {

// One rank's step: num_tokens routing rows and hidden rows.
struct EpRankInput {
  int num_tokens = 0;
  std::vector<std::int32_t> topk_ids;  // num_tokens * top_k
  std::vector<float> weights;          // num_tokens * top_k
  std::vector<float> hidden;           // num_tokens * hidden_size
};

struct EpShape {
  int num_experts = 0;
  int top_k = 0;
  int block_size = 0;
  bool pad_sorted_ids = false;
  int world_size = 1;
  int hidden_size = 0;
  std::vector<std::int32_t> owner;  // [num_experts]: rank of each expert
};

inline bool valid_expert(const EpShape& s, std::int32_t id) {
  return id >= 0 && id < s.num_experts;
}

// True when token t of `in` goes to rank r.
inline bool goes_to(const EpShape& s, const EpRankInput& in, int t, int r) {
  for (int k = 0; k < s.top_k; ++k) {
    const std::int32_t id = in.topk_ids[static_cast<std::size_t>(t * s.top_k + k)];
    if (valid_expert(s, id) && s.owner[static_cast<std::size_t>(id)] == r) return true;
  }
  return false;
}

// What one rank sends.
struct EpSendModel {
  std::vector<std::int32_t> counts;   // [world_size] tokens to each rank
  std::vector<std::int32_t> offsets;  // [world_size + 1]
  std::vector<std::int32_t> tokens;   // [offsets.back()] grouped by rank, ascending within a rank
};

inline EpSendModel model_send(const EpShape& s, const EpRankInput& in) {
  EpSendModel m;
  m.offsets.push_back(0);
  for (int r = 0; r < s.world_size; ++r) {
    std::int32_t count = 0;
    for (int t = 0; t < in.num_tokens; ++t) {
      if (!goes_to(s, in, t, r)) continue;
      m.tokens.push_back(t);
      ++count;
    }
    m.counts.push_back(count);
    m.offsets.push_back(m.offsets.back() + count);
  }
  return m;
}

// The expert map of rank p: its experts numbered 0, 1, ... in ascending global order.
inline ExpertMap model_local_map(const EpShape& s, int p) {
  ExpertMap map;
  map.mode = ExpertMapMode::kDrop;
  std::int32_t next = 0;
  for (int e = 0; e < s.num_experts; ++e) {
    map.global_to_local.push_back(s.owner[static_cast<std::size_t>(e)] == p ? next++ : -1);
  }
  return map;
}

// What one rank receives, and its local alignment.
struct EpRecvModel {
  std::vector<std::int32_t> counts;        // [world_size] rows from each rank
  std::vector<std::int32_t> source_rank;   // per row
  std::vector<std::int32_t> source_token;  // per row
  std::vector<std::int32_t> topk_ids;      // rows * top_k
  std::vector<float> weights;              // rows * top_k
  std::vector<float> hidden;               // rows * hidden_size
  HostAlignResult align;
  int rows() const { return static_cast<int>(source_rank.size()); }
};

inline EpRecvModel model_receive(const EpShape& s, const std::vector<EpRankInput>& ranks, int p) {
  EpRecvModel m;
  const auto k = static_cast<std::size_t>(s.top_k);
  const auto h = static_cast<std::size_t>(s.hidden_size);
  for (int q = 0; q < s.world_size; ++q) {
    const EpRankInput& in = ranks[static_cast<std::size_t>(q)];
    std::int32_t count = 0;
    for (int t = 0; t < in.num_tokens; ++t) {
      if (!goes_to(s, in, t, p)) continue;
      const auto row = static_cast<std::size_t>(t);
      m.source_rank.push_back(q);
      m.source_token.push_back(t);
      m.topk_ids.insert(m.topk_ids.end(), in.topk_ids.begin() + row * k,
                        in.topk_ids.begin() + (row + 1) * k);
      m.weights.insert(m.weights.end(), in.weights.begin() + row * k,
                       in.weights.begin() + (row + 1) * k);
      m.hidden.insert(m.hidden.end(), in.hidden.begin() + row * h,
                      in.hidden.begin() + (row + 1) * h);
      ++count;
    }
    m.counts.push_back(count);
  }
  const ExpertMap map = model_local_map(s, p);
  m.align = align_reference(
      m.topk_ids, AlignShape{s.num_experts, s.top_k, s.block_size, s.pad_sorted_ids}, &map);
  return m;
}

// Rank r's partial for token t of `in`: its own experts' weighted outputs, k ascending.
inline std::vector<float> model_partial(const EpShape& s, const EpRankInput& in, int t, int r,
                                        std::span<const float> scale) {
  const auto h = static_cast<std::size_t>(s.hidden_size);
  std::vector<float> partial(h, 0.0f);
  for (int k = 0; k < s.top_k; ++k) {
    const auto slot = static_cast<std::size_t>(t * s.top_k + k);
    const std::int32_t id = in.topk_ids[slot];
    if (!valid_expert(s, id) || s.owner[static_cast<std::size_t>(id)] != r) continue;
    for (std::size_t j = 0; j < h; ++j) {
      partial[j] += in.weights[slot] * (scale[static_cast<std::size_t>(id)] *
                                        in.hidden[static_cast<std::size_t>(t) * h + j]);
    }
  }
  return partial;
}

// The combined result of rank q (num_tokens * hidden_size): partials summed over ranks ascending.
inline std::vector<float> model_combine(const EpShape& s, const EpRankInput& in,
                                        std::span<const float> scale) {
  const auto h = static_cast<std::size_t>(s.hidden_size);
  std::vector<float> y(static_cast<std::size_t>(in.num_tokens) * h, 0.0f);
  for (int t = 0; t < in.num_tokens; ++t) {
    for (int r = 0; r < s.world_size; ++r) {
      if (!goes_to(s, in, t, r)) continue;
      const std::vector<float> partial = model_partial(s, in, t, r, scale);
      for (std::size_t j = 0; j < h; ++j) y[static_cast<std::size_t>(t) * h + j] += partial[j];
    }
  }
  return y;
}

// The single-GPU MoE result: y[t] = sum_k w[t,k] * scale[id] * x[t] over valid ids, k ascending.
inline std::vector<float> moe_reference(const EpShape& s, const EpRankInput& in,
                                        std::span<const float> scale) {
  const auto h = static_cast<std::size_t>(s.hidden_size);
  std::vector<float> y(static_cast<std::size_t>(in.num_tokens) * h, 0.0f);
  for (int t = 0; t < in.num_tokens; ++t) {
    for (int k = 0; k < s.top_k; ++k) {
      const auto slot = static_cast<std::size_t>(t * s.top_k + k);
      const std::int32_t id = in.topk_ids[slot];
      if (!valid_expert(s, id)) continue;
      for (std::size_t j = 0; j < h; ++j) {
        y[static_cast<std::size_t>(t) * h + j] +=
            in.weights[slot] *
            (scale[static_cast<std::size_t>(id)] * in.hidden[static_cast<std::size_t>(t) * h + j]);
      }
    }
  }
  return y;
}

}  // namespace moe_dispatch::test
