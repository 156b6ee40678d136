// Host interface of the alignment kernels (DESIGN.md §2): the parameters of one alignment, the
// launch plan chosen for a capacity, and the launch function. No graphs, no allocation, no
// synchronization here: the runtime owns memory and streams.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/fast_divisor.hpp"

namespace moe_dispatch::kernels {

// Everything one alignment reads and writes. Device pointers unless stated.
struct AlignParams {
  const std::int32_t* topk_ids = nullptr;  // [max_tokens * top_k], row-major
  // The true token count: read from device memory when num_tokens is set (written by earlier work
  // on the stream), else host_num_tokens (a kernel parameter, fixed or updated in the graph).
  // Either way it is clamped to [0, max_tokens] and the first kernel writes the value used to
  // counters.
  const std::int32_t* num_tokens = nullptr;
  int host_num_tokens = 0;
  const std::int32_t* expert_map = nullptr;     // [num_experts] global -> local (or -1), or null
  std::int32_t* sorted_token_ids = nullptr;     // [sorted_capacity(max numel)]
  std::int32_t* expert_ids = nullptr;           // [expert_ids_capacity(max numel)]
  std::int32_t* num_tokens_post_pad = nullptr;  // [1]
  std::int32_t* counters = nullptr;             // [3]: invalid ids, count clamped (0/1), count used
  std::int32_t* scratch = nullptr;  // [align_scratch_ints(plan, num_experts)] (large variant)
  int num_experts = 0;
  int top_k = 0;
  int block_size = 0;
  int max_tokens = 0;  // capacity of this launch; a device count above it is clamped and flagged
  bool pad_sorted_ids = false;
  bool map_after = false;  // ExpertMapMode::kMapAfter (expert_map applied to expert_ids only)
  // Derived by launch_align from the fields above and the plan; callers leave them as they are.
  FastDivisor block_div;  // divides by block_size
  int grid = 0;           // blocks of the plan (the large variant's per-block scratch rows)
  int region_blocks = 0;  // tiny and small variants: output blocks each writer owns (OwnedBlocks)
};

enum class AlignVariant {
  kTiny,   // one kernel for up to kTinyMaxNumel slots: warp 0 of every block ranks all slots in
           // registers (ballots only, no shared memory) while the other warps fill the block's
           // share of the outputs, then writes the slots in that share
  kSmall,  // one kernel: every block counts, ranks and scans all slots (barriers between the
           // stages), then writes its share of the outputs
  kLarge,  // count kernel (per-block histograms combined in thread-block clusters), a prefix
           // kernel over the clusters when there are many, scatter kernel (every block scans the
           // totals and writes its chunk and share)
};

// How the blocks of a small-variant cluster exchange their per-expert totals (docs/KERNELS.md,
// "The exchange").
enum class ClusterExchange {
  kBarrier,   // remote stores, then a cluster barrier (release and acquire) that every block waits
              // for; the fill of the owned blocks before it
  kReleased,  // asynchronous remote stores (st.async) that complete on the destination block's
              // mbarrier, which each block waits on alone; the release that the PTX ISA gives
              // their completion orders the fill of the owned blocks before it (the planner's)
};

// Launch shape of one alignment; a function of (max numel, E, B) only.
struct AlignPlan {
  AlignVariant variant = AlignVariant::kSmall;
  int threads = 0;       // threads per block (small variant: those that rank)
  int fill_threads = 0;  // small variant: threads per block after them that only fill
  int items = 0;         // slots per thread (each warp owns 32 * items consecutive slots)
  int cluster = 1;       // blocks per thread-block cluster (large: of the count kernel)
  ClusterExchange exchange = ClusterExchange::kBarrier;  // small variant in clusters
  int grid = 1;        // blocks (large variant: of the count kernel, one per chunk, whole clusters)
  int write_grid = 1;  // large variant: blocks of the scatter kernel (at least grid)
  std::size_t shared_bytes = 0;  // dynamic shared memory per block
  int kernels = 1;               // kernel launches per alignment
};

// Picks the variant and launch shape for alignments of up to `max_numel` slots. Measured choice;
// see docs/BENCHMARKS.md. Throws nothing; callers validate the shape first.
AlignPlan plan_align(std::int64_t max_numel, int num_experts, int block_size);

// The same with the variant forced (tests and benchmarks compare variants).
AlignPlan plan_align(std::int64_t max_numel, int num_experts, int block_size, AlignVariant variant);

// int32 entries of AlignParams::scratch the plan needs.
std::size_t align_scratch_ints(const AlignPlan& plan, int num_experts);

// Enqueues the alignment on `stream`. Returns the first launch error (cudaGetLastError after each
// launch; a non-sticky error left pending by an earlier call is cleared first, not reported). Safe
// to call inside stream capture. Every kernel takes AlignParams as its only argument, and only the
// first reads the count from AlignParams (later kernels read the value the first wrote to
// counters), so a captured launch is retargeted to another count by updating the first kernel
// node's parameters.
cudaError_t launch_align(const AlignParams& params, const AlignPlan& plan, cudaStream_t stream);

}  // namespace moe_dispatch::kernels
