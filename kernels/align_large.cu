// Large variant: many blocks, two or three kernels, no global atomics and no zeroing pass.
//   count:   thread-block clusters of kLargeCluster blocks. Each block counts its chunk of slots
//            into a shared-memory histogram; after a cluster barrier the blocks read each other's
//            histograms through distributed shared memory and write, per expert, each block's
//            exclusive prefix within its cluster and the cluster's total. Every used cluster
//            writes all of its entries, so nothing needs clearing between runs; unused clusters'
//            entries are never read.
//   prefix:  (only when there are too many clusters for the scatter kernel to add up) a warp per
//            expert turns its cluster totals into exclusive prefixes over clusters, with all of
//            its loads in flight before the scan, and writes the expert's total.
//   scatter: every block adds up (or reads) its experts' cluster totals, scans the segment sizes
//            itself (E values: cheaper than another node), re-ranks its chunk and writes slot s
//            of expert e to start[e] * B + (slots of e in earlier clusters) + (in earlier blocks
//            of its cluster) + (in earlier warps) + (earlier in its warp), so the order within a
//            segment is ascending and identical run to run; expert_ids, the padding and the tail
//            are spread over the whole grid.
// The kernels after the first are programmatic dependent launches: the scatter kernel loads and
// ranks its chunk while the kernels before it still run.
#include <cooperative_groups.h>

#include "kernels/align.hpp"
#include "kernels/align_device.cuh"
#include "kernels/align_variants.hpp"
#include "moe_dispatch/config.hpp"

#include <algorithm>

namespace moe_dispatch::kernels {
namespace {

constexpr int kLargeThreads = 256;
// Slots per thread the kernels are built for (kLargeShapeRules picks one).
constexpr int kFewItems = 2;
constexpr int kMidItems = 4;
constexpr int kManyItems = 8;
constexpr int kLargeWarps = kLargeThreads / kWarp;
constexpr int kPrefixThreads = 256;
constexpr int kPrefixBatch = 8;     // 32-cluster chunks of a row loaded before scanning them
constexpr int kMaxWriteGrid = 264;  // two blocks per SM of the H100
// Output entries per scatter block: the scatter grid is the chunks' blocks, or more when the
// outputs need more than that many per block (each block scans every expert's totals, so extra
// blocks cost more than their stores save). Measured against 1024 (H200,
// 2026-12-02 13:4xZ, `dispatch_bench`, two runs each): 16384 x 256 x 8, whose 64 chunks then write
// everything, 6.80 and 6.82 us -> 6.49 and 6.49 (graph column); deepseek-v3.yaml's 8192 bucket
// 6.82 -> 6.53 us per replay; 8192 per block measured the same as 4096.
constexpr std::int64_t kLargeOutputEntriesPerBlock = 4096;
// Blocks per cluster of the count kernel (the portable maximum).
constexpr int kLargeCluster = 8;
// Cluster totals the scatter kernel loads at once (per expert) when it adds them up itself.
constexpr int kClusterBatch = 8;

// Blocks of the count kernel at `items` slots per thread: one per chunk, in whole clusters.
constexpr std::int64_t large_grid(std::int64_t max_numel, int items) {
  const std::int64_t chunk = std::int64_t{kLargeThreads} * items;
  const std::int64_t chunks = max_numel <= chunk ? 1 : (max_numel + chunk - 1) / chunk;
  return (chunks + kLargeCluster - 1) / kLargeCluster * kLargeCluster;
}

// Scratch layout (int32), over the E + 1 experts (entry E: invalid ids):
//   intra[grid][E + 1]: per block, each expert's slots in the earlier blocks of its cluster (the
//     scatter kernel reads its block's row, coalesced; entry E is left unused);
//   cluster totals, each expert's slots in each cluster: cluster-major [clusters][E + 1] when the
//     scatter kernel adds them up itself (its threads read consecutive experts, coalesced), else
//     expert-major [E + 1][clusters], turned by the prefix kernel into exclusive prefixes over
//     the clusters (a warp per expert reads consecutive clusters). Measured at 16 clusters (E =
//     256, 131072 slots): expert-major rows read by the scatter kernel took 2.2 us more;
//   totals[E + 1]: written by the prefix kernel.
// Derived from the parameters alone, so every kernel takes AlignParams as its only argument.
template <bool kClusterMajor>
struct LargeLayout {
  int grid;
  int clusters;
  int entries;  // per block or cluster: E + 1
  __device__ explicit LargeLayout(const AlignParams& p)
      : grid(p.grid), clusters(p.grid / kLargeCluster), entries(p.num_experts + 1) {}
  __device__ int* intra(const AlignParams& p, int block) const {
    return p.scratch + static_cast<std::int64_t>(block) * entries;
  }
  __device__ int* cluster_totals(const AlignParams& p) const {
    return p.scratch + static_cast<std::int64_t>(entries) * grid;
  }
  // Offset of expert e's total in cluster c.
  __device__ std::int64_t total_at(int e, int c) const {
    return kClusterMajor ? static_cast<std::int64_t>(c) * entries + e
                         : static_cast<std::int64_t>(e) * clusters + c;
  }
  __device__ int* totals(const AlignParams& p) const {
    return cluster_totals(p) + static_cast<std::int64_t>(entries) * clusters;
  }
};

// Clusters holding slots below numel (chunks of kThreads * kItems slots, kLargeCluster per
// cluster); the later kernels read the entries of these only.
template <int kThreads, int kItems>
__device__ __forceinline__ int used_clusters(int numel) {
  constexpr int kClusterSlots = kThreads * kItems * kLargeCluster;
  return (numel + kClusterSlots - 1) / kClusterSlots;
}

// Programmatic dependent launch (Hopper): the prefix and scatter kernels are launched while the
// kernel before them still runs, do what does not depend on it, then wait for it to complete (and
// its writes to be visible). Each kernel lets its dependent launch as soon as it starts.
__device__ __forceinline__ void let_dependent_launch() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_previous_kernel() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The count of this launch, as the count kernel wrote it.
__device__ __forceinline__ int launch_count(const AlignParams& p) {
  return p.counters[kCounterTokens];
}

// Shared memory: hist[E + 1] (entry E: invalid ids). Counting needs no order, so shared-memory
// atomics do here what the scatter kernel's ranking does there (measured against ranking: 9.8 ->
// 9.6 us at 16384 x 256 x 8, 6.4 -> 5.7 us at 1024 x 256 x 8). Barriers: histogram zeroed ->
// histogram complete (block) -> every histogram of the cluster complete -> every remote read done
// (cluster, before exit).
template <int kThreads, int kItems, bool kClusterMajor>
__global__ void __launch_bounds__(kThreads) align_count_kernel(const AlignParams p) {
  namespace cg = cooperative_groups;
  const LargeLayout<kClusterMajor> layout(p);
  extern __shared__ int4 shared_raw[];
  int* hist = reinterpret_cast<int*>(shared_raw);

  let_dependent_launch();
  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  const std::int64_t block_first = static_cast<std::int64_t>(blockIdx.x) * kThreads * kItems;
  const std::int64_t first = block_first + static_cast<std::int64_t>(warp) * kWarp * kItems;
  int ids[kItems];
  load_ids<kItems>(p, first, static_cast<std::int64_t>(p.max_tokens) * p.top_k, ids);
  bool clamped = false;
  const int num_tokens = read_num_tokens(p, &clamped);
  const int numel = num_tokens * p.top_k;
  if (blockIdx.x == 0 && threadIdx.x == 0) write_count_counters(p, num_tokens, clamped);
  // Every block of an unused cluster leaves here, so no cluster barrier waits for it. The grid is
  // 1-D: block r of cluster c is block c * kLargeCluster + r.
  const int cluster_index = static_cast<int>(blockIdx.x) / kLargeCluster;
  if (cluster_index >= used_clusters<kThreads, kItems>(numel)) return;

  for (int e = threadIdx.x; e <= p.num_experts; e += kThreads) hist[e] = 0;
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    if (first + j * kWarp + lane >= numel) continue;
    const int id = ids[j];
    int expert = p.num_experts;  // invalid ids are counted in entry E
    if (id >= 0 && id < p.num_experts) {
      expert = counted_expert(p, id);
    }
    if (expert >= 0) atomicAdd(hist + expert, 1);  // -1: mapped to no local expert, dropped
  }
  const cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every histogram of the cluster complete

  // Block `member` of the cluster takes a share of the E + 1 entries: a group of kLargeCluster
  // lanes per entry, lane q reading block q's count and scanning the group (segmented shuffles).
  // Entry E (invalid ids) needs a cluster total only.
  const int member = static_cast<int>(cluster.block_rank());
  const int share = (layout.entries + kLargeCluster - 1) / kLargeCluster;
  const int q = threadIdx.x % kLargeCluster;
  const int* remote = cluster.map_shared_rank(hist, q);
  int* cluster_totals = layout.cluster_totals(p);
  // The loop bound is the same in every thread: the shuffles need whole warps.
#pragma unroll 1
  for (int base = 0; base < share * kLargeCluster; base += kThreads) {
    const int pair = base + static_cast<int>(threadIdx.x);
    const int e = member * share + pair / kLargeCluster;
    const bool valid = pair < share * kLargeCluster && e < layout.entries;
    const int count = valid ? remote[e] : 0;
    int inclusive = count;
#pragma unroll
    for (int d = 1; d < kLargeCluster; d *= 2) {
      const int up = __shfl_up_sync(kFullMask, inclusive, d, kLargeCluster);
      if (q >= d) inclusive += up;
    }
    if (valid && e < p.num_experts) {
      layout.intra(p, cluster_index * kLargeCluster + q)[e] = inclusive - count;
    }
    if (valid) {
      if (q == kLargeCluster - 1) cluster_totals[layout.total_at(e, cluster_index)] = inclusive;
    }
  }
  cluster.sync();  // no block exits while another still reads its histogram
}

template <int kItems>
__global__ void __launch_bounds__(kPrefixThreads) align_prefix_kernel(const AlignParams p) {
  let_dependent_launch();
  wait_for_previous_kernel();
  const LargeLayout<false> layout(p);
  const int numel = launch_count(p) * p.top_k;
  const int used = used_clusters<kLargeThreads, kItems>(numel);
  const int lane = threadIdx.x % kWarp;
  const int e = static_cast<int>(blockIdx.x) * (kPrefixThreads / kWarp) +
                static_cast<int>(threadIdx.x / kWarp);
  if (e > p.num_experts) return;  // row E holds the invalid ids

  int* row = layout.cluster_totals(p) + layout.total_at(e, 0);
  int carry = 0;
  for (int base = 0; base < used; base += kWarp * kPrefixBatch) {
    int values[kPrefixBatch];
#pragma unroll
    for (int b = 0; b < kPrefixBatch; ++b) {
      const int g = base + b * kWarp + lane;
      values[b] = g < used ? row[g] : 0;
    }
#pragma unroll
    for (int b = 0; b < kPrefixBatch; ++b) {
      int inclusive = values[b];
#pragma unroll
      for (int d = 1; d < kWarp; d *= 2) {
        const int up = __shfl_up_sync(kFullMask, inclusive, d);
        if (lane >= d) inclusive += up;
      }
      const int g = base + b * kWarp + lane;
      if (g < used) row[g] = carry + inclusive - values[b];
      carry += __shfl_sync(kFullMask, inclusive, kWarp - 1);
    }
  }
  if (lane == 0) layout.totals(p)[e] = carry;
}

// An expert's slots in all used clusters and in the clusters before `cluster_index`, from its
// totals (`column`, `stride` apart): kClusterBatch loads in flight at a time.
struct ClusterSums {
  int total = 0;
  int earlier = 0;
  __device__ ClusterSums(const int* column, int stride, int used, int cluster_index) {
#pragma unroll 1
    for (int c0 = 0; c0 < used; c0 += kClusterBatch) {
      int values[kClusterBatch];
#pragma unroll
      for (int b = 0; b < kClusterBatch; ++b) {
        values[b] = c0 + b < used ? column[static_cast<std::int64_t>(c0 + b) * stride] : 0;
      }
#pragma unroll
      for (int b = 0; b < kClusterBatch; ++b) {
        total += values[b];
        earlier += c0 + b < cluster_index ? values[b] : 0;
      }
    }
  }
};

// Shared memory: the staged chunk (slot and expert of each entry), counts[E], starts[E], base[E],
// local_start[E] (int32), then one row of 16-bit counters per warp. Barriers: rows complete ->
// (the local scan's own) -> local starts complete -> (the segment scan's own) -> starts, counts
// and base complete. kSumClusters: the kernel adds up the cluster totals itself (no prefix
// kernel before it).
template <int kThreads, int kItems, bool kSumClusters>
__global__ void __launch_bounds__(kThreads) align_scatter_kernel(const AlignParams p) {
  constexpr int kWarps = kThreads / kWarp;
  constexpr int kChunk = kThreads * kItems;
  const LargeLayout<kSumClusters> layout(p);
  extern __shared__ int4 shared_raw[];
  int* staged_slot = reinterpret_cast<int*>(shared_raw);
  int* staged_expert = staged_slot + kChunk;
  int* counts = staged_expert + kChunk;
  int* starts = counts + p.num_experts;
  int* base = starts + p.num_experts;
  int* local_start = base + p.num_experts;
  auto* rows = reinterpret_cast<std::uint16_t*>(local_start + p.num_experts);
  __shared__ ScanStorage<kThreads> scan_temp;

  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  const std::int64_t block_first = static_cast<std::int64_t>(blockIdx.x) * kThreads * kItems;
  const std::int64_t first = block_first + static_cast<std::int64_t>(warp) * kWarp * kItems;
  const int capacity_numel = p.max_tokens * p.top_k;
  int ids[kItems];
  load_ids<kItems>(p, first, capacity_numel, ids);

  // While the kernels before it run: rank the chunk's slots up to the capacity and turn the warp
  // rows into prefixes. A slot's rank depends only on the slots before it, so the ranks
  // of the slots below the count are exact whatever lies past it (those are never scattered).
  std::uint16_t* row = rows + warp * row_stride(p.num_experts);
  zero_warp_row<false>(row, p.num_experts);
  WarpSlots<kItems> slots;
  // Matching every item against the others: ahead up to 4 slots per thread here (docs/KERNELS.md).
  rank_warp_slots<kItems, (kItems <= 4)>(p, first, capacity_numel, ids, row, slots);
  __syncthreads();  // rows complete

  // The rest with kPer consecutive experts per thread (as many as E needs, a power of two), whose
  // counts, segment sizes and starts stay in registers between the walk over the rows, the two
  // block scans and the stores of what other threads read (as in the small variant,
  // docs/KERNELS.md "The scan in registers").
  const auto stage_and_scatter = [&](auto experts_per_thread) {
    constexpr int kPer = decltype(experts_per_thread)::value;
    const int first_expert = static_cast<int>(threadIdx.x) * kPer;
    const int stride = row_stride(p.num_experts);
    // Stage the chunk sorted by expert (stable): slot s of expert e goes to entry local_start[e]
    // + (earlier in its warp) + (in earlier warps), so that after the wait consecutive threads
    // write runs of consecutive output entries instead of one scattered entry each.
    int in_chunk[kPer];
    warp_rows_to_prefix<kWarps>(rows, p.num_experts, first_expert, in_chunk);
    int chunk_start[kPer];
    int staged_total = 0;
    BlockScanInt<kThreads>(scan_temp).ExclusiveSum(in_chunk, chunk_start, staged_total);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      if (first_expert + i < p.num_experts) local_start[first_expert + i] = chunk_start[i];
    }
    __syncthreads();  // local starts complete, scan storage free
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const int e = slots.expert[j];
      if (e >= 0) {
        const int i = local_start[e] + rows[warp * stride + e] + slots.rank[j];
        staged_slot[i] = static_cast<int>(first) + j * kWarp + lane;
        staged_expert[i] = e;
      }
    }
    wait_for_previous_kernel();

    const int numel = launch_count(p) * p.top_k;
    const UnusedTail tail(p, numel);
    tail.fill_early(p, numel);
    const bool used = block_first < numel;

    // This thread's experts: counts[e], and base[e] (slots of e in earlier clusters and in earlier
    // blocks of this block's cluster).
    const int clusters_used = used_clusters<kThreads, kItems>(numel);
    const int cluster_index = static_cast<int>(blockIdx.x) / kLargeCluster;
    const int* cluster_totals = layout.cluster_totals(p);
    const int* totals = layout.totals(p);
    const int* intra = layout.intra(p, static_cast<int>(blockIdx.x));
    int count[kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int e = first_expert + i;
      count[i] = 0;
      if (e >= p.num_experts) continue;
      const int in_cluster = used ? intra[e] : 0;
      if constexpr (kSumClusters) {
        const ClusterSums sums(cluster_totals + e, layout.entries, clusters_used, cluster_index);
        count[i] = sums.total;
        base[e] = sums.earlier + in_cluster;
      } else {
        count[i] = totals[e];
        base[e] = (used ? cluster_totals[layout.total_at(e, cluster_index)] : 0) + in_cluster;
      }
      counts[e] = count[i];
    }
    int blocks[kPer];
    int segment_start[kPer];
    const int used_blocks = scan_segment_starts<kThreads>(p, first_expert, count, blocks,
                                                          segment_start, starts, scan_temp);
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      *p.num_tokens_post_pad = used_blocks * p.block_size;
      p.counters[kCounterInvalid] =
          kSumClusters
              ? ClusterSums(cluster_totals + p.num_experts, layout.entries, clusters_used, 0).total
              : totals[p.num_experts];
    }
    tail.fill_late(p, used_blocks, numel);
    __syncthreads();  // starts, counts and base complete

    // Staged entry i is its expert's (i - local_start[e])-th slot in this chunk; slots at or past
    // the count come after the expert's others and are not written.
    if (used) {
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        const int i = j * kThreads + static_cast<int>(threadIdx.x);
        if (i < staged_total) {
          const int slot = staged_slot[i];
          const int e = staged_expert[i];
          if (slot < numel) {
            p.sorted_token_ids[starts[e] * p.block_size + base[e] + i - local_start[e]] = slot;
          }
        }
      }
    }
    write_segments(p, starts, counts, numel);
  };
  with_experts_per_thread<1, experts_per_thread_bound(kThreads, kMaxExperts)>(
      p.num_experts, kThreads, stage_and_scatter);
}

std::size_t rows_bytes(int num_experts) {
  return sizeof(std::uint16_t) * kLargeWarps * static_cast<std::size_t>(row_stride(num_experts));
}
// The scatter kernel's: the staged chunk (slot and expert per entry), counts, starts, base and
// local_start (E each), the warp rows.
std::size_t scatter_shared_bytes(int num_experts, int items) {
  const std::size_t chunk = static_cast<std::size_t>(kLargeThreads) * items;
  return sizeof(int) * (2 * chunk + 4 * static_cast<std::size_t>(num_experts)) +
         rows_bytes(num_experts);
}

// Every kernel of this variant prefers the largest shared-memory carveout, so an SM running one of
// them can take blocks of the next without changing its L1/shared split (a change waits for the
// SM to drain, which undoes the programmatic launch's overlap). Left to the driver, the split
// followed each kernel's own need and the overlap was lost from E = 1024 on: measured
// (variant_bench, top-8, B 64, H100) E = 1024: 16.1 -> 7.4 us at 1024 tokens, 18.8 -> 12.0 at
// 16384; E = 4096: 37.7 -> 30.8 at 16384; equal within noise up to E = 512. A launch attribute,
// not the function attribute: no host call per launch (three cudaFuncSetAttribute calls had cost
// each eager launch 5-8 us) and no process-wide state. kProgrammatic: the kernel is a
// programmatic dependent of the previous kernel on `stream` (captured as a programmatic edge) and
// waits for it with wait_for_previous_kernel(); kCountClusters: the count kernel (the first), in
// thread-block clusters.
enum class LaunchKind { kCountClusters, kProgrammatic };
cudaError_t launch_kernel(void (*kernel)(AlignParams), int grid, int threads,
                          std::size_t shared_bytes, LaunchKind kind, const AlignParams& params,
                          cudaStream_t stream) {
  cudaLaunchAttribute attributes[2]{};
  attributes[0].id = cudaLaunchAttributePreferredSharedMemoryCarveout;
  attributes[0].val.sharedMemCarveout = cudaSharedmemCarveoutMaxShared;
  if (kind == LaunchKind::kCountClusters) {
    attributes[1] = cluster_dimension(kLargeCluster);
  } else {
    attributes[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[1].val.programmaticStreamSerializationAllowed = 1;
  }
  return launch_with_attributes(kernel, grid, threads, shared_bytes, attributes, 2, params, stream);
}

template <int kItems, bool kSumClusters>
cudaError_t launch_large(const AlignParams& params, const AlignPlan& plan, cudaStream_t stream) {
  const auto count = align_count_kernel<kLargeThreads, kItems, kSumClusters>;
  const auto scatter = align_scatter_kernel<kLargeThreads, kItems, kSumClusters>;
  const std::size_t count_bytes = sizeof(int) * static_cast<std::size_t>(params.num_experts + 1);
  cudaError_t status = allow_shared_memory(count, count_bytes);
  if (status == cudaSuccess) status = allow_shared_memory(scatter, plan.shared_bytes);
  if (status != cudaSuccess) return status;

  status = launch_kernel(count, plan.grid, kLargeThreads, count_bytes, LaunchKind::kCountClusters,
                         params, stream);
  if (status != cudaSuccess) return status;
  if constexpr (!kSumClusters) {
    const int prefix_warps = kPrefixThreads / kWarp;
    const int prefix_grid = (params.num_experts + 1 + prefix_warps - 1) / prefix_warps;
    status = launch_kernel(align_prefix_kernel<kItems>, prefix_grid, kPrefixThreads, 0,
                           LaunchKind::kProgrammatic, params, stream);
    if (status != cudaSuccess) return status;
  }
  return launch_kernel(scatter, plan.write_grid, kLargeThreads, plan.shared_bytes,
                       LaunchKind::kProgrammatic, params, stream);
}

template <int kItems>
cudaError_t launch_items(const AlignParams& params, const AlignPlan& plan, cudaStream_t stream) {
  if (plan.kernels == 2) return launch_large<kItems, true>(params, plan, stream);
  if (plan.kernels == 3) return launch_large<kItems, false>(params, plan, stream);
  return cudaErrorInvalidConfiguration;
}

}  // namespace

AlignPlan large_plan(std::int64_t max_numel, int num_experts, int block_size, int kernels,
                     int items) {
  AlignPlan plan;
  plan.variant = AlignVariant::kLarge;
  plan.threads = kLargeThreads;
  plan.items = items;
  plan.cluster = kLargeCluster;
  plan.grid = static_cast<int>(large_grid(max_numel, plan.items));
  // Blocks past the chunks rank nothing and only share the writing of expert_ids, the padding and
  // the tail (with many experts the outputs outgrow the slots: E = 1024, B = 128 is 131072
  // entries for 2048 slots).
  plan.write_grid =
      std::max(plan.grid, write_blocks(max_numel + std::int64_t{num_experts} * block_size,
                                       kMaxWriteGrid, kLargeOutputEntriesPerBlock));
  plan.shared_bytes = scatter_shared_bytes(num_experts, items);
  plan.kernels = kernels;
  return plan;
}

AlignPlan large_plan(std::int64_t max_numel, int num_experts, int block_size) {
  for (const LargeShapeRule& rule : kLargeShapeRules) {
    if (max_numel <= rule.max_numel && num_experts <= rule.max_experts) {
      return large_plan(max_numel, num_experts, block_size, rule.kernels, rule.items);
    }
  }
  return large_plan(max_numel, num_experts, block_size, 3, kManyItems);
}

std::size_t large_scratch_ints(const AlignPlan& plan, int num_experts) {
  const std::size_t rows = static_cast<std::size_t>(num_experts) + 1;
  const std::size_t clusters = static_cast<std::size_t>(plan.grid) / kLargeCluster;
  return rows * (static_cast<std::size_t>(plan.grid) + clusters + 1);
}

cudaError_t launch_align_large(const AlignParams& params, const AlignPlan& plan,
                               cudaStream_t stream) {
  // Experts past kMaxExperts would be left out of the scatter kernel's scans.
  if (plan.threads != kLargeThreads || params.num_experts > kMaxExperts) {
    return cudaErrorInvalidConfiguration;
  }
  // The grid is whole clusters and its chunks cover the capacity (a plan for a smaller capacity
  // would index past the scratch).
  if (plan.grid % kLargeCluster != 0 || std::int64_t{plan.grid} * kLargeThreads * plan.items <
                                            std::int64_t{params.max_tokens} * params.top_k) {
    return cudaErrorInvalidConfiguration;
  }
  if (plan.items == kFewItems) return launch_items<kFewItems>(params, plan, stream);
  if (plan.items == kMidItems) return launch_items<kMidItems>(params, plan, stream);
  if (plan.items == kManyItems) return launch_items<kManyItems>(params, plan, stream);
  return cudaErrorInvalidConfiguration;
}

}  // namespace moe_dispatch::kernels
