// Host interface of the expert-parallel kernels (docs/EXPERT_PARALLEL.md): the steps of dispatch
// and combine around the two NCCL exchanges, as one parameter struct and one launcher per kernel.
// No graphs, no allocation, no communication here: the runtime owns memory, streams and NCCL.
//
// Dispatch on one rank, for a bucket of `capacity` tokens per rank and `world_size` ranks:
//   route  token t -> the set of ranks owning at least one of its valid experts, written as a
//          [capacity, world_size] "topk_ids" array (entry t*W + r holds r when t goes to r, else
//          -1), so that the existing alignment with E = W, top_k = W, B = 1 turns it into the
//          stable rank-grouped permutation (its sorted_token_ids) and the rank of each position
//          (its expert_ids);
//   pack   copies each (token, rank) pair's hidden row and routing row into the rank's chunk of
//          the send buffer, writes each chunk's row count into its header and the send plan;
//   (exchange: chunk r of the send buffer goes to rank r, chunk q of the receive buffer comes
//          from rank q)
//   unpack compacts the received chunks into contiguous rows (rank-major, then send order) that
//          the local DispatchStage aligns.
// Combine:
//   reduce the weighted sum of a received row's local expert outputs, written into the chunk of
//          the rank it came from;
//   (exchange, reversed)
//   gather sums the partial rows returned for each token, in rank order, into token order.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace moe_dispatch::kernels {

// Largest world size: the per-token rank set is a 32-bit mask, and the alignment by rank takes
// top_k = world_size, which the alignment caps at kMaxTopK = 32.
inline constexpr int kEpMaxWorldSize = 32;
// Largest top_k the reduce kernel stages in shared memory (the alignment's kMaxTopK).
inline constexpr int kEpMaxTopK = 32;

enum class EpElement {
  kFloat32,
  kBFloat16,
};

// Byte offsets inside one rank's chunk of the dispatch exchange, for chunks of `capacity` rows.
// Every region starts 16-byte aligned (rows are copied as 16-byte vectors), and the stride keeps
// consecutive chunks 256-byte aligned.
struct EpChunkLayout {
  std::size_t hidden = 0;   // capacity rows of row_bytes (the header, one int32 count, is at 0)
  std::size_t ids = 0;      // capacity * top_k int32 (global expert ids)
  std::size_t weights = 0;  // capacity * top_k float
  std::size_t bytes = 0;    // chunk stride
};

inline constexpr std::size_t kEpHeaderBytes = 16;
inline constexpr std::size_t kEpChunkAlign = 256;

inline std::size_t ep_align_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

inline EpChunkLayout ep_dispatch_chunk(int capacity, std::size_t row_bytes, int top_k) {
  const auto rows = static_cast<std::size_t>(capacity);
  const std::size_t routing = rows * static_cast<std::size_t>(top_k) * 4;
  EpChunkLayout l;
  l.hidden = kEpHeaderBytes;
  l.ids = ep_align_up(l.hidden + rows * row_bytes, 16);
  l.weights = ep_align_up(l.ids + routing, 16);
  l.bytes = ep_align_up(l.weights + routing, kEpChunkAlign);
  return l;
}

// Stride of one rank's chunk of the combine exchange: capacity partial rows.
inline std::size_t ep_combine_chunk(int capacity, std::size_t row_bytes) {
  return ep_align_up(static_cast<std::size_t>(capacity) * row_bytes, kEpChunkAlign);
}

struct EpRouteParams {
  const std::int32_t* topk_ids = nullptr;  // [capacity, top_k] global ids
  const std::int32_t* owner = nullptr;     // [num_experts] rank owning each expert
  std::int32_t* rank_pairs = nullptr;      // [capacity, world_size] out: r or -1
  std::int32_t* num_tokens = nullptr;      // [1] out: the count used (later steps read it)
  int host_num_tokens = 0;                 // clamped to [0, capacity]
  int capacity = 0;
  int num_experts = 0;
  int top_k = 0;
  int world_size = 0;
};

struct EpPackParams {
  const std::int32_t* sorted_pairs = nullptr;  // the rank alignment's sorted_token_ids
  const std::int32_t* pair_ranks = nullptr;    // the rank alignment's expert_ids
  const std::int32_t* num_pairs = nullptr;     // [1] the rank alignment's num_tokens_post_pad
  const void* hidden = nullptr;                // [capacity, row_bytes]
  const std::int32_t* topk_ids = nullptr;      // [capacity, top_k]
  const float* topk_weights = nullptr;         // [capacity, top_k]
  unsigned char* send = nullptr;               // world_size chunks of layout.bytes
  EpChunkLayout layout;
  std::int32_t* send_counts = nullptr;   // [world_size] out
  std::int32_t* send_offsets = nullptr;  // [world_size + 1] out
  std::int32_t* send_tokens = nullptr;   // [capacity * world_size] out: token at each position
  std::int32_t* pair_slot = nullptr;  // [capacity * world_size] out: row of pair t*W+r in chunk r
  std::size_t row_bytes = 0;          // multiple of 16
  int capacity = 0;
  int top_k = 0;
  int world_size = 0;
};

struct EpUnpackParams {
  const unsigned char* recv = nullptr;  // world_size chunks of layout.bytes
  EpChunkLayout layout;
  void* hidden = nullptr;                // [world_size * capacity, row_bytes] out, compact
  std::int32_t* topk_ids = nullptr;      // [world_size * capacity, top_k] out
  float* topk_weights = nullptr;         // [world_size * capacity, top_k] out
  std::int32_t* row_origin = nullptr;    // [world_size * capacity] out: rank * capacity + row
  std::int32_t* recv_counts = nullptr;   // [world_size] out
  std::int32_t* num_received = nullptr;  // [1] out
  std::size_t row_bytes = 0;
  int capacity = 0;
  int top_k = 0;
  int world_size = 0;
};

struct EpReduceParams {
  const void* expert_out = nullptr;            // [rows * top_k, hidden_size]: slot i = row*top_k+k
  const std::int32_t* topk_ids = nullptr;      // [rows, top_k] received global ids
  const float* topk_weights = nullptr;         // [rows, top_k]
  const std::int32_t* local_map = nullptr;     // [num_experts] global -> local id, or -1
  const std::int32_t* row_origin = nullptr;    // [rows] from unpack
  const std::int32_t* num_received = nullptr;  // [1] rows, from unpack
  unsigned char* send = nullptr;               // world_size chunks of chunk_bytes
  std::size_t chunk_bytes = 0;
  EpElement element = EpElement::kFloat32;
  int capacity = 0;
  int hidden_size = 0;
  int num_experts = 0;
  int top_k = 0;
  int world_size = 0;
};

struct EpGatherParams {
  const unsigned char* recv = nullptr;  // world_size chunks of chunk_bytes
  std::size_t chunk_bytes = 0;
  const std::int32_t* rank_pairs = nullptr;  // from route
  const std::int32_t* pair_slot = nullptr;   // from pack
  const std::int32_t* num_tokens = nullptr;  // [1] from route
  void* out = nullptr;                       // [capacity, hidden_size] out
  EpElement element = EpElement::kFloat32;
  int capacity = 0;
  int hidden_size = 0;
  int world_size = 0;
};

// Each launcher enqueues one kernel on `stream` and returns the launch error. The row kernels
// loop over the rows counted on the device, so their grid depends only on the capacity and a
// launch is valid for any count up to it (graph capture included).
cudaError_t launch_ep_route(const EpRouteParams& params, cudaStream_t stream);
cudaError_t launch_ep_pack(const EpPackParams& params, cudaStream_t stream);
cudaError_t launch_ep_unpack(const EpUnpackParams& params, cudaStream_t stream);
cudaError_t launch_ep_reduce(const EpReduceParams& params, cudaStream_t stream);
cudaError_t launch_ep_gather(const EpGatherParams& params, cudaStream_t stream);

}  // namespace moe_dispatch::kernels
