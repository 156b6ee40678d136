#include "support/gpu.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <numeric>

namespace moe_dispatch::test {

bool has_gpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

namespace {

// Draws `top_k` distinct experts per row with `draw` (falls back to repeats when E < top_k).
template <typename Draw>
std::vector<std::int32_t> rows_of(int num_tokens, int top_k, int num_experts, Draw draw) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(num_tokens) * top_k);
  for (int t = 0; t < num_tokens; ++t) {
    std::int32_t* row = ids.data() + static_cast<std::size_t>(t) * top_k;
    for (int k = 0; k < top_k; ++k) {
      std::int32_t e = draw();
      for (int tries = 0;
           num_experts >= top_k && tries < 64 && std::find(row, row + k, e) != row + k; ++tries) {
        e = draw();
      }
      while (num_experts >= top_k && std::find(row, row + k, e) != row + k) {
        e = (e + 1) % num_experts;
      }
      row[k] = e;
    }
  }
  return ids;
}

}  // namespace

std::vector<std::int32_t> make_routing(Routing kind, int num_tokens, int top_k, int num_experts,
                                       std::mt19937& rng) {
  std::uniform_int_distribution<std::int32_t> uniform(0, num_experts - 1);
  switch (kind) {
    case Routing::kUniform:
      return rows_of(num_tokens, top_k, num_experts, [&] { return uniform(rng); });
    case Routing::kOneExpert: {
      const std::int32_t e = uniform(rng);
      return std::vector<std::int32_t>(static_cast<std::size_t>(num_tokens) * top_k, e);
    }
    case Routing::kOneNonEmpty: {
      const std::int32_t e = uniform(rng);
      std::int32_t next = e;
      return rows_of(num_tokens, top_k, num_experts, [&] {
        const std::int32_t id = next;
        next = (next + 1) % num_experts;
        if (next == (e + top_k) % num_experts) next = e;
        return id;
      });
    }
    case Routing::kZipf: {
      std::vector<double> weights(static_cast<std::size_t>(num_experts));
      for (int e = 0; e < num_experts; ++e) weights[e] = 1.0 / std::pow(e + 1.0, 1.2);
      std::discrete_distribution<std::int32_t> zipf(weights.begin(), weights.end());
      std::vector<std::int32_t> perm(static_cast<std::size_t>(num_experts));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      return rows_of(num_tokens, top_k, num_experts, [&] { return perm[zipf(rng)]; });
    }
    case Routing::kWithInvalid: {
      auto ids = rows_of(num_tokens, top_k, num_experts, [&] { return uniform(rng); });
      std::uniform_int_distribution<int> pct(0, 99);
      std::uniform_int_distribution<std::int32_t> wild(-1000, 1000);
      // A fifth of the invalid ids (1% of all) at the ends of int32, where a sign or overflow slip
      // shows.
      constexpr std::int32_t kEnds[] = {INT32_MIN, INT32_MIN + 1, INT32_MAX - 1, INT32_MAX};
      std::uniform_int_distribution<std::size_t> end(0, std::size(kEnds) - 1);
      for (auto& id : ids) {
        const int p = pct(rng);
        if (p < 5) {
          const std::int32_t w = wild(rng);
          id = p == 0 ? kEnds[end(rng)] : (w < 0 ? w : num_experts + w);
        }
      }
      return ids;
    }
  }
  return {};
}

const char* to_string(Routing kind) {
  switch (kind) {
    case Routing::kUniform:
      return "uniform";
    case Routing::kOneExpert:
      return "one-expert";
    case Routing::kOneNonEmpty:
      return "one-non-empty";
    case Routing::kZipf:
      return "zipf";
    case Routing::kWithInvalid:
      return "with-invalid";
  }
  return "?";
}

}  // namespace moe_dispatch::test
