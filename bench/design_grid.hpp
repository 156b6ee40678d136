// The benchmark grid of DESIGN.md §5 as `dispatch_bench kernels` walks it, and the routing it
// draws there: one generator seeded once, one distinct_routing() per point in walk order. Shared
// so that another tool can time a point on the very ids dispatch_bench timed.
#pragma once

#include <cstdint>
#include <random>
#include <stdexcept>
#include <vector>

#include "routing.hpp"

namespace moe_dispatch::bench {

struct GridShape {
  const char* model;
  int experts, top_k, block;
};
inline constexpr GridShape kGridShapes[] = {{"Mixtral 8x7B", 8, 2, 64},
                                            {"vLLM task (B=64)", 64, 2, 64},
                                            {"vLLM task", 64, 2, 128},
                                            {"Qwen3 MoE", 128, 8, 64},
                                            {"DeepSeek-V3", 256, 8, 64}};
inline constexpr int kGridTokens[] = {1, 8, 64, 256, 1024, 4096, 16384};
inline constexpr unsigned kGridSeed = 42;

// The ids dispatch_bench kernels draws for `tokens` tokens of shape E x top_k x B: the walk's draws
// replayed up to that point. Throws when the point is not on the grid.
inline std::vector<std::int32_t> grid_routing(int experts, int top_k, int block, int tokens) {
  std::mt19937 rng(kGridSeed);
  for (const GridShape& s : kGridShapes) {
    for (const int t : kGridTokens) {
      std::vector<std::int32_t> ids = distinct_routing(t, s.top_k, s.experts, rng);
      if (s.experts == experts && s.top_k == top_k && s.block == block && t == tokens) return ids;
    }
  }
  throw std::invalid_argument("grid_routing: the point is not on the grid of DESIGN.md §5");
}

}  // namespace moe_dispatch::bench
