// Small variant: the whole alignment in one kernel launch, so a decode-sized step is one graph
// node (DESIGN.md §4: every extra node costs about 0.9 us).
//
// Every cluster of the grid (a cluster of one block, or a thread-block cluster of 4 or 8) computes
// the same counts, ranks and offsets over all slots (barriers between the stages), then writes
// only its share of the outputs: a one-block kernel is bound by one SM's store throughput
// (measured: 8192 scattered slots took ~20 us on one SM of the H100), while the counting it
// repeats is cheap at these sizes. In a cluster each block ranks its share of the slots, and the
// blocks exchange their per-expert totals through distributed shared memory (asynchronous remote
// stores each block waits for alone, or stores then one cluster barrier), so the serial ranking
// walk per block shrinks with the cluster; a one-block shape may add warps that only fill while the
// others rank. The kernel is latency-bound; docs/KERNELS.md lists what it keeps off its critical
// path.
#include <cooperative_groups.h>

#include <iterator>
#include <utility>

#include "kernels/align.hpp"
#include "kernels/align_device.cuh"
#include "kernels/align_variants.hpp"
#include "kernels/cluster_exchange.cuh"

namespace moe_dispatch::kernels {
namespace {

// In a cluster, the shared int32 arrays before cluster_counts (starts and base), rounded up to
// whole 16-byte quads, and the entries of a row of cluster_counts: E rounded up to 8, so rows are
// whole quads too.
__host__ __device__ constexpr int cluster_ints_before(int num_experts) {
  return (2 * num_experts + 3) / 4 * 4;
}
__host__ __device__ constexpr int cluster_row(int num_experts) { return (num_experts + 7) / 8 * 8; }

// Shared memory: starts[E] (int32), with clusters also base[E] (int32), rounded up to whole quads
// (cluster_ints_before), then
// cluster_counts[kClusterBlocks][cluster_row(E)] (16-bit), then one row of 16-bit counters per
// warp (small_shared_bytes).
// Barriers: rows complete -> (clusters: block totals complete in the cluster) -> (segment scan's
// own) -> segment starts complete. Outside a cluster the first barrier also orders the fill of the
// owned blocks before any write over them; in a cluster the exchange does (kBarrier: the cluster
// barrier's default release and acquire; kReleased: the release of the remote stores' completion
// and the acquire of the wait for them): keep the fill above it. kThreads threads rank (kItems
// slots each);
// kFillThreads more (whole warps, after them) only fill the owned blocks while the others rank,
// then take part in the scan.
template <int kThreads, int kItems, int kClusterBlocks, int kFillThreads, ClusterExchange kExchange>
__global__ void __launch_bounds__(kThreads + kFillThreads) align_small_kernel(const AlignParams p) {
  constexpr int kWarps = kThreads / kWarp;  // ranking warps
  constexpr int kBlockThreads = kThreads + kFillThreads;
  constexpr int kLast = kBlockThreads - 1;  // the thread that sums and writes the counters
  constexpr bool kClustered = kClusterBlocks > 1;
  // The exchange completes on an mbarrier in each block (all but kBarrier).
  constexpr bool kAsyncExchange = kClustered && kExchange != ClusterExchange::kBarrier;
  static_assert(kFillThreads % kWarp == 0 && (kFillThreads == 0 || !kClustered),
                "fill threads come in whole warps, in one-block shapes");
  static_assert(kClustered || kExchange == ClusterExchange::kBarrier,
                "one-block shapes exchange nothing");
  extern __shared__ int4 shared_raw[];
  int* starts = reinterpret_cast<int*>(shared_raw);  // each expert's first block
  // In a cluster: the slots of each expert in the cluster's earlier blocks, and every block's
  // slots of each expert (row r written by block r, into every block of the cluster).
  int* base = kClustered ? starts + p.num_experts : nullptr;
  const int cluster_stride = cluster_row(p.num_experts);
  auto* cluster_counts = reinterpret_cast<std::uint16_t*>(
      kClustered ? starts + cluster_ints_before(p.num_experts) : nullptr);
  auto* rows = kClustered ? cluster_counts + kClusterBlocks * cluster_stride
                          : reinterpret_cast<std::uint16_t*>(starts + p.num_experts);
  __shared__ ScanStorage<kBlockThreads> scan_temp;
  __shared__ int warp_invalid[kWarps];
  __shared__ int cluster_invalid[kClusterBlocks];  // block 0's: each block's invalid ids
  __shared__ std::uint64_t exchange_barrier;       // the other blocks' rows (kAsyncExchange)

  // The blocks of a cluster split the slots: block `member` ranks the member-th share.
  const int member = static_cast<int>(blockIdx.x) % kClusterBlocks;
  const int cluster_index = static_cast<int>(blockIdx.x) / kClusterBlocks;
  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  // Warp-uniform; constant without fill warps (a runtime test there cost ~0.1 us at 512 slots and
  // 0.1-0.4 us in the clustered shapes, H200).
  const bool ranks = kFillThreads == 0 || warp < kWarps;
  // Fill warps start past the block's slots, hence past the capacity: they load no ids.
  const std::int64_t first = static_cast<std::int64_t>(member * kWarps + warp) * kWarp * kItems;
  // In a cluster each warp zeroes its private row of counters while the ids and the count load
  // (the zeroing needs neither; measured against zeroing after the fill, docs/KERNELS.md: less
  // kernel time at every clustered point, level or more in the one-block shapes, which zero after
  // it). Distributed shared memory may be written only once every block of the cluster runs: each
  // block arrives meanwhile too and waits before its first remote store; with an asynchronous
  // exchange its mbarrier is initialized before.
  std::uint16_t* row = rows + warp * row_stride(p.num_experts);
  const OneKernelStart<kItems> start(p, first, [&] {
    if constexpr (kAsyncExchange) {
      if (threadIdx.x == 0) init_arrival(&exchange_barrier);
    }
    if constexpr (kClustered) {
      __cluster_barrier_arrive_relaxed();
      zero_warp_row<true>(row, p.num_experts);
    }
  });
  const int numel = start.numel;

  // This cluster's output blocks take -1 and the sentinel while the ids arrive; the slots and the
  // used blocks among them are written over after the scan (the barrier or exchange below orders
  // the two).
  const OwnedBlocks own(p, cluster_index, start.extent, start.extent_blocks);
  if constexpr (kFillThreads > 0) {
    if (!ranks) own.prefill(p, numel, static_cast<int>(threadIdx.x) - kThreads, kFillThreads);
  } else {
    own.prefill(p, numel, member * kThreads + static_cast<int>(threadIdx.x),
                kClusterBlocks * kThreads);
  }

  // Count: each warp ranks its own consecutive slots against its private row of counters.
  WarpSlots<kItems> slots;
  if (ranks) {
    if constexpr (!kClustered) zero_warp_row<true>(row, p.num_experts);
    // Matching every item against the others: ahead in one-block shapes up to 2 items per thread,
    // behind with 4 and in clusters (docs/KERNELS.md).
    constexpr bool kCross = kItems <= 2 && !kClustered;
    const int invalid = rank_warp_slots<kItems, kCross>(p, first, numel, start.ids, row, slots);
    if (lane == 0) warp_invalid[warp] = invalid;
  }
  __syncthreads();  // every row complete

  // The last thread of each block sums the block's invalid ids (block 0's is the grid's total
  // outside a cluster).
  int total_invalid = 0;
  if (threadIdx.x == kLast && (kClustered || blockIdx.x == 0)) {
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total_invalid += warp_invalid[w];
  }
  // The scan, with kPer consecutive experts per thread (as many as E needs, a power of two): each
  // thread turns its experts' rows into per-warp prefixes (stable order across warps) and their
  // totals into counts (in a cluster, after the exchange), then the block scans the segments'
  // sizes in blocks. An expert's count, size and start stay in registers from the walk to its
  // expert_ids stores; only the starts the slots need pass through shared memory. Measured
  // against a rolled loop over each thread's run of experts, through shared memory (H200,
  // 2026-12-02 21:23Z, docs/KERNELS.md): 0.19-0.59 us less at every point the planner takes.
  const auto scan_and_write = [&](auto experts_per_thread) {
    constexpr int kPer = decltype(experts_per_thread)::value;
    const int first_expert = static_cast<int>(threadIdx.x) * kPer;
    const int stride = row_stride(p.num_experts);
    int count[kPer];
    warp_rows_to_prefix<kWarps>(rows, p.num_experts, first_expert, count);
    if constexpr (kClustered) {
      // The blocks exchange their totals through distributed shared memory: each block writes its
      // row of 16-bit totals (with its padding, up to cluster_stride <= kBlockThreads * kPer) and
      // copies it into every other block in 16-byte stores (warp w to block w % kClusterBlocks)
      // before the cluster barrier (kBarrier) or onto the destination's mbarrier; then each
      // thread sums its experts over the local rows. Measured against remote loads after the
      // barrier and against a 32-bit store per expert and block: docs/KERNELS.md.
      std::uint16_t* own_row = cluster_counts + member * cluster_stride;
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int e = first_expert + i;
        if (e < cluster_stride) own_row[e] = static_cast<std::uint16_t>(count[i]);
      }
      static_assert(kWarps % kClusterBlocks == 0, "every block of the cluster needs a sender");
      static_assert(kThreads * kItems <= 0xffff, "a block's totals must fit 16 bits");
      namespace cg = cooperative_groups;
      __cluster_barrier_wait();  // every block of the cluster runs
      __syncthreads();           // this block's row complete (and its fill, before the sends)
      if constexpr (kAsyncExchange) {
        // The arrival on this block's mbarrier, announcing the bytes the other blocks send it:
        // their rows, and in block 0 their invalid ids.
        if (threadIdx.x == 0) {
          const int bytes =
              (kClusterBlocks - 1) * (cluster_stride * static_cast<int>(sizeof(std::uint16_t)) +
                                      (member == 0 ? static_cast<int>(sizeof(int)) : 0));
          expect_bytes(&exchange_barrier, static_cast<std::uint32_t>(bytes));
        }
      }
      {
        constexpr int kSenders = kWarps / kClusterBlocks;  // warps per destination
        const int destination = warp % kClusterBlocks;
        const int quads = cluster_stride / 8;
        if (destination != member) {
          const auto* from =
              reinterpret_cast<const int4*>(cluster_counts + member * cluster_stride);
          if constexpr (kAsyncExchange) {
            const std::uint32_t to = remote_address(
                shared_address(cluster_counts + member * cluster_stride), destination);
            const std::uint32_t arrival =
                remote_address(shared_address(&exchange_barrier), destination);
#pragma unroll 1
            for (int q = warp / kClusterBlocks * kWarp + lane; q < quads; q += kSenders * kWarp)
              store_remote(to + q * static_cast<int>(sizeof(int4)), from[q], arrival);
          } else {
            int4* to = reinterpret_cast<int4*>(cg::this_cluster().map_shared_rank(
                cluster_counts + member * cluster_stride, destination));
#pragma unroll 1
            for (int q = warp / kClusterBlocks * kWarp + lane; q < quads; q += kSenders * kWarp)
              to[q] = from[q];
          }
        }
      }
      if (threadIdx.x == kLast) {
        if constexpr (!kAsyncExchange) {
          *cg::this_cluster().map_shared_rank(cluster_invalid + member, 0) = total_invalid;
        } else if (member == 0) {
          cluster_invalid[0] = total_invalid;
        } else {
          store_remote(remote_address(shared_address(cluster_invalid + member), 0), total_invalid,
                       remote_address(shared_address(&exchange_barrier), 0));
        }
      }
      if constexpr (kAsyncExchange) {
        // Every other block's row (and in block 0 their invalid ids) landed in this block, with
        // their fill before. A block that passes this wait receives nothing
        // more, and sends from its registers only, so it may exit before the others.
        wait_bytes(&exchange_barrier);
      } else {
        // Every block's rows complete in every block, and every block's fill of the cluster's
        // output blocks visible (release and acquire: not a relaxed arrive). No shared memory of
        // another block is touched after it, so no block waits for the others before it exits.
        cg::this_cluster().sync();
      }
      if (blockIdx.x == 0 && threadIdx.x == kLast) {
        total_invalid = 0;
#pragma unroll
        for (int r = 0; r < kClusterBlocks; ++r) total_invalid += cluster_invalid[r];
      }
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int e = first_expert + i;
        if (e >= p.num_experts) continue;
        int values[kClusterBlocks];
#pragma unroll
        for (int r = 0; r < kClusterBlocks; ++r) values[r] = cluster_counts[r * cluster_stride + e];
        int earlier = 0;
        count[i] = 0;
#pragma unroll
        for (int r = 0; r < kClusterBlocks; ++r) {
          earlier += r < member ? values[r] : 0;
          count[i] += values[r];
        }
        base[e] = earlier;
      }
    }
    int blocks[kPer];
    int segment_start[kPer];
    const int used_blocks = scan_segment_starts<kBlockThreads>(p, first_expert, count, blocks,
                                                               segment_start, starts, scan_temp);
    __syncthreads();  // starts (and base) complete

    // The counters: one thread of the grid, the last of block 0.
    if (blockIdx.x == 0 && threadIdx.x == kLast) {
      *p.num_tokens_post_pad = used_blocks * p.block_size;
      p.counters[kCounterInvalid] = total_invalid;
      write_count_counters(p, start.num_tokens, start.clamped);
    }
    // Write over this cluster's blocks: the slots this block ranked whose positions fall in them,
    // and the expert_ids of the segments of this thread's experts that cover them (in a cluster,
    // each block takes every kClusterBlocks-th expert). Measured against writing the expert_ids
    // as the scan finds each segment's start, before the second barrier: that was 0.05-0.4 us
    // slower from 4096 slots and at E = 1024 (the barrier waits for the slowest thread's stores).
    if (ranks) {
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        const int e = slots.expert[j];
        if (e >= 0) {
          const int earlier = kClustered ? base[e] : 0;
          const int pos =
              starts[e] * p.block_size + earlier + rows[warp * stride + e] + slots.rank[j];
          if (own.holds_entry(pos))
            p.sorted_token_ids[pos] = static_cast<int>(first) + j * kWarp + lane;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int e = first_expert + i;
      if (count[i] != 0 && (!kClustered || e % kClusterBlocks == member))
        own.write_segment_blocks(p, segment_start[i], blocks[i], block_owner(p, e));
    }
  };
  with_experts_per_thread<1, experts_per_thread_bound(kBlockThreads, kSmallMaxExperts)>(
      p.num_experts, kBlockThreads, scan_and_write);
}

template <int kThreads, int kItems, int kClusterBlocks, int kFillThreads, ClusterExchange kExchange>
cudaError_t launch_shape(const AlignParams& params, const AlignPlan& plan, cudaStream_t stream) {
  const auto kernel = align_small_kernel<kThreads, kItems, kClusterBlocks, kFillThreads, kExchange>;
  constexpr int kBlockThreads = kThreads + kFillThreads;
  const cudaError_t attr = allow_shared_memory(kernel, plan.shared_bytes);
  if (attr != cudaSuccess) return attr;
  if constexpr (kClusterBlocks == 1) {
    kernel<<<plan.grid, kBlockThreads, plan.shared_bytes, stream>>>(params);
    return cudaGetLastError();
  } else {
    cudaLaunchAttribute attribute = cluster_dimension(kClusterBlocks);
    return launch_with_attributes(kernel, plan.grid, kBlockThreads, plan.shared_bytes, &attribute,
                                  1, params, stream);
  }
}

template <std::size_t... kIndex>
cudaError_t launch_any_shape(const AlignParams& params, const AlignPlan& plan, cudaStream_t stream,
                             std::index_sequence<kIndex...>) {
  cudaError_t status = cudaErrorInvalidConfiguration;
  const auto try_shape = [&](auto index) {
    constexpr SmallShape s = kSmallShapes[decltype(index)::value];
    if (plan.threads == s.threads && plan.items == s.items && plan.cluster == s.cluster &&
        plan.fill_threads == s.fill && plan.exchange == s.exchange) {
      status =
          launch_shape<s.threads, s.items, s.cluster, s.fill, s.exchange>(params, plan, stream);
      return true;
    }
    return false;
  };
  (try_shape(std::integral_constant<std::size_t, kIndex>{}) || ...);
  return status;
}

}  // namespace

namespace {
// Dynamic shared memory of the small kernel in `shape` over `num_experts` experts (the layout
// above the kernel).
std::size_t small_shared_bytes(int num_experts, const SmallShape& shape) {
  const bool clustered = shape.cluster > 1;
  const std::size_t int_entries = clustered
                                      ? static_cast<std::size_t>(cluster_ints_before(num_experts))
                                      : static_cast<std::size_t>(num_experts);
  return sizeof(int) * int_entries +
         (clustered ? sizeof(std::uint16_t) * static_cast<std::size_t>(shape.cluster) *
                          static_cast<std::size_t>(cluster_row(num_experts))
                    : 0) +
         sizeof(std::uint16_t) * static_cast<std::size_t>(shape.threads / kWarp) *
             static_cast<std::size_t>(row_stride(num_experts));
}
}  // namespace

AlignPlan small_plan(std::int64_t max_numel, int num_experts, int block_size,
                     const SmallShape& shape) {
  AlignPlan plan;
  plan.variant = AlignVariant::kSmall;
  plan.threads = shape.threads;
  plan.items = shape.items;
  plan.cluster = shape.cluster;
  plan.fill_threads = shape.fill;
  plan.exchange = shape.exchange;
  const std::int64_t entries = max_numel + std::int64_t{num_experts} * block_size;
  const bool clustered = shape.cluster > 1;
  const int grid = clustered ? write_blocks(entries, kMaxClusteredGrid, kClusteredEntriesPerBlock)
                             : one_block_small_grid(entries);
  plan.grid = (grid + shape.cluster - 1) / shape.cluster * shape.cluster;
  plan.shared_bytes = small_shared_bytes(num_experts, shape);
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
  // Slots past the shape's capacity would be silently ignored, experts past kSmallMaxExperts left
  // out of the scan, and shared memory below the layout's overrun: refuse the launch instead.
  const SmallShape shape{plan.threads, plan.items, plan.cluster, plan.fill_threads, plan.exchange};
  if (shape.capacity() < std::int64_t{params.max_tokens} * params.top_k ||
      params.num_experts > kSmallMaxExperts ||
      plan.shared_bytes < small_shared_bytes(params.num_experts, shape)) {
    return cudaErrorInvalidConfiguration;
  }
  AlignParams p = params;
  p.region_blocks = region_blocks(p, plan.grid / plan.cluster);
  return launch_any_shape(p, plan, stream, std::make_index_sequence<std::size(kSmallShapes)>{});
}

}  // namespace moe_dispatch::kernels
