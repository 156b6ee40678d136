// The alignment kernels enqueued directly, without a graph, into buffers the caller owns: the
// building block under DispatchStage, for engines that manage their own memory and graphs. Each
// call validates its arguments, allocates nothing and does not synchronize.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "moe_dispatch/align.hpp"
#include "moe_dispatch/config.hpp"

namespace moe_dispatch {

// Device buffers of one alignment. Extents for `max_tokens` tokens:
//   topk_ids            max_tokens * top_k
//   sorted_token_ids    sorted_capacity(shape, max_tokens * top_k)
//   expert_ids          expert_ids_capacity(shape, max_tokens * top_k)
//   num_tokens_post_pad 4 entries: [0] post pad, [1..3] DeviceCounters
//   scratch             align_scratch_bytes(shape, max_tokens) bytes (may be null when 0)
struct AlignBuffersView {
  const std::int32_t* topk_ids = nullptr;
  // [1] device count (4-byte aligned memory the device reads), or null: host_num_tokens.
  const std::int32_t* num_tokens = nullptr;
  int host_num_tokens = 0;  // count when num_tokens is null
  // Either count is clamped to [0, max_tokens] (DeviceCounters::count_clamped flags it).
  // [E] or null: global expert -> local expert in [0, E), or -1 (DESIGN.md). Device memory is not
  // checked on the host: applied before counting (not map_after), an entry outside [-1, E) drops
  // its slots as -1 does; with map_after, entries are written to expert_ids as they are.
  const std::int32_t* expert_map = nullptr;
  bool map_after = false;  // ExpertMapMode::kMapAfter
  std::int32_t* sorted_token_ids = nullptr;
  std::int32_t* expert_ids = nullptr;
  std::int32_t* num_tokens_post_pad = nullptr;
  void* scratch = nullptr;
};

// Scratch bytes an alignment of up to max_tokens tokens needs.
std::size_t align_scratch_bytes(const AlignShape& shape, int max_tokens);

// Kernel launches per alignment of up to max_tokens tokens (1 for decode-sized shapes).
int align_kernel_launches(const AlignShape& shape, int max_tokens);

// Enqueues the alignment of the first *num_tokens rows of topk_ids on `stream`. Throws
// ArgumentError for a bad shape, a null buffer or a misaligned count, CudaError for a failed
// launch. A non-sticky error an earlier call left pending on the calling thread is cleared, not
// reported.
void align_async(const AlignShape& shape, int max_tokens, const AlignBuffersView& buffers,
                 cudaStream_t stream);

}  // namespace moe_dispatch
