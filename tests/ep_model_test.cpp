// CPU suite for the host model of expert parallelism (tests/support/ep_model.hpp), the oracle of
// expert_parallel_test: a worked example by hand, and the properties that make the decomposition
// over ranks the same MoE as one GPU's. Where moe_dispatch::ep is built, also the config it takes
// from the YAML section expert_parallel (expert_parallel_config(); no GPU or NCCL call).
#include <doctest/doctest.h>

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "moe_dispatch/align.hpp"
#include "moe_dispatch/config.hpp"
#include "moe_dispatch/errors.hpp"
#include "support/ep_model.hpp"
#include "support/gpu.hpp"
#ifdef MOE_DISPATCH_TEST_EP_CONFIG
#include "moe_dispatch/expert_parallel.hpp"
#endif

extern const bool kNeedsGpu;
const bool kNeedsGpu = false;

namespace md = moe_dispatch;
using md::test::EpRankInput;
using md::test::EpShape;

namespace {

// Exactly representable in bf16 and float, sums included: hidden values in -3..3, weights in
// quarters up to 1, scales 1 or 2 (|y| <= top_k * 6 in steps of 0.25).
EpRankInput random_input(const EpShape& s, int num_tokens, md::test::Routing routing,
                         std::mt19937& rng) {
  EpRankInput in;
  in.num_tokens = num_tokens;
  in.topk_ids = md::test::make_routing(routing, num_tokens, s.top_k, s.num_experts, rng);
  std::uniform_int_distribution<int> quarter(1, 4);
  std::uniform_int_distribution<int> value(-3, 3);
  for (std::size_t i = 0; i < in.topk_ids.size(); ++i)
    in.weights.push_back(0.25f * static_cast<float>(quarter(rng)));
  for (int i = 0; i < num_tokens * s.hidden_size; ++i)
    in.hidden.push_back(static_cast<float>(value(rng)));
  return in;
}

std::vector<float> random_scales(int num_experts, std::mt19937& rng) {
  std::uniform_int_distribution<int> two(1, 2);
  std::vector<float> scale;
  for (int e = 0; e < num_experts; ++e) scale.push_back(static_cast<float>(two(rng)));
  return scale;
}

EpShape contiguous_shape(int num_experts, int top_k, int world_size) {
  EpShape s;
  s.num_experts = num_experts;
  s.top_k = top_k;
  s.block_size = 4;
  s.world_size = world_size;
  s.hidden_size = 3;
  s.owner.assign(static_cast<std::size_t>(num_experts), 0);
  for (int r = 0; r < world_size; ++r) {
    const md::ExpertMap map = md::split_experts(num_experts, r, world_size);
    for (std::size_t e = 0; e < map.global_to_local.size(); ++e) {
      if (map.global_to_local[e] >= 0) s.owner[e] = r;
    }
  }
  return s;
}

}  // namespace

TEST_CASE("a token goes once to each rank owning one of its valid experts, grouped by rank") {
  EpShape s = contiguous_shape(4, 2, 2);  // experts 0,1 on rank 0; 2,3 on rank 1
  EpRankInput in;
  in.num_tokens = 5;
  in.topk_ids = {0, 1, 2, 3, 1, 2, -1, 9, 3, -5};
  in.weights.assign(10, 1.0f);
  in.hidden.assign(15, 1.0f);
  const md::test::EpSendModel m = md::test::model_send(s, in);
  CHECK(m.counts == std::vector<std::int32_t>{2, 3});
  CHECK(m.offsets == std::vector<std::int32_t>{0, 2, 5});
  CHECK(m.tokens == std::vector<std::int32_t>{0, 2, 1, 2, 4});
}

TEST_CASE("a rank receives rows rank-major in each source's token order, aligned on its map") {
  EpShape s = contiguous_shape(4, 2, 2);
  std::vector<EpRankInput> ranks(2);
  ranks[0].num_tokens = 3;
  ranks[0].topk_ids = {0, 2, 1, 0, 3, 2};  // tokens 0 and 2 go to rank 1
  ranks[1].num_tokens = 2;
  ranks[1].topk_ids = {2, 2, 0, 1};  // token 0 goes to rank 1
  for (EpRankInput& in : ranks) {
    in.weights.assign(in.topk_ids.size(), 1.0f);
    for (int t = 0; t < in.num_tokens * s.hidden_size; ++t)
      in.hidden.push_back(static_cast<float>(t));
  }
  const md::test::EpRecvModel m = md::test::model_receive(s, ranks, 1);
  CHECK(m.counts == std::vector<std::int32_t>{2, 1});
  CHECK(m.source_rank == std::vector<std::int32_t>{0, 0, 1});
  CHECK(m.source_token == std::vector<std::int32_t>{0, 2, 0});
  CHECK(m.topk_ids == std::vector<std::int32_t>{0, 2, 3, 2, 2, 2});
  // Local experts of rank 1: global 2 -> 0, global 3 -> 1. Slots 1, 3, 4, 5 hold expert 2 and
  // slot 2 expert 3 (B = 4): [1 3 4 5][2 s s s], s = sentinel 6.
  CHECK(m.align.sorted_token_ids[0] == 1);
  CHECK(m.align.sorted_token_ids[3] == 5);
  CHECK(m.align.sorted_token_ids[4] == 2);
  CHECK(m.align.sorted_token_ids[5] == 6);
  CHECK(m.align.num_tokens_post_pad == 8);
  CHECK(m.align.expert_ids[0] == 0);
  CHECK(m.align.expert_ids[1] == 1);
}

TEST_CASE("the local alignments of all ranks cover every valid slot exactly once") {
  std::mt19937 rng(11);
  for (const int world : {1, 2, 4, 8}) {
    for (const auto routing : {md::test::Routing::kUniform, md::test::Routing::kWithInvalid,
                               md::test::Routing::kOneExpert, md::test::Routing::kZipf}) {
      EpShape s = contiguous_shape(16, 4, world);
      std::vector<EpRankInput> ranks;
      for (int q = 0; q < world; ++q) ranks.push_back(random_input(s, 3 + 7 * q, routing, rng));
      // covered[q][slot]: times (q, slot) appears in some rank's local alignment.
      std::vector<std::vector<int>> covered(static_cast<std::size_t>(world));
      for (int q = 0; q < world; ++q) covered[q].assign(ranks[q].topk_ids.size(), 0);
      for (int p = 0; p < world; ++p) {
        const md::test::EpRecvModel m = md::test::model_receive(s, ranks, p);
        const auto numel = static_cast<std::int32_t>(m.topk_ids.size());
        for (std::int32_t j = 0; j < m.align.num_tokens_post_pad; ++j) {
          const std::int32_t slot = m.align.sorted_token_ids[static_cast<std::size_t>(j)];
          if (slot >= numel) continue;
          const int row = slot / s.top_k;
          const int k = slot % s.top_k;
          const int q = m.source_rank[static_cast<std::size_t>(row)];
          const int t = m.source_token[static_cast<std::size_t>(row)];
          ++covered[q][static_cast<std::size_t>(t * s.top_k + k)];
        }
      }
      INFO("world=" << world << " routing=" << md::test::to_string(routing));
      for (int q = 0; q < world; ++q) {
        for (std::size_t i = 0; i < covered[q].size(); ++i) {
          const bool valid = md::test::valid_expert(s, ranks[q].topk_ids[i]);
          CHECK(covered[q][i] == (valid ? 1 : 0));
        }
      }
    }
  }
}

TEST_CASE("the combine over ranks equals the single-GPU MoE result, for any placement") {
  std::mt19937 rng(12);
  for (const int world : {1, 2, 3, 4, 8}) {
    for (const bool explicit_placement : {false, true}) {
      EpShape s = contiguous_shape(32, 8, world);
      if (explicit_placement) {
        std::uniform_int_distribution<int> rank(0, world - 1);
        for (auto& o : s.owner) o = rank(rng);
      }
      const std::vector<float> scale = random_scales(s.num_experts, rng);
      for (int q = 0; q < world; ++q) {
        const EpRankInput in = random_input(s, 40, md::test::Routing::kWithInvalid, rng);
        INFO("world=" << world << " explicit=" << explicit_placement << " rank=" << q);
        CHECK(md::test::model_combine(s, in, scale) == md::test::moe_reference(s, in, scale));
      }
    }
  }
}

#ifdef MOE_DISPATCH_TEST_EP_CONFIG

namespace {

constexpr const char* kEpShape =
    "num_experts: 16\n"
    "top_k: 4\n"
    "block_size: 32\n"
    "buckets: [1, 8, 64]\n"
    "pad_sorted_ids: true\n"
    "device: 1\n"
    "log: false\n";

// The config of kEpShape written by hand, as before the YAML section existed.
md::ExpertParallelConfig hand_built(int world_size, int rank, md::HiddenType type, int hidden_size,
                                    const std::optional<md::ExpertPlacement>& placement) {
  md::ExpertParallelConfig cfg;
  cfg.stage.num_experts = 16;
  cfg.stage.top_k = 4;
  cfg.stage.block_size = 32;
  cfg.stage.buckets = {1, 8, 64};
  cfg.stage.pad_sorted_ids = true;
  cfg.stage.device = 1;
  cfg.stage.log = false;
  cfg.world_size = world_size;
  cfg.rank = rank;
  cfg.placement = placement;
  cfg.hidden_size = hidden_size;
  cfg.hidden_type = type;
  return cfg;
}

void check_same(const md::ExpertParallelConfig& a, const md::ExpertParallelConfig& b) {
  CHECK(a.stage.num_experts == b.stage.num_experts);
  CHECK(a.stage.top_k == b.stage.top_k);
  CHECK(a.stage.block_size == b.stage.block_size);
  CHECK(a.stage.buckets == b.stage.buckets);
  CHECK(a.stage.pad_sorted_ids == b.stage.pad_sorted_ids);
  CHECK(a.stage.overflow == b.stage.overflow);
  CHECK(a.stage.capture == b.stage.capture);
  CHECK(a.stage.device == b.stage.device);
  CHECK(a.stage.log == b.stage.log);
  CHECK(a.stage.expert_map.has_value() == b.stage.expert_map.has_value());
  CHECK(a.stage.expert_parallel.has_value() == b.stage.expert_parallel.has_value());
  CHECK(a.world_size == b.world_size);
  CHECK(a.rank == b.rank);
  REQUIRE(a.placement.has_value() == b.placement.has_value());
  if (a.placement) CHECK(a.placement->owner == b.placement->owner);
  CHECK(a.hidden_size == b.hidden_size);
  CHECK(a.hidden_type == b.hidden_type);
}

}  // namespace

TEST_CASE("expert_parallel_config of a parsed YAML equals the config built by hand") {
  SUBCASE("contiguous placement") {
    const md::DispatchConfig loaded =
        md::parse_config(std::string(kEpShape) +
                             "expert_parallel:\n  world_size: 4\n  rank: 1\n"
                             "  placement: contiguous\n  hidden_size: 7168\n  hidden_type: bf16\n",
                         "ep.yaml");
    const md::ExpertParallelConfig ep = md::expert_parallel_config(loaded);
    check_same(ep, hand_built(4, 1, md::HiddenType::kBFloat16, 7168, std::nullopt));
    CHECK(md::placement_of(ep).owner == md::contiguous_placement(16, 4).owner);
    CHECK_NOTHROW(md::validate(ep));
  }
  SUBCASE("explicit placement") {
    const std::vector<std::int32_t> owner = {2, 2, 0, 1, 0, 1, 2, 0, 1, 1, 0, 2, 2, 1, 0, 0};
    const md::DispatchConfig loaded =
        md::parse_config(std::string(kEpShape) +
                             "expert_parallel:\n  world_size: 3\n  rank: 2\n"
                             "  placement: [2, 2, 0, 1, 0, 1, 2, 0, 1, 1, 0, 2, 2, 1, 0, 0]\n"
                             "  hidden_size: 12\n  hidden_type: float32\n",
                         "ep.yaml");
    const md::ExpertParallelConfig ep = md::expert_parallel_config(loaded);
    check_same(ep, hand_built(3, 2, md::HiddenType::kFloat32, 12, md::ExpertPlacement{owner}));
    CHECK(md::local_expert_map(md::placement_of(ep), 2).global_to_local ==
          std::vector<std::int32_t>{0, 1, -1, -1, -1, -1, 2, -1, -1, -1, -1, 3, 4, -1, -1, -1});
  }
}

TEST_CASE("expert_parallel_config of a config without the section throws ConfigError") {
  const md::DispatchConfig plain = md::parse_config(kEpShape, "plain.yaml");
  try {
    (void)md::expert_parallel_config(plain);
    FAIL("no exception");
  } catch (const md::ConfigError& e) {
    CHECK(std::string(e.what()).starts_with("config: expert_parallel: "));
  }
}

TEST_CASE("validate of an ExpertParallelConfig applies the rules of the YAML section") {
  md::ExpertParallelConfig cfg = hand_built(2, 0, md::HiddenType::kBFloat16, 64, std::nullopt);
  CHECK_NOTHROW(md::validate(cfg));
  const auto message = [](const md::ExpertParallelConfig& c) -> std::string {
    try {
      md::validate(c);
    } catch (const md::ConfigError& e) {
      return e.what();
    }
    return "no exception";
  };
  SUBCASE("an owner rank out of range names the same key as the YAML") {
    cfg.placement = md::ExpertPlacement{std::vector<std::int32_t>(16, 0)};
    cfg.placement->owner[5] = 2;
    CHECK(message(cfg).starts_with("config: expert_parallel.placement[5]: "));
  }
  SUBCASE("an empty owner list is not the contiguous placement") {
    cfg.placement = md::ExpertPlacement{};
    CHECK(message(cfg).starts_with("config: expert_parallel.placement: "));
  }
  SUBCASE("the stage may not carry a section of its own") {
    cfg.stage.expert_parallel = md::ExpertParallelSection{2, 0, {}, 64, md::HiddenType::kBFloat16};
    CHECK(message(cfg).starts_with("config: expert_parallel.stage.expert_parallel: "));
  }
}

#endif  // MOE_DISPATCH_TEST_EP_CONFIG
