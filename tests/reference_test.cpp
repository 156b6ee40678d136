// The host reference against the contract of DESIGN.md §1: vLLM's worked example, hand-computed
// cases for each rule, argument errors, and large random inputs checked against the independent
// oracle of support/oracle.hpp.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "moe_dispatch/align.hpp"
#include "moe_dispatch/config.hpp"
#include "moe_dispatch/errors.hpp"
#include "moe_dispatch/reference.hpp"
#include "support/gpu.hpp"
#include "support/oracle.hpp"

extern const bool kNeedsGpu;
const bool kNeedsGpu = false;

namespace {

using moe_dispatch::align_reference;
using moe_dispatch::AlignShape;
using moe_dispatch::ArgumentError;
using moe_dispatch::ExpertMap;
using moe_dispatch::ExpertMapMode;
using moe_dispatch::HostAlignResult;
using moe_dispatch::test::align_oracle;
using moe_dispatch::test::first_difference;
using moe_dispatch::test::make_routing;
using moe_dispatch::test::Routing;
using Ids = std::vector<std::int32_t>;

constexpr std::int32_t kIntMin = std::numeric_limits<std::int32_t>::min();
constexpr std::int32_t kIntMax = std::numeric_limits<std::int32_t>::max();

constexpr Routing kAllRoutings[] = {Routing::kUniform, Routing::kOneExpert, Routing::kOneNonEmpty,
                                    Routing::kZipf, Routing::kWithInvalid};

// `head` followed by `fill` up to `size` entries.
Ids padded(Ids head, std::size_t size, std::int32_t fill) {
  REQUIRE(head.size() <= size);
  head.resize(size, fill);
  return head;
}

HostAlignResult expected(Ids sorted, Ids expert_ids, std::int32_t post_pad,
                         std::int32_t invalid = 0) {
  HostAlignResult r;
  r.sorted_token_ids = std::move(sorted);
  r.expert_ids = std::move(expert_ids);
  r.num_tokens_post_pad = post_pad;
  r.num_invalid_ids = invalid;
  return r;
}

void check_same(const HostAlignResult& got, const HostAlignResult& want) {
  const std::string diff = first_difference(got, want);
  CHECK_MESSAGE(diff.empty(), diff);
}

// The reference and the oracle agree on this input.
void check_against_oracle(const Ids& ids, const AlignShape& shape, const ExpertMap* map = nullptr) {
  const HostAlignResult got = align_reference(ids, shape, map);
  check_same(got, align_oracle(ids, shape, map));
}

// Every expert local, local id = global id.
ExpertMap identity_map(int num_experts, ExpertMapMode mode) {
  ExpertMap map{Ids(static_cast<std::size_t>(num_experts)), mode};
  std::iota(map.global_to_local.begin(), map.global_to_local.end(), 0);
  return map;
}

// About `local_percent`% of the experts local, with distinct local ids in shuffled order (so local
// order differs from global order).
ExpertMap random_map(int num_experts, int local_percent, ExpertMapMode mode, std::mt19937& rng) {
  ExpertMap map{Ids(static_cast<std::size_t>(num_experts), -1), mode};
  std::vector<std::size_t> globals(static_cast<std::size_t>(num_experts));
  std::iota(globals.begin(), globals.end(), std::size_t{0});
  std::shuffle(globals.begin(), globals.end(), rng);
  const auto num_local = static_cast<std::size_t>(num_experts * local_percent / 100);
  for (std::size_t local = 0; local < num_local; ++local) {
    map.global_to_local[globals[local]] = static_cast<std::int32_t>(local);
  }
  return map;
}

// Contiguous slice [first, first + count) of the experts, local ids 0..count-1 (an EP rank).
ExpertMap slice_map(int num_experts, int first, int count, ExpertMapMode mode) {
  ExpertMap map{Ids(static_cast<std::size_t>(num_experts), -1), mode};
  for (int i = 0; i < count; ++i) map.global_to_local[static_cast<std::size_t>(first + i)] = i;
  return map;
}

// Slots in [seg_begin, seg_end) of sorted_token_ids that are not the sentinel.
Ids slots_in(const HostAlignResult& r, std::size_t seg_begin, std::size_t seg_end,
             std::int32_t sentinel) {
  Ids out;
  for (std::size_t i = seg_begin; i < seg_end; ++i) {
    if (r.sorted_token_ids[i] != sentinel) out.push_back(r.sorted_token_ids[i]);
  }
  return out;
}

// The message of the ArgumentError that align_reference throws; fails the test on anything else.
std::string argument_error(const Ids& ids, const AlignShape& shape,
                           const ExpertMap* map = nullptr) {
  try {
    align_reference(ids, shape, map);
  } catch (const ArgumentError& error) {
    return error.what();
  } catch (const std::exception& error) {
    FAIL("threw something other than ArgumentError: " << error.what());
  }
  FAIL("align_reference accepted the input");
  return {};
}

const Ids kVllmIds = {2, 3, 4, 1, 2, 4, 1, 3, 4, 1, 2, 3};
constexpr AlignShape kVllmShape{5, 3, 4, false};

}  // namespace

TEST_CASE("vLLM's docstring example gives vLLM's output") {
  const HostAlignResult r = align_reference(kVllmIds, kVllmShape);
  // capacity 12 + 5 * 3 = 27 entries, ceil(27 / 4) = 7 blocks.
  check_same(r, expected(padded({3, 6, 9, 12, 0, 4, 10, 12, 1, 7, 11, 12, 2, 5, 8, 12}, 27, 12),
                         {1, 2, 3, 4, -1, -1, -1}, 16));
}

TEST_CASE("the oracle reproduces vLLM's docstring example") {
  check_same(align_oracle(kVllmIds, kVllmShape),
             expected(padded({3, 6, 9, 12, 0, 4, 10, 12, 1, 7, 11, 12, 2, 5, 8, 12}, 27, 12),
                      {1, 2, 3, 4, -1, -1, -1}, 16));
}

TEST_CASE("a hand-computed single-choice routing pads each expert to a block") {
  // Expert 0 holds slots 0, 2, 3; expert 1 none; expert 2 slots 1, 4. Capacity 5 + 3 = 8.
  const HostAlignResult r = align_reference(Ids{0, 2, 0, 0, 2}, AlignShape{3, 1, 2, false});
  check_same(r, expected({0, 2, 3, 5, 1, 4, 5, 5}, {0, 0, 2, -1}, 6));
}

TEST_CASE("a hand-computed top-2 routing groups slots by expert") {
  // Rows [3,0] [0,1] [3,1]: expert 0 <- slots 1, 2; expert 1 <- 3, 5; expert 3 <- 0, 4.
  const HostAlignResult r = align_reference(Ids{3, 0, 0, 1, 3, 1}, AlignShape{4, 2, 3, false});
  check_same(r, expected(padded({1, 2, 6, 3, 5, 6, 0, 4, 6}, 14, 6), {0, 1, 3, -1, -1}, 9));
}

TEST_CASE("segments already a multiple of the block size take no padding") {
  const HostAlignResult r = align_reference(Ids{1, 1, 0, 0}, AlignShape{2, 1, 2, false});
  check_same(r, expected({2, 3, 0, 1, 4, 4}, {0, 1, -1}, 4));
}

TEST_CASE("zero tokens give an all-sentinel output with no blocks") {
  auto check_empty = [](const AlignShape& shape) {
    const HostAlignResult r = align_reference(std::span<const std::int32_t>{}, shape);
    const std::size_t capacity = static_cast<std::size_t>(shape.num_experts) *
                                 static_cast<std::size_t>(shape.block_size - 1);
    const std::size_t blocks = (capacity + static_cast<std::size_t>(shape.block_size) - 1) /
                               static_cast<std::size_t>(shape.block_size);
    check_same(r, expected(Ids(capacity, 0), Ids(blocks, -1), 0));
  };
  SUBCASE("E=5 B=4") { check_empty(AlignShape{5, 3, 4, false}); }
  SUBCASE("E=256 B=64 top_k=8") { check_empty(AlignShape{256, 8, 64, false}); }
  SUBCASE("E=1 B=1: nothing at all") { check_empty(AlignShape{1, 1, 1, false}); }
  SUBCASE("E=64 B=128") { check_empty(AlignShape{64, 2, 128, false}); }
  SUBCASE("with an expert map") {
    const ExpertMap map = slice_map(8, 2, 4, ExpertMapMode::kDrop);
    const HostAlignResult r =
        align_reference(std::span<const std::int32_t>{}, AlignShape{8, 2, 16, false}, &map);
    check_same(r, expected(Ids(8 * 15, 0), Ids(8, -1), 0));
  }
}

TEST_CASE("one token occupies one block per chosen expert") {
  SUBCASE("top-2 of 8 experts, B=4") {
    // Slot 0 -> expert 5, slot 1 -> expert 2. Capacity 2 + 8 * 3 = 26, 7 blocks.
    const HostAlignResult r = align_reference(Ids{5, 2}, AlignShape{8, 2, 4, false});
    check_same(r, expected(padded({1, 2, 2, 2, 0, 2, 2, 2}, 26, 2), {2, 5, -1, -1, -1, -1, -1}, 8));
  }
  SUBCASE("top-1 of 1 expert, B=1") {
    const HostAlignResult r = align_reference(Ids{0}, AlignShape{1, 1, 1, false});
    check_same(r, expected({0}, {0}, 1));
  }
  SUBCASE("top-8 of 256 experts, B=64") {
    const Ids ids = {200, 3, 17, 255, 0, 128, 64, 9};
    const HostAlignResult r = align_reference(ids, AlignShape{256, 8, 64, false});
    CHECK(r.num_tokens_post_pad == 8 * 64);
    const Ids owners(r.expert_ids.begin(), r.expert_ids.begin() + 8);
    CHECK(owners == Ids{0, 3, 9, 17, 64, 128, 200, 255});
    check_against_oracle(ids, AlignShape{256, 8, 64, false});
  }
}

TEST_CASE("one expert taking every slot fills consecutive blocks") {
  const HostAlignResult r = align_reference(Ids(10, 2), AlignShape{4, 1, 4, false});
  // Capacity 10 + 4 * 3 = 22, 6 blocks.
  check_same(r, expected(padded({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10}, 22, 10),
                         {2, 2, 2, -1, -1, -1}, 12));
}

TEST_CASE("experts with no tokens take no blocks") {
  SUBCASE("two of eight experts used") {
    // Expert 1 <- slots 0, 3, 4; expert 6 <- slots 1, 2, 5.
    const HostAlignResult r = align_reference(Ids{1, 6, 6, 1, 1, 6}, AlignShape{8, 2, 4, false});
    CHECK(r.num_tokens_post_pad == 8);
    check_same(r,
               expected(padded({0, 3, 4, 6, 1, 2, 5, 6}, 6 + 8 * 3, 6), padded({1, 6}, 8, -1), 8));
  }
  SUBCASE("one non-empty expert out of 256, random") {
    std::mt19937 rng(11);
    const Ids ids = make_routing(Routing::kOneNonEmpty, 300, 8, 256, rng);
    const HostAlignResult r = align_reference(ids, AlignShape{256, 8, 64, false});
    std::vector<bool> used(256, false);
    for (const std::int32_t id : ids) used[static_cast<std::size_t>(id)] = true;
    const auto valid_blocks = static_cast<std::size_t>(r.num_tokens_post_pad / 64);
    for (std::size_t b = 0; b < valid_blocks; ++b) {
      CHECK(used[static_cast<std::size_t>(r.expert_ids[b])]);
    }
    check_against_oracle(ids, AlignShape{256, 8, 64, false});
  }
}

TEST_CASE("block size 1 needs no padding") {
  const Ids ids = {3, 0, 2, 0, 3, 3};
  const HostAlignResult r = align_reference(ids, AlignShape{4, 2, 1, false});
  // Capacity is numel exactly; each slot is its own block.
  check_same(r, expected({1, 3, 2, 0, 4, 5}, {0, 0, 2, 3, 3, 3}, 6));
  SUBCASE("pad_sorted_ids changes nothing at B=1") {
    check_same(align_reference(ids, AlignShape{4, 2, 1, true}), r);
  }
}

TEST_CASE("pad_sorted_ids rounds the capacity up to a multiple of the block size") {
  auto sizes = [](const Ids& ids, AlignShape shape) {
    const HostAlignResult r = align_reference(ids, shape);
    return std::pair{r.sorted_token_ids.size(), r.expert_ids.size()};
  };
  SUBCASE("vLLM example: 27 -> 28") {
    AlignShape shape = kVllmShape;
    CHECK(sizes(kVllmIds, shape) == std::pair<std::size_t, std::size_t>{27, 7});
    shape.pad_sorted_ids = true;
    CHECK(sizes(kVllmIds, shape) == std::pair<std::size_t, std::size_t>{28, 7});
  }
  SUBCASE("10 -> 12") {
    CHECK(sizes(Ids{1}, AlignShape{3, 1, 4, true}) == std::pair<std::size_t, std::size_t>{12, 3});
  }
  SUBCASE("already a multiple: 8 stays 8") {
    CHECK(sizes(Ids{0, 1}, AlignShape{2, 1, 4, true}) == std::pair<std::size_t, std::size_t>{8, 2});
  }
  SUBCASE("zero tokens: 9 -> 12") {
    CHECK(sizes(Ids{}, AlignShape{3, 2, 4, true}) == std::pair<std::size_t, std::size_t>{12, 3});
  }
}

TEST_CASE("pad_sorted_ids changes only the extents, not the contents") {
  std::mt19937 rng(5);
  for (const int block : {3, 16, 64, 100}) {
    CAPTURE(block);
    const Ids ids = make_routing(Routing::kZipf, 37, 4, 20, rng);
    const HostAlignResult plain = align_reference(ids, AlignShape{20, 4, block, false});
    const HostAlignResult padded_r = align_reference(ids, AlignShape{20, 4, block, true});
    CHECK(padded_r.num_tokens_post_pad == plain.num_tokens_post_pad);
    CHECK(padded_r.sorted_token_ids.size() % static_cast<std::size_t>(block) == 0);
    REQUIRE(padded_r.sorted_token_ids.size() >= plain.sorted_token_ids.size());
    CHECK(std::equal(plain.sorted_token_ids.begin(), plain.sorted_token_ids.end(),
                     padded_r.sorted_token_ids.begin()));
    CHECK(std::all_of(padded_r.sorted_token_ids.begin() +
                          static_cast<std::ptrdiff_t>(plain.sorted_token_ids.size()),
                      padded_r.sorted_token_ids.end(), [](std::int32_t v) { return v == 37 * 4; }));
    REQUIRE(padded_r.expert_ids.size() >= plain.expert_ids.size());
    CHECK(
        std::equal(plain.expert_ids.begin(), plain.expert_ids.end(), padded_r.expert_ids.begin()));
  }
}

TEST_CASE("output extents follow sorted_capacity and expert_ids_capacity") {
  std::mt19937 rng(3);
  for (const AlignShape shape : {AlignShape{1, 1, 1, false}, AlignShape{5, 3, 4, true},
                                 AlignShape{64, 2, 128, false}, AlignShape{256, 8, 64, true},
                                 AlignShape{7, 7, 1000, true}, AlignShape{7, 2, 1000, false}}) {
    for (const int tokens : {0, 1, 13, 500}) {
      CAPTURE(shape.num_experts);
      CAPTURE(shape.block_size);
      CAPTURE(tokens);
      const Ids ids = make_routing(Routing::kUniform, tokens, shape.top_k, shape.num_experts, rng);
      const HostAlignResult r = align_reference(ids, shape);
      const auto numel = static_cast<std::int64_t>(ids.size());
      CHECK(static_cast<std::int64_t>(r.sorted_token_ids.size()) ==
            moe_dispatch::sorted_capacity(shape, numel));
      CHECK(static_cast<std::int64_t>(r.expert_ids.size()) ==
            moe_dispatch::expert_ids_capacity(shape, numel));
      CHECK(r.num_tokens_post_pad % shape.block_size == 0);
      CHECK(r.num_tokens_post_pad <= static_cast<std::int64_t>(r.sorted_token_ids.size()));
    }
  }
}

TEST_CASE("expert_map in drop mode maps ids to local experts and drops the rest") {
  // Global 1 -> local 0, global 3 -> local 1; globals 0 and 2 live elsewhere.
  const ExpertMap map{{-1, 0, -1, 1}, ExpertMapMode::kDrop};
  // Rows [1,3] [0,1] [3,2] [1,0]. Local 0 <- slots 0, 3, 6; local 1 <- slots 1, 4.
  const Ids ids = {1, 3, 0, 1, 3, 2, 1, 0};
  const HostAlignResult r = align_reference(ids, AlignShape{4, 2, 2, false}, &map);
  check_same(r, expected(padded({0, 3, 6, 8, 1, 4}, 12, 8), {0, 0, 1, -1, -1, -1}, 6));
}

TEST_CASE("expert_map in map-after mode aligns over global ids then maps expert_ids") {
  const ExpertMap map{{-1, 0, -1, 1}, ExpertMapMode::kMapAfter};
  const Ids ids = {1, 3, 0, 1, 3, 2, 1, 0};
  const HostAlignResult r = align_reference(ids, AlignShape{4, 2, 2, false}, &map);
  // Global 0 <- 2, 7; global 1 <- 0, 3, 6; global 2 <- 5; global 3 <- 1, 4. The blocks of globals 0
  // and 2 are owned by -1 but still count in num_tokens_post_pad.
  check_same(r, expected({2, 7, 0, 3, 6, 8, 5, 8, 1, 4, 8, 8}, {-1, 0, 0, -1, 1, -1}, 10));
}

TEST_CASE("drop mode orders segments by local id, not global id") {
  // Global 0 -> local 2, global 1 -> local 0, global 2 -> local 1.
  const ExpertMap map{{2, 0, 1}, ExpertMapMode::kDrop};
  const HostAlignResult r = align_reference(Ids{0, 1, 2, 0}, AlignShape{3, 1, 2, false}, &map);
  check_same(r, expected({1, 4, 2, 4, 0, 3, 4}, {0, 1, 2, -1}, 6));
  SUBCASE("map-after keeps global order and relabels the blocks") {
    const ExpertMap after{{2, 0, 1}, ExpertMapMode::kMapAfter};
    const HostAlignResult a = align_reference(Ids{0, 1, 2, 0}, AlignShape{3, 1, 2, false}, &after);
    check_same(a, expected({0, 3, 1, 4, 2, 4, 4}, {2, 0, 1, -1}, 6));
  }
}

TEST_CASE("drop mode with no local expert drops every slot") {
  const ExpertMap map{{-1, -1, -1}, ExpertMapMode::kDrop};
  const HostAlignResult r = align_reference(Ids{0, 1, 2}, AlignShape{3, 1, 2, false}, &map);
  check_same(r, expected(Ids(6, 3), Ids(3, -1), 0, 0));
}

TEST_CASE("map-after mode with no local expert still pads every expert") {
  const ExpertMap map{{-1, -1, -1}, ExpertMapMode::kMapAfter};
  const HostAlignResult r = align_reference(Ids{0, 1, 2}, AlignShape{3, 1, 2, false}, &map);
  check_same(r, expected({0, 3, 1, 3, 2, 3}, {-1, -1, -1}, 6, 0));
}

TEST_CASE("an identity expert_map gives the same output as no map") {
  std::mt19937 rng(8);
  const Ids ids = make_routing(Routing::kWithInvalid, 200, 4, 32, rng);
  const AlignShape shape{32, 4, 16, false};
  const HostAlignResult plain = align_reference(ids, shape);
  for (const ExpertMapMode mode : {ExpertMapMode::kDrop, ExpertMapMode::kMapAfter}) {
    const ExpertMap map = identity_map(32, mode);
    check_same(align_reference(ids, shape, &map), plain);
  }
}

TEST_CASE("dropped slots are not counted as invalid ids") {
  const ExpertMap map = slice_map(4, 0, 2, ExpertMapMode::kDrop);  // globals 0, 1 local
  // Slot 0 -> local 0, slots 1, 2 dropped, slot 3 invalid, slot 4 -> local 1, slot 5 invalid.
  const Ids ids = {0, 2, 3, 4, 1, -7};
  const HostAlignResult r = align_reference(ids, AlignShape{4, 1, 2, false}, &map);
  check_same(r, expected(padded({0, 6, 4, 6}, 10, 6), {0, 1, -1, -1, -1}, 4, 2));
  SUBCASE("map-after counts the same invalid ids and keeps the remote slots") {
    const ExpertMap after = slice_map(4, 0, 2, ExpertMapMode::kMapAfter);
    const HostAlignResult a = align_reference(ids, AlignShape{4, 1, 2, false}, &after);
    check_same(a, expected(padded({0, 6, 4, 6, 1, 6, 2, 6}, 10, 6), {0, 1, -1, -1, -1}, 8, 2));
  }
}

TEST_CASE("out-of-range ids are skipped and counted") {
  // Valid: slot 0 -> 0, slot 3 -> 2, slot 6 -> 0. Four ids outside [0, 3).
  const Ids ids = {0, -1, 3, 2, kIntMin, kIntMax, 0};
  const HostAlignResult r = align_reference(ids, AlignShape{3, 1, 2, false});
  check_same(r, expected(padded({0, 6, 3, 7}, 10, 7), {0, 2, -1, -1, -1}, 4, 4));
}

TEST_CASE("only invalid ids give an all-sentinel output") {
  const Ids ids = {-1, 5, 6, kIntMin, kIntMax, -2};
  const HostAlignResult r = align_reference(ids, AlignShape{5, 2, 4, false});
  check_same(r, expected(Ids(6 + 15, 6), Ids(6, -1), 0, 6));
}

TEST_CASE("invalid ids are never written to any output") {
  std::mt19937 rng(21);
  const Ids ids = make_routing(Routing::kWithInvalid, 2000, 8, 64, rng);
  const AlignShape shape{64, 8, 32, false};
  const HostAlignResult r = align_reference(ids, shape);
  const auto numel = static_cast<std::int32_t>(ids.size());
  std::int32_t invalid = 0;
  std::vector<bool> seen(ids.size(), false);
  for (const std::int32_t v : r.sorted_token_ids) {
    REQUIRE(v >= 0);
    REQUIRE(v <= numel);
    if (v == numel) continue;
    const std::int32_t id = ids[static_cast<std::size_t>(v)];
    CHECK((id >= 0 && id < 64));
    seen[static_cast<std::size_t>(v)] = true;
  }
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= 64) ++invalid;
  }
  REQUIRE(invalid > 0);
  CHECK(r.num_invalid_ids == invalid);
  for (const std::int32_t e : r.expert_ids) CHECK((e >= -1 && e < 64));
  check_against_oracle(ids, shape);
}

TEST_CASE("slot indices ascend within each expert's segment") {
  std::mt19937 rng(4);
  for (const Routing kind : kAllRoutings) {
    CAPTURE(moe_dispatch::test::to_string(kind));
    const Ids ids = make_routing(kind, 1000, 4, 16, rng);
    const AlignShape shape{16, 4, 32, false};
    const HostAlignResult r = align_reference(ids, shape);
    const auto numel = static_cast<std::int32_t>(ids.size());
    const auto blocks = static_cast<std::size_t>(r.num_tokens_post_pad / 32);
    std::size_t seg_begin = 0;
    for (std::size_t b = 0; b <= blocks; ++b) {
      if (b == blocks || r.expert_ids[b] != r.expert_ids[seg_begin]) {
        const Ids slots = slots_in(r, seg_begin * 32, b * 32, numel);
        CHECK(std::is_sorted(slots.begin(), slots.end()));
        CHECK(std::adjacent_find(slots.begin(), slots.end()) == slots.end());
        seg_begin = b;
      }
    }
  }
}

TEST_CASE("every valid slot appears exactly once") {
  std::mt19937 rng(6);
  for (const Routing kind : kAllRoutings) {
    CAPTURE(moe_dispatch::test::to_string(kind));
    const Ids ids = make_routing(kind, 777, 8, 128, rng);
    const HostAlignResult r = align_reference(ids, AlignShape{128, 8, 16, false});
    const auto numel = static_cast<std::int32_t>(ids.size());
    std::vector<int> times(ids.size(), 0);
    for (const std::int32_t v : r.sorted_token_ids) {
      if (v != numel) ++times[static_cast<std::size_t>(v)];
    }
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const bool valid = ids[i] >= 0 && ids[i] < 128;
      CHECK(times[i] == (valid ? 1 : 0));
    }
  }
}

TEST_CASE("the sentinel is the true numel, never a bucket's") {
  // A stage captured for 64 tokens runs with fewer: the output is the output for the prefix.
  std::mt19937 rng(9);
  const Ids bucket = make_routing(Routing::kUniform, 64, 2, 8, rng);
  for (const int tokens : {1, 5, 33, 63, 64}) {
    CAPTURE(tokens);
    const std::span<const std::int32_t> prefix(bucket.data(), static_cast<std::size_t>(tokens) * 2);
    const HostAlignResult r = align_reference(prefix, AlignShape{8, 2, 16, false});
    const auto sentinel = static_cast<std::int32_t>(prefix.size());
    const auto written = std::count_if(r.sorted_token_ids.begin(), r.sorted_token_ids.end(),
                                       [&](std::int32_t v) { return v != sentinel; });
    CHECK(written == static_cast<std::ptrdiff_t>(prefix.size()));
    CHECK(std::all_of(r.sorted_token_ids.begin(), r.sorted_token_ids.end(),
                      [&](std::int32_t v) { return v >= 0 && v <= sentinel; }));
    CHECK(r.sorted_token_ids.back() == sentinel);
    check_same(r, align_oracle(prefix, AlignShape{8, 2, 16, false}));
  }
}

TEST_CASE("a token choosing the same expert twice keeps both slots in order") {
  const HostAlignResult r = align_reference(Ids{1, 1, 0, 1}, AlignShape{2, 2, 4, false});
  check_same(r, expected(padded({2, 4, 4, 4, 0, 1, 3, 4}, 4 + 2 * 3, 4), {0, 1, -1}, 8));
}

TEST_CASE("a single expert takes every valid slot") {
  SUBCASE("E=1, B=3") {
    const HostAlignResult r = align_reference(Ids{0, 0, 0, 0}, AlignShape{1, 1, 3, false});
    check_same(r, expected({0, 1, 2, 3, 4, 4}, {0, 0}, 6));
  }
  SUBCASE("E=1 with invalid ids") {
    const HostAlignResult r = align_reference(Ids{0, 1, 0, -1}, AlignShape{1, 2, 3, false});
    check_same(r, expected({0, 2, 4, 4, 4, 4}, {0, -1}, 3, 2));
  }
}

TEST_CASE("each valid block is owned by the expert of the slots it holds") {
  std::mt19937 rng(12);
  for (const Routing kind : kAllRoutings) {
    CAPTURE(moe_dispatch::test::to_string(kind));
    const Ids ids = make_routing(kind, 513, 8, 256, rng);
    const HostAlignResult r = align_reference(ids, AlignShape{256, 8, 64, false});
    const auto numel = static_cast<std::int32_t>(ids.size());
    for (std::size_t i = 0; i < static_cast<std::size_t>(r.num_tokens_post_pad); ++i) {
      const std::int32_t slot = r.sorted_token_ids[i];
      if (slot == numel) continue;
      REQUIRE(ids[static_cast<std::size_t>(slot)] == r.expert_ids[i / 64]);
    }
    // Past num_tokens_post_pad: sentinel only, blocks -1 only.
    CHECK(std::all_of(r.sorted_token_ids.begin() + r.num_tokens_post_pad, r.sorted_token_ids.end(),
                      [&](std::int32_t v) { return v == numel; }));
    CHECK(std::all_of(r.expert_ids.begin() + r.num_tokens_post_pad / 64, r.expert_ids.end(),
                      [](std::int32_t v) { return v == -1; }));
  }
}

TEST_CASE("num_tokens_post_pad is the sum of padded per-expert counts") {
  std::mt19937 rng(13);
  for (const int block : {1, 7, 16, 128}) {
    CAPTURE(block);
    const Ids ids = make_routing(Routing::kWithInvalid, 900, 2, 64, rng);
    std::vector<std::int32_t> counts(64, 0);
    for (const std::int32_t id : ids) {
      if (id >= 0 && id < 64) ++counts[static_cast<std::size_t>(id)];
    }
    std::int32_t want = 0;
    for (const std::int32_t c : counts) want += (c + block - 1) / block * block;
    CHECK(align_reference(ids, AlignShape{64, 2, block, false}).num_tokens_post_pad == want);
  }
}

TEST_CASE("results are identical from call to call") {
  std::mt19937 rng(14);
  const Ids ids = make_routing(Routing::kZipf, 4096, 8, 256, rng);
  const AlignShape shape{256, 8, 64, true};
  const HostAlignResult first = align_reference(ids, shape);
  for (int i = 0; i < 3; ++i) check_same(align_reference(ids, shape), first);
}

TEST_CASE("reusing out and counts across sizes gives the same result as a fresh call") {
  std::mt19937 rng(15);
  HostAlignResult out;
  std::vector<std::int32_t> counts;
  const ExpertMap drop = random_map(64, 50, ExpertMapMode::kDrop, rng);
  const ExpertMap after = random_map(64, 25, ExpertMapMode::kMapAfter, rng);
  struct Call {
    int tokens, top_k, experts, block;
    bool pad;
    const ExpertMap* map;
  };
  const Call calls[] = {
      {4096, 8, 256, 64, false, nullptr}, {1, 8, 256, 64, false, nullptr},
      {0, 2, 64, 16, true, &drop},        {3000, 2, 64, 128, false, &after},
      {17, 1, 3, 5, true, nullptr},       {50000, 4, 64, 1, false, &drop},
      {2, 2, 8, 1024, true, nullptr},     {300, 4, 64, 32, false, nullptr},
  };
  for (const Call& c : calls) {
    CAPTURE(c.tokens);
    CAPTURE(c.experts);
    CAPTURE(c.block);
    const Ids ids = make_routing(Routing::kWithInvalid, c.tokens, c.top_k, c.experts, rng);
    const AlignShape shape{c.experts, c.top_k, c.block, c.pad};
    align_reference(ids, shape, c.map, out, counts);
    check_same(out, align_reference(ids, shape, c.map));
    check_same(out, align_oracle(ids, shape, c.map));
  }
}

TEST_CASE("reused buffers holding garbage are fully overwritten") {
  HostAlignResult out;
  out.sorted_token_ids.assign(1000, 123456);
  out.expert_ids.assign(1000, 777);
  out.num_tokens_post_pad = 99;
  out.num_invalid_ids = 98;
  std::vector<std::int32_t> counts(4096, -5);
  align_reference(kVllmIds, kVllmShape, nullptr, out, counts);
  check_same(out, align_reference(kVllmIds, kVllmShape));
}

TEST_CASE("top_k 0 is an ArgumentError") {
  CHECK_THROWS_AS(align_reference(Ids{}, AlignShape{4, 0, 4, false}), ArgumentError);
  CHECK_THROWS_AS(align_reference(Ids{1, 2}, AlignShape{4, 0, 4, false}), ArgumentError);
}

TEST_CASE("numel not a multiple of top_k is an ArgumentError") {
  CHECK_THROWS_AS(align_reference(Ids{0, 1, 2}, AlignShape{4, 2, 4, false}), ArgumentError);
  CHECK_THROWS_AS(align_reference(Ids{0}, AlignShape{4, 8, 4, false}), ArgumentError);
  SUBCASE("through the buffer-reusing form, which keeps its buffers usable") {
    HostAlignResult out;
    std::vector<std::int32_t> counts;
    CHECK_THROWS_AS(align_reference(Ids{0, 1, 2, 3, 0}, kVllmShape, nullptr, out, counts),
                    ArgumentError);
    align_reference(kVllmIds, kVllmShape, nullptr, out, counts);
    check_same(out, align_oracle(kVllmIds, kVllmShape));
  }
}

TEST_CASE("an expert_map of the wrong length is an ArgumentError") {
  const ExpertMap shorter{{0, 1, 2}, ExpertMapMode::kDrop};
  const ExpertMap longer{{0, 1, 2, 3, -1}, ExpertMapMode::kMapAfter};
  const ExpertMap empty{{}, ExpertMapMode::kDrop};
  CHECK_THROWS_AS(align_reference(Ids{0, 1}, AlignShape{4, 1, 4, false}, &shorter), ArgumentError);
  CHECK_THROWS_AS(align_reference(Ids{0, 1}, AlignShape{4, 1, 4, false}, &longer), ArgumentError);
  CHECK_THROWS_AS(align_reference(Ids{}, AlignShape{4, 1, 4, false}, &empty), ArgumentError);
}

TEST_CASE("an expert_map entry that is not -1 or a unique local id is an ArgumentError") {
  // Each message names the entry and its value, and says what is allowed; the check does not
  // depend on the mode.
  struct Case {
    Ids map;
    std::string names_entry;
  };
  const Case cases[] = {
      {{0, 0}, "expert_map[1] = 0;"},   // duplicate local id
      {{2, -1}, "expert_map[0] = 2;"},  // local id >= num_experts
      {{-2, 0}, "expert_map[0] = -2;"}  // below -1
  };
  for (const Case& c : cases) {
    for (const ExpertMapMode mode : {ExpertMapMode::kDrop, ExpertMapMode::kMapAfter}) {
      CAPTURE(c.names_entry);
      CAPTURE(mode == ExpertMapMode::kDrop);
      const ExpertMap map{c.map, mode};
      const std::string message = argument_error(Ids{0, 1}, AlignShape{2, 1, 4, false}, &map);
      CHECK_MESSAGE(message.find(c.names_entry) != std::string::npos, message);
      CHECK_MESSAGE(message.find("allowed: -1 or a local id") != std::string::npos, message);
    }
  }
}

TEST_CASE("shapes outside the limits are ArgumentErrors") {
  using moe_dispatch::kMaxBlockSize;
  using moe_dispatch::kMaxExperts;
  using moe_dispatch::kMaxTopK;
  SUBCASE("num_experts") {
    CHECK_THROWS_AS(align_reference(Ids{}, AlignShape{0, 1, 4, false}), ArgumentError);
    CHECK_THROWS_AS(align_reference(Ids{}, AlignShape{-3, 1, 4, false}), ArgumentError);
    CHECK_THROWS_AS(align_reference(Ids{}, AlignShape{kMaxExperts + 1, 1, 4, false}),
                    ArgumentError);
  }
  SUBCASE("top_k") {
    CHECK_THROWS_AS(align_reference(Ids{}, AlignShape{64, -1, 4, false}), ArgumentError);
    CHECK_THROWS_AS(align_reference(Ids{}, AlignShape{64, kMaxTopK + 1, 4, false}), ArgumentError);
  }
  SUBCASE("block_size") {
    CHECK_THROWS_AS(align_reference(Ids{}, AlignShape{4, 1, 0, false}), ArgumentError);
    CHECK_THROWS_AS(align_reference(Ids{}, AlignShape{4, 1, -16, false}), ArgumentError);
    CHECK_THROWS_AS(align_reference(Ids{}, AlignShape{4, 1, kMaxBlockSize + 1, false}),
                    ArgumentError);
  }
  SUBCASE("the limits themselves are accepted") {
    CHECK_NOTHROW(align_reference(Ids{}, AlignShape{kMaxExperts, kMaxTopK, kMaxBlockSize, true}));
    CHECK_NOTHROW(align_reference(Ids{0}, AlignShape{1, 1, 1, false}));
  }
}

TEST_CASE("numel kMaxNumel is accepted and one row more is an ArgumentError") {
  constexpr AlignShape kShape{8, 8, 1, false};
  const auto max_numel = static_cast<std::size_t>(moe_dispatch::kMaxNumel);
  static_assert(moe_dispatch::kMaxNumel % kShape.top_k == 0);
  Ids ids(max_numel, 0);
  SUBCASE("exactly kMaxNumel") {
    // Block size 1 and every slot on expert 0: the padded total is numel itself.
    const HostAlignResult got = align_reference(ids, kShape);
    CHECK(got.num_tokens_post_pad == moe_dispatch::kMaxNumel);
    CHECK(got.num_invalid_ids == 0);
  }
  SUBCASE("kMaxNumel + top_k") {
    ids.resize(max_numel + static_cast<std::size_t>(kShape.top_k), 0);
    const std::string message = argument_error(ids, kShape);
    CHECK_MESSAGE(message.find("16777216") != std::string::npos, message);
  }
}

TEST_CASE("max_numel_within_limit is the last numel whose sorted capacity fits kMaxNumel") {
  int checked = 0;
  for (const int experts : {1, 8, 256, 1024, 4096}) {
    for (const int block : {1, 2, 3, 64, 100, 128, 1024}) {
      for (const bool pad : {false, true}) {
        const AlignShape shape{experts, 1, block, pad};
        const std::int64_t most = moe_dispatch::max_numel_within_limit(shape);
        INFO("E " << experts << ", B " << block << ", pad " << pad);
        REQUIRE(most > 0);
        CHECK(moe_dispatch::sorted_capacity(shape, most) <= moe_dispatch::kMaxNumel);
        CHECK(moe_dispatch::sorted_capacity(shape, most + 1) > moe_dispatch::kMaxNumel);
        ++checked;
      }
    }
  }
  CHECK(checked == 70);
  // With E * (B - 1) = kMaxNumel only zero slots fit; past it not even those.
  CHECK(moe_dispatch::max_numel_within_limit(AlignShape{1 << 24, 1, 2, false}) == 0);
  CHECK(moe_dispatch::max_numel_within_limit(AlignShape{(1 << 24) + 1, 1, 2, false}) < 0);
}

TEST_CASE("small random shapes match the oracle exhaustively") {
  std::mt19937 rng(17);
  int compared = 0;
  for (const int experts : {1, 2, 3, 7, 16, 64}) {
    for (const int top_k : {1, 2, 4}) {
      if (top_k > experts) continue;
      for (const int block : {1, 2, 3, 4, 16, 64}) {
        for (const int tokens : {0, 1, 2, 5, 17, 100}) {
          for (const bool pad : {false, true}) {
            const Routing kind = kAllRoutings[static_cast<std::size_t>(compared) % 5];
            const Ids ids = make_routing(kind, tokens, top_k, experts, rng);
            const AlignShape shape{experts, top_k, block, pad};
            const ExpertMap drop = random_map(experts, 60, ExpertMapMode::kDrop, rng);
            const ExpertMap after = random_map(experts, 60, ExpertMapMode::kMapAfter, rng);
            for (const ExpertMap* map : {static_cast<const ExpertMap*>(nullptr), &drop, &after}) {
              const HostAlignResult got = align_reference(ids, shape, map);
              const std::string diff = first_difference(got, align_oracle(ids, shape, map));
              if (!diff.empty()) {
                FAIL_CHECK("E=" << experts << " top_k=" << top_k << " B=" << block
                                << " tokens=" << tokens << " pad=" << pad << " map="
                                << (map == nullptr ? "none"
                                    : map == &drop ? "drop"
                                                   : "after")
                                << ": " << diff);
              }
              ++compared;
            }
          }
        }
      }
    }
  }
  CHECK(compared > 3000);
}

TEST_CASE("large random routings match the oracle") {
  // DeepSeek-V3 shape at a large prefill chunk, every generator, several block sizes.
  constexpr int kTokens = 65536, kTopK = 8, kExperts = 256;
  for (const Routing kind : kAllRoutings) {
    std::mt19937 rng(100 + static_cast<unsigned>(kind));
    const Ids ids = make_routing(kind, kTokens, kTopK, kExperts, rng);
    for (const int block : {16, 64, 128}) {
      const bool pad = block == 128;  // the pad flag only moves the extents; cover it once
      CAPTURE(moe_dispatch::test::to_string(kind));
      CAPTURE(block);
      check_against_oracle(ids, AlignShape{kExperts, kTopK, block, pad});
    }
  }
}

TEST_CASE("random routings of unusual shapes match the oracle") {
  std::mt19937 rng(200);
  for (const AlignShape shape : {AlignShape{8, 2, 64, false}, AlignShape{128, 8, 37, true},
                                 AlignShape{300, 6, 1, false}, AlignShape{4096, 32, 1024, true}}) {
    CAPTURE(shape.num_experts);
    const Ids ids = make_routing(Routing::kWithInvalid, 20000, shape.top_k, shape.num_experts, rng);
    check_against_oracle(ids, shape);
  }
}

TEST_CASE("large random routings with expert maps match the oracle") {
  constexpr int kTokens = 65536, kTopK = 8, kExperts = 256;
  std::mt19937 rng(300);
  for (const Routing kind : {Routing::kUniform, Routing::kZipf, Routing::kWithInvalid}) {
    const Ids ids = make_routing(kind, kTokens, kTopK, kExperts, rng);
    for (const ExpertMapMode mode : {ExpertMapMode::kDrop, ExpertMapMode::kMapAfter}) {
      CAPTURE(moe_dispatch::test::to_string(kind));
      CAPTURE(mode == ExpertMapMode::kDrop);
      // EP rank 3 of 8 (contiguous slice).
      const ExpertMap slice = slice_map(kExperts, 96, 32, mode);
      check_against_oracle(ids, AlignShape{kExperts, kTopK, 64, false}, &slice);
      // Scattered local experts with shuffled local ids.
      const ExpertMap scattered = random_map(kExperts, 30, mode, rng);
      check_against_oracle(ids, AlignShape{kExperts, kTopK, 128, true}, &scattered);
      // No local experts.
      const ExpertMap none = random_map(kExperts, 0, mode, rng);
      check_against_oracle(ids, AlignShape{kExperts, kTopK, 16, false}, &none);
    }
  }
}
