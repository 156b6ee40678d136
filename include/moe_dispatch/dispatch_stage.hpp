// DispatchStage: the MoE dispatch stage as an engine embeds it. One CUDA graph per token-count
// bucket, captured over persistent device buffers, replayed per step with no allocation.
//
// Contract
// - Construction allocates every device buffer the stage will use (sized for the largest bucket)
//   on config.device and, with CaptureMode::kEager, captures one graph per bucket and
//   instantiates and uploads two executable graphs of it (buckets of up to
//   config.fixed_count_graphs_up_to tokens, 64 by default: plus one per count they take, see
//   run()).
//   Nothing is allocated afterwards, except the overflow buffers of OverflowPolicy::kEager, grown
//   once per new high-water mark and counted in stats().
// - run() is stream-ordered: it enqueues work on `stream` and returns without synchronizing. The
//   count reaches the device as a parameter of the graph's first kernel: buckets of up to
//   config.fixed_count_graphs_up_to tokens launch an executable graph built for that count; a
//   larger bucket launches the executable graph it launched last if that holds the count, else
//   its other one, with the count set on it first if it holds another (affecting later launches
//   only). Back-to-back runs with different counts never race; the first kernel
//   writes the count it used to DeviceCounters::num_tokens in device memory, where the later
//   kernels of the launch (and the caller) read it.
// - Outputs (DispatchOutputs) point into the stage's buffers. They hold the result of the last run
//   once the work enqueued by that run is complete, and are overwritten by the next run: the
//   caller orders its consumers before the next run (same stream, or an event).
// - Thread-safety: a stage is used by one host thread at a time, and its runs are ordered (one
//   stream, or streams the caller orders). Concurrent work uses one stage per stream.
// - Device: every call sets config.device current for its duration and restores the caller's
//   device (cudaSetDevice, which makes that device's primary context current: an engine running
//   its own driver contexts makes its context current again after calling in), so the stage works
//   whatever device is current. Streams passed in must belong to that device (checked outside a
//   stream capture, ArgumentError otherwise; CUDA refuses the query on a capturing stream).
// - Inside the caller's stream capture, run() adds the bucket's graph to the caller's graph as a
//   child node with the count fixed to the value passed, so an engine that captures its whole
//   forward pass gets the dispatch inside its graph. A bucket not yet captured (CaptureMode::kLazy)
//   is not captured during the caller's capture: its kernels are launched into it instead.
// - Errors: ArgumentError for bad arguments (nothing is enqueued), CudaError for a failed CUDA call
//   (the message names the call, file and line). After a CudaError that is sticky
//   (CudaError::sticky()), the CUDA context and this stage are unusable; after any other, the
//   stage stays usable. A failed capture falls back to eager launches for that bucket (logged
//   once). A non-sticky error that an earlier call left pending on the calling thread (what
//   cudaGetLastError() would return) is not reported: eager launches (overflow, a failed
//   capture's bucket) clear it so that it is not taken for theirs, graph launches leave it
//   pending. Check your own calls before calling in.
// - Lifetime: the stage may be moved freely (its device state does not move, so work already queued
//   is unaffected); a moved-from stage may only be destroyed or assigned to. The destructor
//   synchronizes the stage's device (cudaDeviceSynchronize: freeing device memory would wait for
//   the device anyway) before freeing buffers, so destroying a stage with runs in flight is safe;
//   it also waits for other work on that device, so destroy stages outside the serving path. The
//   caller must not read outputs of a destroyed stage.
// - Overflow (OverflowPolicy::kEager): write the routing of a step above max_tokens() through
//   input_for(num_tokens), which grows the overflow input, before run(num_tokens). A growth keeps
//   the buffers of the last run until a later growth, so the last run's outputs stay valid until
//   the next run. Counts whose sorted_token_ids capacity would pass kMaxNumel are refused
//   (ArgumentError), as the buckets are by validate(). Inside the caller's stream capture a count
//   above max_tokens() is refused (ArgumentError): the caller's graph would keep pointers into
//   overflow buffers that a later growth frees.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "moe_dispatch/config.hpp"

namespace moe_dispatch {

namespace detail {
struct StageTesting;  // fault injection for the test suites (runtime/stage_testing.hpp)
}  // namespace detail

// Written by every run, on the device.
struct DeviceCounters {
  std::int32_t invalid_ids;    // slots whose id was outside [0, num_experts): skipped
  std::int32_t count_clamped;  // 1 when the count was outside [0, the launch's token capacity]
  std::int32_t num_tokens;     // the count the kernels used (after clamping)
};

// Device pointers into the stage's buffers; valid until the next run (see contract above).
// Entries past the `*_used` extents are not part of the result (and are not written by this run).
// A GEMM reading whole tiles of sorted_token_ids stops at num_tokens_post_pad, which never exceeds
// sorted_token_ids_used; expert_ids_used may cover one block more than sorted_token_ids_used / B.
struct DispatchOutputs {
  const std::int32_t* sorted_token_ids = nullptr;
  const std::int32_t* expert_ids = nullptr;
  const std::int32_t* num_tokens_post_pad = nullptr;  // [1]
  const DeviceCounters* counters = nullptr;           // [1]
  // Entries defined by this run: sorted_capacity(numel) and expert_ids_capacity(numel) for
  // numel = num_tokens * top_k (run_device_count: for the bucket's capacity, since a device count
  // up to the bucket is aligned in full; an upper bound).
  std::int64_t sorted_token_ids_used = 0;
  std::int64_t expert_ids_used = 0;
  std::int64_t sorted_token_ids_size = 0;  // entries allocated (>= used)
  std::int64_t expert_ids_size = 0;        // entries allocated (>= used)
  int num_tokens = 0;     // host-known count (run), or max_tokens (run_device_count)
  int bucket = 0;         // token capacity of the graph used; 0 for an eager overflow run
  bool replayed = false;  // false for eager launches (overflow, or a bucket whose capture failed)
};

struct BucketStats {
  int tokens = 0;                // the bucket's token capacity
  std::int64_t replays = 0;      // graph launches by run() and run_device_count() together
  std::int64_t captures = 0;     // graphs captured for this bucket
  std::int64_t child_nodes = 0;  // times added to a caller's graph
  std::int64_t eager_runs = 0;   // runs launched without a graph (capture failed)
  // Executable graphs with their count fixed, one per count the bucket takes (buckets of up to
  // config.fixed_count_graphs_up_to tokens): run() launches one of them and updates nothing. 0 for
  // larger buckets, and before a lazy bucket is captured or after its capture failed.
  int fixed_count_graphs = 0;
  // Times the count source of one of the bucket's two updatable executable graphs changed (a
  // kernel-parameter update, 0.14-0.37 us of host time on the H200): run() outside the fixed-count
  // graphs, and run_device_count(), with a count source neither graph holds.
  std::int64_t parameter_updates = 0;
  bool captured = false;
};

struct StageStats {
  std::vector<BucketStats> buckets;
  // Device memory the stage allocated and holds now (buffers; the driver's own memory for the
  // executable graphs is not included).
  std::int64_t device_bytes = 0;
  std::int64_t device_allocations = 0;  // cudaMalloc calls made by the stage, ever
  std::int64_t overflow_runs = 0;       // runs above the largest bucket (OverflowPolicy::kEager)
  std::int64_t overflow_growths = 0;    // times the overflow buffers grew
};

class DispatchStage {
 public:
  // Allocates and captures on config.device. A config with an expert_parallel section is refused
  // (ConfigError): that section configures ExpertParallelDispatch. `external_input`, when given, is
  // the engine's own persistent topk_ids buffer (device memory on config.device, at least
  // max_tokens * top_k int32 entries, alive as long as the stage; ArgumentError with
  // OverflowPolicy::kEager, whose steps above the largest bucket need an input the stage grows);
  // otherwise the stage owns one (see input()). The kernels load rows up to the bucket's capacity
  // before the count is known and ignore rows past it, so initialize the whole buffer once
  // (compute-sanitizer's initcheck flags unwritten rows).
  explicit DispatchStage(const DispatchConfig& config, std::int32_t* external_input = nullptr);
  ~DispatchStage();
  DispatchStage(DispatchStage&&) noexcept;
  DispatchStage& operator=(DispatchStage&&) noexcept;
  DispatchStage(const DispatchStage&) = delete;
  DispatchStage& operator=(const DispatchStage&) = delete;

  const DispatchConfig& config() const;
  int max_tokens() const;  // the largest bucket

  // The persistent topk_ids input: max_tokens() * top_k int32 entries, row-major by token.
  std::int32_t* input();
  // The input to write for a step of `num_tokens`: input() up to max_tokens(); above it, the
  // overflow input under OverflowPolicy::kEager (grown if needed), else ArgumentError.
  std::int32_t* input_for(int num_tokens);

  // The smallest bucket >= num_tokens; 0 when num_tokens exceeds max_tokens().
  int bucket_for(int num_tokens) const;

  // Aligns the first num_tokens rows of input_for(num_tokens) on `stream`. num_tokens = 0 is valid:
  // it replays the smallest bucket, which writes the empty result (post pad 0, sentinels, -1s).
  DispatchOutputs run(int num_tokens, cudaStream_t stream);

  // Aligns the first *d_num_tokens rows of input(); the count is read on the device
  // (d_num_tokens: device memory on config.device, written by earlier work on `stream`; managed
  // or page-locked host memory also do). A pointer not passed before is checked outside a capture
  // (ArgumentError for pageable host memory or another device's).
  // max_tokens (host, 0..max_tokens()) picks the bucket; a device count outside [0, bucket] is
  // clamped into it and flagged in DeviceCounters::count_clamped (never read out of bounds).
  DispatchOutputs run_device_count(const std::int32_t* d_num_tokens, int max_tokens,
                                   cudaStream_t stream);

  // Adds the bucket graph for num_tokens to `parent` as a child graph node (count fixed to
  // num_tokens) depending on `deps`; returns the node. The caller's graph then owns a copy.
  cudaGraphNode_t add_to_graph(cudaGraph_t parent, const cudaGraphNode_t* deps,
                               std::size_t num_deps, int num_tokens);
  // The same with the count read from d_num_tokens at replay time (bucket chosen by max_tokens;
  // the pointer checked as by run_device_count()).
  cudaGraphNode_t add_to_graph_device_count(cudaGraph_t parent, const cudaGraphNode_t* deps,
                                            std::size_t num_deps, const std::int32_t* d_num_tokens,
                                            int max_tokens);

  // Opt-in host copy: enqueues the copy of num_tokens_post_pad on `stream`, then synchronizes
  // `stream` and returns the value. On a capturing stream: ArgumentError, nothing enqueued.
  std::int32_t read_num_tokens_post_pad(cudaStream_t stream);
  // Opt-in host copy of the counters of the last run; synchronizes `stream` (as above).
  DeviceCounters read_counters(cudaStream_t stream);

  StageStats stats() const;

 private:
  friend struct detail::StageTesting;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe_dispatch
