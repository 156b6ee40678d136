#include "moe_dispatch/align_async.hpp"

#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/align.hpp"
#include "moe_dispatch/errors.hpp"

namespace moe_dispatch {
namespace {

kernels::AlignPlan plan_for(const AlignShape& shape, int max_tokens) {
  return kernels::plan_align(std::int64_t{max_tokens} * shape.top_k, shape.num_experts,
                             shape.block_size);
}

// What validate() accepts of a shape with one bucket of max(max_tokens, 1) tokens, checked without
// building a config: a valid call allocates nothing.
bool shape_is_valid(const AlignShape& shape, int max_tokens) {
  if (shape.num_experts < 1 || shape.num_experts > kMaxExperts) return false;
  if (shape.top_k < 1 || shape.top_k > std::min(kMaxTopK, shape.num_experts)) return false;
  if (shape.block_size < 1 || shape.block_size > kMaxBlockSize) return false;
  return sorted_capacity(shape, std::int64_t{std::max(max_tokens, 1)} * shape.top_k) <= kMaxNumel;
}

void check(const AlignShape& shape, int max_tokens, const AlignBuffersView& b) {
  if (!shape_is_valid(shape, max_tokens)) {
    // validate() names what is wrong.
    DispatchConfig c;
    c.num_experts = shape.num_experts;
    c.top_k = shape.top_k;
    c.block_size = shape.block_size;
    c.pad_sorted_ids = shape.pad_sorted_ids;
    c.buckets = {max_tokens > 0 ? max_tokens : 1};
    try {
      validate(c);
    } catch (const ConfigError& e) {
      throw ArgumentError(std::string("align_async: ") + e.what());
    }
    throw ArgumentError("align_async: the shape is outside what the kernels support");
  }
  if (max_tokens < 0) {
    throw ArgumentError("align_async: max_tokens " + std::to_string(max_tokens) +
                        " is negative; allowed: >= 0");
  }
  if ((b.topk_ids == nullptr && max_tokens > 0) || b.sorted_token_ids == nullptr ||
      b.expert_ids == nullptr || b.num_tokens_post_pad == nullptr ||
      (b.scratch == nullptr && align_scratch_bytes(shape, max_tokens) > 0)) {
    throw ArgumentError(
        "align_async: topk_ids, sorted_token_ids, expert_ids, num_tokens_post_pad "
        "(and scratch when align_scratch_bytes() > 0) must be device pointers, not null");
  }
  // A misaligned count would only fault in the kernel, as a sticky error.
  if (reinterpret_cast<std::uintptr_t>(b.num_tokens) % alignof(std::int32_t) != 0) {
    throw ArgumentError("align_async: num_tokens must be a 4-byte aligned device pointer or null");
  }
}

}  // namespace

std::size_t align_scratch_bytes(const AlignShape& shape, int max_tokens) {
  return sizeof(std::int32_t) *
         kernels::align_scratch_ints(plan_for(shape, max_tokens), shape.num_experts);
}

int align_kernel_launches(const AlignShape& shape, int max_tokens) {
  return plan_for(shape, max_tokens).kernels;
}

void align_async(const AlignShape& shape, int max_tokens, const AlignBuffersView& b,
                 cudaStream_t stream) {
  check(shape, max_tokens, b);
  kernels::AlignParams p;
  p.topk_ids = b.topk_ids;
  p.num_tokens = b.num_tokens;
  p.host_num_tokens = b.host_num_tokens;
  p.expert_map = b.expert_map;
  p.sorted_token_ids = b.sorted_token_ids;
  p.expert_ids = b.expert_ids;
  p.num_tokens_post_pad = b.num_tokens_post_pad;
  p.counters = b.num_tokens_post_pad + 1;
  p.scratch = static_cast<std::int32_t*>(b.scratch);
  p.num_experts = shape.num_experts;
  p.top_k = shape.top_k;
  p.block_size = shape.block_size;
  p.max_tokens = max_tokens;
  p.pad_sorted_ids = shape.pad_sorted_ids;
  p.map_after = b.map_after;
  MOE_DISPATCH_CUDA_CHECK(kernels::launch_align(p, plan_for(shape, max_tokens), stream));
}

}  // namespace moe_dispatch
