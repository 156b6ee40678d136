// Tiny variant: decode steps of up to 32 * kItems slots in one kernel with no shared memory. Warp 0
// of every block holds all the slots in registers (kItems per lane) and computes each slot's
// position from ballots alone: one ballot per key bit and item gives, for every slot, the lanes
// holding the same expert (its rank and its expert's count) and the lanes holding a smaller expert
// (its segment's first block, summed bit by bit over the segments' sizes). Each block owns a share
// of the output blocks: its other three warps fill them with -1 and the sentinel while warp 0
// ranks, and after one block barrier warp 0 writes the slots and segment blocks that fall in them.
// Only the key ballots (ceil(log2 E) per item) and the fill grow with E. docs/KERNELS.md compares
// it with the small variant.
#include "kernels/align.hpp"
#include "kernels/align_device.cuh"
#include "kernels/align_variants.hpp"

namespace moe_dispatch::kernels {
namespace {

// Warp 0 of each block ranks; the other three fill the block's output blocks meanwhile.
constexpr int kTinyThreads = 128;

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
  int any_blocks = 0;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const MaskRank r = rank_in_masks<kItems>(same, j);
    s.rank[j] = r.before;
    s.count[j] = r.total;
    s.blocks[j] = (s.key[j] >= 0 && r.before == 0) ? segment_blocks(p, r.total) : 0;
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

template <int kItems>
__global__ void __launch_bounds__(kTinyThreads) align_tiny_kernel(const AlignParams p) {
  const int lane = threadIdx.x % kWarp;
  const bool ranker = threadIdx.x < kWarp;
  const OneKernelStart<kItems> start(p, 0, [] {});
  const int numel = start.numel;
  const OwnedBlocks own(p, static_cast<int>(blockIdx.x), start.extent, start.extent_blocks);

  TinySlots<kItems> s;
  int owner[kItems];  // what expert_ids holds for the slot's segment (loaded before the ranking)
  if (!ranker) {
    // The block's other warps fill its output blocks with -1 and the sentinel while warp 0 ranks.
    own.prefill(p, numel, static_cast<int>(threadIdx.x) - kWarp, kTinyThreads - kWarp);
  } else {
    // Keys from the ids alone (slots past the count are masked out once it is known).
    // A valid id is skipped only when the map drops its expert: one ballot more then.
    const bool map_drops = p.expert_map != nullptr && !p.map_after;
    unsigned counted[kItems];
    int invalid = 0;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const int id = start.ids[j];
      const bool bad = id < 0 || id >= p.num_experts;
      s.key[j] = bad ? -1 : counted_expert(p, id);
      owner[j] = s.key[j] >= 0 ? block_owner(p, s.key[j]) : -1;
      const int below = numel - j * kWarp;  // lanes of item j below the count
      const unsigned valid = below >= kWarp ? kFullMask : (below <= 0 ? 0u : (1u << below) - 1u);
      const unsigned bad_lanes = __ballot_sync(kFullMask, bad);
      invalid += __popc(bad_lanes & valid);
      counted[j] = (map_drops ? __ballot_sync(kFullMask, s.key[j] >= 0) : ~bad_lanes) & valid;
    }
    const int used_blocks = rank_in_registers<kItems>(p, counted, s);
    if (blockIdx.x == 0 && lane == 0) {
      *p.num_tokens_post_pad = used_blocks * p.block_size;
      p.counters[kCounterInvalid] = invalid;
      write_count_counters(p, start.num_tokens, start.clamped);
    }
  }
  __syncthreads();  // the fill is ordered before warp 0's writes over it
  // Warp 0 holds every slot: it writes those whose position is in the block's output blocks, and
  // the expert_ids of the segments (each known to its expert's first slot) that cover them.
  if (!ranker) return;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int pos = s.start[j] * p.block_size + s.rank[j];
    if (s.key[j] >= 0 && own.holds_entry(pos)) p.sorted_token_ids[pos] = j * kWarp + lane;
    if (s.blocks[j] != 0) own.write_segment_blocks(p, s.start[j], s.blocks[j], owner[j]);
  }
}

template <int kItems>
cudaError_t launch_items(const AlignParams& params, const AlignPlan& plan, cudaStream_t stream) {
  align_tiny_kernel<kItems><<<plan.grid, kTinyThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace

AlignPlan tiny_plan(std::int64_t max_numel, int num_experts, int block_size) {
  AlignPlan plan;
  plan.variant = AlignVariant::kTiny;
  plan.threads = kTinyThreads;
  plan.items = max_numel <= kWarp ? 1 : 2;
  static_assert(kTinyMaxNumel == 2 * kWarp);
  plan.grid = write_blocks(max_numel + std::int64_t{num_experts} * block_size, kMaxOneKernelGrid,
                           kOneKernelEntriesPerBlock);
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
  AlignParams p = params;
  p.region_blocks = region_blocks(p, plan.grid);
  if (plan.items == 1) return launch_items<1>(p, plan, stream);
  if (plan.items == 2) return launch_items<2>(p, plan, stream);
  return cudaErrorInvalidConfiguration;
}

}  // namespace moe_dispatch::kernels
