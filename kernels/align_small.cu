// Small variant: the whole alignment in one kernel launch, so a decode-sized step is one graph
// node (DESIGN.md §4: every extra node costs about 0.9 us).
//
// Every block of the grid computes the same counts, ranks and offsets over all slots (barriers
// between the stages, no inter-block communication), then writes only its share of the outputs:
// a one-block kernel is bound by one SM's store throughput (measured: 8192 scattered slots took
// ~20 us on one SM of the H100), while the counting it repeats is cheap at these sizes. The kernel
// is latency-bound; docs/KERNELS.md lists what it keeps off its critical path.
#include "kernels/align.hpp"
#include "kernels/align_device.cuh"
#include "kernels/align_variants.hpp"

namespace moe_dispatch::kernels {
namespace {

// Shared memory: counts[E], starts[E] (int32), then one row of 16-bit counters per warp.
// Barriers: rows complete -> (segment scan's own) -> segment starts complete.
template <int kThreads, int kItems>
__global__ void __launch_bounds__(kThreads) align_small_kernel(const AlignParams p) {
  constexpr int kWarps = kThreads / kWarp;
  extern __shared__ int4 shared_raw[];
  int* counts = reinterpret_cast<int*>(shared_raw);
  int* starts = counts + p.num_experts;
  auto* rows = reinterpret_cast<std::uint16_t*>(starts + p.num_experts);
  __shared__ ScanStorage<kThreads> scan_temp;
  __shared__ int warp_invalid[kWarps];

  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  const std::int64_t first = static_cast<std::int64_t>(warp) * kWarp * kItems;
  int ids[kItems];
  load_ids<kItems>(p, first, static_cast<std::int64_t>(p.max_tokens) * p.top_k, ids);
  bool clamped = false;
  const int num_tokens = read_num_tokens(p, &clamped);
  const int numel = num_tokens * p.top_k;
  // The tail past the bound: while the ids load when the count is a kernel parameter; after
  // ranking when the count is loaded from device memory (it arrives with the ids).
  const UnusedTail tail(p, numel);
  const bool count_is_parameter = p.num_tokens == nullptr;
  if (count_is_parameter) tail.fill_early(p, numel);

  // Count: each warp ranks its own consecutive slots against its private row of counters.
  std::uint16_t* row = rows + warp * row_stride(p.num_experts);
  zero_warp_row(row, p.num_experts);
  WarpSlots<kItems> slots;
  const int invalid = rank_warp_slots<kItems>(p, first, numel, ids, row, slots);
  if (!count_is_parameter) tail.fill_early(p, numel);
  if (lane == 0) warp_invalid[warp] = invalid;
  __syncthreads();  // every row complete

  // Scan: each thread turns its experts' rows into per-warp prefixes (stable order across warps)
  // and their totals into counts, then the block scans the segments' sizes in blocks.
  const ExpertRun<kThreads> run(p.num_experts);
  warp_rows_to_prefix<kWarps>(rows, p.num_experts, run.first, run.last, 1, counts);
  const int used_blocks = scan_segment_starts<kThreads>(p, run, counts, starts, scan_temp);
  tail.fill_late(p, used_blocks, numel);
  __syncthreads();  // starts and counts complete

  // The last thread of block 0: its slots are scattered by a later block unless the grid is one
  // block.
  if (blockIdx.x == 0 && threadIdx.x == kThreads - 1) {
    int total_invalid = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total_invalid += warp_invalid[w];
    *p.num_tokens_post_pad = used_blocks * p.block_size;
    p.counters[kCounterInvalid] = total_invalid;
    write_count_counters(p, num_tokens, clamped);
  }

  // Scatter this block's share: 32-slot group g (of the power-of-two kGroups) belongs to block
  // g * grid / kGroups (a multiply and a shift). Slot positions, segment blocks and padding are
  // disjoint.
  constexpr int kGroups = kWarps * kItems;
  static_assert((kGroups & (kGroups - 1)) == 0);
  constexpr int kGroupShift = __builtin_ctz(kGroups);
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int e = slots.expert[j];
    const int owner = static_cast<int>(((warp * kItems + j) * gridDim.x) >> kGroupShift);
    if (owner == static_cast<int>(blockIdx.x) && e >= 0) {
      const int pos =
          starts[e] * p.block_size + rows[warp * row_stride(p.num_experts) + e] + slots.rank[j];
      p.sorted_token_ids[pos] = static_cast<int>(first) + j * kWarp + lane;
    }
  }
  write_segments(p, starts, counts, numel);
}

// Block shapes by capacity: fewer warps for fewer slots, because turning the warp rows into
// prefixes walks the warps serially while ranking walks each warp's slots serially.
struct SmallShape {
  std::int64_t max_numel;
  int threads;
  int items;
};
constexpr SmallShape kSmallShapes[] = {{128, 128, 1},   {512, 256, 2},
                                       {2048, 512, 4},  {4096, 1024, 4},
                                       {8192, 1024, 8}, {kSmallMaxNumel, 1024, 16}};

// At most one block per SM of the H100 (measured against 32 at E = 1024: 5% faster at decode,
// 9% at 8192 slots).
constexpr int kMaxSmallGrid = 128;

template <int kThreads, int kItems>
cudaError_t launch_shape(const AlignParams& params, const AlignPlan& plan, cudaStream_t stream) {
  const auto kernel = align_small_kernel<kThreads, kItems>;
  const cudaError_t attr = allow_shared_memory(kernel, plan.shared_bytes);
  if (attr != cudaSuccess) return attr;
  kernel<<<plan.grid, kThreads, plan.shared_bytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace

AlignPlan small_plan(std::int64_t max_numel, int num_experts, int block_size) {
  AlignPlan plan;
  plan.variant = AlignVariant::kSmall;
  for (const SmallShape& s : kSmallShapes) {
    if (max_numel <= s.max_numel) {
      plan.threads = s.threads;
      plan.items = s.items;
      break;
    }
  }
  plan.grid = write_blocks(max_numel + std::int64_t{num_experts} * block_size, kMaxSmallGrid);
  plan.shared_bytes = 2 * sizeof(int) * static_cast<std::size_t>(num_experts) +
                      sizeof(std::uint16_t) * static_cast<std::size_t>(plan.threads / kWarp) *
                          static_cast<std::size_t>(row_stride(num_experts));
  plan.kernels = 1;
  return plan;
}

cudaError_t launch_align_small(const AlignParams& params, const AlignPlan& plan,
                               cudaStream_t stream) {
  if (plan.threads == 128 && plan.items == 1) return launch_shape<128, 1>(params, plan, stream);
  if (plan.threads == 256 && plan.items == 2) return launch_shape<256, 2>(params, plan, stream);
  if (plan.threads == 512 && plan.items == 4) return launch_shape<512, 4>(params, plan, stream);
  if (plan.threads == 1024 && plan.items == 4) return launch_shape<1024, 4>(params, plan, stream);
  if (plan.threads == 1024 && plan.items == 8) return launch_shape<1024, 8>(params, plan, stream);
  if (plan.threads == 1024 && plan.items == 16) return launch_shape<1024, 16>(params, plan, stream);
  return cudaErrorInvalidConfiguration;
}

}  // namespace moe_dispatch::kernels
