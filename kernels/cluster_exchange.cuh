// Distributed shared memory stores that complete on the destination block's mbarrier (sm_90,
// PTX `st.async` with `mbarrier::complete_tx`): a block of a cluster waits for the bytes the other
// blocks send it, not for every block to reach a cluster barrier. Used by the small variant's
// clustered shapes with ClusterExchange::kReleased.
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
// arrival, whose phase 0 completes once that arrival (expect_bytes) and every byte it announces
// (stored into the block by store_remote) have come. The fence makes the initialization visible
// to the other blocks once they have waited on the cluster barrier that this block arrives at
// afterwards (relaxed arrive).
__device__ __forceinline__ void init_arrival(std::uint64_t* barrier) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(shared_address(barrier)) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// One thread of the block, after a block barrier that follows init_arrival (racecheck reports the
// two in one thread, one after the other, as a hazard when the compiler issues the initialization
// once per warp): the arrival, announcing `bytes` to be stored into the block. Bytes that land
// before it leave the transaction count below zero until it comes, which the mbarrier allows.
__device__ __forceinline__ void expect_bytes(std::uint64_t* barrier, std::uint32_t bytes) {
  asm volatile(
      "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(shared_address(barrier)),
      "r"(bytes)
      : "memory");
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
