// Test support shared by the suites: device detection and routing generators.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace moe_dispatch::test {

// True when a CUDA device is usable. gpu-labelled binaries call require_gpu_or_skip() in main.
bool has_gpu();

enum class Routing {
  kUniform,      // ids uniform in [0, E)
  kOneExpert,    // every slot to one expert
  kOneNonEmpty,  // every expert empty but one (with top_k distinct slots filled from its
                 // neighbours)
  kZipf,         // Zipf-like skew over experts
  kWithInvalid,  // uniform, with ~5% ids outside [0, E) (negative and >= E; 1% at the ends of
                 // int32)
};

// num_tokens * top_k ids. Rows hold distinct experts where E >= top_k (as a router's top-k does),
// except kOneExpert, which repeats one expert on purpose.
std::vector<std::int32_t> make_routing(Routing kind, int num_tokens, int top_k, int num_experts,
                                       std::mt19937& rng);

const char* to_string(Routing kind);

}  // namespace moe_dispatch::test
