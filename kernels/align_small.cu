// Small variant: the whole alignment in one kernel launch, so a decode-sized step is one graph
// node (DESIGN.md §4: every extra node costs about 0.9 us).
//
// Every block of the grid computes the same counts, ranks and offsets over all slots (barriers
// between the stages, no inter-block communication), then writes only its share of the outputs:
// a one-block kernel is bound by one SM's store throughput (measured: 8192 scattered slots took
// ~20 us on one SM of the H100), while the counting it repeats is cheap at these sizes.
#include "kernels/align.hpp"
#include "kernels/align_device.cuh"
#include "kernels/align_variants.hpp"

#include <algorithm>

namespace moe_dispatch::kernels {
namespace {

// Shared memory: counts[E], offsets[E] (int32), then one row of 16-bit counters per warp.
template <int kThreads, int kItems>
__global__ void __launch_bounds__(kThreads) align_small_kernel(const AlignParams p) {
  constexpr int kWarps = kThreads / kWarp;
  extern __shared__ int4 shared_raw[];
  int* counts = reinterpret_cast<int*>(shared_raw);
  int* offsets = counts + p.num_experts;
  auto* rows = reinterpret_cast<std::uint16_t*>(offsets + p.num_experts);
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

  // Count: each warp ranks its own consecutive slots against its private row of counters.
  std::uint16_t* row = rows + warp * row_stride(p.num_experts);
  zero_warp_row(row, p.num_experts);
  WarpSlots<kItems> slots;
  const int invalid = rank_warp_slots<kItems>(p, first, numel, ids, row, slots);
  if (lane == 0) warp_invalid[warp] = invalid;
  __syncthreads();  // every row complete

  // Scan: rows become per-warp exclusive prefixes (stable order across warps), then offsets.
  warp_rows_to_prefix(rows, kWarps, p.num_experts, counts);
  __syncthreads();  // counts complete
  const int post_pad =
      scan_padded_offsets<kThreads>(counts, offsets, p.num_experts, p.block_size, scan_temp);
  __syncthreads();  // offsets complete

  if (blockIdx.x == 0 && threadIdx.x == 0) {
    int total_invalid = 0;
    for (int w = 0; w < kWarps; ++w) total_invalid += warp_invalid[w];
    *p.num_tokens_post_pad = post_pad;
    p.counters[kCounterInvalid] = total_invalid;
    write_count_counters(p, num_tokens, clamped);
  }
  write_expert_ids(p, offsets, post_pad, numel);

  // Scatter this block's share (32-slot groups, round robin over blocks). Slot positions,
  // segment padding and the tail are disjoint, so no barrier between them.
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int e = slots.expert[j];
    const bool mine =
        (warp * kItems + j) % static_cast<int>(gridDim.x) == static_cast<int>(blockIdx.x);
    if (mine && e >= 0) {
      const int pos = offsets[e] + rows[warp * row_stride(p.num_experts) + e] + slots.rank[j];
      p.sorted_token_ids[pos] = static_cast<int>(first) + j * kWarp + lane;
    }
  }
  fill_segment_padding(p, offsets, counts, numel);
  fill_tail(p, post_pad, numel);
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

// Output entries per block of the grid (slots, padding and tail), so the stores spread over SMs.
constexpr std::int64_t kEntriesPerBlock = 2048;
constexpr int kMaxSmallGrid = 32;

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
  const std::int64_t entries = max_numel + std::int64_t{num_experts} * block_size;
  plan.grid = static_cast<int>(std::clamp<std::int64_t>(
      (entries + kEntriesPerBlock - 1) / kEntriesPerBlock, 1, kMaxSmallGrid));
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
