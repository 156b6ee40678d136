// The configuration layer: presets in configs/, defaults, to_yaml() round trips, split_experts(),
// validate() on configs built in code, and malformed YAML.
//
// Malformed YAML kinds (kMalformed below; each must throw exactly one ConfigError whose message
// starts "bad.yaml:LINE:COL: ", names the key and says what is allowed):
//   syntax:     unclosed flow list, bad indentation, undefined alias
//   document:   empty text, comments only, top level a list, top level a scalar, two documents
//   keys:       unknown key, duplicate key, key that is not a name, missing num_experts (mapping
//               after a comment), missing buckets
//   types:      word for int, float for int, quoted number for int, int overflowing int32, hex int,
//               leading-zero int, list for int, mapping for int, key with no value, word for bool,
//               int for bool, unknown overflow policy, unknown capture mode, scalar for buckets,
//               float inside buckets, list for expert_map
//   ranges:     num_experts 0, num_experts above 4096, top_k above num_experts, top_k above 32,
//               block_size 0, block_size above 1024, negative device, fixed_count_graphs_up_to
//               negative, above 4096 or a word
//   buckets:    empty, unsorted, duplicate, non-positive, largest bucket over the capacity limit
//   expert_map: unknown key, experts and rank both given, neither given, rank without world_size,
//               experts of the wrong length, local id out of range, repeated local id, rank out of
//               range, world_size above num_experts, unknown mode
//   expert_parallel: list for the section, unknown key, world_size missing, hidden_size missing,
//               word for rank, world_size 0, world_size above num_experts (contiguous), world_size
//               above 32 (explicit placement), rank out of range, placement of the wrong length,
//               owner rank out of range, placement a scalar other than contiguous, placement an
//               empty list, hidden_size 0, hidden_size not a 16-byte row, unknown hidden_type,
//               together with expert_map (explicit and split), with overflow eager, largest bucket
//               times world_size over the capacity limit
#include <doctest/doctest.h>

#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "moe_dispatch/config.hpp"
#include "moe_dispatch/errors.hpp"

extern const bool kNeedsGpu;
const bool kNeedsGpu = false;

namespace {

using moe_dispatch::CaptureMode;
using moe_dispatch::ConfigError;
using moe_dispatch::DispatchConfig;
using moe_dispatch::ExpertMap;
using moe_dispatch::ExpertMapMode;
using moe_dispatch::ExpertParallelSection;
using moe_dispatch::HiddenType;
using moe_dispatch::OverflowPolicy;

std::filesystem::path source_dir() {
  const char* dir = std::getenv("MOE_DISPATCH_SOURCE_DIR");
  REQUIRE_MESSAGE(dir != nullptr,
                  "MOE_DISPATCH_SOURCE_DIR is not set: run through CTest, or set it to the "
                  "repository root");
  return dir;
}

// The message of the ConfigError that parsing `yaml` throws; fails the test on anything else.
std::string config_error(std::string_view yaml) {
  try {
    moe_dispatch::parse_config(yaml, "bad.yaml");
  } catch (const ConfigError& error) {
    return error.what();
  } catch (const std::exception& error) {
    FAIL("threw something other than ConfigError: " << error.what());
  }
  FAIL("parsed without an error");
  return {};
}

template <typename F>
std::string validate_error(F&& build) {
  DispatchConfig cfg;
  cfg.num_experts = 8;
  cfg.top_k = 2;
  cfg.block_size = 64;
  cfg.buckets = {1, 16, 256};
  build(cfg);
  try {
    moe_dispatch::validate(cfg);
  } catch (const ConfigError& error) {
    return error.what();
  }
  FAIL("validate() accepted the config");
  return {};
}

void check_same(const DispatchConfig& a, const DispatchConfig& b) {
  CHECK(a.num_experts == b.num_experts);
  CHECK(a.top_k == b.top_k);
  CHECK(a.block_size == b.block_size);
  CHECK(a.buckets == b.buckets);
  CHECK(a.pad_sorted_ids == b.pad_sorted_ids);
  CHECK(a.overflow == b.overflow);
  CHECK(a.capture == b.capture);
  CHECK(a.fixed_count_graphs_up_to == b.fixed_count_graphs_up_to);
  CHECK(a.device == b.device);
  CHECK(a.log == b.log);
  REQUIRE(a.expert_map.has_value() == b.expert_map.has_value());
  if (a.expert_map) {
    CHECK(a.expert_map->global_to_local == b.expert_map->global_to_local);
    CHECK(a.expert_map->mode == b.expert_map->mode);
  }
  REQUIRE(a.expert_parallel.has_value() == b.expert_parallel.has_value());
  if (a.expert_parallel) {
    CHECK(a.expert_parallel->world_size == b.expert_parallel->world_size);
    CHECK(a.expert_parallel->rank == b.expert_parallel->rank);
    CHECK(a.expert_parallel->placement == b.expert_parallel->placement);
    CHECK(a.expert_parallel->hidden_size == b.expert_parallel->hidden_size);
    CHECK(a.expert_parallel->hidden_type == b.expert_parallel->hidden_type);
  }
}

constexpr std::string_view kMinimal =
    "num_experts: 8\n"
    "top_k: 2\n"
    "block_size: 64\n"
    "buckets: [1, 16, 256]\n";

const std::vector<int> kPresetBuckets = {1,   2,   4,    8,    16,   32,   64,   128,
                                         256, 512, 1024, 2048, 4096, 8192, 16384};

// kMinimal plus an expert_parallel section from line 5; its keys start on line 6 at column 3.
std::string with_expert_parallel(std::string_view section) {
  return std::string(kMinimal) + "expert_parallel:\n" + std::string(section);
}

}  // namespace

TEST_CASE("every preset in configs/ loads with its model's shape") {
  struct Preset {
    const char* file;
    int num_experts, top_k, block_size;
  };
  const Preset presets[] = {
      {"default.yaml", 64, 2, 128},
      {"mixtral-8x7b.yaml", 8, 2, 64},
      {"qwen3-moe.yaml", 128, 8, 64},
      {"deepseek-v3.yaml", 256, 8, 64},
  };
  for (const Preset& preset : presets) {
    SUBCASE(preset.file) {
      const DispatchConfig cfg = moe_dispatch::load_config(source_dir() / "configs" / preset.file);
      CHECK(cfg.num_experts == preset.num_experts);
      CHECK(cfg.top_k == preset.top_k);
      CHECK(cfg.block_size == preset.block_size);
      CHECK(cfg.buckets == kPresetBuckets);
      CHECK(cfg.max_tokens() == 16384);
      CHECK_FALSE(cfg.expert_map.has_value());
      CHECK_FALSE(cfg.expert_parallel.has_value());
    }
  }
}

TEST_CASE("the expert-parallel preset loads with DeepSeek-V3's shape over 8 ranks") {
  const DispatchConfig cfg =
      moe_dispatch::load_config(source_dir() / "configs" / "deepseek-v3-ep8.yaml");
  CHECK(cfg.num_experts == 256);
  CHECK(cfg.top_k == 8);
  CHECK(cfg.block_size == 64);
  CHECK(cfg.buckets == std::vector<int>{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096});
  CHECK(cfg.overflow == OverflowPolicy::kError);
  CHECK_FALSE(cfg.expert_map.has_value());
  REQUIRE(cfg.expert_parallel.has_value());
  CHECK(cfg.expert_parallel->world_size == 8);
  CHECK(cfg.expert_parallel->rank == 0);
  CHECK(cfg.expert_parallel->placement.empty());  // contiguous
  CHECK(cfg.expert_parallel->hidden_size == 7168);
  CHECK(cfg.expert_parallel->hidden_type == HiddenType::kBFloat16);
}

TEST_CASE("default.yaml spells out every default") {
  const std::filesystem::path path = source_dir() / "configs" / "default.yaml";
  // Each key is written in the file (a key left out would parse to its default too).
  std::ifstream file(path);
  const std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  for (const char* key : {"num_experts:", "top_k:", "block_size:", "buckets:", "pad_sorted_ids:",
                          "overflow:", "capture:", "fixed_count_graphs_up_to:", "device:", "log:",
                          "expert_map:", "expert_parallel:"}) {
    INFO(key);
    CHECK(text.find(std::string("\n") + key) != std::string::npos);
  }
  const DispatchConfig cfg = moe_dispatch::load_config(path);
  const DispatchConfig defaults;
  CHECK(cfg.pad_sorted_ids == defaults.pad_sorted_ids);
  CHECK(cfg.overflow == defaults.overflow);
  CHECK(cfg.capture == defaults.capture);
  CHECK(cfg.fixed_count_graphs_up_to == defaults.fixed_count_graphs_up_to);
  CHECK(cfg.device == defaults.device);
  CHECK(cfg.log == defaults.log);
  CHECK_FALSE(cfg.expert_parallel.has_value());
}

TEST_CASE("keys left out take their defaults") {
  const DispatchConfig cfg = moe_dispatch::parse_config(kMinimal, "minimal.yaml");
  CHECK(cfg.num_experts == 8);
  CHECK(cfg.top_k == 2);
  CHECK(cfg.block_size == 64);
  CHECK(cfg.buckets == std::vector<int>{1, 16, 256});
  CHECK_FALSE(cfg.pad_sorted_ids);
  CHECK(cfg.overflow == OverflowPolicy::kError);
  CHECK(cfg.capture == CaptureMode::kEager);
  CHECK(cfg.fixed_count_graphs_up_to == 64);
  CHECK(cfg.device == 0);
  CHECK(cfg.log);
  CHECK_FALSE(cfg.expert_map.has_value());
  CHECK_FALSE(cfg.expert_parallel.has_value());
}

TEST_CASE("every key can be set from YAML") {
  const DispatchConfig cfg = moe_dispatch::parse_config(
      "num_experts: 4\n"
      "top_k: 1\n"
      "block_size: 16\n"
      "buckets:\n"
      "  - 8\n"
      "  - 32\n"
      "pad_sorted_ids: true\n"
      "overflow: eager\n"
      "capture: 'lazy'\n"
      "fixed_count_graphs_up_to: 0\n"
      "device: 1\n"
      "log: false\n"
      "expert_map:\n"
      "  experts: [-1, 0, -1, 1]\n"
      "  mode: map_after\n",
      "all.yaml");
  CHECK(cfg.num_experts == 4);
  CHECK(cfg.top_k == 1);
  CHECK(cfg.block_size == 16);
  CHECK(cfg.buckets == std::vector<int>{8, 32});
  CHECK(cfg.pad_sorted_ids);
  CHECK(cfg.overflow == OverflowPolicy::kEager);
  CHECK(cfg.capture == CaptureMode::kLazy);
  CHECK(cfg.fixed_count_graphs_up_to == 0);
  CHECK(cfg.device == 1);
  CHECK_FALSE(cfg.log);
  REQUIRE(cfg.expert_map.has_value());
  CHECK(cfg.expert_map->global_to_local == std::vector<std::int32_t>{-1, 0, -1, 1});
  CHECK(cfg.expert_map->mode == ExpertMapMode::kMapAfter);
}

TEST_CASE("an expert map given as rank and world_size is the contiguous split") {
  const DispatchConfig cfg = moe_dispatch::parse_config(std::string(kMinimal) +
                                                            "expert_map:\n"
                                                            "  rank: 1\n"
                                                            "  world_size: 3\n",
                                                        "split.yaml");
  REQUIRE(cfg.expert_map.has_value());
  CHECK(cfg.expert_map->global_to_local == moe_dispatch::split_experts(8, 1, 3).global_to_local);
  CHECK(cfg.expert_map->mode == ExpertMapMode::kDrop);
}

TEST_CASE("an expert_parallel section takes a contiguous placement and bf16 unless told") {
  const DispatchConfig cfg = moe_dispatch::parse_config(
      with_expert_parallel("  world_size: 3\n  rank: 2\n  hidden_size: 4096\n"), "ep.yaml");
  REQUIRE(cfg.expert_parallel.has_value());
  CHECK(cfg.expert_parallel->world_size == 3);
  CHECK(cfg.expert_parallel->rank == 2);
  CHECK(cfg.expert_parallel->placement.empty());
  CHECK(cfg.expert_parallel->hidden_size == 4096);
  CHECK(cfg.expert_parallel->hidden_type == HiddenType::kBFloat16);
  CHECK_FALSE(cfg.expert_map.has_value());
}

TEST_CASE("an expert_parallel section can set every key, placement as a list of owner ranks") {
  SUBCASE("explicit placement, float32") {
    const DispatchConfig cfg = moe_dispatch::parse_config(
        with_expert_parallel("  world_size: 2\n"
                             "  rank: 1\n"
                             "  placement: [1, 0, 1, 0, 0, 0, 1, 1]\n"
                             "  hidden_size: 12\n"  // 48 bytes: a 16-byte multiple in float32
                             "  hidden_type: float32\n"),
        "ep.yaml");
    REQUIRE(cfg.expert_parallel.has_value());
    CHECK(cfg.expert_parallel->placement == std::vector<std::int32_t>{1, 0, 1, 0, 0, 0, 1, 1});
    CHECK(cfg.expert_parallel->hidden_size == 12);
    CHECK(cfg.expert_parallel->hidden_type == HiddenType::kFloat32);
  }
  SUBCASE("placement: contiguous, written out") {
    const DispatchConfig cfg = moe_dispatch::parse_config(
        with_expert_parallel("  world_size: 8\n  rank: 7\n  placement: contiguous\n"
                             "  hidden_size: 8\n  hidden_type: bf16\n"),
        "ep.yaml");
    REQUIRE(cfg.expert_parallel.has_value());
    CHECK(cfg.expert_parallel->placement.empty());
    CHECK(cfg.expert_parallel->hidden_type == HiddenType::kBFloat16);
  }
  SUBCASE("an explicit placement may leave ranks without experts") {
    const DispatchConfig cfg = moe_dispatch::parse_config(
        with_expert_parallel("  world_size: 32\n  rank: 31\n"
                             "  placement: [0, 1, 2, 3, 4, 5, 6, 7]\n  hidden_size: 64\n"),
        "ep.yaml");
    REQUIRE(cfg.expert_parallel.has_value());
    CHECK(cfg.expert_parallel->world_size == 32);
  }
}

TEST_CASE("an expert_parallel of null means one GPU") {
  const DispatchConfig cfg =
      moe_dispatch::parse_config(std::string(kMinimal) + "expert_parallel: null\n", "null.yaml");
  CHECK_FALSE(cfg.expert_parallel.has_value());
}

TEST_CASE("an expert_map of null means every expert is local") {
  const DispatchConfig cfg =
      moe_dispatch::parse_config(std::string(kMinimal) + "expert_map: null\n", "null.yaml");
  CHECK_FALSE(cfg.expert_map.has_value());
}

TEST_CASE("to_yaml writes every key and reads back to the same config") {
  DispatchConfig custom;
  custom.num_experts = 16;
  custom.top_k = 4;
  custom.block_size = 32;
  custom.buckets = {2, 64, 1000};
  custom.pad_sorted_ids = true;
  custom.overflow = OverflowPolicy::kEager;
  custom.capture = CaptureMode::kLazy;
  custom.fixed_count_graphs_up_to = 512;
  custom.device = 3;
  custom.log = false;
  custom.expert_map = moe_dispatch::split_experts(16, 2, 3, ExpertMapMode::kMapAfter);

  SUBCASE("a config with every option changed") {
    const std::string yaml = moe_dispatch::to_yaml(custom);
    for (const char* key : {"num_experts:", "top_k:", "block_size:", "buckets:", "pad_sorted_ids:",
                            "overflow:", "capture:", "fixed_count_graphs_up_to: 512",
                            "device:", "log:", "expert_map:", "experts:", "mode: map_after"}) {
      CHECK_MESSAGE(yaml.find(key) != std::string::npos, key << " missing from\n" << yaml);
    }
    check_same(moe_dispatch::parse_config(yaml, "round_trip.yaml"), custom);
  }
  SUBCASE("a config with expert parallelism, contiguous and explicit") {
    DispatchConfig ep = custom;
    ep.expert_map.reset();
    ep.overflow = OverflowPolicy::kError;
    ep.expert_parallel = ExpertParallelSection{4, 3, {}, 7168, HiddenType::kBFloat16};
    std::string yaml = moe_dispatch::to_yaml(ep);
    for (const char* key :
         {"expert_parallel:\n", "  world_size: 4\n", "  rank: 3\n", "  placement: contiguous\n",
          "  hidden_size: 7168\n", "  hidden_type: bf16\n", "expert_map: null"}) {
      CHECK_MESSAGE(yaml.find(key) != std::string::npos, key << " missing from\n" << yaml);
    }
    check_same(moe_dispatch::parse_config(yaml, "round_trip.yaml"), ep);

    ep.expert_parallel->placement = {3, 3, 2, 2, 1, 1, 0, 0, 0, 1, 2, 3, 3, 2, 1, 0};
    ep.expert_parallel->hidden_type = HiddenType::kFloat32;
    yaml = moe_dispatch::to_yaml(ep);
    for (const char* key : {"  placement: [3, 3, 2, 2, 1, 1, 0, 0, 0, 1, 2, 3, 3, 2, 1, 0]\n",
                            "  hidden_type: float32\n"}) {
      CHECK_MESSAGE(yaml.find(key) != std::string::npos, key << " missing from\n" << yaml);
    }
    const DispatchConfig again = moe_dispatch::parse_config(yaml, "round_trip.yaml");
    check_same(again, ep);
    CHECK(moe_dispatch::to_yaml(again) == yaml);
  }
  SUBCASE("a config of defaults writes the defaults") {
    DispatchConfig plain = moe_dispatch::parse_config(kMinimal, "minimal.yaml");
    const std::string yaml = moe_dispatch::to_yaml(plain);
    for (const char* key : {"pad_sorted_ids: false", "overflow: error", "capture: eager",
                            "fixed_count_graphs_up_to: 64", "device: 0", "log: true",
                            "expert_map: null", "expert_parallel: null"}) {
      CHECK_MESSAGE(yaml.find(key) != std::string::npos, key << " missing from\n" << yaml);
    }
    check_same(moe_dispatch::parse_config(yaml, "round_trip.yaml"), plain);
  }
  SUBCASE("every preset") {
    for (const char* file : {"default.yaml", "mixtral-8x7b.yaml", "qwen3-moe.yaml",
                             "deepseek-v3.yaml", "deepseek-v3-ep8.yaml"}) {
      CAPTURE(file);
      const DispatchConfig cfg = moe_dispatch::load_config(source_dir() / "configs" / file);
      check_same(moe_dispatch::parse_config(moe_dispatch::to_yaml(cfg), "round_trip.yaml"), cfg);
    }
  }
}

TEST_CASE("enum names are the YAML spellings") {
  CHECK(moe_dispatch::to_string(ExpertMapMode::kDrop) == "drop");
  CHECK(moe_dispatch::to_string(ExpertMapMode::kMapAfter) == "map_after");
  CHECK(moe_dispatch::to_string(OverflowPolicy::kError) == "error");
  CHECK(moe_dispatch::to_string(OverflowPolicy::kEager) == "eager");
  CHECK(moe_dispatch::to_string(CaptureMode::kEager) == "eager");
  CHECK(moe_dispatch::to_string(CaptureMode::kLazy) == "lazy");
  CHECK(moe_dispatch::to_string(HiddenType::kBFloat16) == "bf16");
  CHECK(moe_dispatch::to_string(HiddenType::kFloat32) == "float32");
}

TEST_CASE("split_experts gives each rank an equal contiguous share when it divides evenly") {
  const ExpertMap rank1 = moe_dispatch::split_experts(8, 1, 4, ExpertMapMode::kMapAfter);
  CHECK(rank1.global_to_local == std::vector<std::int32_t>{-1, -1, 0, 1, -1, -1, -1, -1});
  CHECK(rank1.mode == ExpertMapMode::kMapAfter);
  CHECK(moe_dispatch::split_experts(8, 0, 1).global_to_local ==
        std::vector<std::int32_t>{0, 1, 2, 3, 4, 5, 6, 7});
}

TEST_CASE("split_experts gives the first E % world_size ranks one expert more") {
  constexpr int kExperts = 10;
  constexpr int kWorld = 4;
  const std::vector<int> expected_count = {3, 3, 2, 2};
  const std::vector<int> expected_first = {0, 3, 6, 8};
  std::vector<int> owners(kExperts, 0);
  for (int rank = 0; rank < kWorld; ++rank) {
    CAPTURE(rank);
    const ExpertMap map = moe_dispatch::split_experts(kExperts, rank, kWorld);
    CHECK(map.mode == ExpertMapMode::kDrop);
    REQUIRE(map.global_to_local.size() == kExperts);
    int count = 0;
    for (int global = 0; global < kExperts; ++global) {
      const int local = map.global_to_local[global];
      if (local < 0) continue;
      CHECK(local == global - expected_first[rank]);
      ++owners[global];
      ++count;
    }
    CHECK(count == expected_count[rank]);
  }
  CHECK(owners == std::vector<int>(kExperts, 1));  // every expert lives on exactly one rank
}

TEST_CASE("split_experts rejects a rank or world_size out of range") {
  struct Bad {
    int num_experts, rank, world_size;
    const char* prefix;
    const char* allowed;
  };
  const Bad cases[] = {
      {8, -1, 4, "config: expert_map.rank: ", "0..3"},
      {8, 4, 4, "config: expert_map.rank: ", "0..3"},
      {8, 0, 0, "config: expert_map.world_size: ", "1..8"},
      {8, 0, 9, "config: expert_map.world_size: ", "1..8"},
      {0, 0, 1, "config: num_experts: ", "1..4096"},
  };
  for (const Bad& bad : cases) {
    CAPTURE(bad.num_experts);
    CAPTURE(bad.rank);
    CAPTURE(bad.world_size);
    try {
      moe_dispatch::split_experts(bad.num_experts, bad.rank, bad.world_size);
      FAIL("no error");
    } catch (const ConfigError& error) {
      const std::string message = error.what();
      CHECK_MESSAGE(message.starts_with(bad.prefix), message);
      CHECK_MESSAGE(message.find(std::string("allowed: ") + bad.allowed) != std::string::npos,
                    message);
    }
  }
}

TEST_CASE("validate accepts a well-formed config built in code") {
  DispatchConfig cfg;
  cfg.num_experts = 256;
  cfg.top_k = 8;
  cfg.block_size = 64;
  cfg.buckets = {1, 2, 4, 16384};
  cfg.pad_sorted_ids = true;
  cfg.expert_map = moe_dispatch::split_experts(256, 7, 8);
  CHECK_NOTHROW(moe_dispatch::validate(cfg));
  cfg.expert_map.reset();
  cfg.expert_parallel = ExpertParallelSection{8, 7, {}, 7168, HiddenType::kBFloat16};
  CHECK_NOTHROW(moe_dispatch::validate(cfg));
}

TEST_CASE("validate names the key and the allowed values of a config built in code") {
  struct Bad {
    const char* what;
    void (*build)(DispatchConfig&);
    const char* prefix;
    const char* allowed;
  };
  const Bad cases[] = {
      {"no experts", [](DispatchConfig& c) { c.num_experts = 0; },
       "config: num_experts: ", "1..4096"},
      {"too many experts", [](DispatchConfig& c) { c.num_experts = 4097; },
       "config: num_experts: ", "1..4096"},
      {"top_k above num_experts", [](DispatchConfig& c) { c.top_k = 9; },
       "config: top_k: ", "1..8"},
      {"top_k above kMaxTopK",
       [](DispatchConfig& c) {
         c.num_experts = 64;
         c.top_k = 33;
       },
       "config: top_k: ", "1..32"},
      {"top_k zero", [](DispatchConfig& c) { c.top_k = 0; }, "config: top_k: ", "1..8"},
      {"block_size zero", [](DispatchConfig& c) { c.block_size = 0; },
       "config: block_size: ", "1..1024"},
      {"block_size too large", [](DispatchConfig& c) { c.block_size = 1025; },
       "config: block_size: ", "1..1024"},
      {"no buckets", [](DispatchConfig& c) { c.buckets.clear(); },
       "config: buckets: ", "ascending, unique, positive"},
      {"unknown overflow policy", [](DispatchConfig& c) { c.overflow = OverflowPolicy{7}; },
       "config: overflow: 7 is not a known value", "error or eager"},
      {"unknown capture mode", [](DispatchConfig& c) { c.capture = CaptureMode{9}; },
       "config: capture: 9 is not a known value", "eager or lazy"},
      {"unknown expert map mode",
       [](DispatchConfig& c) {
         c.expert_map = moe_dispatch::split_experts(8, 0, 2);
         c.expert_map->mode = ExpertMapMode{-1};
       },
       "config: expert_map.mode: -1 is not a known value", "drop or map_after"},
      {"negative bucket",
       [](DispatchConfig& c) {
         c.buckets = {-4, 16};
       },
       "config: buckets[0]: ", "positive"},
      {"unsorted buckets",
       [](DispatchConfig& c) {
         c.buckets = {16, 8};
       },
       "config: buckets[1]: ", "ascending"},
      {"repeated bucket",
       [](DispatchConfig& c) {
         c.buckets = {8, 8};
       },
       "config: buckets[1]: ", "unique"},
      {"largest bucket over kMaxNumel",
       [](DispatchConfig& c) {
         c.buckets = {1, 1 << 23};
       },
       "config: buckets[1]: ", "at most 8388356"},
      {"padding pushes the capacity over kMaxNumel",
       [](DispatchConfig& c) {
         c.num_experts = 1;
         c.top_k = 1;
         c.block_size = 1000;
         c.buckets = {16776216};  // 16776216 + 999 fits; rounded up to 16778000 it does not
         c.pad_sorted_ids = true;
       },
       "config: buckets[0]: ", "at most 16776001"},
      {"expert map of the wrong length",
       [](DispatchConfig& c) {
         c.expert_map = ExpertMap{{0, 1, 2}, ExpertMapMode::kDrop};
       },
       "config: expert_map.global_to_local: ", "exactly num_experts = 8 entries"},
      {"expert map id out of range",
       [](DispatchConfig& c) {
         c.expert_map = ExpertMap{{0, 1, 2, 3, -2, -1, -1, -1}, ExpertMapMode::kDrop};
       },
       "config: expert_map.global_to_local[4]: ", "-1 (expert on another rank)"},
      {"expert map repeats a local id",
       [](DispatchConfig& c) {
         c.expert_map = ExpertMap{{0, 1, -1, 1, -1, -1, -1, -1}, ExpertMapMode::kDrop};
       },
       "config: expert_map.global_to_local[3]: ", "unique local id in 0..7"},
      {"negative device", [](DispatchConfig& c) { c.device = -1; }, "config: device: ", ">= 0"},
      {"negative fixed_count_graphs_up_to",
       [](DispatchConfig& c) { c.fixed_count_graphs_up_to = -1; },
       "config: fixed_count_graphs_up_to: ", "0..4096"},
      {"fixed_count_graphs_up_to above kMaxFixedCountTokens",
       [](DispatchConfig& c) {
         c.fixed_count_graphs_up_to = moe_dispatch::kMaxFixedCountTokens + 1;
       },
       "config: fixed_count_graphs_up_to: ", "0..4096"},
      {"expert_parallel world_size 0",
       [](DispatchConfig& c) {
         c.expert_parallel = ExpertParallelSection{0, 0, {}, 64, HiddenType::kBFloat16};
       },
       "config: expert_parallel.world_size: ", "1..8"},
      {"expert_parallel world_size above num_experts, contiguous",
       [](DispatchConfig& c) {
         c.expert_parallel = ExpertParallelSection{9, 0, {}, 64, HiddenType::kBFloat16};
       },
       "config: expert_parallel.world_size: ", "1..8 (at most num_experts = 8"},
      {"unknown hidden type",
       [](DispatchConfig& c) {
         c.expert_parallel = ExpertParallelSection{2, 0, {}, 64, HiddenType{3}};
       },
       "config: expert_parallel.hidden_type: 3 is not a known value", "float32 or bf16"},
      {"expert_parallel rank out of range",
       [](DispatchConfig& c) {
         c.expert_parallel = ExpertParallelSection{2, 2, {}, 64, HiddenType::kBFloat16};
       },
       "config: expert_parallel.rank: ", "0..1"},
      {"expert_parallel placement of the wrong length",
       [](DispatchConfig& c) {
         c.expert_parallel = ExpertParallelSection{2, 0, {0, 1}, 64, HiddenType::kBFloat16};
       },
       "config: expert_parallel.placement: ", "exactly num_experts = 8 owner ranks"},
      {"expert_parallel owner out of range",
       [](DispatchConfig& c) {
         c.expert_parallel =
             ExpertParallelSection{2, 0, {0, 0, 0, 0, 1, 1, 1, -1}, 64, HiddenType::kBFloat16};
       },
       "config: expert_parallel.placement[7]: ", "0..1"},
      {"expert_parallel hidden_size 0",
       [](DispatchConfig& c) {
         c.expert_parallel = ExpertParallelSection{2, 0, {}, 0, HiddenType::kBFloat16};
       },
       "config: expert_parallel.hidden_size: ", "a positive multiple of 8"},
      {"expert_parallel float32 row not a multiple of 16 bytes",
       [](DispatchConfig& c) {
         c.expert_parallel = ExpertParallelSection{2, 0, {}, 6, HiddenType::kFloat32};
       },
       "config: expert_parallel.hidden_size: ", "a positive multiple of 4"},
      {"expert_parallel with an expert map",
       [](DispatchConfig& c) {
         c.expert_parallel = ExpertParallelSection{2, 0, {}, 64, HiddenType::kBFloat16};
         c.expert_map = moe_dispatch::split_experts(8, 0, 2);
       },
       "config: expert_map: ", "no expert_map with expert_parallel"},
      {"expert_parallel with overflow eager",
       [](DispatchConfig& c) {
         c.expert_parallel = ExpertParallelSection{2, 0, {}, 64, HiddenType::kBFloat16};
         c.overflow = OverflowPolicy::kEager;
       },
       "config: overflow: ", "error with expert_parallel"},
      {"expert_parallel world_size times the largest bucket over kMaxNumel",
       [](DispatchConfig& c) {
         c.buckets = {1, 1 << 20};
         c.expert_parallel = ExpertParallelSection{8, 0, {}, 64, HiddenType::kBFloat16};
       },
       "config: buckets[1]: ",
       "at most 1048544 for this num_experts, top_k, block_size, "
       "pad_sorted_ids and expert_parallel.world_size"},
  };
  for (const Bad& bad : cases) {
    SUBCASE(bad.what) {
      const std::string message = validate_error(bad.build);
      CHECK_MESSAGE(message.starts_with(bad.prefix), message);
      CHECK_MESSAGE(message.find("; allowed: ") != std::string::npos, message);
      CHECK_MESSAGE(message.find(bad.allowed) != std::string::npos, message);
    }
  }
}

TEST_CASE("malformed YAML throws one ConfigError at the offending line and column") {
  struct Malformed {
    const char* kind;
    std::string yaml;
    const char* prefix;   // "bad.yaml:LINE:COL: KEY: "
    const char* allowed;  // a piece of the allowed values the message must state
  };
  const std::string base(kMinimal);
  // Lines of kMinimal: 1 "num_experts: 8" (value at column 14), 2 "top_k: 2" (column 8),
  // 3 "block_size: 64" (column 13), 4 "buckets: [1, 16, 256]" ('[' at 10; entries at 11, 14, 18).
  const std::string shape = "num_experts: 8\ntop_k: 2\nblock_size: 64\n";
  const Malformed cases[] = {
      // syntax
      {"unclosed flow list", shape + "buckets: [1, 16\n",
       "bad.yaml:5:1: YAML syntax error: ", "one YAML mapping with the keys num_experts"},
      {"bad indentation", "num_experts: 8\n  top_k: 2\n",
       "bad.yaml:2:8: YAML syntax error: ", "num_experts, top_k, block_size"},
      {"undefined alias", base + "device: *gpu\n",
       "bad.yaml:5:9: YAML syntax error: ", "one YAML mapping"},
      // document
      {"empty text", "", "bad.yaml:1:1: (document): ", "num_experts, top_k, block_size"},
      {"comments only", "# nothing here\n\n# at all\n",
       "bad.yaml:1:1: (document): ", "num_experts"},
      {"top level is a list", "- 8\n- 2\n", "bad.yaml:1:1: (document): ", "one YAML mapping"},
      {"top level is a scalar", "num_experts\n", "bad.yaml:1:1: (document): ", "one YAML mapping"},
      {"two documents", base + "---\nnum_experts: 4\n",
       "bad.yaml:6:1: (document): ", "one YAML mapping"},
      // keys
      {"unknown key", base + "topk: 2\n",
       "bad.yaml:5:1: topk: ", "the keys num_experts, top_k, block_size, buckets, pad_sorted_ids"},
      {"duplicate key", base + "top_k: 4\n", "bad.yaml:5:1: top_k: ", "each key once"},
      {"key that is not a name", base + "[a, b]: 1\n", "bad.yaml:5:1: ?: ", "the keys num_experts"},
      {"missing num_experts", "# shape\ntop_k: 2\nblock_size: 64\nbuckets: [1]\n",
       "bad.yaml:2:1: num_experts: ", "1..4096"},
      {"missing buckets", shape, "bad.yaml:1:1: buckets: ", "ascending, unique, positive"},
      // types
      {"word for int", "num_experts: 8\ntop_k: two\nblock_size: 64\nbuckets: [1]\n",
       "bad.yaml:2:8: top_k: ", "1..min(32, num_experts)"},
      {"float for int", "num_experts: 8\ntop_k: 2\nblock_size: 1.5\nbuckets: [1]\n",
       "bad.yaml:3:13: block_size: ", "1..1024"},
      {"quoted number for int", "num_experts: \"8\"\ntop_k: 2\nblock_size: 64\nbuckets: [1]\n",
       "bad.yaml:1:14: num_experts: ", "1..4096"},
      {"int overflowing int32",
       "num_experts: 99999999999\ntop_k: 2\nblock_size: 64\nbuckets: [1]\n",
       "bad.yaml:1:14: num_experts: ", "1..4096"},
      {"hex int", "num_experts: 8\ntop_k: 2\nblock_size: 0x40\nbuckets: [1]\n",
       "bad.yaml:3:13: block_size: ", "1..1024"},
      {"leading-zero int", "num_experts: 8\ntop_k: 2\nblock_size: 064\nbuckets: [1]\n",
       "bad.yaml:3:13: block_size: ", "1..1024"},
      {"list for int", "num_experts: 8\ntop_k: [2]\nblock_size: 64\nbuckets: [1]\n",
       "bad.yaml:2:8: top_k: ", "1..min(32, num_experts)"},
      {"mapping for int", "num_experts: 8\ntop_k: 2\nblock_size: {rows: 64}\nbuckets: [1]\n",
       "bad.yaml:3:13: block_size: ", "1..1024"},
      {"key with no value", "num_experts: 8\ntop_k:\nblock_size: 64\nbuckets: [1]\n",
       "bad.yaml:2:1: top_k: ", "1..min(32, num_experts)"},
      {"word for bool", base + "pad_sorted_ids: yes\n",
       "bad.yaml:5:17: pad_sorted_ids: ", "true or false"},
      {"int for bool", base + "log: 1\n", "bad.yaml:5:6: log: ", "true or false"},
      {"unknown overflow policy", base + "overflow: abort\n",
       "bad.yaml:5:11: overflow: ", "error or eager"},
      {"unknown capture mode", base + "capture: later\n",
       "bad.yaml:5:10: capture: ", "eager or lazy"},
      {"scalar for buckets", shape + "buckets: 256\n",
       "bad.yaml:4:10: buckets: ", "ascending, unique, positive"},
      {"float inside buckets", shape + "buckets: [1, 2.5]\n",
       "bad.yaml:4:14: buckets[1]: ", "ascending, unique, positive"},
      {"list for expert_map", base + "expert_map: [0, 1]\n",
       "bad.yaml:5:13: expert_map: ", "experts: [ids] or rank and world_size"},
      // ranges
      {"num_experts 0", "num_experts: 0\ntop_k: 2\nblock_size: 64\nbuckets: [1]\n",
       "bad.yaml:1:14: num_experts: ", "1..4096"},
      {"num_experts above 4096", "num_experts: 5000\ntop_k: 2\nblock_size: 64\nbuckets: [1]\n",
       "bad.yaml:1:14: num_experts: ", "1..4096"},
      {"top_k above num_experts", "num_experts: 8\ntop_k: 16\nblock_size: 64\nbuckets: [1]\n",
       "bad.yaml:2:8: top_k: ", "1..8"},
      {"top_k above 32", "num_experts: 64\ntop_k: 33\nblock_size: 64\nbuckets: [1]\n",
       "bad.yaml:2:8: top_k: ", "1..32"},
      {"block_size 0", "num_experts: 8\ntop_k: 2\nblock_size: 0\nbuckets: [1]\n",
       "bad.yaml:3:13: block_size: ", "1..1024"},
      {"block_size above 1024", "num_experts: 8\ntop_k: 2\nblock_size: 2048\nbuckets: [1]\n",
       "bad.yaml:3:13: block_size: ", "1..1024"},
      {"negative device", base + "device: -1\n", "bad.yaml:5:9: device: ", ">= 0"},
      {"negative fixed_count_graphs_up_to", base + "fixed_count_graphs_up_to: -1\n",
       "bad.yaml:5:27: fixed_count_graphs_up_to: ", "0..4096"},
      {"fixed_count_graphs_up_to above 4096", base + "fixed_count_graphs_up_to: 4097\n",
       "bad.yaml:5:27: fixed_count_graphs_up_to: ", "0..4096"},
      {"word for fixed_count_graphs_up_to", base + "fixed_count_graphs_up_to: all\n",
       "bad.yaml:5:27: fixed_count_graphs_up_to: ", "0..4096"},
      // buckets
      {"empty buckets", shape + "buckets: []\n", "bad.yaml:4:10: buckets: ", "a non-empty list"},
      {"unsorted buckets", shape + "buckets: [1, 256, 16]\n",
       "bad.yaml:4:19: buckets[2]: ", "ascending"},
      {"duplicate bucket", shape + "buckets: [1, 16, 16]\n",
       "bad.yaml:4:18: buckets[2]: ", "unique"},
      {"non-positive bucket", shape + "buckets: [0, 16]\n",
       "bad.yaml:4:11: buckets[0]: ", "positive"},
      {"largest bucket over the capacity limit", shape + "buckets: [1, 8388608]\n",
       "bad.yaml:4:14: buckets[1]: ", "at most 8388356"},
      // expert_map (line 5 "expert_map:", its keys from line 6 at column 3)
      {"unknown expert_map key", base + "expert_map:\n  ranks: 1\n",
       "bad.yaml:6:3: expert_map.ranks: ", "experts, rank, world_size, mode"},
      {"experts and rank both given",
       base + "expert_map:\n  experts: [0, 1, 2, 3, -1, -1, -1, -1]\n  rank: 0\n  world_size: 2\n",
       "bad.yaml:7:3: expert_map.rank: ", "either experts: [ids] or rank and world_size"},
      {"neither experts nor rank given", base + "expert_map:\n  mode: drop\n",
       "bad.yaml:6:3: expert_map: ", "either experts: [ids] or rank and world_size"},
      {"rank without world_size", base + "expert_map:\n  rank: 1\n",
       "bad.yaml:6:3: expert_map.world_size: ", "1..num_experts"},
      {"experts of the wrong length", base + "expert_map:\n  experts: [0, 1, 2]\n",
       "bad.yaml:6:12: expert_map.experts: ", "exactly num_experts = 8 entries"},
      {"local id out of range", base + "expert_map:\n  experts: [0, 1, 2, 3, 8, -1, -1, -1]\n",
       "bad.yaml:6:25: expert_map.experts[4]: ", "a unique local id in 0..7"},
      {"repeated local id", base + "expert_map:\n  experts: [0, 1, 1, -1, -1, -1, -1, -1]\n",
       "bad.yaml:6:19: expert_map.experts[2]: ", "a unique local id in 0..7"},
      {"rank out of range", base + "expert_map:\n  rank: 4\n  world_size: 4\n",
       "bad.yaml:6:9: expert_map.rank: ", "0..3"},
      {"world_size above num_experts", base + "expert_map:\n  rank: 0\n  world_size: 16\n",
       "bad.yaml:7:15: expert_map.world_size: ", "1..8"},
      {"unknown expert_map mode",
       base + "expert_map:\n  rank: 0\n  world_size: 2\n  mode: legacy\n",
       "bad.yaml:8:9: expert_map.mode: ", "drop or map_after"},
      // expert_parallel (line 5 "expert_parallel:", its keys from line 6 at column 3)
      {"list for expert_parallel", base + "expert_parallel: [2, 0]\n",
       "bad.yaml:5:18: expert_parallel: ", "a mapping with world_size, rank and hidden_size"},
      {"unknown expert_parallel key",
       with_expert_parallel("  world_size: 2\n  ranks: 0\n  hidden_size: 64\n"),
       "bad.yaml:7:3: expert_parallel.ranks: ",
       "the keys world_size, rank, placement, hidden_size, hidden_type"},
      {"expert_parallel world_size missing", with_expert_parallel("  rank: 0\n  hidden_size: 64\n"),
       "bad.yaml:6:3: expert_parallel.world_size: ", "1..32"},
      {"expert_parallel hidden_size missing", with_expert_parallel("  world_size: 2\n  rank: 0\n"),
       "bad.yaml:6:3: expert_parallel.hidden_size: ", "elements per hidden row"},
      {"word for expert_parallel rank",
       with_expert_parallel("  world_size: 2\n  rank: first\n  hidden_size: 64\n"),
       "bad.yaml:7:9: expert_parallel.rank: ", "0..world_size-1"},
      {"expert_parallel world_size 0",
       with_expert_parallel("  world_size: 0\n  rank: 0\n  hidden_size: 64\n"),
       "bad.yaml:6:15: expert_parallel.world_size: ", "1..8"},
      {"expert_parallel world_size above num_experts",
       with_expert_parallel("  world_size: 16\n  rank: 0\n  hidden_size: 64\n"),
       "bad.yaml:6:15: expert_parallel.world_size: ", "1..8 (at most num_experts = 8"},
      {"expert_parallel world_size above 32",
       with_expert_parallel("  world_size: 33\n  rank: 0\n"
                            "  placement: [0, 1, 2, 3, 4, 5, 6, 7]\n  hidden_size: 64\n"),
       "bad.yaml:6:15: expert_parallel.world_size: ", "1..32"},
      {"expert_parallel rank out of range",
       with_expert_parallel("  world_size: 2\n  rank: 2\n  hidden_size: 64\n"),
       "bad.yaml:7:9: expert_parallel.rank: ", "0..1"},
      {"placement of the wrong length",
       with_expert_parallel("  world_size: 2\n  rank: 0\n  placement: [0, 1, 0]\n"
                            "  hidden_size: 64\n"),
       "bad.yaml:8:14: expert_parallel.placement: ", "exactly num_experts = 8 owner ranks"},
      {"owner rank out of range",
       with_expert_parallel("  world_size: 2\n  rank: 0\n  placement: [0, 1, 0, 1, 2, 1, 0, 1]\n"
                            "  hidden_size: 64\n"),
       "bad.yaml:8:27: expert_parallel.placement[4]: ", "0..1 (the owner rank of global expert 4)"},
      {"placement a scalar other than contiguous",
       with_expert_parallel("  world_size: 2\n  rank: 0\n  placement: round_robin\n"
                            "  hidden_size: 64\n"),
       "bad.yaml:8:14: expert_parallel.placement: ", "contiguous (the default), or a list"},
      {"placement an empty list",
       with_expert_parallel("  world_size: 2\n  rank: 0\n  placement: []\n  hidden_size: 64\n"),
       "bad.yaml:8:14: expert_parallel.placement: ", "contiguous (the default), or a list"},
      {"expert_parallel hidden_size 0",
       with_expert_parallel("  world_size: 2\n  rank: 0\n  hidden_size: 0\n"),
       "bad.yaml:8:16: expert_parallel.hidden_size: ", "a positive multiple of 8 up to 1048576"},
      {"expert_parallel bf16 row not a multiple of 16 bytes",
       with_expert_parallel("  world_size: 2\n  rank: 0\n  hidden_size: 12\n"),
       "bad.yaml:8:16: expert_parallel.hidden_size: ", "a positive multiple of 8"},
      {"unknown hidden_type",
       with_expert_parallel("  world_size: 2\n  rank: 0\n  hidden_size: 64\n  hidden_type: fp16\n"),
       "bad.yaml:9:16: expert_parallel.hidden_type: ", "bf16 or float32"},
      {"expert_parallel with an explicit expert_map",
       base + "expert_map:\n  experts: [0, 1, 2, 3, -1, -1, -1, -1]\n"
              "expert_parallel:\n  world_size: 2\n  rank: 0\n  hidden_size: 64\n",
       "bad.yaml:6:3: expert_map: ", "no expert_map with expert_parallel"},
      {"expert_parallel with a split expert_map",
       base + "expert_map:\n  rank: 0\n  world_size: 2\n"
              "expert_parallel:\n  world_size: 2\n  rank: 0\n  hidden_size: 64\n",
       "bad.yaml:6:3: expert_map: ", "no expert_map with expert_parallel"},
      {"expert_parallel with overflow eager",
       base + "overflow: eager\n"
              "expert_parallel:\n  world_size: 2\n  rank: 0\n  hidden_size: 64\n",
       "bad.yaml:5:11: overflow: ", "error with expert_parallel"},
      {"largest bucket times world_size over the capacity limit",
       shape + "buckets: [1, 1048576]\n"
               "expert_parallel:\n  world_size: 8\n  rank: 0\n  hidden_size: 64\n",
       "bad.yaml:4:14: buckets[1]: ", "at most 1048544 for this num_experts"},
  };
  for (const Malformed& bad : cases) {
    SUBCASE(bad.kind) {
      const std::string message = config_error(bad.yaml);
      CHECK_MESSAGE(message.starts_with(bad.prefix), message);
      CHECK_MESSAGE(message.find("; allowed: ") != std::string::npos, message);
      CHECK_MESSAGE(message.find(bad.allowed) != std::string::npos, message);
    }
  }
}

TEST_CASE("load_config prefixes errors with the file's path") {
  const std::filesystem::path bad = source_dir() / "tests" / "data" / "bad_top_k.yaml";
  try {
    moe_dispatch::load_config(bad);
    FAIL("bad_top_k.yaml loaded");
  } catch (const ConfigError& error) {
    const std::string message = error.what();
    CHECK_MESSAGE(message.starts_with(bad.string() + ":6:8: top_k: "), message);
    CHECK_MESSAGE(message.find("allowed: 1..8") != std::string::npos, message);
  }
}

TEST_CASE("load_config of a missing file says it cannot open it at line 1 column 1") {
  const std::filesystem::path missing = source_dir() / "configs" / "no-such-config.yaml";
  try {
    moe_dispatch::load_config(missing);
    FAIL("a missing file loaded");
  } catch (const ConfigError& error) {
    const std::string message = error.what();
    CHECK_MESSAGE(message.starts_with(missing.string() + ":1:1: cannot open"), message);
    CHECK_MESSAGE(message.find("allowed: ") != std::string::npos, message);
  }
}

TEST_CASE("load_config of a directory says it cannot open it") {
  const std::filesystem::path dir = source_dir() / "configs";
  try {
    moe_dispatch::load_config(dir);
    FAIL("a directory loaded");
  } catch (const ConfigError& error) {
    const std::string message = error.what();
    CHECK_MESSAGE(message.starts_with(dir.string() + ":1:1: cannot open"), message);
  }
}

TEST_CASE("a stray comma is a syntax error, not a hang (yaml-cpp 0.7 LoadAll loops on it)") {
  try {
    moe_dispatch::parse_config(",", "bad.yaml");
    FAIL("no exception");
  } catch (const ConfigError& e) {
    CHECK(std::string_view(e.what()).starts_with("bad.yaml:1:1: "));
  }
}
