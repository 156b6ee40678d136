// Launch shapes of each variant, defined beside its kernels; plan_align() chooses between them.
#pragma once

#include <cstdint>

#include "kernels/align.hpp"

namespace moe_dispatch::kernels {

// Largest numel and E the small variant takes (blocks of 1024 threads, 16 slots per thread;
// per-warp 16-bit counter rows for every expert in shared memory).
inline constexpr std::int64_t kSmallMaxNumel = 16384;
inline constexpr int kSmallMaxExperts = 2048;

// Largest numel the tiny variant takes (2 slots per lane of one warp; its masks grow with the
// square of the slots per lane: at 4 it was measured slower than the small variant for E <= 256).
inline constexpr std::int64_t kTinyMaxNumel = 64;

// Output entries (slots, padding and tail) per block of a kernel that writes them, so the stores
// spread over SMs. Measured against 2048 on the small variant: up to 10% faster (E 64, B 128,
// 64 tokens), equal elsewhere.
inline constexpr std::int64_t kOutputEntriesPerBlock = 1024;

// Blocks that share the writing of `entries` output entries: one per kOutputEntriesPerBlock, at
// least 1, at most max_blocks.
constexpr int write_blocks(std::int64_t entries, int max_blocks) {
  const std::int64_t blocks = (entries + kOutputEntriesPerBlock - 1) / kOutputEntriesPerBlock;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > max_blocks ? max_blocks : blocks));
}

// Variant launchers, called by launch_align only: they expect AlignParams::block_div and
// AlignParams::grid derived from the plan, which launch_align fills in.
cudaError_t launch_align_tiny(const AlignParams& params, const AlignPlan& plan,
                              cudaStream_t stream);
cudaError_t launch_align_small(const AlignParams& params, const AlignPlan& plan,
                               cudaStream_t stream);
cudaError_t launch_align_large(const AlignParams& params, const AlignPlan& plan,
                               cudaStream_t stream);

AlignPlan tiny_plan(std::int64_t max_numel, int num_experts, int block_size);
AlignPlan small_plan(std::int64_t max_numel, int num_experts, int block_size);
AlignPlan large_plan(std::int64_t max_numel, int num_experts, int block_size);
std::size_t large_scratch_ints(const AlignPlan& plan, int num_experts);

}  // namespace moe_dispatch::kernels
