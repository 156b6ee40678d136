// The sample's toy MoE model: a router (gating logits -> softmax -> top-k) and the numbers the
// consumer uses (activations, expert scales). Shared by the GPU kernels (router.cu) and the host
// backend, so both backends route the same way.
//
// Logits come from a tiny gating network: each token gets kFeatureDim features hashed from
// (seed, step, layer, token), and each layer has its own gate table (weights plus a per-expert bias
// that makes some experts hotter than others, as trained routers do). So the routing differs per
// step, token and layer, and the expert loads are uneven.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "moe_dispatch/config.hpp"

#if defined(__CUDACC__)
#define SAMPLE_HOST_DEVICE __host__ __device__
#else
#define SAMPLE_HOST_DEVICE
#endif

namespace serving_loop {

inline constexpr int kFeatureDim = 8;
// A gate table holds, per expert, kFeatureDim weights then one bias: [num_experts][kGateStride].
inline constexpr int kGateStride = kFeatureDim + 1;

// A 32-bit integer hash with good avalanche (the MurmurHash3 finalizer).
SAMPLE_HOST_DEVICE inline std::uint32_t mix32(std::uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

SAMPLE_HOST_DEVICE inline std::uint32_t hash3(std::uint32_t a, std::uint32_t b, std::uint32_t c) {
  return mix32(mix32(mix32(a) ^ b) ^ c);
}

// Uniform in [0, 1), exactly representable (24 random bits).
SAMPLE_HOST_DEVICE inline float unit_float(std::uint32_t h) {
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
}

// The seed of one layer at one step: everything a layer routes at that step derives from it.
SAMPLE_HOST_DEVICE inline std::uint32_t step_seed(std::uint32_t seed, int step, int layer) {
  return hash3(seed, static_cast<std::uint32_t>(step), static_cast<std::uint32_t>(layer));
}

// Feature d of a token's hidden state, in [-1, 1).
SAMPLE_HOST_DEVICE inline float token_feature(std::uint32_t seed, int token, int d) {
  return 2.0f * unit_float(
                    hash3(seed, static_cast<std::uint32_t>(token), static_cast<std::uint32_t>(d))) -
         1.0f;
}

// The scalar activation x the consumer multiplies, in [1, 2): never zero, so a slot the dispatch
// loses always changes the output.
SAMPLE_HOST_DEVICE inline float token_activation(std::uint32_t seed, int token) {
  return 1.0f + unit_float(hash3(seed, static_cast<std::uint32_t>(token), 0x9e3779b9u));
}

// The best `k` (logit, expert) pairs seen so far, best first. Ties keep the lower expert id.
struct TopK {
  float logit[moe_dispatch::kMaxTopK];
  int expert[moe_dispatch::kMaxTopK];
  int k = 0;
  int size = 0;

  SAMPLE_HOST_DEVICE void insert(float value, int id) {
    if (size == k && !(value > logit[k - 1])) return;
    int pos = size < k ? size++ : k - 1;
    for (; pos > 0 && value > logit[pos - 1]; --pos) {
      logit[pos] = logit[pos - 1];
      expert[pos] = expert[pos - 1];
    }
    logit[pos] = value;
    expert[pos] = id;
  }
};

// Routes one token: writes its top_k experts (best first) and their softmax probabilities over
// all experts. `gate` is the layer's gate table. One pass over the experts: an online softmax
// (running max and running sum of exponentials) next to the running top-k.
SAMPLE_HOST_DEVICE inline void route_token(const float* gate, int num_experts, int top_k,
                                           std::uint32_t seed, int token, std::int32_t* ids_out,
                                           float* weights_out) {
  float features[kFeatureDim];
  for (int d = 0; d < kFeatureDim; ++d) features[d] = token_feature(seed, token, d);

  TopK best;
  best.k = top_k;
  float max_logit = 0.0f;
  float sum_exp = 0.0f;
  for (int e = 0; e < num_experts; ++e) {
    const float* row = gate + static_cast<std::int64_t>(e) * kGateStride;
    float logit = row[kFeatureDim];
    for (int d = 0; d < kFeatureDim; ++d) logit += features[d] * row[d];
    if (e == 0 || logit > max_logit) {
      sum_exp = (e == 0 ? 0.0f : sum_exp * expf(max_logit - logit)) + 1.0f;
      max_logit = logit;
    } else {
      sum_exp += expf(logit - max_logit);
    }
    best.insert(logit, e);
  }
  for (int k = 0; k < top_k; ++k) {
    ids_out[k] = best.expert[k];
    weights_out[k] = expf(best.logit[k] - max_logit) / sum_exp;
  }
}

// The gate table of one layer (host side; the GPU backend uploads it once).
inline std::vector<float> make_gate_table(int num_experts, std::uint32_t seed, int layer) {
  std::vector<float> gate(static_cast<std::size_t>(num_experts) * kGateStride);
  const std::uint32_t layer_seed = hash3(seed, 0x6a09e667u, static_cast<std::uint32_t>(layer));
  for (int e = 0; e < num_experts; ++e) {
    for (int d = 0; d <= kFeatureDim; ++d) {
      const float u = unit_float(
          hash3(layer_seed, static_cast<std::uint32_t>(e), static_cast<std::uint32_t>(d)));
      // Weights uniform in [-1, 1); the bias in [0, 1.5) makes a few experts up to 4.5x hotter.
      gate[static_cast<std::size_t>(e) * kGateStride + static_cast<std::size_t>(d)] =
          d < kFeatureDim ? 2.0f * u - 1.0f : 1.5f * u;
    }
  }
  return gate;
}

// The consumer's per-expert scale: distinct for every expert, so a block handed to the wrong
// expert changes the output. Indexed by the id in expert_ids (local ids under an expert map).
inline std::vector<float> make_expert_scales(int num_experts) {
  std::vector<float> scales(static_cast<std::size_t>(num_experts));
  for (int e = 0; e < num_experts; ++e) {
    scales[static_cast<std::size_t>(e)] =
        0.5f + static_cast<float>(e) / static_cast<float>(num_experts);
  }
  return scales;
}

}  // namespace serving_loop
