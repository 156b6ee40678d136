// The routing the benchmarks time: per token, top_k distinct experts drawn uniformly at random,
// as a router's top-k selection gives them (never an id outside [0, experts)).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <vector>

namespace moe_dispatch::bench {

inline std::vector<std::int32_t> distinct_routing(int tokens, int top_k, int experts,
                                                  std::mt19937& rng) {
  if (top_k > experts) throw std::invalid_argument("distinct_routing: top_k > experts");
  std::vector<std::int32_t> ids(static_cast<std::size_t>(tokens) * static_cast<std::size_t>(top_k));
  std::uniform_int_distribution<int> pick(0, experts - 1);
  for (std::size_t t = 0; t < ids.size(); t += static_cast<std::size_t>(top_k)) {
    const auto token = ids.begin() + static_cast<std::ptrdiff_t>(t);
    for (int k = 0; k < top_k; ++k) {
      int e = pick(rng);
      while (std::find(token, token + k, e) != token + k) e = pick(rng);
      token[k] = e;
    }
  }
  return ids;
}

}  // namespace moe_dispatch::bench
