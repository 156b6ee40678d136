// GPU suite for the alignment kernels: every variant against the host reference, entry for entry,
// on fresh random inputs over the sweep of issue #3, outputs poisoned before each run.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/align.hpp"
#include "kernels/align_variants.hpp"
#include "moe_dispatch/align.hpp"
#include "moe_dispatch/config.hpp"
#include "moe_dispatch/cuda_raii.hpp"
#include "moe_dispatch/reference.hpp"
#include "support/device_check.hpp"
#include "support/gpu.hpp"

extern const bool kNeedsGpu;
const bool kNeedsGpu = true;

namespace md = moe_dispatch;
namespace mk = moe_dispatch::kernels;
using md::test::Routing;

namespace {

// Device buffers sized for one shape's capacity, reused across runs.
class Harness {
 public:
  // `offset` entries before the outputs (1: not 16-byte aligned, as a tensor slice can be).
  Harness(int max_tokens, int num_experts, int top_k, int block_size, bool pad,
          mk::AlignVariant variant, const md::ExpertMap* map = nullptr, int offset = 0)
      : shape_{num_experts, top_k, block_size, pad},
        max_tokens_(max_tokens),
        map_(map),
        offset_(offset) {
    const std::int64_t max_numel = std::int64_t{max_tokens} * top_k;
    plan_ = mk::plan_align(max_numel, num_experts, block_size, variant);
    input_ = md::DeviceBuffer<std::int32_t>(
        static_cast<std::size_t>(std::max<std::int64_t>(max_numel, 1)));
    sorted_ = md::DeviceBuffer<std::int32_t>(
        static_cast<std::size_t>(md::sorted_capacity(shape_, max_numel) + offset));
    expert_ids_ = md::DeviceBuffer<std::int32_t>(
        static_cast<std::size_t>(md::expert_ids_capacity(shape_, max_numel) + offset));
    small_ = md::DeviceBuffer<std::int32_t>(5);  // post pad, counters[3], count
    scratch_ = md::DeviceBuffer<std::int32_t>(
        std::max<std::size_t>(1, mk::align_scratch_ints(plan_, num_experts)));
    if (map != nullptr) {
      map_buffer_ = md::DeviceBuffer<std::int32_t>(map->global_to_local.size());
      MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(map_buffer_.get(), map->global_to_local.data(),
                                         map->global_to_local.size() * 4, cudaMemcpyHostToDevice));
    }
  }

  const mk::AlignPlan& plan() const { return plan_; }
  // Runs another plan of the same variant (a small-variant shape, a large-variant form), for the
  // tests of each; the scratch grows to what the plan needs.
  void use_plan(const mk::AlignPlan& plan) {
    plan_ = plan;
    const std::size_t scratch = mk::align_scratch_ints(plan_, shape_.num_experts);
    if (scratch > scratch_.size()) scratch_ = md::DeviceBuffer<std::int32_t>(scratch);
  }

  // Passes the count as a kernel parameter (as DispatchStage::run does) instead of in device
  // memory; the kernels then write the tail's far part while the ids load.
  void use_parameter_count(bool on) { parameter_count_ = on; }

  // Runs `ids` (num_tokens rows) with the count set to `count` (in device memory unless
  // use_parameter_count); returns the outputs.
  md::test::DeviceResult run(const std::vector<std::int32_t>& ids, int count) {
    count_ = count;
    MOE_DISPATCH_CUDA_CHECK(cudaMemset(input_.get(), md::test::kPoisonByte, input_.bytes()));
    if (!ids.empty()) {
      MOE_DISPATCH_CUDA_CHECK(
          cudaMemcpy(input_.get(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    }
    MOE_DISPATCH_CUDA_CHECK(cudaMemset(sorted_.get(), md::test::kPoisonByte, sorted_.bytes()));
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemset(expert_ids_.get(), md::test::kPoisonByte, expert_ids_.bytes()));
    MOE_DISPATCH_CUDA_CHECK(cudaMemset(small_.get(), md::test::kPoisonByte, 16));
    MOE_DISPATCH_CUDA_CHECK(cudaMemset(scratch_.get(), md::test::kPoisonByte, scratch_.bytes()));
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(small_.get() + 4, &count, 4, cudaMemcpyHostToDevice));
    MOE_DISPATCH_CUDA_CHECK(mk::launch_align(params(), plan_, nullptr));
    MOE_DISPATCH_CUDA_CHECK(cudaDeviceSynchronize());
    return md::test::copy_back(sorted_.get() + offset_, sorted_.size() - offset_,
                               expert_ids_.get() + offset_, expert_ids_.size() - offset_,
                               small_.get(), small_.get() + 1);
  }

  mk::AlignParams params() const {
    mk::AlignParams p;
    p.topk_ids = input_.get();
    p.num_tokens = parameter_count_ ? nullptr : small_.get() + 4;
    // With the count in device memory the parameter holds a wrong one (negative: it would also
    // flag a clamp), so a kernel reading the parameter instead fails the comparison.
    p.host_num_tokens = parameter_count_ ? count_ : -1 - count_;
    p.expert_map = map_ != nullptr ? map_buffer_.get() : nullptr;
    p.sorted_token_ids = sorted_.get() + offset_;
    p.expert_ids = expert_ids_.get() + offset_;
    p.num_tokens_post_pad = small_.get();
    p.counters = small_.get() + 1;
    p.scratch = scratch_.get();
    p.num_experts = shape_.num_experts;
    p.top_k = shape_.top_k;
    p.block_size = shape_.block_size;
    p.max_tokens = max_tokens_;
    p.pad_sorted_ids = shape_.pad_sorted_ids;
    p.map_after = map_ != nullptr && map_->mode == md::ExpertMapMode::kMapAfter;
    return p;
  }

  // Whether the entries before the outputs (offset > 0) still hold the poison of the last run.
  bool before_outputs_untouched() const {
    std::int32_t poison = 0;
    std::memset(&poison, md::test::kPoisonByte, sizeof poison);
    std::int32_t sorted_before = 0;
    std::int32_t expert_ids_before = 0;
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemcpy(&sorted_before, sorted_.get() + offset_ - 1, 4, cudaMemcpyDeviceToHost));
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemcpy(&expert_ids_before, expert_ids_.get() + offset_ - 1, 4, cudaMemcpyDeviceToHost));
    return sorted_before == poison && expert_ids_before == poison;
  }

  // Checks one routing against the host reference; returns the difference ("" when equal).
  std::string check(const std::vector<std::int32_t>& ids) {
    const int tokens = static_cast<int>(ids.size()) / shape_.top_k;
    const md::HostAlignResult expected = md::align_reference(ids, shape_, map_);
    return md::test::compare(expected, run(ids, tokens), tokens);
  }

 private:
  md::AlignShape shape_;
  int max_tokens_;
  const md::ExpertMap* map_;
  int offset_;
  bool parameter_count_ = false;
  int count_ = 0;
  mk::AlignPlan plan_;
  md::DeviceBuffer<std::int32_t> input_, sorted_, expert_ids_, small_, scratch_, map_buffer_;
};

constexpr mk::AlignVariant kAllVariants[] = {mk::AlignVariant::kTiny, mk::AlignVariant::kSmall,
                                             mk::AlignVariant::kLarge};

// The largest numel a variant takes (its launcher refuses more).
std::int64_t max_numel(mk::AlignVariant v) {
  switch (v) {
    case mk::AlignVariant::kTiny:
      return mk::kTinyMaxNumel;
    case mk::AlignVariant::kSmall:
      return mk::kSmallMaxNumel;
    case mk::AlignVariant::kLarge:
      break;
  }
  return std::int64_t{1} << 24;
}

// The variants that take numel slots over num_experts experts.
std::vector<mk::AlignVariant> variants_for(std::int64_t numel, int num_experts) {
  std::vector<mk::AlignVariant> v;
  for (const mk::AlignVariant variant : kAllVariants) {
    if (numel <= max_numel(variant) &&
        (variant != mk::AlignVariant::kSmall || num_experts <= mk::kSmallMaxExperts)) {
      v.push_back(variant);
    }
  }
  return v;
}

// A variant's token capacity for a wanted capacity: at most what its numel limit allows.
int capacity_for(mk::AlignVariant v, int wanted_tokens, int top_k) {
  return static_cast<int>(std::min<std::int64_t>(wanted_tokens, max_numel(v) / top_k));
}

std::string name(mk::AlignVariant v) {
  switch (v) {
    case mk::AlignVariant::kTiny:
      return "tiny";
    case mk::AlignVariant::kSmall:
      return "small";
    case mk::AlignVariant::kLarge:
      break;
  }
  return "large";
}

}  // namespace

TEST_CASE(
    "every variant matches the host reference over the token, expert, top-k and block sweep") {
  const int token_counts[] = {0, 1, 2, 3, 7, 64, 255, 256, 1000, 4096, 16384, 65536};
  const int expert_counts[] = {1, 2, 8, 64, 128, 256, 257, 1024};
  const int top_ks[] = {1, 2, 8};
  const int block_sizes[] = {1, 16, 64, 128};
  const Routing routings[] = {Routing::kUniform, Routing::kZipf, Routing::kWithInvalid,
                              Routing::kOneExpert, Routing::kOneNonEmpty};
  std::mt19937 rng(20261125);
  int checked = 0;
  for (const int experts : expert_counts) {
    for (const int top_k : top_ks) {
      if (top_k > experts) continue;
      for (const int block : block_sizes) {
        for (const mk::AlignVariant variant : variants_for(top_k, experts)) {
          // Each variant at its own capacity (the tiny one: 64 slots, the small one: 16384).
          const int capacity = capacity_for(variant, 65536, top_k);
          Harness h(capacity, experts, top_k, block, false, variant);
          for (const int tokens : token_counts) {
            if (tokens > capacity) continue;
            const Routing routing = routings[static_cast<std::size_t>(checked) % 5];
            const auto ids = md::test::make_routing(routing, tokens, top_k, experts, rng);
            const std::string diff = h.check(ids);
            INFO(name(variant) << " E=" << experts << " top_k=" << top_k << " B=" << block
                               << " tokens=" << tokens
                               << " routing=" << std::string(md::test::to_string(routing)));
            CHECK_MESSAGE(diff.empty(), diff);
            ++checked;
          }
        }
      }
    }
  }
  MESSAGE("checked " << checked << " runs");
  CHECK(checked > 1000);
}

TEST_CASE("the tiny variant is exact at each of its shapes (1 and 2 slots per lane)") {
  std::mt19937 rng(22);
  const Routing routings[] = {Routing::kUniform, Routing::kWithInvalid, Routing::kOneExpert,
                              Routing::kZipf};
  int checked = 0;
  for (const int experts : {1, 3, 8, 256, 1024, 4096}) {
    for (const int block : {1, 7, 64, 256}) {
      for (const int top_k : {1, 2, 8}) {
        if (top_k > experts) continue;
        // Capacities on both sides of the 32-slot shape limit, and the 64-slot maximum.
        for (const int capacity_numel : {8, 32, 33, 63, 64}) {
          const int capacity = capacity_numel / top_k;
          if (capacity == 0) continue;
          const bool pad = block == 7 || block == 256;
          Harness h(capacity, experts, top_k, block, pad, mk::AlignVariant::kTiny);
          std::uniform_int_distribution<int> count(0, capacity);
          for (const int tokens : {0, 1, capacity, count(rng)}) {
            const Routing routing = routings[static_cast<std::size_t>(checked) % 4];
            h.use_parameter_count(checked % 2 == 1);
            INFO("E " << experts << ", B " << block << ", top_k " << top_k << ", capacity "
                      << capacity << ", tokens " << tokens << ", items " << h.plan().items << ", "
                      << std::string(md::test::to_string(routing)) << ", pad " << pad
                      << ", count as parameter " << (checked % 2 == 1));
            const std::string diff =
                h.check(md::test::make_routing(routing, tokens, top_k, experts, rng));
            CHECK_MESSAGE(diff.empty(), diff);
            ++checked;
          }
        }
      }
    }
  }
  MESSAGE("checked " << checked << " runs");
  CHECK(checked > 300);
}

TEST_CASE("the small variant is exact in every block and cluster shape it is built for") {
  std::mt19937 rng(31);
  const Routing routings[] = {Routing::kUniform, Routing::kWithInvalid, Routing::kOneExpert,
                              Routing::kZipf, Routing::kOneNonEmpty};
  int checked = 0;
  for (const mk::SmallShape& shape : mk::kSmallShapes) {
    // 64 and 65: a warp zeroes its counter row with one store per lane up to 64 experts; 128,
    // 256 and 257: a thread takes one expert up to E = the block's threads, a run of them above.
    for (const int experts : {1, 8, 64, 65, 128, 256, 257, 2048}) {
      for (const int block : {1, 64}) {
        const int top_k = experts == 1 ? 1 : 8;
        const int capacity = static_cast<int>(shape.capacity() / top_k);
        Harness h(capacity, experts, top_k, block, block == 64, mk::AlignVariant::kSmall);
        h.use_plan(mk::small_plan(shape.capacity(), experts, block, shape));
        std::uniform_int_distribution<int> count(1, capacity);
        for (const int tokens : {0, 1, count(rng), capacity}) {
          const Routing routing = routings[static_cast<std::size_t>(checked) % 5];
          h.use_parameter_count(checked % 2 == 1);
          INFO("shape " << shape.threads << " x " << shape.items << " x " << shape.cluster << " + "
                        << shape.fill << ", exchange " << static_cast<int>(shape.exchange) << ", E "
                        << experts << ", B " << block << ", tokens " << tokens << ", "
                        << std::string(md::test::to_string(routing)));
          const std::string diff =
              h.check(md::test::make_routing(routing, tokens, top_k, experts, rng));
          CHECK_MESSAGE(diff.empty(), diff);
          ++checked;
        }
      }
    }
  }
  MESSAGE("checked " << checked << " runs");
  CHECK(checked == 64 * static_cast<int>(std::size(mk::kSmallShapes)));
}

// The sweep above is too long for the sanitizers; this runs each shape (every exchange of the
// clustered ones) once at its capacity with one expert per thread, and once below it with a run
// of experts per thread and the count as a kernel parameter.
TEST_CASE("each small shape is exact at its capacity and below it, for the sanitizers") {
  std::mt19937 rng(41);
  int checked = 0;
  for (const mk::SmallShape& shape : mk::kSmallShapes) {
    for (const bool full : {true, false}) {
      const int experts = full ? 256 : 1024;
      const int capacity = static_cast<int>(shape.capacity() / 8);
      Harness h(capacity, experts, 8, 16, true, mk::AlignVariant::kSmall);
      h.use_plan(mk::small_plan(shape.capacity(), experts, 16, shape));
      h.use_parameter_count(!full);
      const int tokens = full ? capacity : std::uniform_int_distribution<int>(1, capacity - 1)(rng);
      const Routing routing = full ? Routing::kWithInvalid : Routing::kZipf;
      INFO("shape " << shape.threads << " x " << shape.items << " x " << shape.cluster << " + "
                    << shape.fill << ", exchange " << static_cast<int>(shape.exchange) << ", E "
                    << experts << ", tokens " << tokens);
      const std::string diff = h.check(md::test::make_routing(routing, tokens, 8, experts, rng));
      CHECK_MESSAGE(diff.empty(), diff);
      ++checked;
    }
  }
  CHECK(checked == 2 * static_cast<int>(std::size(mk::kSmallShapes)));
}

TEST_CASE("the large variant is exact with two kernels and with three, at 2, 4 and 8 slots") {
  std::mt19937 rng(37);
  const Routing routings[] = {Routing::kUniform, Routing::kWithInvalid, Routing::kOneExpert,
                              Routing::kZipf, Routing::kOneNonEmpty};
  int checked = 0;
  for (const int kernels : {2, 3}) {
    for (const int experts : {1, 8, 257, 1024}) {
      const int top_k = experts == 1 ? 1 : 8;
      const bool pad = experts == 8 || experts == 1024;
      // Less than one chunk, a few clusters, and up to 32 clusters of 8 blocks (16384 tokens).
      for (const int capacity : {3, 600, 16384}) {
        const std::int64_t numel = std::int64_t{capacity} * top_k;
        Harness h(capacity, experts, top_k, 64, pad, mk::AlignVariant::kLarge);
        for (const int items : {2, 4, 8}) {
          h.use_plan(mk::large_plan(numel, experts, 64, kernels, items));
          std::uniform_int_distribution<int> count(1, capacity);
          for (const int tokens : {0, 1, count(rng), capacity}) {
            const Routing routing = routings[static_cast<std::size_t>(checked) % 5];
            // Both ways of passing the count at every token count, across the groups of four.
            h.use_parameter_count((checked + checked / 4) % 2 == 1);
            INFO(kernels << " kernels, " << items << " slots per thread, E " << experts
                         << ", capacity " << capacity << ", tokens " << tokens << ", grid "
                         << h.plan().grid << ", " << std::string(md::test::to_string(routing))
                         << ", pad " << pad);
            // Rows past the count hold valid ids, which must be ignored.
            const auto ids = md::test::make_routing(routing, capacity, top_k, experts, rng);
            const std::vector<std::int32_t> head(ids.begin(), ids.begin() + tokens * top_k);
            const std::string diff = md::test::compare(
                md::align_reference(head, md::AlignShape{experts, top_k, 64, pad}),
                h.run(ids, tokens), tokens);
            CHECK_MESSAGE(diff.empty(), diff);
            ++checked;
          }
        }
      }
    }
  }
  MESSAGE("checked " << checked << " runs");
  CHECK(checked == 288);
}

TEST_CASE("the large variant's prefix kernel carries its sums across batches of 256 clusters") {
  std::mt19937 rng(41);
  constexpr int kCapacity = 140000;  // 1.12 M slots: 274 clusters of 8 blocks of 512 slots
  const std::int64_t numel = std::int64_t{kCapacity} * 8;
  Harness h(kCapacity, 8, 8, 64, false, mk::AlignVariant::kLarge);
  h.use_plan(mk::large_plan(numel, 8, 64, 3, 2));
  REQUIRE(h.plan().grid / h.plan().cluster > 256);
  const auto ids = md::test::make_routing(Routing::kWithInvalid, kCapacity, 8, 8, rng);
  for (const int tokens : {kCapacity, 135000}) {  // 274 and 264 clusters used
    INFO("tokens " << tokens);
    const std::vector<std::int32_t> head(ids.begin(), ids.begin() + std::int64_t{tokens} * 8);
    const std::string diff = md::test::compare(
        md::align_reference(head, md::AlignShape{8, 8, 64, false}), h.run(ids, tokens), tokens);
    CHECK_MESSAGE(diff.empty(), diff);
  }
}

TEST_CASE("the tiny variant refuses a capacity past 64 slots") {
  Harness h(9, 8, 8, 16, false, mk::AlignVariant::kTiny);  // 72 slots
  CHECK(mk::launch_align(h.params(), h.plan(), nullptr) == cudaErrorInvalidConfiguration);
}

TEST_CASE("the small variant refuses a shape whose capacity misses the launch's") {
  Harness h(64, 64, 8, 16, false, mk::AlignVariant::kSmall);  // 512 slots
  const mk::AlignPlan too_small = mk::small_plan(512, 64, 16, mk::SmallShape{128, 1, 1});
  CHECK(mk::launch_align(h.params(), too_small, nullptr) == cudaErrorInvalidConfiguration);
}

TEST_CASE("the small and large variants refuse more experts than their scans take") {
  Harness small(64, mk::kSmallMaxExperts + 1, 8, 16, false, mk::AlignVariant::kSmall);
  CHECK(mk::launch_align(small.params(), small.plan(), nullptr) == cudaErrorInvalidConfiguration);
  Harness large(64, md::kMaxExperts + 1, 8, 16, false, mk::AlignVariant::kLarge);
  CHECK(mk::launch_align(large.params(), large.plan(), nullptr) == cudaErrorInvalidConfiguration);
}

TEST_CASE("skewed routings give exact results in every variant") {
  std::mt19937 rng(7);
  const Routing skews[] = {Routing::kOneExpert, Routing::kOneNonEmpty, Routing::kZipf};
  for (const int experts : {8, 256, 1024}) {
    for (const int tokens : {1, 8, 255, 2048}) {
      for (const mk::AlignVariant variant : variants_for(std::int64_t{tokens} * 8, experts)) {
        Harness h(capacity_for(variant, 2048, 8), experts, 8, 64, false, variant);
        for (const Routing r : skews) {
          INFO(name(variant) << " E=" << experts << " tokens=" << tokens << " "
                             << std::string(md::test::to_string(r)));
          const std::string diff = h.check(md::test::make_routing(r, tokens, 8, experts, rng));
          CHECK_MESSAGE(diff.empty(), diff);
        }
      }
    }
  }
}

TEST_CASE("the largest supported numel and 4096 experts run on the large variant") {
  std::mt19937 rng(11);
  Harness h(1 << 21, 4096, 8, 16, true, mk::AlignVariant::kLarge);  // numel = 2^24
  const auto ids = md::test::make_routing(Routing::kWithInvalid, 1 << 21, 8, 4096, rng);
  const std::string diff = h.check(ids);
  CHECK_MESSAGE(diff.empty(), diff);
}

TEST_CASE("the edges of each variant's shapes: block sizes near 1024, most experts, most slots") {
  std::mt19937 rng(23);
  const Routing routings[] = {Routing::kUniform, Routing::kWithInvalid, Routing::kZipf};
  int checked = 0;
  // Block sizes near the maximum (1000: not a power of two), every variant that takes the shape.
  for (const int block : {1000, 1024}) {
    for (const int experts : {8, 256}) {
      for (const mk::AlignVariant variant : kAllVariants) {
        const int capacity = capacity_for(variant, 64, 8);
        Harness h(capacity, experts, 8, block, block == 1000, variant);
        for (const int tokens : {1, 7, 64}) {
          if (tokens > capacity) continue;
          const Routing routing = routings[static_cast<std::size_t>(checked) % 3];
          INFO(name(variant) << " B " << block << " E " << experts << " tokens " << tokens);
          const std::string diff =
              h.check(md::test::make_routing(routing, tokens, 8, experts, rng));
          CHECK_MESSAGE(diff.empty(), diff);
          ++checked;
        }
      }
    }
  }
  // 4096 experts at decode sizes: the large variant's blocks past its one chunk only write
  // (E * B outputs), the tiny variant writes a 4 M-entry tail.
  for (const mk::AlignVariant variant : {mk::AlignVariant::kTiny, mk::AlignVariant::kLarge}) {
    for (const int block : {128, 1024}) {
      Harness h(8, 4096, 8, block, false, variant);
      for (const int tokens : {0, 1, 8}) {
        INFO(name(variant) << " E 4096, B " << block << ", tokens " << tokens);
        const std::string diff =
            h.check(md::test::make_routing(Routing::kWithInvalid, tokens, 8, 4096, rng));
        CHECK_MESSAGE(diff.empty(), diff);
        ++checked;
      }
    }
  }
  // The small variant at its largest shared memory: E = 2048, 16384 slots.
  {
    Harness h(2048, 2048, 8, 16, false, mk::AlignVariant::kSmall);
    for (const int tokens : {1, 1000, 2048}) {
      INFO("small E 2048, tokens " << tokens);
      const std::string diff =
          h.check(md::test::make_routing(Routing::kZipf, tokens, 8, 2048, rng));
      CHECK_MESSAGE(diff.empty(), diff);
      ++checked;
    }
  }
  CHECK(checked == 47);  // every shape above ran
}

TEST_CASE("top_k 32 and pad_sorted_ids match the reference") {
  std::mt19937 rng(12);
  const Routing routings[] = {Routing::kUniform, Routing::kWithInvalid, Routing::kOneExpert,
                              Routing::kZipf, Routing::kOneNonEmpty};
  int checked = 0;
  for (const int experts : {64, 1024}) {
    for (const mk::AlignVariant variant : variants_for(32, experts)) {
      const int capacity = capacity_for(variant, 512, 32);
      Harness h(capacity, experts, 32, 48, true, variant);
      for (const int tokens : {0, 1, 2, 33, 511, 512}) {
        if (tokens > capacity) continue;
        const Routing routing = routings[static_cast<std::size_t>(checked++) % 5];
        INFO(name(variant) << " E=" << experts << " tokens=" << tokens << " "
                           << std::string(md::test::to_string(routing)));
        const std::string diff = h.check(md::test::make_routing(routing, tokens, 32, experts, rng));
        CHECK_MESSAGE(diff.empty(), diff);
      }
    }
  }
  CHECK(checked > 20);
}

TEST_CASE("expert_map drop and map_after modes match the reference") {
  std::mt19937 rng(13);
  for (const auto mode : {md::ExpertMapMode::kDrop, md::ExpertMapMode::kMapAfter}) {
    const md::ExpertMap map = md::split_experts(256, 1, 4, mode);
    for (const mk::AlignVariant variant : kAllVariants) {
      // Slots per lane or thread, where the dropped experts pass through the matching of each
      // slot against the others: 4 tokens one (tiny and small), 8 two (tiny), 64 two (small);
      // 1024: each variant at its largest here.
      int previous = -1;
      for (const int wanted : {4, 8, 64, 1024}) {
        const int capacity = capacity_for(variant, wanted, 8);
        if (capacity == previous) continue;  // the tiny variant stops at 8 tokens of top-8
        previous = capacity;
        Harness h(capacity, 256, 8, 64, false, variant, &map);
        // The count in device memory and as a kernel parameter (the tiny variant writes the
        // blocks below the tail's bound on different paths).
        for (const bool parameter : {false, true}) {
          h.use_parameter_count(parameter);
          for (const int tokens : {0, 1, 3, 8, 64, 100, 1024}) {
            if (tokens > capacity) continue;
            INFO(name(variant) << " mode=" << md::to_string(mode) << " capacity=" << capacity
                               << " tokens=" << tokens << " count as parameter=" << parameter);
            const std::string diff =
                h.check(md::test::make_routing(Routing::kWithInvalid, tokens, 8, 256, rng));
            CHECK_MESSAGE(diff.empty(), diff);
          }
        }
      }
    }
  }
}

TEST_CASE("an expert_map entry outside [-1, E) drops its slots in every variant") {
  std::mt19937 rng(17);
  // Rank 0 of 2 owns experts 0..127; five entries are broken: past the experts, below -1, and
  // the ends of int32. The kernels take each as -1 (the host reference refuses such a map).
  md::ExpertMap broken = md::split_experts(256, 0, 2, md::ExpertMapMode::kDrop);
  md::ExpertMap expected_map = broken;
  const std::pair<int, std::int32_t> entries[] = {
      {3, 256}, {7, 1000000}, {200, -2}, {201, INT32_MIN}, {202, INT32_MAX}};
  for (const auto& [global, local] : entries) {
    broken.global_to_local[static_cast<std::size_t>(global)] = local;
    expected_map.global_to_local[static_cast<std::size_t>(global)] = -1;
  }
  const md::AlignShape shape{256, 8, 16, false};
  for (const mk::AlignVariant variant : kAllVariants) {
    const int capacity = capacity_for(variant, 1024, 8);
    Harness h(capacity, 256, 8, 16, false, variant, &broken);
    for (const int tokens : {1, capacity}) {
      auto ids = md::test::make_routing(Routing::kUniform, tokens, 8, 256, rng);
      for (std::size_t i = 0; i < std::size(entries); ++i) ids[i] = entries[i].first;
      INFO(name(variant) << " tokens=" << tokens);
      const md::HostAlignResult expected = md::align_reference(ids, shape, &expected_map);
      const std::string diff = md::test::compare(expected, h.run(ids, tokens), tokens);
      CHECK_MESSAGE(diff.empty(), diff);
    }
  }
}

TEST_CASE("outputs that are not 16-byte aligned are exact and nothing before them is written") {
  std::mt19937 rng(21);
  for (const int experts : {64, 256}) {
    for (const int block : {16, 64}) {
      for (const int tokens : {1, 64, 1000}) {
        for (const mk::AlignVariant variant : variants_for(std::int64_t{tokens} * 8, experts)) {
          INFO("E " << experts << ", B " << block << ", tokens " << tokens << ", variant "
                    << name(variant));
          Harness h(tokens, experts, 8, block, false, variant, nullptr, 1);
          const auto ids = md::test::make_routing(Routing::kUniform, tokens, 8, experts, rng);
          const std::string diff = h.check(ids);
          CHECK_MESSAGE(diff.empty(), diff);
          CHECK(h.before_outputs_untouched());
        }
      }
    }
  }
}

TEST_CASE("two runs on the same input are bit-identical") {
  std::mt19937 rng(14);
  for (const mk::AlignVariant variant : kAllVariants) {
    const int tokens = capacity_for(variant, 2048, 8);
    Harness h(tokens, 256, 8, 64, false, variant);
    const auto ids = md::test::make_routing(Routing::kZipf, tokens, 8, 256, rng);
    const md::test::DeviceResult first = h.run(ids, tokens);
    const md::test::DeviceResult second = h.run(ids, tokens);
    CHECK(first.sorted_token_ids == second.sorted_token_ids);
    CHECK(first.expert_ids == second.expert_ids);
    CHECK(first.num_tokens_post_pad == second.num_tokens_post_pad);
  }
}

TEST_CASE("a count outside [0, capacity] is clamped and flagged, never read out of bounds") {
  std::mt19937 rng(15);
  const md::AlignShape shape{64, 2, 16, false};
  for (const mk::AlignVariant variant : kAllVariants) {
    // 16 tokens: the tiny variant at one slot per lane; 256: each variant at its largest here.
    for (const int wanted : {16, 256}) {
      // In device memory (align_async, run_device_count) and as a kernel parameter (run()).
      for (const bool parameter : {false, true}) {
        const int capacity = capacity_for(variant, wanted, 2);
        Harness h(capacity, 64, 2, 16, false, variant);
        h.use_parameter_count(parameter);
        const auto ids = md::test::make_routing(Routing::kUniform, capacity, 2, 64, rng);
        INFO(name(variant) << " capacity " << capacity << ", count as parameter " << parameter);

        const md::test::DeviceResult above = h.run(ids, 100000);
        CHECK(above.counters[1] == 1);
        CHECK(md::test::compare(md::align_reference(ids, shape), above, capacity, true).empty());

        const md::test::DeviceResult negative = h.run(ids, -5);
        CHECK(negative.counters[1] == 1);
        CHECK(md::test::compare(md::align_reference(std::vector<std::int32_t>{}, shape), negative,
                                0, true)
                  .empty());

        const md::test::DeviceResult inside = h.run(ids, capacity);
        CHECK(inside.counters[1] == 0);
        CHECK(md::test::compare(md::align_reference(ids, shape), inside, capacity).empty());
      }
    }
  }
}

TEST_CASE("a count passed as a kernel parameter gives the same outputs in every variant") {
  std::mt19937 rng(24);
  int checked = 0;
  for (const int experts : {8, 256}) {
    for (const int block : {16, 64}) {
      for (const mk::AlignVariant variant : kAllVariants) {
        for (const int wanted : {4, 2048}) {
          const int capacity = capacity_for(variant, wanted, 8);
          Harness h(capacity, experts, 8, block, false, variant);
          h.use_parameter_count(true);
          for (const int tokens : {0, 1, 3, 1000, capacity}) {
            if (tokens > capacity) continue;
            INFO(name(variant) << " E " << experts << ", B " << block << ", capacity " << capacity
                               << ", tokens " << tokens);
            const std::string diff =
                h.check(md::test::make_routing(Routing::kWithInvalid, tokens, 8, experts, rng));
            CHECK_MESSAGE(diff.empty(), diff);
            ++checked;
          }
        }
      }
    }
  }
  CHECK(checked > 40);
}

TEST_CASE("a count below the capacity aligns only the true count, never the capacity") {
  std::mt19937 rng(16);
  for (const mk::AlignVariant variant : kAllVariants) {
    const int capacity = capacity_for(variant, 1024, 8);
    Harness h(capacity, 128, 8, 64, false, variant);
    for (const bool parameter : {false, true}) {
      h.use_parameter_count(parameter);
      for (const int tokens : {1, 3, 7, 1000}) {
        if (tokens >= capacity) continue;
        // Rows past the count hold valid ids that must be ignored.
        auto ids = md::test::make_routing(Routing::kUniform, capacity, 8, 128, rng);
        const std::vector<std::int32_t> head(ids.begin(), ids.begin() + tokens * 8);
        md::test::DeviceResult r = h.run(ids, tokens);
        INFO(name(variant) << " tokens=" << tokens << " count as parameter=" << parameter);
        const std::string diff = md::test::compare(
            md::align_reference(head, md::AlignShape{128, 8, 64, false}), r, tokens);
        CHECK_MESSAGE(diff.empty(), diff);
      }
    }
  }
}
