// Device building blocks shared by the alignment variants: reading the count, ranking a warp's
// slots stably, the padded scan, expert_ids and the sentinel fill.
#pragma once

#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "kernels/align.hpp"

namespace moe_dispatch::kernels {

inline constexpr unsigned kFullMask = 0xffffffffu;
inline constexpr int kWarp = 32;

// Counters layout (see AlignParams::counters).
inline constexpr int kCounterInvalid = 0;
inline constexpr int kCounterClamped = 1;
inline constexpr int kCounterTokens = 2;

__device__ __forceinline__ int padded(int count, int block) {
  return (count + block - 1) / block * block;
}

// The token count this launch aligns (first kernel of a launch): the device value or the host
// parameter, clamped to [0, max_tokens].
__device__ __forceinline__ int read_num_tokens(const AlignParams& p, bool* clamped) {
  const int n = p.num_tokens != nullptr ? *p.num_tokens : p.host_num_tokens;
  *clamped = n < 0 || n > p.max_tokens;
  return n < 0 ? 0 : (n > p.max_tokens ? p.max_tokens : n);
}

// Written by block 0 of the first kernel; later kernels of the launch read the count from here.
__device__ __forceinline__ void write_count_counters(const AlignParams& p, int num_tokens,
                                                     bool clamped) {
  p.counters[kCounterClamped] = clamped ? 1 : 0;
  p.counters[kCounterTokens] = num_tokens;
}

// Entries of sorted_token_ids defined for numel slots (int: at most 2^24 + 4096 * 1023).
__device__ __forceinline__ int sorted_extent(const AlignParams& p, int numel) {
  const int cap = numel + p.num_experts * (p.block_size - 1);
  return p.pad_sorted_ids ? (cap + p.block_size - 1) / p.block_size * p.block_size : cap;
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

// Lanes of the warp holding the same key as this lane: one ballot per key bit (a warp multi-split;
// measured cheaper than __match_any_sync on the H100).
__device__ __forceinline__ unsigned same_key_lanes(int key, int key_bits) {
  unsigned peers = kFullMask;
  for (int b = 0; b < key_bits; ++b) {
    const bool bit = ((key >> b) & 1) != 0;
    const unsigned ones = __ballot_sync(kFullMask, bit);
    peers &= bit ? ones : ~ones;
  }
  return peers;
}

// Ranks the warp's slots in slot order. `row` is this warp's private row of per-expert counters
// (zeroed by the caller); on return row[e] counts the warp's slots of expert e. Returns the
// number of slots whose id was outside [0, E) (same value in every lane).
template <int kItems>
__device__ __forceinline__ int rank_warp_slots(const AlignParams& p, std::int64_t first, int numel,
                                               const int (&ids)[kItems], std::uint16_t* row,
                                               WarpSlots<kItems>& slots) {
  const int lane = threadIdx.x % kWarp;
  const unsigned lanes_below = (1u << lane) - 1u;
  const int key_bits = 32 - __clz(p.num_experts);  // keys 0 (skipped) .. E
  int invalid = 0;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const std::int64_t slot = first + j * kWarp + lane;
    int expert = -1;
    bool bad = false;
    if (slot < numel) {
      const int id = ids[j];
      bad = id < 0 || id >= p.num_experts;
      if (!bad) expert = (p.expert_map != nullptr && !p.map_after) ? __ldg(p.expert_map + id) : id;
    }
    invalid += __popc(__ballot_sync(kFullMask, bad));
    const unsigned peers = same_key_lanes(expert + 1, key_bits);
    const int leader = __ffs(peers) - 1;
    int before = 0;
    if (lane == leader && expert >= 0) {
      before = row[expert];
      row[expert] = static_cast<std::uint16_t>(before + __popc(peers));
    }
    before = __shfl_sync(kFullMask, before, leader);
    slots.expert[j] = expert;
    slots.rank[j] = before + __popc(peers & lanes_below);
    // The next step's leader may update the same counter.
    __syncwarp();
  }
  return invalid;
}

// Zeroes this warp's row of `num_experts` 16-bit counters.
__device__ __forceinline__ void zero_warp_row(std::uint16_t* row, int num_experts) {
  for (int e = threadIdx.x % kWarp; e < num_experts; e += kWarp) row[e] = 0;
  __syncwarp();
}

// rows[w][e] -> exclusive prefix over warps w; writes totals[e] when non-null. A thread per
// expert walks the warps (measured faster than a warp-per-expert shuffle scan, which serializes
// E / warps experts per warp when the block has few warps). Call after a barrier that follows every
// warp's rank_warp_slots; rows are row_stride(E) apart.
__device__ __forceinline__ void warp_rows_to_prefix(std::uint16_t* rows, int num_warps,
                                                    int num_experts, int* totals) {
  const int stride = row_stride(num_experts);
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    int run = 0;
#pragma unroll 8
    for (int w = 0; w < num_warps; ++w) {
      const int c = rows[w * stride + e];
      rows[w * stride + e] = static_cast<std::uint16_t>(run);
      run += c;
    }
    if (totals != nullptr) totals[e] = run;
  }
}

// Exclusive scan of the padded counts over experts, with kThreads threads each owning a run of
// consecutive experts. Writes offsets[e] (shared) and returns num_tokens_post_pad in every thread.
// Warp scans plus one combine: measured cheaper than CUB's default raking scan for these sizes.
template <int kThreads>
using BlockScanInt = cub::BlockScan<int, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;
template <int kThreads>
using ScanStorage = typename BlockScanInt<kThreads>::TempStorage;

template <int kThreads>
__device__ __forceinline__ int scan_padded_offsets(const int* counts, int* offsets, int num_experts,
                                                   int block, ScanStorage<kThreads>& temp) {
  const int per_thread = (num_experts + kThreads - 1) / kThreads;
  const int first = threadIdx.x * per_thread;
  const int last = min(first + per_thread, num_experts);
  int local = 0;
  for (int e = first; e < last; ++e) local += padded(counts[e], block);
  int run = 0;
  int total = 0;
  BlockScanInt<kThreads>(temp).ExclusiveSum(local, run, total);
  for (int e = first; e < last; ++e) {
    offsets[e] = run;
    run += padded(counts[e], block);
  }
  return total;
}

// expert_ids over expert_ids_capacity(numel) blocks: the owner of each block below post_pad
// (found by binary search over the offsets), -1 after. Spread over all threads of the grid.
__device__ __forceinline__ void write_expert_ids(const AlignParams& p, const int* offsets,
                                                 int post_pad, int numel) {
  const int block = p.block_size;
  const int blocks = (sorted_extent(p, numel) + block - 1) / block;
  for (int j = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); j < blocks;
       j += static_cast<int>(gridDim.x * blockDim.x)) {
    int owner = -1;
    const int start = j * block;
    if (start < post_pad) {
      // The owner is the last expert whose segment starts at or before `start`: experts after it
      // start later, and empty experts before it share an earlier start.
      int lo = 0;
      int hi = p.num_experts;
      while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (offsets[mid] <= start) {
          lo = mid;
        } else {
          hi = mid;
        }
      }
      owner = (p.expert_map != nullptr && p.map_after) ? __ldg(p.expert_map + lo) : lo;
    }
    p.expert_ids[j] = owner;
  }
}

// value into out[begin, end), spread over `threads` threads with 16-byte stores where aligned.
__device__ __forceinline__ void fill_range(std::int32_t* out, int begin, int end,
                                           std::int32_t value, int thread, int threads) {
  if (begin >= end) return;
  const int vec_begin = min((begin + 3) / 4 * 4, end);
  const int vec_end = max(end / 4 * 4, vec_begin);
  for (int i = begin + thread; i < vec_begin; i += threads) out[i] = value;
  const int4 v = make_int4(value, value, value, value);
  int4* vec = reinterpret_cast<int4*>(out + vec_begin);
  const int vec_count = (vec_end - vec_begin) / 4;
  for (int i = thread; i < vec_count; i += threads) vec[i] = v;
  for (int i = vec_end + thread; i < end; i += threads) out[i] = value;
}

// Sentinel in each expert's padding, [offset + count, offset + padded(count)): a group of lanes
// per expert, sized to B (at most B / 8 entries per lane), groups spread over the grid. Measured on
// decode steps at E = 256: a warp per expert serialized E / warps experts per warp (~0.8 us), a
// thread per expert issued up to B scattered stores per thread (3x slower at E = 1024).
__device__ __forceinline__ void fill_segment_padding(const AlignParams& p, const int* offsets,
                                                     const int* counts, int numel) {
  int group = 1;
  while (group < kWarp && group * 8 < p.block_size) group *= 2;
  const int member = static_cast<int>(threadIdx.x) % group;
  const int groups = static_cast<int>(gridDim.x * blockDim.x) / group;
  for (int e = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x) / group; e < p.num_experts;
       e += groups) {
    const int begin = offsets[e] + counts[e];
    const int end = offsets[e] + padded(counts[e], p.block_size);
    for (int i = begin + member; i < end; i += group) p.sorted_token_ids[i] = numel;
  }
}

// The sentinel from post_pad to the end of the extent, spread over all threads of the grid.
__device__ __forceinline__ void fill_tail(const AlignParams& p, int post_pad, int numel) {
  fill_range(p.sorted_token_ids, post_pad, sorted_extent(p, numel), numel,
             static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x),
             static_cast<int>(gridDim.x * blockDim.x));
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
