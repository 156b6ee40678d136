#include "kernels/align.hpp"

#include <algorithm>
#include <iterator>

#include "kernels/align_variants.hpp"
#include "kernels/launch_error.hpp"
#include "moe_dispatch/align.hpp"

namespace moe_dispatch::kernels {

AlignPlan plan_align(std::int64_t max_numel, int num_experts, int block_size,
                     AlignVariant variant) {
  switch (variant) {
    case AlignVariant::kTiny:
      return tiny_plan(max_numel, num_experts, block_size);
    case AlignVariant::kSmall:
      return small_plan(max_numel, num_experts, block_size);
    case AlignVariant::kLarge:
      break;
  }
  return large_plan(max_numel, num_experts, block_size);
}

namespace {
// Steps take one kernel launch (one graph node) up to 16384 slots for E <= 1024 and up to 4096
// for E <= 2048: the small variant takes a step when a rule holds. Measured (bench/variant_bench,
// docs/BENCHMARKS.md, H200, 2026-12-02 06:50Z): the one-kernel variant's clustered shapes are
// ahead of the large variant at 8192 slots for every E measured up to 1024 (E = 256: 3.92 against
// 4.90 us; E = 1024: 6.99 against 7.79) and at 16384 for E 64-512 with 256 x 8 x 8 (E = 64: 4.48
// against 4.59; E = 512: 5.29 against 5.60). At E = 1024 they were behind at 16384 slots (8.22
// against 7.89) with 128 blocks, and are ahead with the 64 of kMaxClusteredGrid (18:42Z: 6.64
// against 7.40). At E = 8 and 16384 slots they were behind (4.76 against 4.53 at 18:42Z) until
// the scan kept each thread's experts in registers (21:3xZ: 4.33 against 4.57). Past 1024 experts
// the one-block shapes at 4096 slots are the ones measured.
struct OneKernelRule {
  std::int64_t max_numel;
  int min_experts;
  int max_experts;
};
constexpr OneKernelRule kOneKernelRules[] = {{kSmallMaxNumel, 1, 1024},
                                             {4096, 1, kSmallMaxExperts}};
}  // namespace

AlignPlan plan_align(std::int64_t max_numel, int num_experts, int block_size) {
  // The tiny variant (ranks in registers, one block barrier) takes every step up to 32 slots, and
  // up to kTinyMaxNumel for E above 256. At 33-64 slots the small one is ahead for E <= 256 (H100,
  // 2026-12-06: 1.69-1.76 against 1.73-1.86 us of kernel time; 64 slots of default.yaml replay in
  // 2.85 us against 3.12) and behind above (E 512: 1.98 against 1.87; E 1024: 2.40 against 1.95).
  if (max_numel <= kTinyMaxNumel / 2 || (max_numel <= kTinyMaxNumel && num_experts > 256)) {
    return plan_align(max_numel, num_experts, block_size, AlignVariant::kTiny);
  }
  const bool small = std::any_of(
      std::begin(kOneKernelRules), std::end(kOneKernelRules), [&](const OneKernelRule& rule) {
        return max_numel <= rule.max_numel && num_experts >= rule.min_experts &&
               num_experts <= rule.max_experts;
      });
  return plan_align(max_numel, num_experts, block_size,
                    small ? AlignVariant::kSmall : AlignVariant::kLarge);
}

std::size_t align_scratch_ints(const AlignPlan& plan, int num_experts) {
  return plan.variant == AlignVariant::kLarge ? large_scratch_ints(plan, num_experts) : 0;
}

int region_blocks(const AlignParams& params, int owners) {
  const AlignShape shape{params.num_experts, params.top_k, params.block_size,
                         params.pad_sorted_ids};
  const std::int64_t blocks =
      expert_ids_capacity(shape, std::int64_t{params.max_tokens} * params.top_k);
  const std::int64_t region = (blocks + owners - 1) / owners;
  return static_cast<int>(region < 1 ? 1 : region);
}

cudaError_t launch_align(const AlignParams& params, const AlignPlan& plan, cudaStream_t stream) {
  discard_pending_error();
  if (params.block_size < 1) return cudaErrorInvalidValue;
  AlignParams p = params;
  p.block_div = make_divisor(static_cast<std::uint32_t>(params.block_size));
  p.grid = plan.grid;
  switch (plan.variant) {
    case AlignVariant::kTiny:
      return launch_align_tiny(p, plan, stream);
    case AlignVariant::kSmall:
      return launch_align_small(p, plan, stream);
    case AlignVariant::kLarge:
      break;
  }
  return launch_align_large(p, plan, stream);
}

}  // namespace moe_dispatch::kernels
