// Device building blocks shared by the alignment variants: reading the count, ranking a warp's
// slots stably, the segment scan, expert_ids and the sentinel fill.
#pragma once

#include <cub/block/block_scan.cuh>

#include <cstdint>
#include <type_traits>

#include "kernels/align.hpp"

namespace moe_dispatch::kernels {

inline constexpr unsigned kFullMask = 0xffffffffu;
inline constexpr int kWarp = 32;

// Counters layout (see AlignParams::counters).
inline constexpr int kCounterInvalid = 0;
inline constexpr int kCounterClamped = 1;
inline constexpr int kCounterTokens = 2;

// Blocks of B entries a segment of `count` slots takes.
__device__ __forceinline__ int segment_blocks(const AlignParams& p, int count) {
  return divide(count + p.block_size - 1, p.block_div);
}

// The token count as the caller gave it (first kernel of a launch): the device value or the host
// parameter.
__device__ __forceinline__ int load_num_tokens(const AlignParams& p) {
  return p.num_tokens != nullptr ? *p.num_tokens : p.host_num_tokens;
}

// A loaded count clamped to [0, max_tokens].
__device__ __forceinline__ int clamp_num_tokens(const AlignParams& p, int n, bool* clamped) {
  *clamped = n < 0 || n > p.max_tokens;
  return n < 0 ? 0 : (n > p.max_tokens ? p.max_tokens : n);
}

// The token count this launch aligns, clamped.
__device__ __forceinline__ int read_num_tokens(const AlignParams& p, bool* clamped) {
  return clamp_num_tokens(p, load_num_tokens(p), clamped);
}

// Written by block 0 of the first kernel; later kernels of the launch read the count from here.
__device__ __forceinline__ void write_count_counters(const AlignParams& p, int num_tokens,
                                                     bool clamped) {
  p.counters[kCounterClamped] = clamped ? 1 : 0;
  p.counters[kCounterTokens] = num_tokens;
}

// The expert a valid id (in [0, E)) is counted under: expert_map[id] when the map applies before
// counting (-1: the id's expert is not local, the slot is skipped), else the id. A map entry
// outside [-1, E) (a caller's device map, which align_async cannot check) is taken as -1, so it
// never indexes past the experts.
__device__ __forceinline__ int counted_expert(const AlignParams& p, int id) {
  if (p.expert_map == nullptr || p.map_after) return id;
  const int local = __ldg(p.expert_map + id);
  return static_cast<unsigned>(local) < static_cast<unsigned>(p.num_experts) ? local : -1;
}

// What expert_ids holds for the blocks of expert e's segment: expert_map[e] when the map applies
// after counting, else e.
__device__ __forceinline__ int block_owner(const AlignParams& p, int e) {
  return (p.expert_map != nullptr && p.map_after) ? __ldg(p.expert_map + e) : e;
}

// Entries of sorted_token_ids defined for numel slots (int: at most 2^24 + 4096 * 1023).
__device__ __forceinline__ int sorted_extent(const AlignParams& p, int numel) {
  const int cap = numel + p.num_experts * (p.block_size - 1);
  return p.pad_sorted_ids ? segment_blocks(p, cap) * p.block_size : cap;
}

// One warp's slots in registers: the expert each slot is counted under (-1: skipped) and its rank
// among the warp's earlier slots of that expert.
template <int kItems>
struct WarpSlots {
  int expert[kItems];
  int rank[kItems];
};

// Loads the ids of the warp's 32 * kItems consecutive slots starting at `first`. Loads are bounded
// by the launch capacity, not the count, so they are issued before the count arrives.
template <int kItems>
__device__ __forceinline__ void load_ids(const AlignParams& p, std::int64_t first,
                                         std::int64_t capacity_numel, int (&ids)[kItems]) {
  const int lane = threadIdx.x % kWarp;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const std::int64_t slot = first + j * kWarp + lane;
    ids[j] = slot < capacity_numel ? __ldg(p.topk_ids + slot) : -1;
  }
}

// Row stride (16-bit entries) of the per-warp counter rows: the row length rounded to an odd
// number of 32-bit words, so consecutive rows start in different banks.
__host__ __device__ constexpr int row_stride(int num_experts) {
  return (num_experts + 3) / 4 * 4 + 2;
}

// From same[j][i], the lanes whose item i holds the key of this lane's item j (slots in item-major
// order, slot = 32 * item + lane): `before`, the earlier slots with the key of item j, and
// `total`, the slots with that key in the warp.
struct MaskRank {
  int before;
  int total;
};
template <int kItems>
__device__ __forceinline__ MaskRank rank_in_masks(const unsigned (&same)[kItems][kItems], int j) {
  const unsigned lanes_below = (1u << (threadIdx.x % kWarp)) - 1u;
  MaskRank r{__popc(same[j][j] & lanes_below), __popc(same[j][j])};
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    if (i < j) r.before += __popc(same[j][i]);
    if (i != j) r.total += __popc(same[j][i]);
  }
  return r;
}

// Ranks the warp's slots in slot order. `row` is this warp's private row of per-expert counters
// (zeroed by the caller); on return row[e] counts the warp's slots of expert e. Returns the
// number of slots whose id was outside [0, E) (same value in every lane).
// Keys are 0 for a skipped slot, else the expert + 1; one ballot per key bit and item finds the
// lanes holding each key (a warp multi-split; measured cheaper than __match_any_sync on the H100),
// every item's ballots of a bit issued together. With kCross, each item's key is also matched
// against the other items' lanes (kItems^2 masks per bit), which gives every slot its rank and
// its expert's count in the warp without reading the row: the expert's first slot stores the
// count. Without it the row is a running counter, read and updated item after item by one lane
// per expert. Which is faster depends on the shape (docs/KERNELS.md); the callers choose.
template <int kItems, bool kCross>
__device__ __forceinline__ int rank_warp_slots(const AlignParams& p, std::int64_t first, int numel,
                                               const int (&ids)[kItems], std::uint16_t* row,
                                               WarpSlots<kItems>& slots) {
  constexpr int kMatched = kCross ? kItems : 1;  // items each key is matched against
  const int lane = threadIdx.x % kWarp;
  const unsigned lanes_below = (1u << lane) - 1u;
  const int key_bits = 32 - __clz(p.num_experts);  // keys 0 (skipped) .. E
  int invalid = 0;
  int key[kItems];
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const std::int64_t slot = first + j * kWarp + lane;
    int expert = -1;
    bool bad = false;
    if (slot < numel) {
      const int id = ids[j];
      bad = id < 0 || id >= p.num_experts;
      if (!bad) expert = counted_expert(p, id);
    }
    invalid += __popc(__ballot_sync(kFullMask, bad));
    slots.expert[j] = expert;
    key[j] = expert + 1;
  }
  // same[j][i]: the lanes whose item i (item j itself without cross matching) holds the key of
  // this lane's item j.
  unsigned same[kItems][kMatched];
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
#pragma unroll
    for (int i = 0; i < kMatched; ++i) same[j][i] = kFullMask;
  }
#pragma unroll 4
  for (int b = 0; b < key_bits; ++b) {
    unsigned ones[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) ones[i] = __ballot_sync(kFullMask, ((key[i] >> b) & 1) != 0);
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const bool set = ((key[j] >> b) & 1) != 0;
#pragma unroll
      for (int i = 0; i < kMatched; ++i) {
        const unsigned lanes = ones[kCross ? i : j];
        same[j][i] &= set ? lanes : ~lanes;
      }
    }
  }
  if constexpr (kCross) {
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const MaskRank r = rank_in_masks<kItems>(same, j);
      slots.rank[j] = r.before;
      const int expert = slots.expert[j];
      if (r.before == 0 && expert >= 0) row[expert] = static_cast<std::uint16_t>(r.total);
    }
  } else {
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const unsigned peers = same[j][0];
      const int expert = slots.expert[j];
      const int leader = __ffs(peers) - 1;
      int before = 0;
      if (lane == leader && expert >= 0) {
        before = row[expert];
        row[expert] = static_cast<std::uint16_t>(before + __popc(peers));
      }
      before = __shfl_sync(kFullMask, before, leader);
      slots.rank[j] = before + __popc(peers & lanes_below);
      // The next step's leader may update the same counter.
      __syncwarp();
    }
  }
  return invalid;
}

// Zeroes this warp's row of `num_experts` 16-bit counters, two per 32-bit store (rows start
// 4-byte aligned, and the row stride leaves room past an odd count): one store per lane up to 64
// experts, else a loop, unrolled by 4 when kUnrolled. Measured (H200): unrolled, the small
// variant gains up to 0.15 us at E = 1024 in one block and up to 0.12 us in clusters, which zero
// while their ids load (zeroing after the fill, they had lost 0.1-0.3 us at E = 1024); the large
// variant loses 0.1-0.3 us at E = 128, so it keeps the loop rolled.
template <bool kUnrolled>
__device__ __forceinline__ void zero_warp_row(std::uint16_t* row, int num_experts) {
  auto* words = reinterpret_cast<std::uint32_t*>(row);
  const int num_words = (num_experts + 1) >> 1;
  const int lane = threadIdx.x % kWarp;
  if (num_words <= kWarp) {
    if (lane < num_words) words[lane] = 0;
  } else if constexpr (kUnrolled) {
#pragma unroll 4
    for (int i = lane; i < num_words; i += kWarp) words[i] = 0;
  } else {
#pragma unroll 1
    for (int i = lane; i < num_words; i += kWarp) words[i] = 0;
  }
  __syncwarp();
}

// rows[w][e] -> exclusive prefix over the kWarps warps w, for expert e; returns e's total. A
// thread per expert walks the warps (measured faster than a warp-per-expert shuffle scan, which
// serializes E / warps experts per warp when the block has few warps), with all of the expert's
// loads issued before its stores. Call after a barrier that follows every warp's
// rank_warp_slots; rows are `stride` (row_stride(E)) apart.
template <int kWarps>
__device__ __forceinline__ int warp_row_to_prefix(std::uint16_t* rows, int stride, int e) {
  int counts[kWarps];
#pragma unroll
  for (int w = 0; w < kWarps; ++w) counts[w] = rows[w * stride + e];
  int run = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    rows[w * stride + e] = static_cast<std::uint16_t>(run);
    run += counts[w];
  }
  return run;
}

// warp_row_to_prefix for the kPer consecutive experts from first_expert: totals[i] is expert
// first_expert + i's total (0 past E).
template <int kWarps, int kPer>
__device__ __forceinline__ void warp_rows_to_prefix(std::uint16_t* rows, int num_experts,
                                                    int first_expert, int (&totals)[kPer]) {
  const int stride = row_stride(num_experts);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int e = first_expert + i;
    totals[i] = e < num_experts ? warp_row_to_prefix<kWarps>(rows, stride, e) : 0;
  }
}

// The experts per thread a block of `threads` threads needs for `max_experts` experts, rounded up
// to a power of two.
__host__ __device__ constexpr int experts_per_thread_bound(int threads, int max_experts) {
  int per = 1;
  while (per * threads < max_experts) per *= 2;
  return per;
}

// Calls finish(std::integral_constant<int, kPer>) with kPer the least power of two from kFirst on
// with kPer * threads >= num_experts, at most kMax (the launchers refuse larger E). A kernel that
// keeps each thread's kPer consecutive experts in registers is built once per kPer this way.
template <int kFirst, int kMax, typename Finish>
__device__ __forceinline__ void with_experts_per_thread(int num_experts, int threads,
                                                        Finish& finish) {
  if constexpr (kFirst < kMax) {
    if (num_experts > kFirst * threads) {
      with_experts_per_thread<kFirst * 2, kMax>(num_experts, threads, finish);
      return;
    }
  }
  finish(std::integral_constant<int, kFirst>{});
}

// Block-wide scan: warp scans plus one combine (CUB BLOCK_SCAN_WARP_SCANS), measured cheaper than
// CUB's default raking scan for these sizes.
template <int kThreads>
using BlockScanInt = cub::BlockScan<int, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;
template <int kThreads>
using ScanStorage = typename BlockScanInt<kThreads>::TempStorage;

// Exclusive scan of the segments' sizes in blocks, each thread holding the counts of kPer
// consecutive experts from first_expert (0 past E): blocks[i] and first_block[i] are the size and
// the first block of expert first_expert + i's segment, also written to starts[] (experts below
// E). Scanning blocks rather than padded entries keeps one division per expert. Returns the blocks
// of all segments (num_tokens_post_pad / B) in every thread; contains a barrier.
template <int kThreads, int kPer>
__device__ __forceinline__ int scan_segment_starts(const AlignParams& p, int first_expert,
                                                   const int (&count)[kPer], int (&blocks)[kPer],
                                                   int (&first_block)[kPer], int* starts,
                                                   ScanStorage<kThreads>& temp) {
#pragma unroll
  for (int i = 0; i < kPer; ++i) blocks[i] = segment_blocks(p, count[i]);
  int used_blocks = 0;
  BlockScanInt<kThreads>(temp).ExclusiveSum(blocks, first_block, used_blocks);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    if (first_expert + i < p.num_experts) starts[first_expert + i] = first_block[i];
  }
  return used_blocks;
}

// value into out[begin, end), spread over `threads` threads: 16-byte stores for the aligned quads
// inside the range when `out` is 16-byte aligned, and the up to 3 entries before and after them
// by threads 0..2. The quad loop is kept rolled: a thread makes few trips, and an unrolled strided
// loop computes its trip count with a division.
__device__ __forceinline__ void fill_range(std::int32_t* out, int begin, int end,
                                           std::int32_t value, int thread, int threads) {
  if ((reinterpret_cast<std::uintptr_t>(out) & 15u) != 0) {
#pragma unroll 1
    for (int i = begin + thread; i < end; i += threads) out[i] = value;
    return;
  }
  const int vec_begin = min((begin + 3) & ~3, end);
  const int vec_end = max(end & ~3, vec_begin);
  if (thread < vec_begin - begin) out[begin + thread] = value;
  if (thread < end - vec_end) out[vec_end + thread] = value;
  const int4 quad = make_int4(value, value, value, value);
  int4* quads = reinterpret_cast<int4*>(out);
  const int end_quad = vec_end >> 2;
#pragma unroll 1
  for (int q = (vec_begin >> 2) + thread; q < end_quad; q += threads) quads[q] = quad;
}

// What lies past the used blocks, as the large variant writes it: -1 in expert_ids and the
// sentinel in sorted_token_ids, up to the extent defined for numel slots. Most of it is known
// before any id is read: at most min(numel, E) experts take blocks, so the used entries never pass
// numel + min(numel, E) * (B - 1). The part past that bound is written as soon as the count is
// known (while the ids are still loading), the rest once the used blocks are known. Both parts are
// spread over all threads of the grid.
struct UnusedTail {
  int bound_blocks;   // the used blocks never exceed this many
  int extent;         // entries of sorted_token_ids defined for numel slots
  int extent_blocks;  // entries of expert_ids defined for numel slots

  __device__ UnusedTail(const AlignParams& p, int numel) {
    extent = sorted_extent(p, numel);
    const int bound = min(extent, numel + min(numel, p.num_experts) * (p.block_size - 1));
    bound_blocks = divide(bound, p.block_div);
    extent_blocks = segment_blocks(p, extent);
  }

  // The part past the bound; call before the ids are needed.
  __device__ void fill_early(const AlignParams& p, int numel) const {
    fill(p, bound_blocks, extent_blocks, bound_blocks * p.block_size, extent, numel);
  }
  // From the used blocks to the bound.
  __device__ void fill_late(const AlignParams& p, int used_blocks, int numel) const {
    fill(p, used_blocks, bound_blocks, used_blocks * p.block_size, bound_blocks * p.block_size,
         numel);
  }

 private:
  __device__ static void fill(const AlignParams& p, int first_block, int end_block, int first_entry,
                              int end_entry, int numel) {
    const int thread = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    const int threads = static_cast<int>(gridDim.x * blockDim.x);
    fill_range(p.expert_ids, first_block, end_block, -1, thread, threads);
    fill_range(p.sorted_token_ids, first_entry, end_entry, numel, thread, threads);
  }
};

// The output blocks one writer of a one-kernel variant owns (a block of the tiny variant, a block
// or cluster of the small one): [first, end), AlignParams::region_blocks of them from
// owner * region_blocks on, clipped to the blocks defined for the step. The owner prefills its
// blocks (-1 in expert_ids, the sentinel in their sorted_token_ids entries) while it ranks, then
// overwrites the slots and used blocks that fall in them, so the padding and the unused blocks
// need no pass of their own after the scan. Only the owner writes its entries, and a barrier of
// the owner (block or cluster) or the cluster's exchange lies between its two writes, so the
// second one wins.
struct OwnedBlocks {
  int first;
  int end;
  int first_entry;
  int end_entry;

  __device__ OwnedBlocks(const AlignParams& p, int owner, int extent, int extent_blocks) {
    first = min(owner * p.region_blocks, extent_blocks);
    end = min(first + p.region_blocks, extent_blocks);
    first_entry = first * p.block_size;
    end_entry = min(end * p.block_size, extent);
  }

  __device__ bool holds_entry(int entry) const { return first_entry <= entry && entry < end_entry; }

  // -1 and the sentinel over the owned blocks, spread over `threads` threads of the owner.
  __device__ void prefill(const AlignParams& p, int numel, int thread, int threads) const {
    fill_range(p.expert_ids, first, end, -1, thread, threads);
    fill_range(p.sorted_token_ids, first_entry, end_entry, numel, thread, threads);
  }

  // expert_ids of the owned blocks among [start, start + blocks), a segment of `owner_id`.
  __device__ void write_segment_blocks(const AlignParams& p, int start, int blocks,
                                       int owner_id) const {
    const int stop = min(start + blocks, end);
#pragma unroll 1
    for (int b = max(start, first); b < stop; ++b) p.expert_ids[b] = owner_id;
  }
};

// The opening of the one-kernel variants (tiny and small): the ids of the warp's slots from
// `first` (loaded up to the capacity, so they are in flight before the count arrives), the count,
// and the extent of the outputs defined for it. `meanwhile()` runs after the loads are issued and
// before the count is first used: work that needs neither (the small variant's zeroing of its
// counter rows) waits for no load there.
template <int kItems>
struct OneKernelStart {
  int ids[kItems];
  bool clamped = false;
  int num_tokens;
  int numel;
  int extent;         // entries of sorted_token_ids defined for numel slots
  int extent_blocks;  // entries of expert_ids defined for numel slots

  template <typename Meanwhile>
  __device__ OneKernelStart(const AlignParams& p, std::int64_t first, Meanwhile&& meanwhile)
      : num_tokens(load(p, first, meanwhile)),
        numel(num_tokens * p.top_k),
        extent(sorted_extent(p, numel)),
        extent_blocks(segment_blocks(p, extent)) {}

 private:
  template <typename Meanwhile>
  __device__ int load(const AlignParams& p, std::int64_t first, Meanwhile& meanwhile) {
    load_ids<kItems>(p, first, static_cast<std::int64_t>(p.max_tokens) * p.top_k, ids);
    const int loaded = load_num_tokens(p);
    meanwhile();
    return clamp_num_tokens(p, loaded, &clamped);
  }
};

// Each expert's blocks in expert_ids and the sentinel in its padding,
// [start * B + count, (start + blocks) * B): a group of lanes per expert, sized to B (at most B / 8
// padding entries per lane), groups spread over the grid. Measured on decode steps at E = 256: a
// warp per expert serialized E / warps experts per warp (~0.8 us), a thread per expert issued up
// to B scattered stores per thread (3x slower at E = 1024). Empty experts take no blocks. Call
// after the barrier that follows the segment scan.
__device__ __forceinline__ void write_segments(const AlignParams& p, const int* starts,
                                               const int* counts, int numel) {
  const int lanes_wanted = (p.block_size + 7) >> 3;
  const int group_shift = lanes_wanted <= 1 ? 0 : min(5, 32 - __clz(lanes_wanted - 1));
  const int group = 1 << group_shift;
  const int thread = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const int member = thread & (group - 1);
  const int groups = static_cast<int>(gridDim.x * blockDim.x) >> group_shift;
#pragma unroll 1
  for (int e = thread >> group_shift; e < p.num_experts; e += groups) {
    const int count = counts[e];
    if (count == 0) continue;
    const int start = starts[e];
    const int blocks = segment_blocks(p, count);
    const int owner = block_owner(p, e);
#pragma unroll 1
    for (int b = member; b < blocks; b += group) p.expert_ids[start + b] = owner;
    const int end = (start + blocks) * p.block_size;
#pragma unroll 1
    for (int i = start * p.block_size + count + member; i < end; i += group) {
      p.sorted_token_ids[i] = numel;
    }
  }
}

// The launch attribute for 1-D thread-block clusters of `blocks` blocks.
inline cudaLaunchAttribute cluster_dimension(unsigned blocks) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = blocks;
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  return attribute;
}

// Launches `kernel` (grid x threads, shared_bytes of dynamic shared memory) on `stream` with the
// given launch attributes. Returns the launch's error, else the last error after it.
inline cudaError_t launch_with_attributes(void (*kernel)(AlignParams), int grid, int threads,
                                          std::size_t shared_bytes, cudaLaunchAttribute* attributes,
                                          unsigned num_attributes, const AlignParams& params,
                                          cudaStream_t stream) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(grid));
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = num_attributes;
  const cudaError_t status = cudaLaunchKernelEx(&config, kernel, params);
  return status != cudaSuccess ? status : cudaGetLastError();
}

// Lets `kernel` use up to the device's opt-in maximum of dynamic shared memory when `bytes` needs
// more than the default 48 KiB. Never lowers the limit: the attribute is per function and process
// wide, and other launches (other stages) may need more than this one.
template <typename Kernel>
cudaError_t allow_shared_memory(Kernel kernel, std::size_t bytes) {
  constexpr std::size_t kDefaultLimit = 48 * 1024;
  if (bytes <= kDefaultLimit) return cudaSuccess;
  int device = 0;
  int optin = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess) {
    status = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  cudaFuncAttributes attributes{};
  if (status == cudaSuccess) status = cudaFuncGetAttributes(&attributes, kernel);
  if (status != cudaSuccess) return status;
  // Static and dynamic shared memory together may not exceed the opt-in limit.
  const int dynamic_limit = optin - static_cast<int>(attributes.sharedSizeBytes);
  if (bytes > static_cast<std::size_t>(dynamic_limit)) return cudaErrorInvalidConfiguration;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dynamic_limit);
}

}  // namespace moe_dispatch::kernels
