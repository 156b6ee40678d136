// Move-only owners of CUDA handles, used by the stage and available to embedders and samples.
// Destructors never throw; they release on the device the handle was created on.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "moe_dispatch/errors.hpp"

namespace moe_dispatch {

// Makes `device` current for the guard's lifetime and restores the caller's device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  bool switched_ = false;
};

// Generic move-only handle: `Traits::destroy(handle)` releases it.
template <typename Traits>
class UniqueHandle {
 public:
  using Handle = typename Traits::Handle;
  UniqueHandle() = default;
  explicit UniqueHandle(Handle handle) : handle_(handle) {}
  ~UniqueHandle() { reset(); }
  UniqueHandle(UniqueHandle&& other) noexcept : handle_(std::exchange(other.handle_, Handle{})) {}
  UniqueHandle& operator=(UniqueHandle&& other) noexcept {
    if (this != &other) {
      reset();
      handle_ = std::exchange(other.handle_, Handle{});
    }
    return *this;
  }
  UniqueHandle(const UniqueHandle&) = delete;
  UniqueHandle& operator=(const UniqueHandle&) = delete;

  Handle get() const noexcept { return handle_; }
  explicit operator bool() const noexcept { return handle_ != Handle{}; }
  void reset() noexcept {
    if (handle_ != Handle{}) Traits::destroy(handle_);
    handle_ = Handle{};
  }

 private:
  Handle handle_{};
};

struct StreamTraits {
  using Handle = cudaStream_t;
  static void destroy(Handle h) noexcept { cudaStreamDestroy(h); }
};
struct EventTraits {
  using Handle = cudaEvent_t;
  static void destroy(Handle h) noexcept { cudaEventDestroy(h); }
};
struct GraphTraits {
  using Handle = cudaGraph_t;
  static void destroy(Handle h) noexcept { cudaGraphDestroy(h); }
};
struct GraphExecTraits {
  using Handle = cudaGraphExec_t;
  static void destroy(Handle h) noexcept { cudaGraphExecDestroy(h); }
};
// Memory kinds for Buffer: how to allocate (the call text names it in a CudaError) and free.
struct DeviceMemoryTraits {
  using Handle = void*;
  static void* allocate(std::size_t bytes) {
    void* p = nullptr;
    MOE_DISPATCH_CUDA_CHECK(cudaMalloc(&p, bytes));
    return p;
  }
  static void destroy(Handle h) noexcept { cudaFree(h); }
};
struct PinnedMemoryTraits {
  using Handle = void*;
  static void* allocate(std::size_t bytes) {
    void* p = nullptr;
    MOE_DISPATCH_CUDA_CHECK(cudaMallocHost(&p, bytes));
    return p;
  }
  static void destroy(Handle h) noexcept { cudaFreeHost(h); }
};

using Stream = UniqueHandle<StreamTraits>;
using Event = UniqueHandle<EventTraits>;
using Graph = UniqueHandle<GraphTraits>;
using GraphExec = UniqueHandle<GraphExecTraits>;

// A non-blocking stream on the current device.
Stream make_stream();
// An event without timing (for ordering), or with timing when `timing` is true.
Event make_event(bool timing = false);

// `count` elements of T in the memory kind of Memory (DeviceMemoryTraits: on the current device;
// PinnedMemoryTraits: page-locked host memory, for stream-ordered host copies). Move-only; a
// moved-from buffer is empty.
template <typename T, typename Memory>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t count) : count_(count) {
    if (count > 0) memory_ = UniqueHandle<Memory>(Memory::allocate(count * sizeof(T)));
  }
  Buffer(Buffer&& other) noexcept
      : memory_(std::move(other.memory_)), count_(std::exchange(other.count_, 0)) {}
  Buffer& operator=(Buffer&& other) noexcept {
    memory_ = std::move(other.memory_);
    count_ = std::exchange(other.count_, 0);
    return *this;
  }
  T* get() const noexcept { return static_cast<T*>(memory_.get()); }
  std::size_t size() const noexcept { return count_; }
  std::size_t bytes() const noexcept { return count_ * sizeof(T); }

 private:
  UniqueHandle<Memory> memory_;
  std::size_t count_ = 0;
};

template <typename T>
using DeviceBuffer = Buffer<T, DeviceMemoryTraits>;
template <typename T>
using PinnedBuffer = Buffer<T, PinnedMemoryTraits>;

}  // namespace moe_dispatch
