#include "moe_dispatch/dispatch_stage.hpp"

#include <algorithm>
#include <array>
#include <cstdio>
#include <optional>
#include <string>

#include "kernels/align.hpp"
#include "moe_dispatch/align.hpp"
#include "moe_dispatch/cuda_raii.hpp"
#include "moe_dispatch/errors.hpp"
#include "runtime/graph_cache.hpp"
#include "runtime/stage_testing.hpp"

namespace moe_dispatch {
namespace {

constexpr int kNumCounters = 3;

std::string count_text(int n) { return std::to_string(n); }

// The caller's capture on `stream`, if any.
struct CallerCapture {
  bool active = false;
  cudaGraph_t graph = nullptr;
  const cudaGraphNode_t* deps = nullptr;
  std::size_t num_deps = 0;
};

CallerCapture caller_capture(cudaStream_t stream) {
  CallerCapture c;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  MOE_DISPATCH_CUDA_CHECK(
      cudaStreamGetCaptureInfo(stream, &status, nullptr, &c.graph, &c.deps, nullptr, &c.num_deps));
  c.active = status == cudaStreamCaptureStatusActive;
  return c;
}

// Makes `node` (added to the caller's graph) the capture's new frontier on `stream`.
void continue_capture_after(cudaGraphNode_t node, cudaStream_t stream) {
  MOE_DISPATCH_CUDA_CHECK(cudaStreamUpdateCaptureDependencies(stream, &node, nullptr, 1,
                                                              cudaStreamSetCaptureDependencies));
}

}  // namespace

// Device buffers for alignments of up to `max_tokens` tokens.
struct AlignBuffers {
  int max_tokens = 0;
  DeviceBuffer<std::int32_t> input;  // empty when the engine registered its own
  DeviceBuffer<std::int32_t> sorted_token_ids;
  DeviceBuffer<std::int32_t> expert_ids;
  DeviceBuffer<std::int32_t> post_pad_and_counters;  // [0]: post pad, [1..3]: counters
  DeviceBuffer<std::int32_t> scratch;

  std::int64_t bytes() const {
    return static_cast<std::int64_t>(input.bytes() + sorted_token_ids.bytes() + expert_ids.bytes() +
                                     post_pad_and_counters.bytes() + scratch.bytes());
  }
};

struct Bucket {
  int tokens = 0;
  int first_count = 0;  // the smallest count this bucket takes (the previous bucket + 1)
  kernels::AlignPlan plan;
  std::optional<detail::BucketGraph> graphs;
  bool capture_failed = false;
  BucketStats stats;
};

struct DispatchStage::Impl {
  DispatchConfig config;
  AlignShape shape;
  std::int32_t* external_input = nullptr;
  AlignBuffers main;
  AlignBuffers overflow;  // grown on demand under OverflowPolicy::kEager
  // The overflow buffers the last run wrote, kept when a growth replaced them so that its outputs
  // stay valid until the next run; freed at the next growth that finds them unused, or with the
  // stage.
  AlignBuffers retired;
  kernels::AlignPlan overflow_plan;
  DeviceBuffer<std::int32_t> expert_map;
  PinnedBuffer<std::int32_t> host_readback;
  Stream capture_stream;
  std::vector<Bucket> buckets;
  std::int64_t allocations = 0;
  std::int64_t overflow_runs = 0;
  std::int64_t overflow_growths = 0;
  const AlignBuffers* last_run = &main;  // the buffers of the last run (read_*() copy from them)
  int injected_capture_failure = 0;      // bucket whose next capture fails (StageTesting)
  // The device count pointers checked last (check_count_pointer), a few for double buffering.
  std::array<const std::int32_t*, 4> checked_count_pointers{};
  std::size_t next_checked = 0;

  void log(const std::string& line) const {
    if (config.log) std::fprintf(stderr, "moe_dispatch: %s\n", line.c_str());
  }

  // The stage's only device allocation point: counted, and failures say what the stage needs.
  DeviceBuffer<std::int32_t> allocate(std::size_t count, const char* what, std::int64_t needed) {
    try {
      DeviceBuffer<std::int32_t> buffer(count);
      if (count > 0) ++allocations;
      return buffer;
    } catch (const CudaError& error) {
      std::size_t free_bytes = 0;
      std::size_t total_bytes = 0;
      cudaGetLastError();  // the failed allocation is not sticky; clear it
      cudaMemGetInfo(&free_bytes, &total_bytes);
      const std::string call = std::string("cudaMalloc(") + what + ", " +
                               std::to_string(count * sizeof(std::int32_t)) +
                               " bytes): the configuration needs " + std::to_string(needed) +
                               " bytes of device memory, " + std::to_string(free_bytes) +
                               " bytes free on device " + std::to_string(config.device);
      throw CudaError(error.code(), call.c_str(), __FILE__, __LINE__);
    }
  }

  std::size_t scratch_ints_for(int tokens, kernels::AlignPlan* plan_out) const {
    const kernels::AlignPlan plan = kernels::plan_align(std::int64_t{tokens} * config.top_k,
                                                        config.num_experts, config.block_size);
    if (plan_out != nullptr) *plan_out = plan;
    return kernels::align_scratch_ints(plan, config.num_experts);
  }

  void allocate_buffers(AlignBuffers& b, int max_tokens, std::size_t scratch_ints, bool own_input) {
    const std::int64_t numel = std::int64_t{max_tokens} * config.top_k;
    const auto sorted = static_cast<std::size_t>(sorted_capacity(shape, numel));
    const auto blocks = static_cast<std::size_t>(expert_ids_capacity(shape, numel));
    const std::size_t input = own_input ? static_cast<std::size_t>(numel) : 0;
    const auto needed = static_cast<std::int64_t>(
        sizeof(std::int32_t) * (input + sorted + blocks + 1 + kNumCounters + scratch_ints));
    b.max_tokens = max_tokens;
    b.input = allocate(input, "topk_ids input", needed);
    b.sorted_token_ids = allocate(sorted, "sorted_token_ids", needed);
    b.expert_ids = allocate(blocks, "expert_ids", needed);
    b.post_pad_and_counters = allocate(1 + kNumCounters, "num_tokens_post_pad", needed);
    b.scratch = allocate(scratch_ints, "scratch", needed);
  }

  // Fills the owned input with -1 and waits for it: the engine may write the input on any stream
  // once the call that allocated it returns.
  void clear_input(AlignBuffers& b) {
    if (b.input.size() == 0) return;
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemsetAsync(b.input.get(), 0xFF, b.input.bytes(), capture_stream.get()));
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(capture_stream.get()));
  }

  kernels::AlignParams params_for(const AlignBuffers& b, const std::int32_t* input,
                                  int max_tokens) const {
    kernels::AlignParams p;
    p.topk_ids = input;
    p.expert_map = expert_map.get();
    p.sorted_token_ids = b.sorted_token_ids.get();
    p.expert_ids = b.expert_ids.get();
    p.num_tokens_post_pad = b.post_pad_and_counters.get();
    p.counters = b.post_pad_and_counters.get() + 1;
    p.scratch = b.scratch.get();
    p.num_experts = config.num_experts;
    p.top_k = config.top_k;
    p.block_size = config.block_size;
    p.max_tokens = max_tokens;
    p.pad_sorted_ids = config.pad_sorted_ids;
    p.map_after = config.expert_map && config.expert_map->mode == ExpertMapMode::kMapAfter;
    return p;
  }

  const std::int32_t* main_input() const {
    return external_input != nullptr ? external_input : main.input.get();
  }

  // The bucket's graphs, captured now if they were not; null when capture failed (eager).
  detail::BucketGraph* graphs_of(Bucket& bucket) {
    if (bucket.graphs || bucket.capture_failed) return bucket.graphs ? &*bucket.graphs : nullptr;
    try {
      if (bucket.tokens == injected_capture_failure) {
        injected_capture_failure = 0;
        throw CudaError(cudaErrorStreamCaptureInvalidated, "graph capture (injected by a test)",
                        __FILE__, __LINE__);
      }
      // Buckets up to fixed_count_graphs_up_to tokens hold one executable graph per count, so
      // run() launches without updating a kernel parameter (0.14-0.37 us of host time per new
      // count, graph_cache.hpp); a decode loop's count changes nearly every step. Larger
      // buckets update their two updatable graphs in turn: their counts are many, and a
      // prefill step's kernels outlast the update.
      const int fixed_counts = bucket.tokens <= config.fixed_count_graphs_up_to
                                   ? bucket.tokens - bucket.first_count + 1
                                   : 0;
      bucket.graphs.emplace(params_for(main, main_input(), bucket.tokens), bucket.plan,
                            capture_stream.get(), bucket.first_count, fixed_counts);
      bucket.stats.fixed_count_graphs = bucket.graphs->fixed_count_graphs();
      ++bucket.stats.captures;
      bucket.stats.captured = true;
      return &*bucket.graphs;
    } catch (const CudaError& error) {
      if (error.sticky()) throw;
      cudaGetLastError();
      bucket.capture_failed = true;
      log("bucket " + count_text(bucket.tokens) +
          ": graph capture or instantiation failed, falling back to eager launches: " +
          error.what());
      return nullptr;
    }
  }

  // The graphs a run uses. Inside the caller's capture, a bucket not captured yet (lazy mode) is
  // not captured now: capturing and instantiating while the caller's capture is open could
  // invalidate it, so the run launches eagerly and the caller's graph records those kernels.
  detail::BucketGraph* graphs_for(Bucket& bucket, const CallerCapture& capture) {
    if (capture.active && !bucket.graphs) return nullptr;
    return graphs_of(bucket);
  }

  Bucket& bucket_of(int tokens) {
    const auto it = std::lower_bound(buckets.begin(), buckets.end(), tokens,
                                     [](const Bucket& b, int n) { return b.tokens < n; });
    return *it;
  }

  // The stream's device must be the stage's. Not callable on a capturing stream; a capture
  // sequence already fails on a stream of another device when our nodes join it.
  void check_stream(cudaStream_t stream, const CallerCapture& capture) const {
    if (capture.active) return;
    int device = -1;
    MOE_DISPATCH_CUDA_CHECK(cudaStreamGetDevice(stream, &device));
    if (device != config.device) {
      throw ArgumentError("DispatchStage: stream belongs to device " + std::to_string(device) +
                          ", the stage lives on device " + std::to_string(config.device));
    }
  }

  // A host copy synchronizes `stream`, which a capture cannot record: refused there before
  // anything is enqueued, so the caller's capture stays valid.
  void check_readable_on(cudaStream_t stream, const char* call) const {
    const CallerCapture capture = caller_capture(stream);
    if (capture.active) {
      throw ArgumentError(std::string("DispatchStage::") + call +
                          ": the stream is capturing, and a host copy synchronizes it; read on a "
                          "stream that is not capturing, after the captured graph's launch");
    }
    check_stream(stream, capture);
  }

  // A device count pointer not among the last checked must point to memory the stage's device
  // reads: device memory of that device, managed memory, or page-locked host memory. Checked once
  // per pointer outside a capture (cudaPointerGetAttributes; a capture may not allow the query), so
  // a steady loop pays nothing; a wrong pointer would otherwise fault only at replay, as a sticky
  // error.
  void check_count_pointer(const std::int32_t* d_num_tokens, const char* call,
                           const CallerCapture& capture) {
    const auto& checked = checked_count_pointers;
    if (capture.active || std::find(checked.begin(), checked.end(), d_num_tokens) != checked.end())
      return;
    cudaPointerAttributes a{};
    MOE_DISPATCH_CUDA_CHECK(cudaPointerGetAttributes(&a, d_num_tokens));
    const bool readable = (a.type == cudaMemoryTypeDevice && a.device == config.device) ||
                          a.type == cudaMemoryTypeManaged || a.type == cudaMemoryTypeHost;
    if (!readable) {
      throw ArgumentError(
          std::string("DispatchStage::") + call +
          ": d_num_tokens must point to device memory on device " + std::to_string(config.device) +
          ", managed memory or page-locked host memory; it points to " +
          (a.type == cudaMemoryTypeDevice ? "device memory on device " + std::to_string(a.device)
                                          : std::string("memory CUDA does not know (pageable "
                                                        "host memory, or freed)")));
    }
    checked_count_pointers[next_checked++ % checked_count_pointers.size()] = d_num_tokens;
  }

  // The view of a run of num_tokens (host-known, or run_device_count()'s max_tokens) whose
  // outputs are defined up to the extents of extent_tokens tokens.
  DispatchOutputs outputs(const AlignBuffers& b, int num_tokens, int extent_tokens, int bucket,
                          bool replayed) {
    last_run = &b;
    DispatchOutputs out;
    out.sorted_token_ids = b.sorted_token_ids.get();
    out.expert_ids = b.expert_ids.get();
    out.num_tokens_post_pad = b.post_pad_and_counters.get();
    out.counters = reinterpret_cast<const DeviceCounters*>(b.post_pad_and_counters.get() + 1);
    const std::int64_t numel = std::int64_t{extent_tokens} * config.top_k;
    out.sorted_token_ids_used = sorted_capacity(shape, numel);
    out.expert_ids_used = expert_ids_capacity(shape, numel);
    out.sorted_token_ids_size = static_cast<std::int64_t>(b.sorted_token_ids.size());
    out.expert_ids_size = static_cast<std::int64_t>(b.expert_ids.size());
    out.num_tokens = num_tokens;
    out.bucket = bucket;
    out.replayed = replayed;
    return out;
  }

  // Kernels launched without a graph; the count comes from d_num_tokens, or num_tokens if null.
  void launch_eager(const AlignBuffers& b, const std::int32_t* input,
                    const kernels::AlignPlan& plan, int max_tokens,
                    const std::int32_t* d_num_tokens, int num_tokens, cudaStream_t stream) {
    kernels::AlignParams p = params_for(b, input, max_tokens);
    p.num_tokens = d_num_tokens;
    p.host_num_tokens = num_tokens;
    MOE_DISPATCH_CUDA_CHECK(kernels::launch_align(p, plan, stream));
  }

  // Throws unless counts above the capacity may run eagerly (the policy, and the kernels' 32-bit
  // limit, which validate() applies to the buckets). The constructor refuses kEager with an
  // engine-registered input, which cannot grow.
  void check_overflow_allowed(int num_tokens) const {
    if (config.overflow != OverflowPolicy::kEager) {
      throw ArgumentError("DispatchStage: " + count_text(num_tokens) +
                          " tokens exceed the capacity of " + count_text(config.max_tokens()) +
                          " (largest bucket) and the overflow policy is 'error'; allowed: 0.." +
                          count_text(config.max_tokens()) + ", or set overflow: eager");
    }
    const std::int64_t capacity = sorted_capacity(shape, std::int64_t{num_tokens} * config.top_k);
    if (capacity > kMaxNumel) {
      const std::int64_t largest = max_numel_within_limit(shape) / config.top_k;
      throw ArgumentError("DispatchStage: " + count_text(num_tokens) +
                          " tokens need a sorted_token_ids capacity of " +
                          std::to_string(capacity) + ", above the kernels' limit of " +
                          std::to_string(kMaxNumel) + "; allowed: at most " +
                          std::to_string(largest) + " tokens for this shape");
    }
  }

  // Grows the overflow buffers (and the overflow input) to num_tokens if they are smaller.
  void ensure_overflow(int num_tokens) {
    check_overflow_allowed(num_tokens);
    if (num_tokens <= overflow.max_tokens) return;
    if (last_run != &retired) retired = AlignBuffers{};  // no view reads them: free them first
    kernels::AlignPlan plan;
    const std::size_t scratch = scratch_ints_for(num_tokens, &plan);
    AlignBuffers grown;
    allocate_buffers(grown, num_tokens, scratch, true);
    clear_input(grown);
    if (last_run == &overflow) {
      retired = std::move(overflow);
      last_run = &retired;
    }
    overflow = std::move(grown);
    overflow_plan = plan;
    ++overflow_growths;
    log("overflow: grew eager buffers to " + count_text(num_tokens) + " tokens (largest bucket " +
        count_text(config.max_tokens()) + ")");
  }
};

DispatchStage::DispatchStage(const DispatchConfig& config, std::int32_t* external_input)
    : impl_(std::make_unique<Impl>()) {
  validate(config);
  if (config.expert_parallel) {
    throw ConfigError(
        "config: expert_parallel: a DispatchStage aligns one rank's routing and has no use for the "
        "section; construct moe_dispatch::ExpertParallelDispatch (library moe_dispatch::ep) with "
        "expert_parallel_config(config), or remove the section");
  }
  if (external_input != nullptr && config.overflow == OverflowPolicy::kEager) {
    throw ArgumentError(
        "DispatchStage: overflow: eager runs steps above the largest bucket from an input the "
        "stage grows, and an engine-registered external_input cannot grow; set overflow: error, "
        "or add buckets up to the largest step (the largest bucket now: " +
        count_text(config.max_tokens()) + " tokens)");
  }
  Impl& s = *impl_;
  s.config = config;
  s.shape = shape_of(config);
  s.external_input = external_input;
  int device_count = 0;
  MOE_DISPATCH_CUDA_CHECK(cudaGetDeviceCount(&device_count));
  if (config.device >= device_count) {
    throw ArgumentError("DispatchStage: device " + std::to_string(config.device) +
                        " does not exist; this machine has " + std::to_string(device_count) +
                        " CUDA device(s): 0.." + std::to_string(device_count - 1));
  }
  DeviceGuard guard(config.device);
  if (external_input != nullptr) {
    cudaPointerAttributes attributes{};
    MOE_DISPATCH_CUDA_CHECK(cudaPointerGetAttributes(&attributes, external_input));
    if (attributes.type != cudaMemoryTypeDevice || attributes.device != config.device ||
        reinterpret_cast<std::uintptr_t>(external_input) % alignof(std::int32_t) != 0) {
      throw ArgumentError(
          "DispatchStage: external_input must be 4-byte aligned device memory on device " +
          std::to_string(config.device));
    }
  }

  std::size_t scratch = 0;
  int first_count = 0;
  for (const int tokens : config.buckets) {
    Bucket bucket;
    bucket.tokens = tokens;
    bucket.first_count = first_count;
    first_count = tokens + 1;
    bucket.stats.tokens = tokens;
    scratch = std::max(scratch, s.scratch_ints_for(tokens, &bucket.plan));
    s.buckets.push_back(std::move(bucket));
  }
  s.allocate_buffers(s.main, config.max_tokens(), scratch, external_input == nullptr);
  if (config.expert_map) {
    const std::size_t entries = config.expert_map->global_to_local.size();
    s.expert_map = s.allocate(entries, "expert_map", static_cast<std::int64_t>(entries * 4));
  }
  // After the buffers: creating a stream takes device memory that destroying it does not give
  // back at once (2 MiB on the H200), so a construction that fails for want of memory creates
  // none (reliability_test compares free memory around one).
  s.capture_stream = make_stream();
  // The kernels load input rows up to the bucket's capacity before the count arrives (and ignore
  // the rows past it): start the owned input fully written (-1: no expert) so nothing reads
  // uninitialized memory.
  s.clear_input(s.main);
  if (config.expert_map) {
    // Complete before the constructor returns (the synchronization below), whatever stream the
    // engine runs on.
    const auto& map = config.expert_map->global_to_local;
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpyAsync(s.expert_map.get(), map.data(),
                                            map.size() * sizeof(std::int32_t),
                                            cudaMemcpyHostToDevice, s.capture_stream.get()));
  }
  s.host_readback = PinnedBuffer<std::int32_t>(1 + kNumCounters);
  if (config.capture == CaptureMode::kEager) {
    for (Bucket& bucket : s.buckets) s.graphs_of(bucket);
  }
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(s.capture_stream.get()));
}

DispatchStage::~DispatchStage() {
  if (!impl_) return;
  // Queued runs may still read or write the buffers: let them finish before freeing.
  int previous = 0;
  if (cudaGetDevice(&previous) == cudaSuccess) {
    cudaSetDevice(impl_->config.device);
    cudaDeviceSynchronize();
    impl_.reset();
    cudaSetDevice(previous);
  }
}

DispatchStage::DispatchStage(DispatchStage&&) noexcept = default;
DispatchStage& DispatchStage::operator=(DispatchStage&& other) noexcept {
  if (this != &other) {
    DispatchStage dying(std::move(*this));
    impl_ = std::move(other.impl_);
  }
  return *this;
}

const DispatchConfig& DispatchStage::config() const { return impl_->config; }
int DispatchStage::max_tokens() const { return impl_->config.max_tokens(); }

std::int32_t* DispatchStage::input() {
  return impl_->external_input != nullptr ? impl_->external_input : impl_->main.input.get();
}

std::int32_t* DispatchStage::input_for(int num_tokens) {
  if (num_tokens < 0) {
    throw ArgumentError("DispatchStage::input_for: num_tokens " + count_text(num_tokens) +
                        " is negative; allowed: >= 0");
  }
  if (num_tokens <= max_tokens()) return input();
  DeviceGuard guard(impl_->config.device);
  impl_->ensure_overflow(num_tokens);
  return impl_->overflow.input.get();
}

int DispatchStage::bucket_for(int num_tokens) const {
  if (num_tokens > max_tokens()) return 0;
  const auto& b = impl_->config.buckets;
  return *std::lower_bound(b.begin(), b.end(), std::max(num_tokens, 0));
}

DispatchOutputs DispatchStage::run(int num_tokens, cudaStream_t stream) {
  Impl& s = *impl_;
  if (num_tokens < 0) {
    throw ArgumentError("DispatchStage::run: num_tokens " + count_text(num_tokens) +
                        " is negative; allowed: 0.." + count_text(max_tokens()));
  }
  DeviceGuard guard(s.config.device);
  const CallerCapture capture = caller_capture(stream);
  s.check_stream(stream, capture);
  if (num_tokens > max_tokens()) {
    // The routing of an overflow step lives in the overflow input, which input_for() grows: a
    // larger count here means the caller never wrote its routing.
    s.check_overflow_allowed(num_tokens);
    if (capture.active) {
      throw ArgumentError(
          "DispatchStage::run: " + count_text(num_tokens) +
          " tokens inside a stream capture exceed the largest bucket (" + count_text(max_tokens()) +
          "): the captured kernels would keep pointers into overflow buffers "
          "that a later growth frees; allowed inside a capture: 0.." +
          count_text(max_tokens()) + ", or add a bucket of at least " + count_text(num_tokens));
    }
    if (s.overflow.max_tokens < num_tokens) {
      throw ArgumentError("DispatchStage::run: call input_for(" + count_text(num_tokens) +
                          ") and write the routing there before running above the capacity");
    }
    s.launch_eager(s.overflow, s.overflow.input.get(), s.overflow_plan, s.overflow.max_tokens,
                   nullptr, num_tokens, stream);
    ++s.overflow_runs;
    return s.outputs(s.overflow, num_tokens, num_tokens, 0, false);
  }

  Bucket& bucket = s.bucket_of(num_tokens);
  detail::BucketGraph* graphs = s.graphs_for(bucket, capture);
  if (graphs == nullptr) {
    s.launch_eager(s.main, s.main_input(), bucket.plan, bucket.tokens, nullptr, num_tokens, stream);
    ++bucket.stats.eager_runs;
    return s.outputs(s.main, num_tokens, num_tokens, bucket.tokens, false);
  }
  if (capture.active) {
    // Inside the caller's capture: our graph becomes a node of theirs, count fixed.
    continue_capture_after(
        graphs->add_child(capture.graph, capture.deps, capture.num_deps, num_tokens), stream);
    ++bucket.stats.child_nodes;
  } else {
    graphs->launch(num_tokens, stream);
    ++bucket.stats.replays;
  }
  return s.outputs(s.main, num_tokens, num_tokens, bucket.tokens, true);
}

DispatchOutputs DispatchStage::run_device_count(const std::int32_t* d_num_tokens, int max_tokens,
                                                cudaStream_t stream) {
  Impl& s = *impl_;
  if (d_num_tokens == nullptr || reinterpret_cast<std::uintptr_t>(d_num_tokens) % 4 != 0) {
    throw ArgumentError(
        "DispatchStage::run_device_count: d_num_tokens must be a non-null, 4-byte aligned device "
        "pointer");
  }
  if (max_tokens < 0 || max_tokens > this->max_tokens()) {
    throw ArgumentError("DispatchStage::run_device_count: max_tokens " + count_text(max_tokens) +
                        " outside the allowed 0.." + count_text(this->max_tokens()) +
                        " (device counts cannot overflow into eager buffers)");
  }
  DeviceGuard guard(s.config.device);
  const CallerCapture capture = caller_capture(stream);
  s.check_stream(stream, capture);
  s.check_count_pointer(d_num_tokens, "run_device_count", capture);
  Bucket& bucket = s.bucket_of(max_tokens);
  detail::BucketGraph* graphs = s.graphs_for(bucket, capture);
  if (graphs == nullptr) {
    s.launch_eager(s.main, s.main_input(), bucket.plan, bucket.tokens, d_num_tokens, 0, stream);
    ++bucket.stats.eager_runs;
    return s.outputs(s.main, max_tokens, bucket.tokens, bucket.tokens, false);
  }
  if (capture.active) {
    continue_capture_after(
        graphs->add_child_device_count(capture.graph, capture.deps, capture.num_deps, d_num_tokens),
        stream);
    ++bucket.stats.child_nodes;
  } else {
    graphs->launch_device_count(d_num_tokens, stream);
    ++bucket.stats.replays;
  }
  return s.outputs(s.main, max_tokens, bucket.tokens, bucket.tokens, true);
}

cudaGraphNode_t DispatchStage::add_to_graph(cudaGraph_t parent, const cudaGraphNode_t* deps,
                                            std::size_t num_deps, int num_tokens) {
  Impl& s = *impl_;
  if (parent == nullptr || (num_deps > 0 && deps == nullptr)) {
    throw ArgumentError(
        "DispatchStage::add_to_graph: parent must be a graph and deps non-null "
        "when num_deps > 0");
  }
  if (num_tokens < 0 || num_tokens > max_tokens()) {
    throw ArgumentError("DispatchStage::add_to_graph: num_tokens " + count_text(num_tokens) +
                        " outside the allowed 0.." + count_text(max_tokens()));
  }
  DeviceGuard guard(s.config.device);
  Bucket& bucket = s.bucket_of(num_tokens);
  detail::BucketGraph* graphs = s.graphs_of(bucket);
  if (graphs == nullptr) {
    throw Error("DispatchStage::add_to_graph: bucket " + count_text(bucket.tokens) +
                " has no graph (its capture failed; see the log)");
  }
  cudaGraphNode_t node = graphs->add_child(parent, deps, num_deps, num_tokens);
  ++bucket.stats.child_nodes;
  s.last_run = &s.main;  // the parent's replays write the main buffers
  return node;
}

cudaGraphNode_t DispatchStage::add_to_graph_device_count(cudaGraph_t parent,
                                                         const cudaGraphNode_t* deps,
                                                         std::size_t num_deps,
                                                         const std::int32_t* d_num_tokens,
                                                         int max_tokens) {
  Impl& s = *impl_;
  if (parent == nullptr || (num_deps > 0 && deps == nullptr) || d_num_tokens == nullptr) {
    throw ArgumentError(
        "DispatchStage::add_to_graph_device_count: parent, d_num_tokens (and deps "
        "when num_deps > 0) must be non-null");
  }
  // A misaligned count would only fault at the caller's replay, as a sticky error: reject it here.
  if (reinterpret_cast<std::uintptr_t>(d_num_tokens) % alignof(std::int32_t) != 0) {
    throw ArgumentError(
        "DispatchStage::add_to_graph_device_count: d_num_tokens must be a 4-byte aligned device "
        "pointer");
  }
  if (max_tokens < 0 || max_tokens > this->max_tokens()) {
    throw ArgumentError("DispatchStage::add_to_graph_device_count: max_tokens " +
                        count_text(max_tokens) + " outside the allowed 0.." +
                        count_text(this->max_tokens()));
  }
  DeviceGuard guard(s.config.device);
  s.check_count_pointer(d_num_tokens, "add_to_graph_device_count", CallerCapture{});
  Bucket& bucket = s.bucket_of(max_tokens);
  detail::BucketGraph* graphs = s.graphs_of(bucket);
  if (graphs == nullptr) {
    throw Error("DispatchStage::add_to_graph_device_count: bucket " + count_text(bucket.tokens) +
                " has no graph (its capture failed; see the log)");
  }
  cudaGraphNode_t node = graphs->add_child_device_count(parent, deps, num_deps, d_num_tokens);
  ++bucket.stats.child_nodes;
  s.last_run = &s.main;  // the parent's replays write the main buffers
  return node;
}

std::int32_t DispatchStage::read_num_tokens_post_pad(cudaStream_t stream) {
  Impl& s = *impl_;
  DeviceGuard guard(s.config.device);
  s.check_readable_on(stream, "read_num_tokens_post_pad");
  const AlignBuffers& b = *s.last_run;
  MOE_DISPATCH_CUDA_CHECK(cudaMemcpyAsync(s.host_readback.get(), b.post_pad_and_counters.get(),
                                          sizeof(std::int32_t), cudaMemcpyDeviceToHost, stream));
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
  return s.host_readback.get()[0];
}

DeviceCounters DispatchStage::read_counters(cudaStream_t stream) {
  Impl& s = *impl_;
  DeviceGuard guard(s.config.device);
  s.check_readable_on(stream, "read_counters");
  const AlignBuffers& b = *s.last_run;
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpyAsync(s.host_readback.get() + 1, b.post_pad_and_counters.get() + 1,
                      sizeof(std::int32_t) * kNumCounters, cudaMemcpyDeviceToHost, stream));
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::int32_t* c = s.host_readback.get() + 1;
  return DeviceCounters{c[0], c[1], c[2]};
}

StageStats DispatchStage::stats() const {
  const Impl& s = *impl_;
  StageStats out;
  for (const Bucket& b : s.buckets) {
    out.buckets.push_back(b.stats);
    if (b.graphs) out.buckets.back().parameter_updates = b.graphs->parameter_updates();
  }
  out.device_bytes = s.main.bytes() + s.overflow.bytes() + s.retired.bytes() +
                     static_cast<std::int64_t>(s.expert_map.bytes());
  out.device_allocations = s.allocations;
  out.overflow_runs = s.overflow_runs;
  out.overflow_growths = s.overflow_growths;
  return out;
}

namespace detail {

void StageTesting::fail_capture_of(DispatchStage& stage, int bucket_tokens) {
  stage.impl_->injected_capture_failure = bucket_tokens;
}

}  // namespace detail

}  // namespace moe_dispatch
