// Distributed shared memory stores that complete on the destination block's mbarrier (sm_90,
// PTX `st.async` with `mbarrier::complete_tx`): a block of a cluster waits for the bytes the other
// blocks send it, not for every block to reach a cluster barrier. Used by the small variant's
// clustered shapes with every ClusterExchange but kBarrier.
#pragma once

#include <cstdint>

namespace moe_dispatch::kernels {

// The shared-window address of this block's shared `pointer`.
__device__ __forceinline__ std::uint32_t shared_address(const void* pointer) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(pointer));
}

// The address of this block's shared `address` in block `rank` of the cluster.
__device__ __forceinline__ std::uint32_t remote_address(std::uint32_t address, int rank) {
  std::uint32_t out;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(out) : "r"(address), "r"(rank));
  return out;
}

// One thread of the block, before its cluster barrier arrive: `barrier` becomes an mbarrier of one
// arrival, made here, whose phase 0 completes once `bytes` more have been stored into the block by
// store_remote. The fence makes the initialization visible to the other blocks once they have
// waited on the cluster barrier that this block arrives at afterwards (relaxed arrive).
__device__ __forceinline__ void expect_bytes(std::uint64_t* barrier, std::uint32_t bytes) {
  const std::uint32_t address = shared_address(barrier);
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(address) : "memory");
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(address), "r"(bytes)
               : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// Stores `value` at `address` (remote_address) and counts its bytes on the destination's mbarrier
// at `barrier` (remote_address of the same mbarrier).
__device__ __forceinline__ void store_remote(std::uint32_t address, int4 value,
                                             std::uint32_t barrier) {
  asm volatile(
      "st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, "
      "[%5];" ::"r"(address),
      "r"(value.x), "r"(value.y), "r"(value.z), "r"(value.w), "r"(barrier)
      : "memory");
}
__device__ __forceinline__ void store_remote(std::uint32_t address, int value,
                                             std::uint32_t barrier) {
  asm volatile(
      "st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(address),
      "r"(value), "r"(barrier)
      : "memory");
}

// Orders this thread's earlier memory operations, and those ordered before them (by a block
// barrier), before its later ones, for every thread of the cluster.
__device__ __forceinline__ void fence_cluster() {
  asm volatile("fence.acq_rel.cluster;" ::: "memory");
}

// Waits until phase 0 of the block's mbarrier completed (every byte expected has landed), with
// acquire at cluster scope: what the senders ordered before their stores is visible after it.
__device__ __forceinline__ void wait_bytes(std::uint64_t* barrier) {
  const std::uint32_t address = shared_address(barrier);
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_bytes_again:\n"
      "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], 0;\n"
      "@!done bra wait_bytes_again;\n"
      "}\n" ::"r"(address)
      : "memory");
}

}  // namespace moe_dispatch::kernels
