// Large variant: many blocks, three kernels, no global atomics and no zeroing pass.
//   count:   each block ranks its chunk of slots per warp and writes its per-expert histogram as
//            one column of hist[e][block] (every used column is fully written, so nothing needs
//            clearing between runs; unused columns are never read).
//   prefix:  a warp per expert row turns hist[e][*] into exclusive prefixes over blocks, with all
//            of a row's loads in flight before the scan, and writes the expert's total.
//   scatter: every block scans the totals' segment sizes itself (E values: cheaper than another
//            node), re-ranks its chunk and writes slot s of expert e to
//            start[e] * B + (slots of e in earlier blocks) + (in earlier warps) + (earlier in its
//            warp), so the order within a segment is ascending and identical run to run;
//            expert_ids, the padding and the tail are spread over the whole grid.
// The prefix and scatter kernels are programmatic dependent launches: the scatter kernel loads and
// ranks its chunk while the count and prefix kernels still run.
#include "kernels/align.hpp"
#include "kernels/align_device.cuh"
#include "kernels/align_variants.hpp"

#include <algorithm>

namespace moe_dispatch::kernels {
namespace {

constexpr int kLargeThreads = 256;
// Slots per thread, up to 262144 slots (2 per thread on at most 512 blocks): 2 while the per-block
// histograms (E + 1 entries per block) stay under 32768 entries, else 4; above 262144 slots, 8
// (bounding the grid, the histograms and the prefix rows for huge steps). More blocks share the
// work of mid-size steps (16384 slots on 8 blocks of 8 slots per thread: ~2x slower than on 32),
// but every block writes, scans and reads back E histogram entries. Measured (variant_bench,
// top-8, B 128, E 256-4096, 1024-16384 tokens): where the rule picks 4, it is ahead of 2 (E 512 x
// 4096 tokens 11.6 -> 7.4 us, E 1024 x 16384 22.6 -> 18.9, E 4096 x 16384 44.7 -> 37.6) except at
// E 2048 and 4096 with 4096 tokens (22.4 against 20.3, 34.2 against 33.1); where it picks 2, 2 is
// ahead (E 512 x 1024 tokens: 6.5 against 7.0); 8 was behind 4 at all but one of those points.
constexpr int kFewItems = 2;
constexpr int kMidItems = 4;
constexpr int kManyItems = 8;
constexpr std::int64_t kMidItemsMaxNumel = std::int64_t{512} * kLargeThreads * kFewItems;
constexpr std::int64_t kFewItemsMaxHistogram = 32768;
constexpr int kLargeWarps = kLargeThreads / kWarp;
constexpr int kPrefixThreads = 256;
constexpr int kPrefixBatch = 8;     // 32-block chunks of a row loaded before scanning them
constexpr int kMaxWriteGrid = 264;  // two blocks per SM of the H100

// Blocks of the count kernel at `items` slots per thread.
constexpr std::int64_t large_grid(std::int64_t max_numel, int items) {
  const std::int64_t chunk = std::int64_t{kLargeThreads} * items;
  return max_numel <= chunk ? 1 : (max_numel + chunk - 1) / chunk;
}
constexpr int large_items(std::int64_t max_numel, int num_experts) {
  if (max_numel > kMidItemsMaxNumel) return kManyItems;
  const std::int64_t histogram = (num_experts + 1) * large_grid(max_numel, kFewItems);
  return histogram < kFewItemsMaxHistogram ? kFewItems : kMidItems;
}

// Scratch layout (int32): hist[(E + 1) * grid] (row E: invalid ids per block), totals[E + 1].
// Derived from the parameters alone, so every kernel takes AlignParams as its only argument.
// Measured against the transposed layout hist[block][e] (coalesced stores in the count kernel and
// loads in the scatter kernel, strided columns in the prefix kernel): 15% slower at
// 16384 x 256 x 8 and up to 80% slower at E = 1024.
struct LargeLayout {
  int grid;
  __device__ explicit LargeLayout(const AlignParams& p) : grid(p.grid) {}
  __device__ int* hist(const AlignParams& p) const { return p.scratch; }
  __device__ int* totals(const AlignParams& p) const {
    return p.scratch + static_cast<std::int64_t>(p.num_experts + 1) * grid;
  }
};

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
// 9.6 us at 16384 x 256 x 8, 6.4 -> 5.7 us at 1024 x 256 x 8).
template <int kThreads, int kItems>
__global__ void __launch_bounds__(kThreads) align_count_kernel(const AlignParams p) {
  const LargeLayout layout(p);
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
  if (block_first >= numel) return;  // later kernels read only the columns of used blocks

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
  __syncthreads();

  int* column = layout.hist(p) + blockIdx.x;
  for (int e = threadIdx.x; e <= p.num_experts; e += kThreads) {
    column[static_cast<std::int64_t>(e) * layout.grid] = hist[e];
  }
}

template <int kItems>
__global__ void __launch_bounds__(kPrefixThreads) align_prefix_kernel(const AlignParams p) {
  constexpr int kChunk = kLargeThreads * kItems;
  let_dependent_launch();
  wait_for_previous_kernel();
  const LargeLayout layout(p);
  const int numel = launch_count(p) * p.top_k;
  const int used = (numel + kChunk - 1) / kChunk;
  const int lane = threadIdx.x % kWarp;
  const int e = static_cast<int>(blockIdx.x) * (kPrefixThreads / kWarp) +
                static_cast<int>(threadIdx.x / kWarp);
  if (e > p.num_experts) return;  // row E holds the invalid ids

  int* row = layout.hist(p) + static_cast<std::int64_t>(e) * layout.grid;
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

// Shared memory: counts[E], starts[E], base[E] (int32), then one row of counters per warp.
template <int kThreads, int kItems>
__global__ void __launch_bounds__(kThreads) align_scatter_kernel(const AlignParams p) {
  constexpr int kWarps = kThreads / kWarp;
  const LargeLayout layout(p);
  extern __shared__ int4 shared_raw[];
  int* counts = reinterpret_cast<int*>(shared_raw);
  int* starts = counts + p.num_experts;
  int* base = starts + p.num_experts;
  auto* rows = reinterpret_cast<std::uint16_t*>(base + p.num_experts);
  __shared__ ScanStorage<kThreads> scan_temp;

  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  const std::int64_t block_first = static_cast<std::int64_t>(blockIdx.x) * kThreads * kItems;
  const std::int64_t first = block_first + static_cast<std::int64_t>(warp) * kWarp * kItems;
  const int capacity_numel = p.max_tokens * p.top_k;
  int ids[kItems];
  load_ids<kItems>(p, first, capacity_numel, ids);

  // While the count and prefix kernels run: rank the chunk's slots up to the capacity and turn
  // the warp rows into prefixes. A slot's rank depends only on the slots before it, so the ranks
  // of the slots below the count are exact whatever lies past it (those are never scattered).
  std::uint16_t* row = rows + warp * row_stride(p.num_experts);
  zero_warp_row(row, p.num_experts);
  WarpSlots<kItems> slots;
  rank_warp_slots<kItems>(p, first, capacity_numel, ids, row, slots);
  __syncthreads();  // rows complete
  warp_rows_to_prefix<kWarps>(rows, p.num_experts, threadIdx.x, p.num_experts, kThreads, nullptr);
  wait_for_previous_kernel();

  const int numel = launch_count(p) * p.top_k;
  const UnusedTail tail(p, numel);
  tail.fill_early(p, numel);
  const bool used = block_first < numel;

  // counts[e] for this thread's run of the segment scan; base[e] (slots of e in earlier blocks).
  const int* totals = layout.totals(p);
  const ExpertRun<kThreads> run(p.num_experts);
  for (int e = run.first; e < run.last; ++e) counts[e] = totals[e];
  if (used) {
    const int* column = layout.hist(p) + blockIdx.x;
    for (int e = threadIdx.x; e < p.num_experts; e += kThreads) {
      base[e] = column[static_cast<std::int64_t>(e) * layout.grid];
    }
  }
  const int used_blocks = scan_segment_starts<kThreads>(p, run, counts, starts, scan_temp);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *p.num_tokens_post_pad = used_blocks * p.block_size;
    p.counters[kCounterInvalid] = totals[p.num_experts];
  }
  tail.fill_late(p, used_blocks, numel);
  __syncthreads();  // starts, counts and base complete

  if (used) {
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const int e = slots.expert[j];
      if (e >= 0 && first + j * kWarp + lane < numel) {
        const int pos = starts[e] * p.block_size + base[e] +
                        rows[warp * row_stride(p.num_experts) + e] + slots.rank[j];
        p.sorted_token_ids[pos] = static_cast<int>(first) + j * kWarp + lane;
      }
    }
  }
  write_segments(p, starts, counts, numel);
}

std::size_t rows_bytes(int num_experts) {
  return sizeof(std::uint16_t) * kLargeWarps * static_cast<std::size_t>(row_stride(num_experts));
}
std::size_t scatter_shared_bytes(int num_experts) {
  return rows_bytes(num_experts) + 3 * sizeof(int) * static_cast<std::size_t>(num_experts);
}

// Every kernel of this variant prefers the largest shared-memory carveout, so an SM running one of
// them can take blocks of the next without changing its L1/shared split (a change waits for the
// SM to drain, which undoes the programmatic launch's overlap). Left to the driver, the split
// followed each kernel's own need and the overlap was lost from E = 1024 on: measured
// (variant_bench, top-8, B 64, H100) E = 1024: 16.1 -> 7.4 us at 1024 tokens, 18.8 -> 12.0 at
// 16384; E = 4096: 37.7 -> 30.8 at 16384; equal within noise up to E = 512. A launch attribute,
// not the function attribute: no host call per launch (three cudaFuncSetAttribute calls had cost
// each eager launch 5-8 us) and no process-wide state. `programmatic`: the kernel is a
// programmatic dependent of the previous kernel on `stream` (captured as a programmatic edge) and
// waits for it with wait_for_previous_kernel().
cudaError_t launch_kernel(void (*kernel)(AlignParams), int grid, int threads,
                          std::size_t shared_bytes, bool programmatic, const AlignParams& params,
                          cudaStream_t stream) {
  cudaLaunchAttribute attributes[2]{};
  attributes[0].id = cudaLaunchAttributePreferredSharedMemoryCarveout;
  attributes[0].val.sharedMemCarveout = cudaSharedmemCarveoutMaxShared;
  attributes[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[1].val.programmaticStreamSerializationAllowed = 1;
  return launch_with_attributes(kernel, grid, threads, shared_bytes, attributes,
                                programmatic ? 2 : 1, params, stream);
}

template <int kItems>
cudaError_t launch_large(const AlignParams& params, const AlignPlan& plan, cudaStream_t stream) {
  const auto count = align_count_kernel<kLargeThreads, kItems>;
  const auto scatter = align_scatter_kernel<kLargeThreads, kItems>;
  const std::size_t count_bytes = sizeof(int) * static_cast<std::size_t>(params.num_experts + 1);
  cudaError_t status = allow_shared_memory(count, count_bytes);
  if (status == cudaSuccess) status = allow_shared_memory(scatter, plan.shared_bytes);
  if (status != cudaSuccess) return status;

  const int prefix_warps = kPrefixThreads / kWarp;
  const int prefix_grid = (params.num_experts + 1 + prefix_warps - 1) / prefix_warps;
  status = launch_kernel(count, plan.grid, kLargeThreads, count_bytes, false, params, stream);
  if (status != cudaSuccess) return status;
  status = launch_kernel(align_prefix_kernel<kItems>, prefix_grid, kPrefixThreads, 0, true, params,
                         stream);
  if (status != cudaSuccess) return status;
  return launch_kernel(scatter, plan.write_grid, kLargeThreads, plan.shared_bytes, true, params,
                       stream);
}

}  // namespace

AlignPlan large_plan(std::int64_t max_numel, int num_experts, int block_size) {
  AlignPlan plan;
  plan.variant = AlignVariant::kLarge;
  plan.threads = kLargeThreads;
  plan.items = large_items(max_numel, num_experts);
  plan.grid = static_cast<int>(large_grid(max_numel, plan.items));
  // Blocks past the chunks rank nothing and only share the writing of expert_ids, the padding and
  // the tail (with many experts the outputs outgrow the slots: E = 1024, B = 128 is 131072
  // entries for 2048 slots).
  plan.write_grid = std::max(
      plan.grid, write_blocks(max_numel + std::int64_t{num_experts} * block_size, kMaxWriteGrid));
  plan.shared_bytes = scatter_shared_bytes(num_experts);
  plan.kernels = 3;
  return plan;
}

std::size_t large_scratch_ints(const AlignPlan& plan, int num_experts) {
  return static_cast<std::size_t>(num_experts + 1) * (static_cast<std::size_t>(plan.grid) + 1);
}

cudaError_t launch_align_large(const AlignParams& params, const AlignPlan& plan,
                               cudaStream_t stream) {
  if (plan.threads != kLargeThreads) return cudaErrorInvalidConfiguration;
  if (plan.items == kFewItems) return launch_large<kFewItems>(params, plan, stream);
  if (plan.items == kMidItems) return launch_large<kMidItems>(params, plan, stream);
  if (plan.items == kManyItems) return launch_large<kManyItems>(params, plan, stream);
  return cudaErrorInvalidConfiguration;
}

}  // namespace moe_dispatch::kernels
