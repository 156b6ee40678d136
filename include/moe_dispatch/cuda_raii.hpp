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
struct DeviceMemoryTraits {
  using Handle = void*;
  static void destroy(Handle h) noexcept { cudaFree(h); }
};
struct PinnedMemoryTraits {
  using Handle = void*;
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

// Device memory of `count` elements of T on the current device.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    if (count == 0) return;
    void* p = nullptr;
    MOE_DISPATCH_CUDA_CHECK(cudaMalloc(&p, count * sizeof(T)));
    memory_ = UniqueHandle<DeviceMemoryTraits>(p);
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : memory_(std::move(other.memory_)), count_(std::exchange(other.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    memory_ = std::move(other.memory_);
    count_ = std::exchange(other.count_, 0);
    return *this;
  }
  T* get() const noexcept { return static_cast<T*>(memory_.get()); }
  std::size_t size() const noexcept { return count_; }
  std::size_t bytes() const noexcept { return count_ * sizeof(T); }

 private:
  UniqueHandle<DeviceMemoryTraits> memory_;
  std::size_t count_ = 0;
};

// Page-locked host memory of `count` elements of T (for stream-ordered host copies).
template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(std::size_t count) : count_(count) {
    if (count == 0) return;
    void* p = nullptr;
    MOE_DISPATCH_CUDA_CHECK(cudaMallocHost(&p, count * sizeof(T)));
    memory_ = UniqueHandle<PinnedMemoryTraits>(p);
  }
  PinnedBuffer(PinnedBuffer&& other) noexcept
      : memory_(std::move(other.memory_)), count_(std::exchange(other.count_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept {
    memory_ = std::move(other.memory_);
    count_ = std::exchange(other.count_, 0);
    return *this;
  }
  T* get() const noexcept { return static_cast<T*>(memory_.get()); }
  std::size_t size() const noexcept { return count_; }
  std::size_t bytes() const noexcept { return count_ * sizeof(T); }

 private:
  UniqueHandle<PinnedMemoryTraits> memory_;
  std::size_t count_ = 0;
};

}  // namespace moe_dispatch
