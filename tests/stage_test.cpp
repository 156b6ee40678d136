// GPU suite for DispatchStage: graph replays against the host reference for every bucket of every
// preset, back-to-back runs without host syncs, zero allocations after construction, the caller's
// own capture and child graphs, overflow policies, and bad arguments.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "moe_dispatch/align.hpp"
#include "moe_dispatch/align_async.hpp"
#include "moe_dispatch/config.hpp"
#include "moe_dispatch/cuda_raii.hpp"
#include "moe_dispatch/dispatch_stage.hpp"
#include "moe_dispatch/errors.hpp"
#include "moe_dispatch/reference.hpp"
#include "runtime/stage_testing.hpp"
#include "support/device_check.hpp"
#include "support/device_routing.hpp"
#include "support/gpu.hpp"
#include "support/stage_check.hpp"

extern const bool kNeedsGpu;
const bool kNeedsGpu = true;

// Every plain operator new of this binary, throwing or not, is counted, so a test can show that a
// call makes no heap allocation (the array forms forward to these; the aligned ones are not
// counted). The nothrow form is replaced too, so that every block freed by the delete below came
// from malloc (under AddressSanitizer its own nothrow new would not pair with it).
namespace {
std::atomic<std::int64_t> heap_allocations{0};
}  // namespace
void* operator new(std::size_t bytes) {
  ++heap_allocations;
  if (void* p = std::malloc(bytes == 0 ? 1 : bytes)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t bytes, const std::nothrow_t&) noexcept {
  ++heap_allocations;
  return std::malloc(bytes == 0 ? 1 : bytes);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace md = moe_dispatch;
using md::test::Routing;

namespace {

std::filesystem::path source_dir() {
  const char* dir = std::getenv("MOE_DISPATCH_SOURCE_DIR");
  if (dir == nullptr)
    throw std::runtime_error("MOE_DISPATCH_SOURCE_DIR is not set (run via ctest)");
  return dir;
}

using md::test::fetch;
using md::test::poison;
using md::test::run_and_compare;
using md::test::small_config;

// small_config() with a bucket of 32768 slots, which the large variant aligns (two kernels: its
// graph has a programmatic dependency edge): for the tests of graphs nested in the caller's.
md::DispatchConfig two_variant_config() {
  md::DispatchConfig c = small_config();
  c.buckets = {1, 8, 64, 256, 16384};
  return c;
}
constexpr std::size_t kLargeBucket = 4;

}  // namespace

TEST_CASE("replays match the host reference at every bucket of every preset and between buckets") {
  std::mt19937 rng(1);
  const md::Stream stream = md::make_stream();
  for (const char* preset :
       {"default.yaml", "mixtral-8x7b.yaml", "qwen3-moe.yaml", "deepseek-v3.yaml"}) {
    md::DispatchConfig cfg = md::load_config(source_dir() / "configs" / preset);
    cfg.log = false;
    md::DispatchStage stage(cfg);
    std::vector<int> counts{0};
    for (const int b : cfg.buckets) {
      for (const int n : {1, b - 1, b, b + 1}) {
        if (n >= 0 && n <= cfg.max_tokens()) counts.push_back(n);
      }
    }
    for (const int n : counts) {
      const auto ids =
          md::test::make_routing(Routing::kWithInvalid, n, cfg.top_k, cfg.num_experts, rng);
      INFO(preset << " tokens=" << n << " bucket=" << stage.bucket_for(n));
      const std::string diff = run_and_compare(stage, ids, stream.get());
      CHECK_MESSAGE(diff.empty(), diff);
    }
    for (const md::BucketStats& b : stage.stats().buckets) {
      CHECK(b.captured);
      CHECK(b.eager_runs == 0);
    }
  }
}

namespace {

// 2000 back-to-back runs of `cfg` (top_k 2, E 64) with counts uniform in [0, max_tokens()] and
// routing written by a kernel before each, no host sync between them, each step's outputs copied
// (stream-ordered) to its own slot; every step compared with the reference at the end.
void back_to_back_runs(const md::DispatchConfig& cfg, std::uint32_t seed) {
  md::DispatchStage stage(cfg);
  const md::Stream stream = md::make_stream();
  const md::AlignShape shape = md::shape_of(cfg);
  const int steps = 2000;
  const std::int64_t max_numel = std::int64_t{cfg.max_tokens()} * cfg.top_k;
  const auto sorted_slot = static_cast<std::size_t>(md::sorted_capacity(shape, max_numel));
  const auto blocks_slot = static_cast<std::size_t>(md::expert_ids_capacity(shape, max_numel));
  const std::size_t slot = sorted_slot + blocks_slot + 4;
  md::DeviceBuffer<std::int32_t> history(slot * steps);
  MOE_DISPATCH_CUDA_CHECK(cudaMemset(history.get(), md::test::kPoisonByte, history.bytes()));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> count(0, cfg.max_tokens());
  std::vector<int> tokens(steps);
  for (int s = 0; s < steps; ++s) {
    tokens[s] = count(rng);
    MOE_DISPATCH_CUDA_CHECK(md::test::launch_hashed_routing(stage.input(), tokens[s] * cfg.top_k,
                                                            static_cast<std::uint32_t>(s),
                                                            cfg.num_experts, stream.get()));
    const md::DispatchOutputs out = stage.run(tokens[s], stream.get());
    std::int32_t* dst = history.get() + slot * s;
    const auto numel = std::int64_t{tokens[s]} * cfg.top_k;
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpyAsync(dst, out.sorted_token_ids,
                                            md::sorted_capacity(shape, numel) * 4,
                                            cudaMemcpyDeviceToDevice, stream.get()));
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpyAsync(dst + sorted_slot, out.expert_ids,
                                            md::expert_ids_capacity(shape, numel) * 4,
                                            cudaMemcpyDeviceToDevice, stream.get()));
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpyAsync(dst + sorted_slot + blocks_slot,
                                            out.num_tokens_post_pad, 16, cudaMemcpyDeviceToDevice,
                                            stream.get()));
  }
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  std::vector<std::int32_t> host(history.size());
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(host.data(), history.get(), history.bytes(), cudaMemcpyDeviceToHost));
  int exact = 0;
  for (int s = 0; s < steps; ++s) {
    const auto ids = md::test::hashed_routing(tokens[s] * cfg.top_k, static_cast<std::uint32_t>(s),
                                              cfg.num_experts);
    const md::HostAlignResult want = md::align_reference(ids, shape);
    const std::int32_t* got = host.data() + slot * s;
    bool same = std::equal(want.sorted_token_ids.begin(), want.sorted_token_ids.end(), got) &&
                std::equal(want.expert_ids.begin(), want.expert_ids.end(), got + sorted_slot) &&
                got[sorted_slot + blocks_slot] == want.num_tokens_post_pad &&
                got[sorted_slot + blocks_slot + 1] == want.num_invalid_ids &&
                got[sorted_slot + blocks_slot + 3] == tokens[s];
    if (!same) {
      FAIL_CHECK("step " << s << " (" << tokens[s] << " tokens) differs from the reference");
    } else {
      ++exact;
    }
  }
  CHECK(exact == steps);
}

}  // namespace

TEST_CASE("2000 back-to-back runs with device-written routing and no host sync are all exact") {
  SUBCASE("one-kernel buckets") { back_to_back_runs(small_config(), 2); }
  // Most counts fall in bucket 16384, whose large variant reads the count in its first kernel
  // and passes it to the later ones through device memory.
  SUBCASE("with a bucket of the large variant") { back_to_back_runs(two_variant_config(), 5); }
}

TEST_CASE("buckets up to fixed_count_graphs_up_to tokens launch a graph per count") {
  // small_config(): buckets 1, 8, 64, 256. A bucket up to the setting holds one graph per count it
  // takes and a changing count updates nothing there; a larger bucket updates one of its two
  // updatable graphs on a count neither holds.
  md::DispatchConfig cfg = small_config();
  SUBCASE("default: 64") {}
  SUBCASE("0: none") { cfg.fixed_count_graphs_up_to = 0; }
  SUBCASE("8") { cfg.fixed_count_graphs_up_to = 8; }
  SUBCASE("256: all") { cfg.fixed_count_graphs_up_to = 256; }
  CAPTURE(cfg.fixed_count_graphs_up_to);
  md::DispatchStage stage(cfg);
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(25);
  // Every count up to 65 once (both sides of each bucket edge), then random counts up to 256.
  std::vector<int> counts;
  for (int n = 0; n <= 65; ++n) counts.push_back(n);
  std::uniform_int_distribution<int> count(0, 256);
  for (int i = 0; i < 150; ++i) counts.push_back(count(rng));
  const int buckets[] = {1, 8, 64, 256};
  const int first_counts[] = {0, 2, 9, 65};
  const auto bucket_of = [&](int n) {
    std::size_t b = 0;
    while (buckets[b] < n) ++b;
    return b;
  };
  // Updates each bucket must make on its two updatable graphs (both start at count 0): none when
  // the one launched last holds the count; else the other is launched, updated unless it holds it.
  struct Updatable {
    int bound[2] = {0, 0};
    int last = 0;
  };
  std::int64_t expected_updates[4] = {};
  Updatable updatable[4];
  for (const int n : counts) {
    const std::size_t b = bucket_of(n);
    Updatable& u = updatable[b];
    if (buckets[b] > cfg.fixed_count_graphs_up_to && u.bound[u.last] != n) {
      u.last = 1 - u.last;
      if (u.bound[u.last] != n) {
        ++expected_updates[b];
        u.bound[u.last] = n;
      }
    }
    const auto ids = md::test::make_routing(Routing::kUniform, n, 2, 64, rng);
    INFO("tokens " << n);
    const std::string diff = run_and_compare(stage, ids, stream.get());
    CHECK_MESSAGE(diff.empty(), diff);
  }
  const md::StageStats stats = stage.stats();
  REQUIRE(stats.buckets.size() == 4);
  for (std::size_t b = 0; b < stats.buckets.size(); ++b) {
    INFO("bucket " << stats.buckets[b].tokens);
    const bool fixed = buckets[b] <= cfg.fixed_count_graphs_up_to;
    CHECK(stats.buckets[b].fixed_count_graphs == (fixed ? buckets[b] - first_counts[b] + 1 : 0));
    CHECK(stats.buckets[b].replays > 0);
    CHECK(stats.buckets[b].parameter_updates == expected_updates[b]);
    if (!fixed && b > 0) CHECK(expected_updates[b] > 5);
  }
}

TEST_CASE("a count alternating between two values updates each updatable graph once") {
  // Bucket 256 of small_config() holds no fixed-count graphs at the default setting (64); its two
  // updatable graphs take one count each and keep them.
  md::DispatchStage stage(small_config());
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(26);
  for (int i = 0; i < 10; ++i) {
    const int n = i % 2 == 0 ? 100 : 200;
    const auto ids = md::test::make_routing(Routing::kUniform, n, 2, 64, rng);
    INFO("step " << i << ", tokens " << n);
    const std::string diff = run_and_compare(stage, ids, stream.get());
    CHECK_MESSAGE(diff.empty(), diff);
  }
  const md::StageStats stats = stage.stats();
  REQUIRE(stats.buckets.size() == 4);
  CHECK(stats.buckets[3].tokens == 256);
  CHECK(stats.buckets[3].replays == 2 * 10);  // run_and_compare() runs twice: poison, then check
  CHECK(stats.buckets[3].parameter_updates == 2);
}

TEST_CASE("run() updates a count from a host thread that made no CUDA call before") {
  // The count update is a driver call, which needs the device's context current on the calling
  // thread; run() is that thread's first CUDA work here.
  md::DispatchStage stage(small_config());
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(27);
  const auto ids = md::test::make_routing(Routing::kUniform, 100, 2, 64, rng);
  // Bucket 256 (no fixed-count graphs): one updatable graph takes 200 here, the thread's run of
  // 100 updates the other.
  const md::DispatchOutputs out = stage.run(200, stream.get());
  md::test::poison(out, stream.get());
  MOE_DISPATCH_CUDA_CHECK(cudaMemcpyAsync(stage.input_for(100), ids.data(), ids.size() * 4,
                                          cudaMemcpyHostToDevice, stream.get()));
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  std::string error;
  std::thread worker([&] {
    try {
      stage.run(100, stream.get());
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  worker.join();
  REQUIRE_MESSAGE(error.empty(), error);
  const md::test::DeviceResult result = md::test::fetch(out);
  const std::string diff = md::test::compare(
      md::align_reference(ids, md::shape_of(stage.config()), nullptr), result, 100);
  CHECK_MESSAGE(diff.empty(), diff);
  CHECK(stage.stats().buckets[3].parameter_updates == 2);
}

TEST_CASE("no device memory is allocated across 100k replays after construction") {
  md::DispatchStage stage(small_config());
  const md::Stream stream = md::make_stream();
  // Routing in every row, so the replays count, rank and scatter real slots.
  const auto ids = md::test::hashed_routing(256 * 2, 3, 64);
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(stage.input(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  // Every other step takes its count from device memory (a source pointer per step).
  constexpr int kSteps = 100000;
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> count(0, 256);
  std::vector<std::int32_t> counts(kSteps);
  for (std::int32_t& c : counts) c = count(rng);
  md::DeviceBuffer<std::int32_t> d_counts(kSteps);
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(d_counts.get(), counts.data(), d_counts.bytes(), cudaMemcpyHostToDevice));
  MOE_DISPATCH_CUDA_CHECK(cudaDeviceSynchronize());
  const std::int64_t allocations = stage.stats().device_allocations;
  std::size_t free_before = 0, free_after = 0, total = 0;
  MOE_DISPATCH_CUDA_CHECK(cudaMemGetInfo(&free_before, &total));
  md::DispatchOutputs out;
  for (int i = 0; i < kSteps; ++i) {
    out = i % 2 == 0 ? stage.run(counts[i], stream.get())
                     : stage.run_device_count(d_counts.get() + i, counts[i], stream.get());
  }
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  MOE_DISPATCH_CUDA_CHECK(cudaMemGetInfo(&free_after, &total));
  CHECK(stage.stats().device_allocations == allocations);
  CHECK(free_after == free_before);
  std::int64_t replays = 0;
  for (const auto& b : stage.stats().buckets) replays += b.replays;
  CHECK(replays == kSteps);
  // The last step's count once more, over poisoned outputs, so that a run writing nothing fails.
  const int last = counts.back();
  poison(out, stream.get());
  out = stage.run(last, stream.get());
  const std::vector<std::int32_t> head(ids.begin(), ids.begin() + 2 * last);
  const md::HostAlignResult expected = md::align_reference(head, md::shape_of(stage.config()));
  const std::string diff = md::test::compare(expected, fetch(out), last);
  CHECK_MESSAGE(diff.empty(), diff);
}

TEST_CASE("run inside the caller's stream capture gives the same outputs when the caller replays") {
  md::DispatchStage stage(two_variant_config());
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(4);
  const auto ids = md::test::make_routing(Routing::kUniform, 3000, 2, 64, rng);
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(stage.input(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));

  // 100 tokens: bucket 256, one kernel; 3000 tokens: bucket 16384, two kernels.
  for (const auto& [n, bucket] : {std::pair{100, std::size_t{3}}, std::pair{3000, kLargeBucket}}) {
    INFO("tokens " << n);
    MOE_DISPATCH_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
    const md::DispatchOutputs out = stage.run(n, stream.get());
    cudaGraph_t captured = nullptr;
    MOE_DISPATCH_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &captured));
    md::Graph graph(captured);
    cudaGraphExec_t exec_raw = nullptr;
    MOE_DISPATCH_CUDA_CHECK(cudaGraphInstantiate(&exec_raw, graph.get(), 0));
    md::GraphExec exec(exec_raw);

    // A different count run in between must not leak into the caller's graph.
    stage.run(7, stream.get());
    poison(out, stream.get());
    MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec.get(), stream.get()));
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
    const std::vector<std::int32_t> head(ids.begin(), ids.begin() + 2 * n);
    const std::string diff =
        md::test::compare(md::align_reference(head, md::shape_of(stage.config())), fetch(out), n);
    CHECK_MESSAGE(diff.empty(), diff);
    CHECK(stage.stats().buckets[bucket].child_nodes == 1);
  }
}

TEST_CASE("the host reads are refused inside the caller's capture, which stays valid") {
  md::DispatchStage stage(small_config());
  const md::Stream stream = md::make_stream();
  stage.run(5, stream.get());
  MOE_DISPATCH_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
  const md::DispatchOutputs out = stage.run(7, stream.get());
  CHECK_THROWS_AS(stage.read_counters(stream.get()), md::ArgumentError);
  CHECK_THROWS_AS(stage.read_num_tokens_post_pad(stream.get()), md::ArgumentError);
  cudaGraph_t captured = nullptr;
  REQUIRE(cudaStreamEndCapture(stream.get(), &captured) == cudaSuccess);
  const md::Graph graph(captured);
  cudaGraphExec_t exec_raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphInstantiate(&exec_raw, graph.get(), 0));
  const md::GraphExec exec(exec_raw);
  MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec.get(), stream.get()));
  CHECK(stage.read_counters(stream.get()).num_tokens == 7);
  CHECK(out.replayed);
}

TEST_CASE("a bucket graph added as a child node gives the same outputs, host or device count") {
  md::DispatchStage stage(two_variant_config());
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(5);
  const auto ids = md::test::make_routing(Routing::kZipf, 4096, 2, 64, rng);
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(stage.input(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  const md::DispatchOutputs out = stage.run(0, stream.get());

  // 150 tokens: bucket 256, one kernel; 3000 tokens: bucket 16384, two kernels.
  for (const auto& [n, max_tokens] : {std::pair{150, 256}, std::pair{3000, 4096}}) {
    md::DeviceBuffer<std::int32_t> d_count(1);
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(d_count.get(), &n, 4, cudaMemcpyHostToDevice));
    const std::vector<std::int32_t> head(ids.begin(), ids.begin() + 2 * n);
    for (const bool device_count : {false, true}) {
      cudaGraph_t raw = nullptr;
      MOE_DISPATCH_CUDA_CHECK(cudaGraphCreate(&raw, 0));
      md::Graph parent(raw);
      if (device_count) {
        stage.add_to_graph_device_count(parent.get(), nullptr, 0, d_count.get(), max_tokens);
      } else {
        stage.add_to_graph(parent.get(), nullptr, 0, n);
      }
      cudaGraphExec_t exec_raw = nullptr;
      MOE_DISPATCH_CUDA_CHECK(cudaGraphInstantiate(&exec_raw, parent.get(), 0));
      md::GraphExec exec(exec_raw);
      poison(out, stream.get());
      MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec.get(), stream.get()));
      MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
      INFO("tokens " << n << ", device_count=" << device_count);
      const std::string diff =
          md::test::compare(md::align_reference(head, md::shape_of(stage.config())), fetch(out), n);
      CHECK_MESSAGE(diff.empty(), diff);
    }
  }
}

TEST_CASE("run_device_count reads the exact count on the device and clamps a bad one") {
  md::DispatchStage stage(small_config());
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(6);
  const auto ids = md::test::make_routing(Routing::kUniform, 64, 2, 64, rng);
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(stage.input(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  md::DeviceBuffer<std::int32_t> d_count(2);
  const std::int32_t counts[2] = {37, 1000};
  MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(d_count.get(), counts, 8, cudaMemcpyHostToDevice));

  poison(stage.run(0, stream.get()), stream.get());
  const md::DispatchOutputs out = stage.run_device_count(d_count.get(), 64, stream.get());
  CHECK(out.bucket == 64);
  const std::vector<std::int32_t> head(ids.begin(), ids.begin() + 74);
  std::string diff =
      md::test::compare(md::align_reference(head, md::shape_of(stage.config())), fetch(out), 37);
  CHECK_MESSAGE(diff.empty(), diff);
  CHECK(stage.read_counters(stream.get()).count_clamped == 0);

  // A second source pointer rebinds the first kernel; 1000 > bucket 64 is clamped to 64.
  poison(out, stream.get());
  const md::DispatchOutputs clamped = stage.run_device_count(d_count.get() + 1, 64, stream.get());
  const md::DeviceCounters c = stage.read_counters(stream.get());
  CHECK(c.count_clamped == 1);
  CHECK(c.num_tokens == 64);
  diff = md::test::compare(md::align_reference(ids, md::shape_of(stage.config())), fetch(clamped),
                           64, true);
  CHECK_MESSAGE(diff.empty(), diff);

  // Page-locked host memory is read too; pageable host memory is refused.
  md::PinnedBuffer<std::int32_t> pinned(1);
  pinned.get()[0] = 20;
  poison(out, stream.get());
  const md::DispatchOutputs from_host = stage.run_device_count(pinned.get(), 64, stream.get());
  const std::vector<std::int32_t> first_rows(ids.begin(), ids.begin() + 40);
  diff = md::test::compare(md::align_reference(first_rows, md::shape_of(stage.config())),
                           fetch(from_host), 20);
  CHECK_MESSAGE(diff.empty(), diff);
  std::int32_t pageable = 20;
  try {
    stage.run_device_count(&pageable, 64, stream.get());
    FAIL_CHECK("no exception");
  } catch (const md::ArgumentError& e) {
    CHECK(std::string(e.what()).find("pageable host memory") != std::string::npos);
  }
  cudaGraph_t parent_raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphCreate(&parent_raw, 0));
  const md::Graph parent(parent_raw);
  CHECK_THROWS_AS(stage.add_to_graph_device_count(parent.get(), nullptr, 0, &pageable, 64),
                  md::ArgumentError);
}

TEST_CASE("counts above the largest bucket follow the overflow policy") {
  std::mt19937 rng(7);
  const md::Stream stream = md::make_stream();
  SUBCASE("error throws naming the count and the capacity, and enqueues nothing") {
    md::DispatchStage stage(small_config());
    try {
      stage.run(257, stream.get());
      FAIL("no exception");
    } catch (const md::ArgumentError& e) {
      const std::string what = e.what();
      CHECK(what.find("257") != std::string::npos);
      CHECK(what.find("256") != std::string::npos);
    }
  }
  SUBCASE("eager grows overflow buffers once per high-water mark and stays exact") {
    md::DispatchConfig cfg = small_config();
    cfg.overflow = md::OverflowPolicy::kEager;
    md::DispatchStage stage(cfg);
    for (const int n : {300, 1000, 500, 1000}) {
      const auto ids = md::test::make_routing(Routing::kWithInvalid, n, 2, 64, rng);
      INFO("tokens=" << n);
      const std::string diff = run_and_compare(stage, ids, stream.get());
      CHECK_MESSAGE(diff.empty(), diff);
      CHECK(stage.read_num_tokens_post_pad(stream.get()) ==
            md::align_reference(ids, md::shape_of(cfg)).num_tokens_post_pad);
    }
    CHECK(stage.stats().overflow_growths == 2);
    CHECK(stage.stats().overflow_runs == 8);
    // Back below the capacity: the graphs and main buffers again.
    const auto ids = md::test::make_routing(Routing::kUniform, 10, 2, 64, rng);
    CHECK(run_and_compare(stage, ids, stream.get()).empty());
  }
}

TEST_CASE("bad arguments are rejected with a message and nothing is enqueued") {
  md::DispatchStage stage(small_config());
  const md::Stream stream = md::make_stream();
  CHECK_THROWS_AS(stage.run(-1, stream.get()), md::ArgumentError);
  CHECK_THROWS_AS(stage.input_for(-3), md::ArgumentError);
  CHECK_THROWS_AS(stage.run_device_count(nullptr, 10, stream.get()), md::ArgumentError);
  md::DeviceBuffer<std::int32_t> d_count(1);
  CHECK_THROWS_AS(stage.run_device_count(d_count.get(), 257, stream.get()), md::ArgumentError);
  CHECK_THROWS_AS(stage.add_to_graph(nullptr, nullptr, 0, 1), md::ArgumentError);
  md::DispatchConfig on_missing_device = small_config();
  int devices = 0;
  MOE_DISPATCH_CUDA_CHECK(cudaGetDeviceCount(&devices));
  on_missing_device.device = devices;
  CHECK_THROWS_AS(md::DispatchStage{on_missing_device}, md::ArgumentError);
  md::DispatchConfig invalid = small_config();
  invalid.top_k = 65;
  CHECK_THROWS_AS(md::DispatchStage{invalid}, md::ConfigError);
  std::int32_t host_value = 0;
  CHECK_THROWS_AS(md::DispatchStage(small_config(), &host_value), md::ArgumentError);
  // An engine-registered input cannot grow for steps above the largest bucket.
  md::DispatchConfig eager = small_config();
  eager.overflow = md::OverflowPolicy::kEager;
  md::DeviceBuffer<std::int32_t> engine_input(256 * 2);
  CHECK_THROWS_AS(md::DispatchStage(eager, engine_input.get()), md::ArgumentError);
  md::DispatchConfig with_ep = small_config();
  with_ep.expert_parallel = md::ExpertParallelSection{};
  with_ep.expert_parallel->hidden_size = 64;
  md::validate(with_ep);  // valid as a config, but not for a single-rank stage
  CHECK_THROWS_AS(md::DispatchStage{with_ep}, md::ConfigError);
}

TEST_CASE("an engine-registered input buffer is read in place") {
  md::DeviceBuffer<std::int32_t> engine_input(256 * 2);
  // The stage reads input rows up to the bucket's capacity (ignoring rows past the count), so an
  // engine's buffer starts written, as the stage's own does.
  MOE_DISPATCH_CUDA_CHECK(cudaMemset(engine_input.get(), 0xFF, engine_input.bytes()));
  md::DispatchStage stage(small_config(), engine_input.get());
  CHECK(stage.input() == engine_input.get());
  std::mt19937 rng(8);
  const md::Stream stream = md::make_stream();
  const auto ids = md::test::make_routing(Routing::kUniform, 77, 2, 64, rng);
  CHECK(run_and_compare(stage, ids, stream.get()).empty());
}

TEST_CASE("lazy capture captures a bucket on first use only") {
  md::DispatchConfig cfg = small_config();
  cfg.capture = md::CaptureMode::kLazy;
  md::DispatchStage stage(cfg);
  for (const auto& b : stage.stats().buckets) CHECK(b.captures == 0);
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(9);
  CHECK(
      run_and_compare(stage, md::test::make_routing(Routing::kUniform, 5, 2, 64, rng), stream.get())
          .empty());
  const auto stats = stage.stats();
  CHECK(stats.buckets[0].captures == 0);
  CHECK(stats.buckets[1].captures == 1);
  CHECK(stats.buckets[2].captures == 0);
}

TEST_CASE("two stages on two streams driven concurrently stay independent") {
  md::DispatchStage a(small_config());
  md::DispatchConfig cfg_b = small_config();
  cfg_b.num_experts = 8;
  md::DispatchStage b(cfg_b);
  const md::Stream sa = md::make_stream();
  const md::Stream sb = md::make_stream();
  std::mt19937 rng(10);
  const md::DispatchOutputs first_a = a.run(0, sa.get());
  const md::DispatchOutputs first_b = b.run(0, sb.get());
  for (int i = 0; i < 50; ++i) {
    poison(first_a, sa.get());
    poison(first_b, sb.get());
    const auto ids_a = md::test::make_routing(Routing::kUniform, 200, 2, 64, rng);
    const auto ids_b = md::test::make_routing(Routing::kZipf, 130, 2, 8, rng);
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpyAsync(a.input(), ids_a.data(), ids_a.size() * 4,
                                            cudaMemcpyHostToDevice, sa.get()));
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpyAsync(b.input(), ids_b.data(), ids_b.size() * 4,
                                            cudaMemcpyHostToDevice, sb.get()));
    const md::DispatchOutputs oa = a.run(200, sa.get());
    const md::DispatchOutputs ob = b.run(130, sb.get());
    MOE_DISPATCH_CUDA_CHECK(cudaDeviceSynchronize());
    CHECK(md::test::compare(md::align_reference(ids_a, md::shape_of(a.config())), fetch(oa), 200)
              .empty());
    CHECK(md::test::compare(md::align_reference(ids_b, md::shape_of(b.config())), fetch(ob), 130)
              .empty());
  }
}

TEST_CASE("a moved stage keeps working and a destroyed stage waits for queued work") {
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(11);
  md::DispatchStage first(small_config());
  md::DispatchStage moved(std::move(first));
  CHECK(run_and_compare(moved, md::test::make_routing(Routing::kUniform, 33, 2, 64, rng),
                        stream.get())
            .empty());
  {
    md::DispatchStage doomed(small_config());
    for (int i = 0; i < 1000; ++i) doomed.run(256, stream.get());
  }  // destroyed with up to 1000 runs queued: the destructor waits, nothing faults
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  MOE_DISPATCH_CUDA_CHECK(cudaGetLastError());
}

TEST_CASE("a bucket whose capture fails falls back to eager launches and stays exact") {
  md::DispatchConfig cfg = small_config();
  cfg.capture = md::CaptureMode::kLazy;
  md::DispatchStage stage(cfg);
  md::detail::StageTesting::fail_capture_of(stage, 64);
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(12);
  for (const int n : {40, 64, 200, 33}) {  // buckets 64, 64, 256 and 64
    INFO("tokens=" << n);
    const std::string diff = run_and_compare(
        stage, md::test::make_routing(Routing::kWithInvalid, n, 2, 64, rng), stream.get());
    CHECK_MESSAGE(diff.empty(), diff);
  }
  const md::StageStats stats = stage.stats();
  CHECK_FALSE(stats.buckets[2].captured);
  CHECK(stats.buckets[2].captures == 0);
  CHECK(stats.buckets[2].eager_runs == 6);  // three counts in bucket 64, two runs each
  CHECK(stats.buckets[2].replays == 0);
  CHECK(stats.buckets[3].captured);  // 200 tokens: bucket 256 (of 1, 8, 64, 256) is unaffected
}

TEST_CASE(
    "a lazy stage inside the caller's global capture records its kernels in the caller's graph") {
  md::DispatchConfig cfg = small_config();
  cfg.capture = md::CaptureMode::kLazy;
  md::DispatchStage stage(cfg);
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(13);
  const auto ids = md::test::make_routing(Routing::kWithInvalid, 50, 2, 64, rng);
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(stage.input(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  const md::DispatchOutputs probe = stage.run(3, stream.get());  // captures bucket 8 only
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));

  MOE_DISPATCH_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
  const md::DispatchOutputs inside = stage.run(50, stream.get());  // bucket 64: not captured
  cudaGraph_t captured = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &captured));
  md::Graph graph(captured);
  CHECK_FALSE(inside.replayed);
  CHECK(stage.stats().buckets[2].captures == 0);
  cudaGraphExec_t exec_raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphInstantiate(&exec_raw, graph.get(), 0));
  md::GraphExec exec(exec_raw);
  poison(probe, stream.get());
  MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec.get(), stream.get()));
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  const std::string diff =
      md::test::compare(md::align_reference(ids, md::shape_of(stage.config())), fetch(inside), 50);
  CHECK_MESSAGE(diff.empty(), diff);
  // Outside the capture the bucket is captured on its first run as usual.
  CHECK(run_and_compare(stage, ids, stream.get()).empty());
  CHECK(stage.stats().buckets[2].captures == 1);
}

TEST_CASE("a lazy stage inside the caller's global capture records the large variant too") {
  md::DispatchConfig cfg = two_variant_config();
  cfg.capture = md::CaptureMode::kLazy;
  md::DispatchStage stage(cfg);
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(14);
  const auto ids = md::test::make_routing(Routing::kWithInvalid, 3000, 2, 64, rng);
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(stage.input(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));

  MOE_DISPATCH_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
  const md::DispatchOutputs inside = stage.run(3000, stream.get());  // bucket 16384: not captured
  cudaGraph_t captured = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &captured));
  md::Graph graph(captured);
  CHECK_FALSE(inside.replayed);
  cudaGraphExec_t exec_raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphInstantiate(&exec_raw, graph.get(), 0));
  md::GraphExec exec(exec_raw);
  poison(inside, stream.get());
  MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec.get(), stream.get()));
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  const std::string diff = md::test::compare(md::align_reference(ids, md::shape_of(stage.config())),
                                             fetch(inside), 3000);
  CHECK_MESSAGE(diff.empty(), diff);
  CHECK(stage.stats().buckets[kLargeBucket].captures == 0);
}

TEST_CASE("an error an earlier call left pending fails neither capture nor eager launches") {
  int devices = 0;
  MOE_DISPATCH_CUDA_CHECK(cudaGetDeviceCount(&devices));
  // A failed call sets the thread's last error (not sticky) until something reads it.
  REQUIRE(cudaSetDevice(devices + 100) != cudaSuccess);
  md::DispatchConfig cfg = two_variant_config();
  cfg.overflow = md::OverflowPolicy::kEager;
  md::DispatchStage stage(cfg);
  for (const md::BucketStats& b : stage.stats().buckets) CHECK(b.captured);
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(31);
  const auto ids = md::test::make_routing(Routing::kUniform, 20000, 2, 64, rng);
  REQUIRE(cudaSetDevice(devices + 100) != cudaSuccess);
  CHECK(run_and_compare(stage, ids, stream.get()).empty());  // above 16384: eager
  CHECK(stage.stats().overflow_runs == 2);
  for (const md::BucketStats& b : stage.stats().buckets) CHECK(b.eager_runs == 0);
}

TEST_CASE("run_device_count's extents cover a device count above max_tokens within the bucket") {
  md::DispatchStage stage(small_config());
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(32);
  const auto ids = md::test::make_routing(Routing::kUniform, 64, 2, 64, rng);
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(stage.input(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  md::DeviceBuffer<std::int32_t> d_count(1);
  const std::int32_t count = 64;
  MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(d_count.get(), &count, 4, cudaMemcpyHostToDevice));
  poison(stage.run(0, stream.get()), stream.get());
  // max_tokens 9 picks bucket 64; the device count 64 lies within it and is aligned in full.
  const md::DispatchOutputs out = stage.run_device_count(d_count.get(), 9, stream.get());
  CHECK(out.bucket == 64);
  CHECK(out.num_tokens == 9);
  const md::AlignShape shape = md::shape_of(stage.config());
  CHECK(out.sorted_token_ids_used == md::sorted_capacity(shape, 64 * 2));
  CHECK(out.expert_ids_used == md::expert_ids_capacity(shape, 64 * 2));
  const std::int32_t post_pad = stage.read_num_tokens_post_pad(stream.get());
  CHECK(post_pad <= out.sorted_token_ids_used);
  const std::string diff = md::test::compare(md::align_reference(ids, shape), fetch(out), 64);
  CHECK_MESSAGE(diff.empty(), diff);
  CHECK(stage.read_counters(stream.get()).count_clamped == 0);
}

TEST_CASE("an overflow growth keeps the last run's outputs valid until the next run") {
  md::DispatchConfig cfg = small_config();
  cfg.overflow = md::OverflowPolicy::kEager;
  md::DispatchStage stage(cfg);
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(33);
  const md::AlignShape shape = md::shape_of(cfg);
  const auto ids = md::test::make_routing(Routing::kWithInvalid, 300, 2, 64, rng);
  REQUIRE(run_and_compare(stage, ids, stream.get()).empty());
  const md::DispatchOutputs out = stage.run(300, stream.get());
  const md::HostAlignResult expected = md::align_reference(ids, shape);
  const std::int64_t bytes_before = stage.stats().device_bytes;
  stage.input_for(1000);  // grows the overflow buffers
  CHECK(stage.stats().overflow_growths == 2);
  CHECK(stage.stats().device_bytes > bytes_before);
  CHECK(stage.read_num_tokens_post_pad(stream.get()) == expected.num_tokens_post_pad);
  CHECK(stage.read_counters(stream.get()).num_tokens == 300);
  const std::string diff = md::test::compare(expected, md::test::fetch_defined(out, expected), 300);
  CHECK_MESSAGE(diff.empty(), diff);
  // A second growth without a run between frees no buffers a view uses; runs stay exact.
  stage.input_for(2000);
  CHECK(stage.read_num_tokens_post_pad(stream.get()) == expected.num_tokens_post_pad);
  const auto more = md::test::make_routing(Routing::kUniform, 2000, 2, 64, rng);
  CHECK(run_and_compare(stage, more, stream.get()).empty());
  const auto fewer = md::test::make_routing(Routing::kUniform, 50, 2, 64, rng);
  CHECK(run_and_compare(stage, fewer, stream.get()).empty());
}

TEST_CASE("overflow counts past the kernels' 32-bit limit are refused before anything is done") {
  md::DispatchConfig cfg;
  cfg.num_experts = 8;
  cfg.top_k = 1;
  cfg.block_size = 1;
  cfg.buckets = {256};
  cfg.overflow = md::OverflowPolicy::kEager;
  cfg.log = false;
  md::DispatchStage stage(cfg);
  const md::Stream stream = md::make_stream();
  const std::int64_t allocations = stage.stats().device_allocations;
  // Capacity numel + E * (B - 1) = numel here: 2^24 tokens are the most.
  for (const int n : {(1 << 24) + 1, INT_MAX}) {
    INFO("tokens=" << n);
    for (const bool through_run : {false, true}) {
      try {
        if (through_run) {
          stage.run(n, stream.get());
        } else {
          stage.input_for(n);
        }
        FAIL_CHECK("no exception");
      } catch (const md::ArgumentError& e) {
        const std::string what = e.what();
        CHECK(what.find(std::to_string(n)) != std::string::npos);
        CHECK(what.find("16777216") != std::string::npos);
      }
    }
  }
  CHECK(stage.stats().device_allocations == allocations);
  CHECK(stage.stats().overflow_growths == 0);
  CHECK(stage.input_for(1 << 24) != nullptr);  // the limit itself is accepted
  CHECK(stage.stats().overflow_growths == 1);
}

TEST_CASE(
    "inside the caller's capture a count above the largest bucket is refused, capture intact") {
  md::DispatchConfig cfg = small_config();
  cfg.overflow = md::OverflowPolicy::kEager;
  md::DispatchStage stage(cfg);
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(34);
  const auto ids = md::test::make_routing(Routing::kUniform, 300, 2, 64, rng);
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(stage.input_for(300), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  const std::vector<std::int32_t> head(ids.begin(), ids.begin() + 20);
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(stage.input(), head.data(), head.size() * 4, cudaMemcpyHostToDevice));
  MOE_DISPATCH_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
  try {
    stage.run(300, stream.get());
    FAIL_CHECK("no exception");
  } catch (const md::ArgumentError& e) {
    CHECK(std::string(e.what()).find("300") != std::string::npos);
  }
  const md::DispatchOutputs out = stage.run(10, stream.get());
  cudaGraph_t captured = nullptr;
  REQUIRE(cudaStreamEndCapture(stream.get(), &captured) == cudaSuccess);
  md::Graph graph(captured);
  cudaGraphExec_t exec_raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphInstantiate(&exec_raw, graph.get(), 0));
  md::GraphExec exec(exec_raw);
  poison(out, stream.get());
  MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec.get(), stream.get()));
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  const std::string diff =
      md::test::compare(md::align_reference(head, md::shape_of(cfg)), fetch(out), 10);
  CHECK_MESSAGE(diff.empty(), diff);
  CHECK(stage.stats().overflow_runs == 0);
}

TEST_CASE("a failed add_to_graph counts no child node and leaves the stage usable") {
  md::DispatchStage stage(small_config());
  const md::Stream stream = md::make_stream();
  cudaGraph_t raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphCreate(&raw, 0));
  md::Graph parent(raw);
  MOE_DISPATCH_CUDA_CHECK(cudaGraphCreate(&raw, 0));
  md::Graph other(raw);
  cudaGraphNode_t foreign = nullptr;  // a node of another graph: not a valid dependency
  MOE_DISPATCH_CUDA_CHECK(cudaGraphAddEmptyNode(&foreign, other.get(), nullptr, 0));
  CHECK_THROWS_AS(stage.add_to_graph(parent.get(), &foreign, 1, 10), md::CudaError);
  MOE_DISPATCH_CUDA_CHECK(cudaDeviceSynchronize());
  for (const md::BucketStats& b : stage.stats().buckets) CHECK(b.child_nodes == 0);
  std::mt19937 rng(35);
  CHECK(run_and_compare(stage, md::test::make_routing(Routing::kUniform, 10, 2, 64, rng),
                        stream.get())
            .empty());
  CHECK(stage.add_to_graph(parent.get(), nullptr, 0, 10) != nullptr);
  CHECK(stage.stats().buckets[2].child_nodes == 1);
}

TEST_CASE("replays are exact with a shuffled expert map, either mode, every variant") {
  std::mt19937 rng(36);
  const md::Stream stream = md::make_stream();
  for (const md::ExpertMapMode mode : {md::ExpertMapMode::kDrop, md::ExpertMapMode::kMapAfter}) {
    md::DispatchConfig cfg = two_variant_config();
    // 30 of the 64 experts local, their local ids shuffled, the others -1, interleaved.
    std::vector<std::int32_t> experts(64);
    for (int e = 0; e < 64; ++e) experts[e] = e;
    std::shuffle(experts.begin(), experts.end(), rng);
    std::vector<std::int32_t> local(30);
    for (int i = 0; i < 30; ++i) local[i] = i;
    std::shuffle(local.begin(), local.end(), rng);
    md::ExpertMap map;
    map.mode = mode;
    map.global_to_local.assign(64, -1);
    for (int i = 0; i < 30; ++i) map.global_to_local[experts[i]] = local[i];
    cfg.expert_map = map;
    md::DispatchStage stage(cfg);
    for (const int n : {0, 1, 7, 64, 200, 256, 3000, 16384}) {
      INFO("mode " << md::to_string(mode) << ", tokens " << n);
      const auto ids = md::test::make_routing(Routing::kWithInvalid, n, 2, 64, rng);
      const std::string diff = run_and_compare(stage, ids, stream.get());
      CHECK_MESSAGE(diff.empty(), diff);
    }
  }
}

TEST_CASE("replays are exact for shapes the presets leave out") {
  struct Case {
    int experts, top_k, block;
    bool pad;
  };
  // Block size 1 and padding, the most experts with top_k 32 and the largest block, E 1024 with
  // top_k 32, one expert; buckets of the tiny, small and (E 4096) large variants.
  const Case cases[] = {
      {2048, 8, 1, true}, {4096, 32, 1024, true}, {1024, 32, 16, false}, {1, 1, 16, false}};
  std::mt19937 rng(37);
  const md::Stream stream = md::make_stream();
  for (const Case& c : cases) {
    md::DispatchConfig cfg;
    cfg.num_experts = c.experts;
    cfg.top_k = c.top_k;
    cfg.block_size = c.block;
    cfg.pad_sorted_ids = c.pad;
    cfg.buckets = {1, 64, 512};
    cfg.log = false;
    md::DispatchStage stage(cfg);
    for (const Routing routing : {Routing::kUniform, Routing::kOneExpert, Routing::kOneNonEmpty,
                                  Routing::kZipf, Routing::kWithInvalid}) {
      for (const int n : {0, 1, 63, 64, 65, 511, 512}) {
        INFO("E " << c.experts << " top_k " << c.top_k << " B " << c.block << " pad " << c.pad
                  << " routing " << static_cast<int>(routing) << " tokens " << n);
        const auto ids = md::test::make_routing(routing, n, c.top_k, c.experts, rng);
        const std::string diff = run_and_compare(stage, ids, stream.get());
        CHECK_MESSAGE(diff.empty(), diff);
      }
    }
  }
}

TEST_CASE("align_async into buffers the caller owns matches the reference and rejects bad calls") {
  const md::AlignShape shape{64, 2, 16, false};
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(38);
  // 64 tokens: one kernel; 20000 (40000 slots): the large variant, with scratch.
  for (const int max_tokens : {64, 20000}) {
    const std::int64_t numel = std::int64_t{max_tokens} * shape.top_k;
    md::DeviceBuffer<std::int32_t> input(static_cast<std::size_t>(numel)), count(1), post(4);
    md::DeviceBuffer<std::int32_t> sorted(
        static_cast<std::size_t>(md::sorted_capacity(shape, numel)));
    md::DeviceBuffer<std::int32_t> blocks(
        static_cast<std::size_t>(md::expert_ids_capacity(shape, numel)));
    md::DeviceBuffer<char> scratch(md::align_scratch_bytes(shape, max_tokens));
    const int n = max_tokens - 3;
    const auto ids = md::test::make_routing(Routing::kWithInvalid, max_tokens, 2, 64, rng);
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemcpy(input.get(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(count.get(), &n, 4, cudaMemcpyHostToDevice));
    const std::vector<std::int32_t> head(ids.begin(), ids.begin() + 2 * n);
    const md::HostAlignResult expected = md::align_reference(head, shape);
    for (const bool device_count : {true, false}) {
      INFO("max_tokens " << max_tokens << ", device_count=" << device_count);
      md::AlignBuffersView view;
      view.topk_ids = input.get();
      view.num_tokens = device_count ? count.get() : nullptr;
      view.host_num_tokens = device_count ? 0 : n;
      view.sorted_token_ids = sorted.get();
      view.expert_ids = blocks.get();
      view.num_tokens_post_pad = post.get();
      view.scratch = scratch.get();
      for (md::DeviceBuffer<std::int32_t>* b : {&sorted, &blocks, &post}) {
        MOE_DISPATCH_CUDA_CHECK(
            cudaMemsetAsync(b->get(), md::test::kPoisonByte, b->bytes(), stream.get()));
      }
      md::align_async(shape, max_tokens, view, stream.get());
      MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
      const md::test::DeviceResult result = md::test::copy_back(
          sorted.get(), sorted.size(), blocks.get(), blocks.size(), post.get(), post.get() + 1);
      const std::string diff = md::test::compare(expected, result, n);
      CHECK_MESSAGE(diff.empty(), diff);
      if (max_tokens == 64) {
        md::AlignBuffersView missing = view;
        missing.sorted_token_ids = nullptr;
        CHECK_THROWS_AS(md::align_async(shape, max_tokens, missing, stream.get()),
                        md::ArgumentError);
        CHECK_THROWS_AS(md::align_async(shape, -1, view, stream.get()), md::ArgumentError);
        md::AlignBuffersView misaligned = view;
        misaligned.num_tokens =
            reinterpret_cast<const std::int32_t*>(reinterpret_cast<const char*>(count.get()) + 2);
        CHECK_THROWS_AS(md::align_async(shape, max_tokens, misaligned, stream.get()),
                        md::ArgumentError);
        try {
          md::align_async(md::AlignShape{64, 0, 16, false}, max_tokens, view, stream.get());
          FAIL_CHECK("no exception");
        } catch (const md::ArgumentError& e) {
          CHECK(std::string(e.what()).find("align_async: config: top_k") != std::string::npos);
        }
      }
    }
  }
}

TEST_CASE("run(), run_device_count() and align_async() make no heap allocation per call") {
  md::DispatchStage stage(two_variant_config());
  const md::Stream stream = md::make_stream();
  md::DeviceBuffer<std::int32_t> d_count(2);
  MOE_DISPATCH_CUDA_CHECK(cudaMemset(d_count.get(), 0, d_count.bytes()));
  const md::AlignShape shape = md::shape_of(stage.config());
  md::DeviceBuffer<std::int32_t> input(64 * 2),
      sorted(static_cast<std::size_t>(md::sorted_capacity(shape, 64 * 2))),
      blocks(static_cast<std::size_t>(md::expert_ids_capacity(shape, 64 * 2))), post(4);
  MOE_DISPATCH_CUDA_CHECK(cudaMemset(input.get(), 0xFF, input.bytes()));
  md::AlignBuffersView view;
  view.topk_ids = input.get();
  view.host_num_tokens = 50;
  view.sorted_token_ids = sorted.get();
  view.expert_ids = blocks.get();
  view.num_tokens_post_pad = post.get();
  // Counts in fixed-count and updatable buckets, the large variant's bucket, and two count
  // sources for run_device_count().
  const auto step = [&](int i) {
    stage.run(i % 3000, stream.get());
    stage.run_device_count(d_count.get() + i % 2, 200 + i % 2, stream.get());
    md::align_async(shape, 64, view, stream.get());
  };
  for (int i = 0; i < 100; ++i) step(i);  // warm-up
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  const std::int64_t before = heap_allocations.load();
  for (int i = 0; i < 1000; ++i) step(i);
  const std::int64_t after = heap_allocations.load();
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  CHECK(after - before == 0);
}
