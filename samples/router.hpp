// The sample's GPU kernels around the dispatch stage: the router that fills the stage's input, and
// the consumer that uses the stage's outputs the way a grouped expert GEMM does. Launchers enqueue
// on `stream`, never synchronize, and throw moe_dispatch::CudaError when a launch fails.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace serving_loop {

struct RouterParams {
  const float* gate = nullptr;  // the layer's gate table, [num_experts][kGateStride]
  int num_tokens = 0;
  int num_experts = 0;
  int top_k = 0;
  std::uint32_t step_seed = 0;       // step_seed(seed, step, layer), routing.hpp
  std::int32_t* topk_ids = nullptr;  // [num_tokens][top_k]: the stage's input_for(num_tokens)
  float* topk_weights = nullptr;     // [num_tokens][top_k]: router probability of each slot
  float* activations = nullptr;      // [num_tokens]: the token's activation x
};

// One thread per token: gating logits -> softmax -> top-k (routing.hpp's route_token).
void launch_router(const RouterParams& params, cudaStream_t stream);

struct ConsumerParams {
  // The stage's outputs (DispatchOutputs) for this step.
  const std::int32_t* sorted_token_ids = nullptr;
  const std::int32_t* expert_ids = nullptr;
  const std::int32_t* num_tokens_post_pad = nullptr;  // [1], read on the device
  std::int64_t sorted_entries = 0;  // sorted_capacity(shape, numel): entries defined this step
  std::int64_t expert_blocks = 0;   // expert_ids_capacity(shape, numel): blocks defined this step
  int num_tokens = 0;
  int top_k = 0;
  int block_size = 0;
  int num_experts = 0;
  // The router's outputs and the model.
  const float* topk_weights = nullptr;   // [num_tokens][top_k]
  const float* activations = nullptr;    // [num_tokens]
  const float* expert_scales = nullptr;  // [num_experts], indexed by expert_ids' values
  // Results.
  float* slot_outputs = nullptr;   // [num_tokens][top_k] scratch: one expert's output per slot
  float* token_outputs = nullptr;  // [num_tokens]: the MoE layer's output per token
};

// Consumes one dispatch, deterministically (no atomics, so the host can check it bit for bit):
//  1. clears slot_outputs;
//  2. one thread block per GEMM tile j < num_tokens_post_pad / block_size: tile j belongs to
//     expert e = expert_ids[j] (tiles holding -1 are skipped); each row of the tile holds a slot
//     index s from sorted_token_ids (rows holding the sentinel, s >= numel, are padding and are
//     skipped) and writes slot_outputs[s] = (topk_weights[s] * expert_scales[e]) * x[s / top_k];
//  3. token_outputs[t] = sum over k of slot_outputs[t * top_k + k], in k order.
// A slot the dispatch loses leaves 0 behind, a slot handed to the wrong expert picks up the wrong
// scale: either changes token_outputs.
void launch_consumer(const ConsumerParams& params, cudaStream_t stream);

}  // namespace serving_loop
