// Kernels of expert-parallel dispatch and combine (see ep_permute.hpp for the pipeline). Every
// count they act on is read on the device (the host count only reaches the route kernel, as a
// parameter), so one launch shape serves every count up to the capacity and a captured graph is
// exact for the count of each replay.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/ep_permute.hpp"
#include "kernels/launch_error.hpp"

namespace moe_dispatch::kernels {
namespace {

constexpr int kRouteThreads = 256;
constexpr int kRowThreads = 128;  // >= kEpMaxWorldSize and kEpMaxTopK (per-row staging below)
constexpr int kMaxGrid = 1024;
static_assert(kRowThreads >= kEpMaxWorldSize && kRowThreads >= kEpMaxTopK);

__device__ __forceinline__ int clamp_count(int n, int limit) {
  return n < 0 ? 0 : (n > limit ? limit : n);
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

// Copies one row of `bytes` (a multiple of 16, both ends 16-byte aligned) with the whole block.
__device__ __forceinline__ void copy_row(unsigned char* dst, const unsigned char* src,
                                         std::size_t bytes) {
  const auto* s = reinterpret_cast<const uint4*>(src);
  auto* d = reinterpret_cast<uint4*>(dst);
  const std::size_t vectors = bytes / sizeof(uint4);
  for (std::size_t v = threadIdx.x; v < vectors; v += blockDim.x) d[v] = s[v];
}

// Copies one routing row (top_k ids and weights) with the first top_k threads.
__device__ __forceinline__ void copy_routing(std::int32_t* ids_dst, float* weights_dst,
                                             const std::int32_t* ids_src, const float* weights_src,
                                             int top_k) {
  for (int k = static_cast<int>(threadIdx.x); k < top_k; k += static_cast<int>(blockDim.x)) {
    ids_dst[k] = ids_src[k];
    weights_dst[k] = weights_src[k];
  }
}

// First position of rank r in the rank alignment's expert_ids, which ascend over [0, total).
__device__ __forceinline__ int rank_begin(const std::int32_t* pair_ranks, int total, int r) {
  int lo = 0;
  int hi = total;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (pair_ranks[mid] < r) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// The row count at the start of a chunk of the dispatch exchange.
__device__ __forceinline__ std::int32_t* chunk_header(unsigned char* chunk) {
  return reinterpret_cast<std::int32_t*>(chunk);
}
__device__ __forceinline__ int read_chunk_header(const unsigned char* chunk) {
  return *reinterpret_cast<const std::int32_t*>(chunk);
}

__global__ void __launch_bounds__(kRouteThreads) ep_route_kernel(const EpRouteParams p) {
  const int n = clamp_count(p.host_num_tokens, p.capacity);
  if (blockIdx.x == 0 && threadIdx.x == 0) *p.num_tokens = n;
  const int stride = static_cast<int>(gridDim.x * blockDim.x);
  for (int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); t < n; t += stride) {
    unsigned mask = 0;
    for (int k = 0; k < p.top_k; ++k) {
      const std::int32_t id = p.topk_ids[t * p.top_k + k];
      if (id >= 0 && id < p.num_experts) mask |= 1u << p.owner[id];
    }
    std::int32_t* row = p.rank_pairs + t * p.world_size;
    for (int r = 0; r < p.world_size; ++r) row[r] = ((mask >> r) & 1u) != 0 ? r : -1;
  }
}

__global__ void __launch_bounds__(kRowThreads) ep_pack_kernel(const EpPackParams p) {
  const int world = p.world_size;
  const int total = clamp_count(*p.num_pairs, p.capacity * world);
  if (blockIdx.x == 0) {
    // Every chunk gets its count, empty ones included: the receiver reads all world headers.
    for (int r = static_cast<int>(threadIdx.x); r < world; r += static_cast<int>(blockDim.x)) {
      const int begin = rank_begin(p.pair_ranks, total, r);
      const int end = rank_begin(p.pair_ranks, total, r + 1);
      p.send_counts[r] = end - begin;
      p.send_offsets[r] = begin;
      if (r == world - 1) p.send_offsets[world] = end;
      *chunk_header(p.send + static_cast<std::size_t>(r) * p.layout.bytes) = end - begin;
    }
  }
  for (int j = static_cast<int>(blockIdx.x); j < total; j += static_cast<int>(gridDim.x)) {
    const int pair = p.sorted_pairs[j];
    const int t = pair / world;
    const int r = pair - t * world;
    const int i = j - rank_begin(p.pair_ranks, total, r);
    unsigned char* chunk = p.send + static_cast<std::size_t>(r) * p.layout.bytes;
    copy_row(
        chunk + p.layout.hidden + static_cast<std::size_t>(i) * p.row_bytes,
        static_cast<const unsigned char*>(p.hidden) + static_cast<std::size_t>(t) * p.row_bytes,
        p.row_bytes);
    copy_routing(reinterpret_cast<std::int32_t*>(chunk + p.layout.ids) + i * p.top_k,
                 reinterpret_cast<float*>(chunk + p.layout.weights) + i * p.top_k,
                 p.topk_ids + t * p.top_k, p.topk_weights + t * p.top_k, p.top_k);
    if (threadIdx.x == 0) {
      p.send_tokens[j] = t;
      p.pair_slot[pair] = i;
    }
  }
}

__global__ void __launch_bounds__(kRowThreads) ep_unpack_kernel(const EpUnpackParams p) {
  __shared__ int prefix[kEpMaxWorldSize + 1];
  const int world = p.world_size;
  if (threadIdx.x == 0) {
    // Counts are clamped to the chunk capacity, so a corrupt header never reads past a chunk.
    int sum = 0;
    for (int q = 0; q < world; ++q) {
      prefix[q] = sum;
      sum += clamp_count(read_chunk_header(p.recv + static_cast<std::size_t>(q) * p.layout.bytes),
                         p.capacity);
    }
    prefix[world] = sum;
  }
  __syncthreads();  // prefix complete
  if (blockIdx.x == 0) {
    for (int q = static_cast<int>(threadIdx.x); q < world; q += static_cast<int>(blockDim.x)) {
      p.recv_counts[q] = prefix[q + 1] - prefix[q];
    }
    if (threadIdx.x == 0) *p.num_received = prefix[world];
  }
  const int total = prefix[world];
  for (int row = static_cast<int>(blockIdx.x); row < total; row += static_cast<int>(gridDim.x)) {
    int q = 0;
    while (prefix[q + 1] <= row) ++q;
    const int i = row - prefix[q];
    const unsigned char* chunk = p.recv + static_cast<std::size_t>(q) * p.layout.bytes;
    copy_row(static_cast<unsigned char*>(p.hidden) + static_cast<std::size_t>(row) * p.row_bytes,
             chunk + p.layout.hidden + static_cast<std::size_t>(i) * p.row_bytes, p.row_bytes);
    copy_routing(p.topk_ids + row * p.top_k, p.topk_weights + row * p.top_k,
                 reinterpret_cast<const std::int32_t*>(chunk + p.layout.ids) + i * p.top_k,
                 reinterpret_cast<const float*>(chunk + p.layout.weights) + i * p.top_k, p.top_k);
    if (threadIdx.x == 0) p.row_origin[row] = q * p.capacity + i;
  }
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads) ep_reduce_kernel(const EpReduceParams p) {
  // The slots of a row this rank computed, and their weights. A slot of a non-local or invalid
  // expert is skipped, never multiplied by zero: the engine leaves those outputs unwritten.
  __shared__ int use[kEpMaxTopK];
  __shared__ float weight[kEpMaxTopK];
  const int rows = clamp_count(*p.num_received, p.capacity * p.world_size);
  const auto* expert_out = static_cast<const T*>(p.expert_out);
  const auto hidden = static_cast<std::size_t>(p.hidden_size);
  for (int row = static_cast<int>(blockIdx.x); row < rows; row += static_cast<int>(gridDim.x)) {
    if (static_cast<int>(threadIdx.x) < p.top_k) {
      const int k = static_cast<int>(threadIdx.x);
      const std::int32_t id = p.topk_ids[row * p.top_k + k];
      use[k] = id >= 0 && id < p.num_experts && p.local_map[id] >= 0 ? 1 : 0;
      weight[k] = p.topk_weights[row * p.top_k + k];
    }
    __syncthreads();  // use/weight of this row complete
    const int origin = p.row_origin[row];
    const int q = origin / p.capacity;
    const int i = origin - q * p.capacity;
    T* dst = reinterpret_cast<T*>(p.send + static_cast<std::size_t>(q) * p.chunk_bytes) +
             static_cast<std::size_t>(i) * hidden;
    const T* slots = expert_out + static_cast<std::size_t>(row) * p.top_k * hidden;
    for (std::size_t h = threadIdx.x; h < hidden; h += blockDim.x) {
      float acc = 0.0f;
      for (int k = 0; k < p.top_k; ++k) {
        if (use[k] != 0) acc += weight[k] * to_float(slots[k * hidden + h]);
      }
      dst[h] = from_float<T>(acc);
    }
    __syncthreads();  // every thread done with use/weight before the next row rewrites them
  }
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads) ep_gather_kernel(const EpGatherParams p) {
  __shared__ int slot[kEpMaxWorldSize];  // row of the token's partial in each rank's chunk, or -1
  const int n = clamp_count(*p.num_tokens, p.capacity);
  const auto hidden = static_cast<std::size_t>(p.hidden_size);
  for (int t = static_cast<int>(blockIdx.x); t < n; t += static_cast<int>(gridDim.x)) {
    if (static_cast<int>(threadIdx.x) < p.world_size) {
      const int r = static_cast<int>(threadIdx.x);
      const int pair = t * p.world_size + r;
      slot[r] = p.rank_pairs[pair] >= 0 ? p.pair_slot[pair] : -1;
    }
    __syncthreads();  // slot complete
    T* out = static_cast<T*>(p.out) + static_cast<std::size_t>(t) * hidden;
    for (std::size_t h = threadIdx.x; h < hidden; h += blockDim.x) {
      // Rank order: the sum is the same on every run (no atomics).
      float acc = 0.0f;
      for (int r = 0; r < p.world_size; ++r) {
        if (slot[r] < 0) continue;
        const T* partials =
            reinterpret_cast<const T*>(p.recv + static_cast<std::size_t>(r) * p.chunk_bytes);
        acc += to_float(partials[static_cast<std::size_t>(slot[r]) * hidden + h]);
      }
      out[h] = from_float<T>(acc);
    }
    __syncthreads();  // every thread done with slot before the next token rewrites it
  }
}

int row_grid(int rows) { return std::clamp(rows, 1, kMaxGrid); }

}  // namespace

cudaError_t launch_ep_route(const EpRouteParams& params, cudaStream_t stream) {
  discard_pending_error();
  const int grid = std::clamp((params.capacity + kRouteThreads - 1) / kRouteThreads, 1, kMaxGrid);
  ep_route_kernel<<<grid, kRouteThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

cudaError_t launch_ep_pack(const EpPackParams& params, cudaStream_t stream) {
  discard_pending_error();
  ep_pack_kernel<<<row_grid(params.capacity * params.world_size), kRowThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

cudaError_t launch_ep_unpack(const EpUnpackParams& params, cudaStream_t stream) {
  discard_pending_error();
  ep_unpack_kernel<<<row_grid(params.capacity * params.world_size), kRowThreads, 0, stream>>>(
      params);
  return cudaGetLastError();
}

cudaError_t launch_ep_reduce(const EpReduceParams& params, cudaStream_t stream) {
  discard_pending_error();
  const int grid = row_grid(params.capacity * params.world_size);
  if (params.element == EpElement::kBFloat16) {
    ep_reduce_kernel<__nv_bfloat16><<<grid, kRowThreads, 0, stream>>>(params);
  } else {
    ep_reduce_kernel<float><<<grid, kRowThreads, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

cudaError_t launch_ep_gather(const EpGatherParams& params, cudaStream_t stream) {
  discard_pending_error();
  const int grid = row_grid(params.capacity);
  if (params.element == EpElement::kBFloat16) {
    ep_gather_kernel<__nv_bfloat16><<<grid, kRowThreads, 0, stream>>>(params);
  } else {
    ep_gather_kernel<float><<<grid, kRowThreads, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

}  // namespace moe_dispatch::kernels
