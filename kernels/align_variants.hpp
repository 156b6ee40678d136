// Launch shapes of each variant, defined beside its kernels; plan_align() chooses between them.
#pragma once

#include <cstdint>

#include "kernels/align.hpp"

namespace moe_dispatch::kernels {

// Largest numel and E the small variant takes (blocks of 1024 threads, 16 slots per thread;
// per-warp 16-bit counter rows for every expert in shared memory).
inline constexpr std::int64_t kSmallMaxNumel = 16384;
inline constexpr int kSmallMaxExperts = 2048;

AlignPlan small_plan(std::int64_t max_numel, int num_experts, int block_size);
AlignPlan large_plan(std::int64_t max_numel, int num_experts, int block_size);
std::size_t large_scratch_ints(const AlignPlan& plan, int num_experts);

}  // namespace moe_dispatch::kernels
