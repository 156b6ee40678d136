// Tiny variant: decode steps of up to 32 * kItems slots in one kernel with no shared memory and no
// barrier. Every warp of the grid holds all the slots in registers (kItems per lane) and computes
// each slot's position from ballots alone: one ballot per key bit and item gives, for every slot,
// the lanes holding the same expert (its rank and its expert's count) and the lanes holding a
// smaller expert (its segment's first block, summed bit by bit over the segments' sizes). The warps
// then write disjoint shares of the outputs. Only the key ballots (ceil(log2 E) per item) and the
// sentinel tail (spread over the grid) grow with E. docs/KERNELS.md compares it with the small
// variant.
#include "kernels/align.hpp"
#include "kernels/align_device.cuh"
#include "kernels/align_variants.hpp"

namespace moe_dispatch::kernels {
namespace {

constexpr int kTinyThreads = 128;
constexpr int kTinyWarps = kTinyThreads / kWarp;

// Item j of lane l is slot 32 * j + l; key is the expert it is counted under (-1: skipped).
template <int kItems>
struct TinySlots {
  int key[kItems];
  int rank[kItems];    // earlier slots of the same expert
  int count[kItems];   // slots of the same expert
  int blocks[kItems];  // the expert's segment size in blocks, on its first slot only (else 0)
  int start[kItems];   // the expert's first block
};

// Fills every field but key (set by the caller; set to -1 here for a slot that does not count) and
// returns the blocks of all segments. Only the slots below numel with a key count: `counted[i]`
// holds the lanes whose item i is one. The key ballots do not depend on the count (the other
// lanes are masked out afterwards), so it is not on their path.
template <int kItems>
__device__ __forceinline__ int rank_in_registers(const AlignParams& p,
                                                 const unsigned (&counted)[kItems],
                                                 TinySlots<kItems>& s) {
  const int lane = threadIdx.x % kWarp;
  // same[j][i]: lanes whose item i has the key of this lane's item j; less[j][i]: a smaller key.
  unsigned same[kItems][kItems];
  unsigned less[kItems][kItems];
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      same[j][i] = kFullMask;
      less[j][i] = 0;
    }
  }
  // Lowest bit first: a higher bit where the keys differ overrides what the lower bits decided.
  const int key_bits = 32 - __clz(p.num_experts - 1);  // keys 0 .. E - 1 (none at E = 1)
#pragma unroll 4
  for (int b = 0; b < key_bits; ++b) {
    unsigned ones[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) ones[i] = __ballot_sync(kFullMask, ((s.key[i] >> b) & 1) != 0);
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const bool set = ((s.key[j] >> b) & 1) != 0;
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        less[j][i] = set ? (~ones[i] | less[j][i]) : (~ones[i] & less[j][i]);
        same[j][i] &= set ? ones[i] : ~ones[i];
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    if (((counted[j] >> lane) & 1) == 0) s.key[j] = -1;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      same[j][i] &= counted[i];
      less[j][i] &= counted[i];
    }
  }
  const unsigned lanes_below = (1u << lane) - 1u;
  int any_blocks = 0;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    int before = __popc(same[j][j] & lanes_below);
    int total = __popc(same[j][j]);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (i < j) before += __popc(same[j][i]);
      if (i != j) total += __popc(same[j][i]);
    }
    s.rank[j] = before;
    s.count[j] = total;
    s.blocks[j] = (s.key[j] >= 0 && before == 0) ? segment_blocks(p, total) : 0;
    s.start[j] = 0;
    any_blocks |= s.blocks[j];
  }
  // start = the sum of the segments of smaller keys, one bit of the segment sizes at a time.
  any_blocks = static_cast<int>(__reduce_or_sync(kFullMask, static_cast<unsigned>(any_blocks)));
  int used_blocks = 0;
#pragma unroll 1
  for (int bit = 0; (any_blocks >> bit) != 0; ++bit) {
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const unsigned has = __ballot_sync(kFullMask, ((s.blocks[i] >> bit) & 1) != 0);
      used_blocks += __popc(has) << bit;
#pragma unroll
      for (int j = 0; j < kItems; ++j) s.start[j] += __popc(less[j][i] & has) << bit;
    }
  }
  return used_blocks;
}

// expert_ids[b] and the padding of output block b (warp-uniform): the one slot whose segment holds
// b gives the segment's expert, first block and count.
template <int kItems>
__device__ __forceinline__ void write_output_block(const AlignParams& p, const TinySlots<kItems>& s,
                                                   int b, int numel) {
  int start = 0;
  int count = 0;
  int key = 0;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const unsigned holder = __ballot_sync(
        kFullMask, s.blocks[i] != 0 && s.start[i] <= b && b < s.start[i] + s.blocks[i]);
    if (holder != 0) {
      const int src = __ffs(holder) - 1;
      start = __shfl_sync(kFullMask, s.start[i], src);
      count = __shfl_sync(kFullMask, s.count[i], src);
      key = __shfl_sync(kFullMask, s.key[i], src);
    }
  }
  const int lane = threadIdx.x % kWarp;
  if (lane == 0) p.expert_ids[b] = block_owner(p, key);
  // Offsets in the block from the segment's end on are padding (only its last block has any).
  const int first_padding = count - (b - start) * p.block_size;
#pragma unroll 1
  for (int o = first_padding + lane; o < p.block_size; o += kWarp) {
    p.sorted_token_ids[b * p.block_size + o] = numel;
  }
}

// An output block past the used ones and below the tail's bound: -1 in expert_ids and the sentinel
// in all B entries (warp-uniform), 16-byte stores when the block's entries allow them.
__device__ __forceinline__ void write_unused_block(const AlignParams& p, int b, int numel) {
  const int lane = threadIdx.x % kWarp;
  if (lane == 0) p.expert_ids[b] = -1;
  std::int32_t* out = p.sorted_token_ids + static_cast<std::int64_t>(b) * p.block_size;
  if ((p.block_size & 3) == 0 && (reinterpret_cast<std::uintptr_t>(out) & 15u) == 0) {
    const int4 quad = make_int4(numel, numel, numel, numel);
#pragma unroll 1
    for (int q = lane; q < p.block_size >> 2; q += kWarp) reinterpret_cast<int4*>(out)[q] = quad;
  } else {
#pragma unroll 1
    for (int o = lane; o < p.block_size; o += kWarp) out[o] = numel;
  }
}

template <int kItems>
__global__ void __launch_bounds__(kTinyThreads) align_tiny_kernel(const AlignParams p) {
  static_assert(kItems <= kTinyWarps, "one warp scatters each item");
  const int lane = threadIdx.x % kWarp;
  const OneKernelStart<kItems> start(p, 0);
  const int numel = start.numel;

  // Keys from the ids alone (slots past the count are masked out once it is known).
  // A valid id is skipped only when the map drops its expert: one ballot more then.
  const bool map_drops = p.expert_map != nullptr && !p.map_after;
  TinySlots<kItems> s;
  unsigned counted[kItems];
  int invalid = 0;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int id = start.ids[j];
    const bool bad = id < 0 || id >= p.num_experts;
    s.key[j] = bad ? -1 : counted_expert(p, id);
    const int below = numel - j * kWarp;  // lanes of item j below the count
    const unsigned valid = below >= kWarp ? kFullMask : (below <= 0 ? 0u : (1u << below) - 1u);
    const unsigned bad_lanes = __ballot_sync(kFullMask, bad);
    invalid += __popc(bad_lanes & valid);
    counted[j] = (map_drops ? __ballot_sync(kFullMask, s.key[j] >= 0) : ~bad_lanes) & valid;
  }
  const int used_blocks = rank_in_registers<kItems>(p, counted, s);

  const int warp = static_cast<int>((blockIdx.x * kTinyThreads + threadIdx.x) / kWarp);
  const int warps = static_cast<int>(gridDim.x) * kTinyWarps;
  if (warp == 0 && lane == 0) {
    *p.num_tokens_post_pad = used_blocks * p.block_size;
    p.counters[kCounterInvalid] = invalid;
    write_count_counters(p, start.num_tokens, start.clamped);
  }
  // Warp j scatters item j; slots, segment padding and tail are disjoint entries.
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    if (warp == j && s.key[j] >= 0) {
      p.sorted_token_ids[s.start[j] * p.block_size + s.rank[j]] = j * kWarp + lane;
    }
  }
  if (start.count_is_parameter) {
    // Past the bound the tail is written already: a warp per output block up to it, used or not.
#pragma unroll 1
    for (int b = warp; b < start.tail.bound_blocks; b += warps) {
      if (b < used_blocks) {
        write_output_block<kItems>(p, s, b, numel);
      } else {
        write_unused_block(p, b, numel);
      }
    }
  } else {
    // A count loaded from device memory arrives with the ids: nothing to overlap, so the tail is
    // written in one pass (two fills fewer on every warp's path).
#pragma unroll 1
    for (int b = warp; b < used_blocks; b += warps) write_output_block<kItems>(p, s, b, numel);
    start.tail.fill_all(p, used_blocks, numel);
  }
}

template <int kItems>
cudaError_t launch_items(const AlignParams& params, const AlignPlan& plan, cudaStream_t stream) {
  align_tiny_kernel<kItems><<<plan.grid, kTinyThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

// Writes above one block's worth of output entries spread over at most this many blocks.
constexpr int kMaxTinyGrid = 128;

}  // namespace

AlignPlan tiny_plan(std::int64_t max_numel, int num_experts, int block_size) {
  AlignPlan plan;
  plan.variant = AlignVariant::kTiny;
  plan.threads = kTinyThreads;
  plan.items = max_numel <= kWarp ? 1 : 2;
  static_assert(kTinyMaxNumel == 2 * kWarp);
  plan.grid = write_blocks(max_numel + std::int64_t{num_experts} * block_size, kMaxTinyGrid);
  plan.shared_bytes = 0;
  plan.kernels = 1;
  return plan;
}

cudaError_t launch_align_tiny(const AlignParams& params, const AlignPlan& plan,
                              cudaStream_t stream) {
  // Slots past the warp's 32 * items would be silently ignored: refuse the launch instead.
  if (plan.threads != kTinyThreads || static_cast<std::int64_t>(params.max_tokens) * params.top_k >
                                          std::int64_t{kWarp} * plan.items) {
    return cudaErrorInvalidConfiguration;
  }
  if (plan.items == 1) return launch_items<1>(params, plan, stream);
  if (plan.items == 2) return launch_items<2>(params, plan, stream);
  return cudaErrorInvalidConfiguration;
}

}  // namespace moe_dispatch::kernels
