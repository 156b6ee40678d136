#include "router.hpp"

#include <cstdint>

#include "moe_dispatch/errors.hpp"
#include "routing.hpp"

namespace serving_loop {
namespace {

constexpr int kThreadsPerBlock = 128;

unsigned int blocks_for(std::int64_t items) {
  return static_cast<unsigned int>((items + kThreadsPerBlock - 1) / kThreadsPerBlock);
}

__global__ void route_tokens_kernel(RouterParams p) {
  const int token = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (token >= p.num_tokens) return;
  const std::int64_t first_slot = static_cast<std::int64_t>(token) * p.top_k;
  route_token(p.gate, p.num_experts, p.top_k, p.step_seed, token, p.topk_ids + first_slot,
              p.topk_weights + first_slot);
  p.activations[token] = token_activation(p.step_seed, token);
}

// One thread block per GEMM tile (see launch_consumer). The grid covers every tile defined for this
// numel; the tiles in use are known only on the device (num_tokens_post_pad), so the others return.
__global__ void expert_tiles_kernel(ConsumerParams p) {
  const std::int32_t post_pad = *p.num_tokens_post_pad;
  const std::int64_t tile = blockIdx.x;
  // post_pad <= sorted_entries by contract; clamp anyway so a bad value never reads out of bounds.
  const std::int64_t tiles_in_use = post_pad > 0 ? post_pad / p.block_size : 0;
  if (tile >= tiles_in_use || tile >= p.expert_blocks) return;
  const std::int32_t expert = p.expert_ids[tile];
  if (expert < 0 || expert >= p.num_experts) return;  // -1: an expert of another rank
  const float scale = p.expert_scales[expert];
  const std::int32_t numel = p.num_tokens * p.top_k;
  for (int row = static_cast<int>(threadIdx.x); row < p.block_size;
       row += static_cast<int>(blockDim.x)) {
    const std::int64_t entry = tile * p.block_size + row;
    if (entry >= p.sorted_entries) break;
    const std::int32_t slot = p.sorted_token_ids[entry];
    if (slot < 0 || slot >= numel) continue;  // the sentinel (numel) pads the expert's segment
    // Explicitly rounded products: never fused, so the host computes the same bits.
    p.slot_outputs[slot] =
        __fmul_rn(__fmul_rn(p.topk_weights[slot], scale), p.activations[slot / p.top_k]);
  }
}

__global__ void combine_slots_kernel(ConsumerParams p) {
  const int token = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (token >= p.num_tokens) return;
  const float* slots = p.slot_outputs + static_cast<std::int64_t>(token) * p.top_k;
  float sum = 0.0f;
  for (int k = 0; k < p.top_k; ++k) sum = __fadd_rn(sum, slots[k]);
  p.token_outputs[token] = sum;
}

}  // namespace

void launch_router(const RouterParams& p, cudaStream_t stream) {
  if (p.num_tokens <= 0) return;
  route_tokens_kernel<<<blocks_for(p.num_tokens), kThreadsPerBlock, 0, stream>>>(p);
  MOE_DISPATCH_CUDA_CHECK(cudaGetLastError());
}

void launch_consumer(const ConsumerParams& p, cudaStream_t stream) {
  if (p.num_tokens <= 0) return;
  const std::int64_t numel = static_cast<std::int64_t>(p.num_tokens) * p.top_k;
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemsetAsync(p.slot_outputs, 0, static_cast<std::size_t>(numel) * sizeof(float), stream));
  if (p.expert_blocks > 0) {
    expert_tiles_kernel<<<static_cast<unsigned int>(p.expert_blocks), kThreadsPerBlock, 0,
                          stream>>>(p);
    MOE_DISPATCH_CUDA_CHECK(cudaGetLastError());
  }
  combine_slots_kernel<<<blocks_for(p.num_tokens), kThreadsPerBlock, 0, stream>>>(p);
  MOE_DISPATCH_CUDA_CHECK(cudaGetLastError());
}

}  // namespace serving_loop
