// libFuzzer target: the host reference against the independent oracle (tests/support/oracle.hpp).
//
// Input layout (every byte string decodes to some valid problem; missing bytes read as 0):
//   [0..1]  u16 LE   num_experts E = 1 + v % 300
//   [2]     u8       top_k = 1 + v % min(8, E)
//   [3]     u8       block_size B = 1 + v
//   [4]     u8       flags: bit 0 pad_sorted_ids; bits 1-2 expert map: 0 none, 1 drop, 2 map_after,
//                    3 none
//   [5..6]  u8, u8   (only with a map) share of local experts (v / 255) and a seed that picks which
//                    experts are local and shuffles their local ids
//   then    u16 LE   per slot, up to 4096 tokens * top_k slots (a partial last token is ignored):
//                    v < 0xF000 is the valid id v % E; larger v pick an invalid id from
//                    invalid_id() (negative, >= E, INT_MIN, INT_MAX)
// Each input runs through align_reference() twice, once into buffers kept across inputs (so reuse
// at every size is exercised) and once fresh; both must equal the oracle, else the target traps.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "moe_dispatch/align.hpp"
#include "moe_dispatch/config.hpp"
#include "moe_dispatch/reference.hpp"
#include "support/oracle.hpp"

namespace {

constexpr int kMaxFuzzExperts = 300;
constexpr int kMaxFuzzTopK = 8;
constexpr int kMaxFuzzTokens = 4096;

// Reads the input front to back; past the end every read is 0.
class ByteReader {
 public:
  ByteReader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::uint8_t u8() { return pos_ < size_ ? data_[pos_++] : 0; }
  std::uint16_t u16() {
    const std::uint16_t lo = u8();
    return static_cast<std::uint16_t>(lo | (u8() << 8));
  }
  std::size_t remaining() const { return size_ - std::min(pos_, size_); }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

std::int32_t invalid_id(std::uint16_t v, int num_experts) {
  const auto k = static_cast<std::int32_t>(v & 0xFF);
  switch ((v >> 8) & 0x7) {
    case 0:
      return -1;
    case 1:
      return num_experts;
    case 2:
      return std::numeric_limits<std::int32_t>::min();
    case 3:
      return std::numeric_limits<std::int32_t>::max();
    case 4:
      return -1 - k;
    case 5:
      return num_experts + k;
    case 6:
      return std::numeric_limits<std::int32_t>::min() + k;
    default:
      return std::numeric_limits<std::int32_t>::max() - k;
  }
}

// A valid map (distinct local ids in [0, E) or -1): about share/255 of the experts local. `seed`
// shuffles the experts; the first num_local of that order get local ids 0, 1, ..., so which
// experts are local and how local order relates to global order both vary.
moe_dispatch::ExpertMap make_map(int num_experts, std::uint8_t share, std::uint8_t seed,
                                 moe_dispatch::ExpertMapMode mode) {
  std::minstd_rand rng(seed + 1u);
  std::vector<std::size_t> globals(static_cast<std::size_t>(num_experts));
  std::iota(globals.begin(), globals.end(), std::size_t{0});
  std::shuffle(globals.begin(), globals.end(), rng);
  moe_dispatch::ExpertMap map{std::vector<std::int32_t>(globals.size(), -1), mode};
  const int num_local = num_experts * share / 255;
  for (int local = 0; local < num_local; ++local) {
    map.global_to_local[globals[static_cast<std::size_t>(local)]] = local;
  }
  return map;
}

bool same(const moe_dispatch::HostAlignResult& a, const moe_dispatch::HostAlignResult& b) {
  return a.sorted_token_ids == b.sorted_token_ids && a.expert_ids == b.expert_ids &&
         a.num_tokens_post_pad == b.num_tokens_post_pad && a.num_invalid_ids == b.num_invalid_ids;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ByteReader in(data, size);
  moe_dispatch::AlignShape shape;
  shape.num_experts = 1 + in.u16() % kMaxFuzzExperts;
  shape.top_k = 1 + in.u8() % std::min(kMaxFuzzTopK, shape.num_experts);
  shape.block_size = 1 + in.u8();
  const std::uint8_t flags = in.u8();
  shape.pad_sorted_ids = (flags & 1) != 0;
  const int map_kind = (flags >> 1) & 3;

  moe_dispatch::ExpertMap map;
  const moe_dispatch::ExpertMap* map_ptr = nullptr;
  if (map_kind == 1 || map_kind == 2) {
    const std::uint8_t share = in.u8();
    const std::uint8_t seed = in.u8();
    map = make_map(shape.num_experts, share, seed,
                   map_kind == 1 ? moe_dispatch::ExpertMapMode::kDrop
                                 : moe_dispatch::ExpertMapMode::kMapAfter);
    map_ptr = &map;
  }

  const auto slots_available = in.remaining() / 2;
  const auto tokens = std::min<std::size_t>(slots_available / static_cast<std::size_t>(shape.top_k),
                                            kMaxFuzzTokens);
  std::vector<std::int32_t> ids(tokens * static_cast<std::size_t>(shape.top_k));
  for (std::int32_t& id : ids) {
    const std::uint16_t v = in.u16();
    id = v < 0xF000 ? static_cast<std::int32_t>(v % shape.num_experts)
                    : invalid_id(v, shape.num_experts);
  }

  const moe_dispatch::HostAlignResult want = moe_dispatch::test::align_oracle(ids, shape, map_ptr);
  // Kept across inputs: every call reuses whatever extent the previous input left behind.
  static moe_dispatch::HostAlignResult reused;
  static std::vector<std::int32_t> counts;
  moe_dispatch::align_reference(ids, shape, map_ptr, reused, counts);
  if (!same(reused, want)) __builtin_trap();
  if (!same(moe_dispatch::align_reference(ids, shape, map_ptr), want)) __builtin_trap();
  // The extents the GPU path allocates from must match what both produce.
  const auto numel = static_cast<std::int64_t>(ids.size());
  if (static_cast<std::int64_t>(want.sorted_token_ids.size()) !=
          moe_dispatch::sorted_capacity(shape, numel) ||
      static_cast<std::int64_t>(want.expert_ids.size()) !=
          moe_dispatch::expert_ids_capacity(shape, numel)) {
    __builtin_trap();
  }
  return 0;
}
