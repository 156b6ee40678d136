// Small variant: the whole alignment in one kernel launch, so a decode-sized step is one graph
// node (DESIGN.md §4: every extra node costs about 0.9 us).
//
// Every cluster of the grid (a cluster of one block, or a thread-block cluster of 4 or 8) computes
// the same counts, ranks and offsets over all slots (barriers between the stages), then writes
// only its share of the outputs: a one-block kernel is bound by one SM's store throughput
// (measured: 8192 scattered slots took ~20 us on one SM of the H100), while the counting it
// repeats is cheap at these sizes. In a cluster each block ranks its share of the slots, and the
// blocks exchange their per-expert totals through distributed shared memory (one cluster barrier),
// so the serial ranking walk per block shrinks with the cluster. The kernel is latency-bound;
// docs/KERNELS.md lists what it keeps off its critical path.
#include <cooperative_groups.h>

#include <iterator>
#include <utility>

#include "kernels/align.hpp"
#include "kernels/align_device.cuh"
#include "kernels/align_variants.hpp"

namespace moe_dispatch::kernels {
namespace {

// Shared memory: counts[E], starts[E] (int32), with clusters also block_counts[E] and base[E],
// then one row of 16-bit counters per warp.
// Barriers: rows complete -> (clusters: block totals complete in the cluster) -> (segment scan's
// own) -> segment starts complete. The first barrier (the cluster barrier in a cluster, with its
// default release and acquire) also orders the fill of the owned blocks before any write over
// them: keep the fill above it.
template <int kThreads, int kItems, int kClusterBlocks>
__global__ void __launch_bounds__(kThreads) align_small_kernel(const AlignParams p) {
  constexpr int kWarps = kThreads / kWarp;
  constexpr bool kClustered = kClusterBlocks > 1;
  extern __shared__ int4 shared_raw[];
  int* counts = reinterpret_cast<int*>(shared_raw);  // slots of each expert, all blocks
  int* starts = counts + p.num_experts;
  // This block's slots of each expert (read by the other blocks of its cluster) and the slots of
  // each expert in the cluster's earlier blocks.
  int* block_counts = kClustered ? starts + p.num_experts : counts;
  int* base = kClustered ? block_counts + p.num_experts : nullptr;
  auto* rows =
      reinterpret_cast<std::uint16_t*>(kClustered ? base + p.num_experts : starts + p.num_experts);
  __shared__ ScanStorage<kThreads> scan_temp;
  __shared__ int warp_invalid[kWarps];
  __shared__ int block_invalid;  // read by block 0 of the cluster

  // The blocks of a cluster split the slots: block `member` ranks the member-th share.
  const int member = static_cast<int>(blockIdx.x) % kClusterBlocks;
  const int cluster_index = static_cast<int>(blockIdx.x) / kClusterBlocks;
  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  const std::int64_t first = static_cast<std::int64_t>(member * kWarps + warp) * kWarp * kItems;
  const OneKernelStart<kItems> start(p, first);
  const int numel = start.numel;

  // This cluster's output blocks take -1 and the sentinel while the ids arrive; the slots and the
  // used blocks among them are written over after the scan (the barriers below order the two).
  const OwnedBlocks own(p, cluster_index, start.extent, start.extent_blocks);
  own.prefill(p, numel, member * kThreads + static_cast<int>(threadIdx.x),
              kClusterBlocks * kThreads);

  // Count: each warp ranks its own consecutive slots against its private row of counters.
  std::uint16_t* row = rows + warp * row_stride(p.num_experts);
  zero_warp_row(row, p.num_experts);
  WarpSlots<kItems> slots;
  const int invalid = rank_warp_slots<kItems>(p, first, numel, start.ids, row, slots);
  if (lane == 0) warp_invalid[warp] = invalid;
  __syncthreads();  // every row complete

  // Scan: each thread turns its experts' rows into per-warp prefixes (stable order across warps)
  // and their totals into counts, then the block scans the segments' sizes in blocks.
  const ExpertRun<kThreads> run(p.num_experts);
  warp_rows_to_prefix<kWarps>(rows, p.num_experts, run.first, run.last, 1, block_counts);
  // The last thread of each block sums the block's invalid ids (in a cluster, block 0 then reads
  // every block's sum in one round of remote loads; outside one, block 0's sum is the total).
  int total_invalid = 0;
  if (threadIdx.x == kThreads - 1 && (kClustered || blockIdx.x == 0)) {
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total_invalid += warp_invalid[w];
    if constexpr (kClustered) block_invalid = total_invalid;
  }
  if constexpr (kClustered) {
    // The blocks of the cluster exchange their totals through distributed shared memory: each
    // thread sums its experts over the cluster's blocks (and over the earlier ones for base).
    namespace cg = cooperative_groups;
    const cg::cluster_group cluster = cg::this_cluster();
    // Every block's totals complete, and every block's fill of the cluster's output blocks
    // visible (release and acquire: not a relaxed arrive).
    cluster.sync();
    for (int e = run.first; e < run.last; ++e) {
      int values[kClusterBlocks];
#pragma unroll
      for (int r = 0; r < kClusterBlocks; ++r)
        values[r] = cluster.map_shared_rank(block_counts, r)[e];
      int total = 0;
      int earlier = 0;
#pragma unroll
      for (int r = 0; r < kClusterBlocks; ++r) {
        earlier += r < member ? values[r] : 0;
        total += values[r];
      }
      counts[e] = total;
      base[e] = earlier;
    }
    if (blockIdx.x == 0 && threadIdx.x == kThreads - 1) {
      int values[kClusterBlocks];
#pragma unroll
      for (int r = 0; r < kClusterBlocks; ++r)
        values[r] = *cluster.map_shared_rank(&block_invalid, r);
      total_invalid = 0;
#pragma unroll
      for (int r = 0; r < kClusterBlocks; ++r) total_invalid += values[r];
    }
    // No block may exit while another still reads its shared memory: arrive now, wait at the end.
    cluster.barrier_arrive();
  }
  const int used_blocks = scan_segment_starts<kThreads>(p, run, counts, starts, scan_temp);
  __syncthreads();  // starts, counts (and base) complete

  // The counters: one thread of the grid, the last of block 0.
  if (blockIdx.x == 0 && threadIdx.x == kThreads - 1) {
    *p.num_tokens_post_pad = used_blocks * p.block_size;
    p.counters[kCounterInvalid] = total_invalid;
    write_count_counters(p, start.num_tokens, start.clamped);
  }

  // Write over this cluster's blocks: the slots this block ranked whose positions fall in them,
  // and the expert_ids of the segments of this thread's experts that cover them (in a cluster,
  // each block takes every kClusterBlocks-th expert).
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int e = slots.expert[j];
    if (e >= 0) {
      const int earlier = kClustered ? base[e] : 0;
      const int pos = starts[e] * p.block_size + earlier +
                      rows[warp * row_stride(p.num_experts) + e] + slots.rank[j];
      if (own.holds_entry(pos))
        p.sorted_token_ids[pos] = static_cast<int>(first) + j * kWarp + lane;
    }
  }
  // The segments of this thread's experts are the blocks from starts[run.first] to the next
  // run's start: most runs miss this cluster's blocks when the grid is large (E = 1024).
  if (run.first < run.last) {
    const int run_end = run.last < p.num_experts ? starts[run.last] : used_blocks;
    if (starts[run.first] < own.end && run_end > own.first) {
#pragma unroll 1
      for (int e = run.first; e < run.last; ++e) {
        if (kClustered && e % kClusterBlocks != member) continue;
        const int count = counts[e];
        if (count != 0)
          own.write_segment_blocks(p, starts[e], segment_blocks(p, count), block_owner(p, e));
      }
    }
  }
  if constexpr (kClustered) cooperative_groups::this_cluster().barrier_wait();
}

// At most one block per SM of the H100 (measured against 32 at E = 1024: 5% faster at decode,
// 9% at 8192 slots).
constexpr int kMaxSmallGrid = 128;

template <int kThreads, int kItems, int kClusterBlocks>
cudaError_t launch_shape(const AlignParams& params, const AlignPlan& plan, cudaStream_t stream) {
  const auto kernel = align_small_kernel<kThreads, kItems, kClusterBlocks>;
  const cudaError_t attr = allow_shared_memory(kernel, plan.shared_bytes);
  if (attr != cudaSuccess) return attr;
  if constexpr (kClusterBlocks == 1) {
    kernel<<<plan.grid, kThreads, plan.shared_bytes, stream>>>(params);
    return cudaGetLastError();
  } else {
    cudaLaunchAttribute attribute = cluster_dimension(kClusterBlocks);
    return launch_with_attributes(kernel, plan.grid, kThreads, plan.shared_bytes, &attribute, 1,
                                  params, stream);
  }
}

template <std::size_t... kIndex>
cudaError_t launch_any_shape(const AlignParams& params, const AlignPlan& plan, cudaStream_t stream,
                             std::index_sequence<kIndex...>) {
  cudaError_t status = cudaErrorInvalidConfiguration;
  const auto try_shape = [&](auto index) {
    constexpr SmallShape s = kSmallShapes[decltype(index)::value];
    if (plan.threads == s.threads && plan.items == s.items && plan.cluster == s.cluster) {
      status = launch_shape<s.threads, s.items, s.cluster>(params, plan, stream);
      return true;
    }
    return false;
  };
  (try_shape(std::integral_constant<std::size_t, kIndex>{}) || ...);
  return status;
}

}  // namespace

AlignPlan small_plan(std::int64_t max_numel, int num_experts, int block_size,
                     const SmallShape& shape) {
  AlignPlan plan;
  plan.variant = AlignVariant::kSmall;
  plan.threads = shape.threads;
  plan.items = shape.items;
  plan.cluster = shape.cluster;
  const int grid = write_blocks(max_numel + std::int64_t{num_experts} * block_size, kMaxSmallGrid);
  plan.grid = (grid + shape.cluster - 1) / shape.cluster * shape.cluster;
  const int int_arrays = shape.cluster > 1 ? 4 : 2;
  plan.shared_bytes = int_arrays * sizeof(int) * static_cast<std::size_t>(num_experts) +
                      sizeof(std::uint16_t) * static_cast<std::size_t>(plan.threads / kWarp) *
                          static_cast<std::size_t>(row_stride(num_experts));
  plan.kernels = 1;
  return plan;
}

AlignPlan small_plan(std::int64_t max_numel, int num_experts, int block_size) {
  for (const SmallShapeRule& rule : kSmallShapeRules) {
    if (max_numel <= rule.max_numel && num_experts <= rule.max_experts) {
      return small_plan(max_numel, num_experts, block_size, rule.shape);
    }
  }
  return small_plan(max_numel, num_experts, block_size, std::end(kSmallShapeRules)[-1].shape);
}

cudaError_t launch_align_small(const AlignParams& params, const AlignPlan& plan,
                               cudaStream_t stream) {
  // Slots past the shape's capacity would be silently ignored: refuse the launch instead.
  if (std::int64_t{plan.threads} * plan.items * plan.cluster <
      std::int64_t{params.max_tokens} * params.top_k) {
    return cudaErrorInvalidConfiguration;
  }
  AlignParams p = params;
  p.region_blocks = region_blocks(p, plan.grid / plan.cluster);
  return launch_any_shape(p, plan, stream, std::make_index_sequence<std::size(kSmallShapes)>{});
}

}  // namespace moe_dispatch::kernels
