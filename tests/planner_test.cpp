// The planner (kernels/align_plan.cpp, kernels/align_variants.hpp) is host code: which variant,
// block shape, cluster and large-variant form each step takes, checked on both sides of every
// bound the measurements set (docs/BENCHMARKS.md). Runs without a GPU.
#include <doctest/doctest.h>

#include <cstdint>
#include <initializer_list>
#include <tuple>

#include "kernels/align.hpp"

extern const bool kNeedsGpu;
const bool kNeedsGpu = false;

namespace mk = moe_dispatch::kernels;

TEST_CASE("the planner: variant, block shape, cluster and large form on both sides of each bound") {
  // The tiny variant up to 32 slots for every E, up to 64 for E above 256; the small one above.
  for (const int experts : {8, 64, 128, 256, 257, 1024}) {
    for (const int numel : {1, 32, 33, 64, 65, 1024, 4096}) {
      const mk::AlignPlan plan = mk::plan_align(numel, experts, 64);
      const bool tiny = numel <= 32 || (numel <= 64 && experts > 256);
      CHECK(plan.kernels == 1);
      CHECK(plan.variant == (tiny ? mk::AlignVariant::kTiny : mk::AlignVariant::kSmall));
    }
  }
  CHECK(mk::plan_align(std::int64_t{1} << 20, 256, 64).variant == mk::AlignVariant::kLarge);
  // One block of 128 x 1 with 128 fill threads up to 128 slots (up to E = 1024), of 128 x 2 at
  // 129-256 slots, of 256 x 4 at 513-1024 for E <= 8 and (with 256 fill threads) E 513-1024;
  // clusters of 4 share the ranking at 513-1024 slots for E 9-512, and clusters from 1025 slots up
  // to E = 1024 (measured ahead there), not past 1024 experts.
  for (const int experts : {8, 1024}) {
    const mk::AlignPlan one = mk::plan_align(128, experts, 64);
    CHECK((one.cluster == 1 && one.threads == 128 && one.items == 1 && one.fill_threads == 128));
  }
  CHECK(mk::plan_align(128, 1025, 64).fill_threads == 0);
  const mk::AlignPlan two = mk::plan_align(129, 1024, 64);
  CHECK((two.cluster == 1 && two.threads == 128 && two.items == 2 && two.fill_threads == 128));
  CHECK(mk::plan_align(256, 128, 64).fill_threads == 64);
  CHECK(mk::plan_align(257, 128, 64).threads == 256);
  // 513-1024 slots: clusters of 4 x 256 x 1 for every E up to 1024, one block of 512 x 4 above.
  for (const int experts : {1, 8, 9, 128, 129, 512, 513, 1024}) {
    INFO("E " << experts);
    for (const std::int64_t numel : {513, 1024}) {
      const mk::AlignPlan singles = mk::plan_align(numel, experts, 64);
      CHECK((singles.cluster == 4 && singles.threads == 256 && singles.items == 1 &&
             singles.exchange == mk::ClusterExchange::kReleased));
    }
  }
  CHECK(mk::plan_align(512, 8, 64).cluster == 1);
  CHECK(mk::plan_align(1024, 1025, 64).cluster == 1);
  CHECK(mk::plan_align(1025, 512, 64).cluster == 8);
  CHECK(mk::plan_align(4096, 512, 64).cluster == 8);
  CHECK(mk::plan_align(1025, 1024, 64).cluster == 4);
  CHECK(mk::plan_align(2049, 1024, 64).cluster == 8);
  CHECK(mk::plan_align(2048, 1025, 64).cluster == 1);
  CHECK(mk::plan_align(4096, 1025, 64).cluster == 1);
  // In the clusters, blocks of 256 threads for E <= 512 up to 8192 slots, and for E 513-1024 up to
  // 2048; of 512 threads above. Their slots per thread grow with the step.
  for (const auto& [numel, experts, threads, cluster, items] :
       {std::tuple{2048, 512, 256, 8, 1}, std::tuple{4096, 512, 256, 8, 2},
        std::tuple{8192, 512, 256, 8, 4}, std::tuple{8193, 512, 512, 8, 4},
        std::tuple{16384, 512, 512, 8, 4}, std::tuple{2048, 1024, 256, 4, 2},
        std::tuple{4096, 1024, 512, 8, 1}, std::tuple{8192, 1024, 512, 8, 2},
        std::tuple{16384, 1024, 512, 8, 4}}) {
    INFO("numel " << numel << ", E " << experts);
    const mk::AlignPlan plan = mk::plan_align(numel, experts, 64);
    CHECK(plan.threads == threads);
    CHECK(plan.cluster == cluster);
    CHECK(plan.items == items);
  }
  // One kernel up to 16384 slots for E <= 1024 (clusters measured ahead of the large variant
  // there), up to 4096 for E <= 2048; the large variant above.
  for (const int experts : {1, 8, 63, 64, 513, 1024}) {
    CHECK(mk::plan_align(16384, experts, 128).variant == mk::AlignVariant::kSmall);
    CHECK(mk::plan_align(16385, experts, 128).variant == mk::AlignVariant::kLarge);
  }
  CHECK(mk::plan_align(4096, 2048, 128).variant == mk::AlignVariant::kSmall);
  CHECK(mk::plan_align(4097, 2048, 128).variant == mk::AlignVariant::kLarge);
  CHECK(mk::plan_align(4097, 1025, 128).variant == mk::AlignVariant::kLarge);
  // The large variant's shape: the first rule of kLargeShapeRules that holds (slots per thread,
  // kernels), on both sides of each rule's bounds; the count kernel runs in clusters of 8.
  // 131072 slots at E = 256: 16384 tokens x top-8, DeepSeek-V3.
  for (const auto& [numel, experts, items, kernels] :
       {std::tuple{std::int64_t{32768}, 1024, 2, 2},
        std::tuple{std::int64_t{32769}, 256, 4, 2},
        std::tuple{std::int64_t{8192}, 2048, 2, 2},
        std::tuple{std::int64_t{8192}, 2049, 4, 2},
        std::tuple{std::int64_t{8193}, 2048, 4, 2},
        std::tuple{std::int64_t{32768}, 1025, 4, 2},
        std::tuple{std::int64_t{8193}, 4096, 8, 2},
        std::tuple{std::int64_t{32768}, 2049, 8, 2},
        std::tuple{std::int64_t{65536}, 1024, 4, 2},
        std::tuple{std::int64_t{32769}, 1025, 4, 3},
        std::tuple{std::int64_t{65536}, 4096, 4, 3},
        std::tuple{std::int64_t{65537}, 8, 4, 2},
        std::tuple{std::int64_t{131072}, 8, 4, 2},
        std::tuple{std::int64_t{65537}, 9, 8, 2},
        std::tuple{std::int64_t{131072}, 1024, 8, 2},
        std::tuple{std::int64_t{65537}, 1025, 8, 3},
        std::tuple{std::int64_t{131073}, 8, 8, 2},
        std::tuple{std::int64_t{262144}, 256, 8, 2},
        std::tuple{std::int64_t{131073}, 257, 8, 3},
        std::tuple{std::int64_t{262144}, 1024, 8, 3},
        std::tuple{std::int64_t{262145}, 8, 8, 3},
        std::tuple{std::int64_t{1} << 24, 4096, 8, 3}}) {
    INFO("numel " << numel << ", E " << experts);
    const mk::AlignPlan plan = mk::plan_align(numel, experts, 64, mk::AlignVariant::kLarge);
    CHECK(plan.cluster == 8);
    CHECK(plan.grid % 8 == 0);
    CHECK(plan.items == items);
    CHECK(plan.kernels == kernels);
  }
  CHECK(mk::plan_align(131072, 256, 64).grid == 64);  // 2048 slots per block
  CHECK(mk::plan_align(131072, 8, 64, mk::AlignVariant::kLarge).grid == 128);  // 1024 per block
  CHECK(mk::plan_align(4097, 8, 64, mk::AlignVariant::kLarge).grid == 16);  // 9 chunks of 512 slots
  // Past the small variant's experts: tiny up to 64 slots, then the large variant.
  CHECK(mk::plan_align(64, 4096, 16).variant == mk::AlignVariant::kTiny);
  CHECK(mk::plan_align(65, 4096, 16).variant == mk::AlignVariant::kLarge);
}

TEST_CASE("the one-kernel grids: 4096 output entries per block, clusters 512") {
  // Output entries: max numel + E * B; at most 128 blocks.
  SUBCASE("tiny: one block per 4096 entries") {
    CHECK(mk::plan_align(8, 8, 64).grid == 1);         // 520 entries
    CHECK(mk::plan_align(32, 64, 128).grid == 3);      // 8224
    CHECK(mk::plan_align(32, 256, 64).grid == 5);      // 16416
    CHECK(mk::plan_align(64, 512, 64).grid == 9);      // 32832
    CHECK(mk::plan_align(8, 1024, 128).grid == 33);    // 131080
    CHECK(mk::plan_align(64, 4096, 64).grid == 65);    // 262208
    CHECK(mk::plan_align(64, 4096, 128).grid == 128);  // 524352: the cap
  }
  SUBCASE("small in one block: one per 1024 entries up to 9 blocks, else one per 4096") {
    const auto one_block = [](std::int64_t numel, int experts, int block) {
      const mk::AlignPlan plan = mk::plan_align(numel, experts, block);
      CHECK(plan.variant == mk::AlignVariant::kSmall);
      CHECK(plan.cluster == 1);
      return plan.grid;
    };
    CHECK(one_block(128, 8, 64) == 1);        // 640 entries
    CHECK(one_block(512, 16, 64) == 2);       // 1536
    CHECK(one_block(128, 64, 128) == 9);      // 8320
    CHECK(one_block(512, 256, 64) == 9);      // 16896
    CHECK(one_block(512, 1024, 32) == 9);     // 33280
    CHECK(one_block(128, 1024, 128) == 33);   // 131200
    CHECK(one_block(2048, 2048, 128) == 65);  // 264192
  }
  SUBCASE("clusters: one block per 512 entries, in whole clusters, at most 64 blocks") {
    const auto clustered = [](std::int64_t numel, int experts, int block, int cluster) {
      const mk::AlignPlan plan = mk::plan_align(numel, experts, block);
      CHECK(plan.variant == mk::AlignVariant::kSmall);
      CHECK(plan.cluster == cluster);
      return plan.grid;
    };
    CHECK(clustered(1024, 512, 64, 4) == 64);    // 33792 entries: the cap, 16 clusters of 4
    CHECK(clustered(1024, 64, 128, 4) == 20);    // 9216: 18 blocks, 5 clusters
    CHECK(clustered(2048, 8, 64, 8) == 8);       // 2560 entries: 5 blocks, one cluster
    CHECK(clustered(4096, 256, 64, 8) == 40);    // 20480: 40 blocks
    CHECK(clustered(8192, 256, 64, 8) == 48);    // 24576: 48
    CHECK(clustered(16384, 64, 128, 8) == 48);   // 24576
    CHECK(clustered(2048, 1024, 128, 4) == 64);  // 133120: the cap, 16 clusters of 4
    CHECK(clustered(8192, 1024, 128, 8) == 64);  // 139264: the cap, 8 clusters of 8
  }
}
