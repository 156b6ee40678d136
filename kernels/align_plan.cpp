#include "kernels/align.hpp"
#include "kernels/align_variants.hpp"

namespace moe_dispatch::kernels {

AlignPlan plan_align(std::int64_t max_numel, int num_experts, int block_size,
                     AlignVariant variant) {
  return variant == AlignVariant::kSmall ? small_plan(max_numel, num_experts, block_size)
                                         : large_plan(max_numel, num_experts, block_size);
}

namespace {
// Up to here the one-kernel variant is as fast as or faster than the three-kernel one on the H100
// (bench/variant_bench, docs/BENCHMARKS.md: at 4096 slots within 2% or ahead for E = 8..1024; at
// 16384 slots the large variant is 2x faster).
constexpr std::int64_t kSmallPreferredMaxNumel = 4096;
}  // namespace

AlignPlan plan_align(std::int64_t max_numel, int num_experts, int block_size) {
  const bool small = max_numel <= kSmallPreferredMaxNumel && num_experts <= kSmallMaxExperts;
  return plan_align(max_numel, num_experts, block_size,
                    small ? AlignVariant::kSmall : AlignVariant::kLarge);
}

std::size_t align_scratch_ints(const AlignPlan& plan, int num_experts) {
  return plan.variant == AlignVariant::kLarge ? large_scratch_ints(plan, num_experts) : 0;
}

cudaError_t launch_align(const AlignParams& params, const AlignPlan& plan, cudaStream_t stream) {
  if (params.block_size < 1) return cudaErrorInvalidValue;
  AlignParams p = params;
  p.block_div = make_divisor(static_cast<std::uint32_t>(params.block_size));
  p.grid = plan.grid;
  return plan.variant == AlignVariant::kSmall ? launch_align_small(p, plan, stream)
                                              : launch_align_large(p, plan, stream);
}

}  // namespace moe_dispatch::kernels
