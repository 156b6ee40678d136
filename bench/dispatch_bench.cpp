// dispatch_bench: what the dispatch stage costs on this GPU.
//
//   dispatch_bench kernels [--only E,TOP_K,B[@TOKENS]]... [--json FILE] [--md FILE]
//     Per shape (DESIGN.md §5) x tokens {1, 8, 64, 256, 1024, 4096, 16384} (--only: the listed
//     shapes or points alone, on the ids of the whole walk): microseconds per call
//     (medians of repeated trials) for
//       eager    align_async() launched per call into persistent buffers (host launch included)
//       graph    100 calls captured in one CUDA graph, replayed: kernel time without launch gaps
//                ("one stream": measured first, before the process runs work on a second stream;
//                every other column after, in the state of an engine's process, two_streams.hpp)
//       replay   DispatchStage::run(): one graph replay per call (what an engine pays per layer
//                per step); floor: 1.7 us for a one-node graph
//       queued   the same replays enqueued while the stream is held, then run back to back: the
//                GPU's time alone (bench/queued_timing.hpp), without the host's submission pace
//   dispatch_bench stage CONFIG [--fixed-count-graphs-up-to N] [--json FILE] [--md FILE]
//     Per bucket of CONFIG: host submit time of run() (count fixed, count changing every call) and
//     of run_device_count(), GPU time per replay (as submitted, and queued as above), run()+sync
//     round trip (p50/p99), against eager
//     launches into persistent buffers and eager launches that allocate their outputs per call
//     (stream-ordered cudaMallocAsync/cudaFreeAsync, as a framework op); the stage's construction
//     time and the device memory it took (driver included). The flag overrides the config's
//     fixed_count_graphs_up_to. Measured after the process has run work on two streams.
//
// Uses only the public API. Routing is uniform random ids (distinct per token), never zeros.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "design_grid.hpp"
#include "moe_dispatch/align_async.hpp"
#include "moe_dispatch/config.hpp"
#include "moe_dispatch/cuda_raii.hpp"
#include "moe_dispatch/dispatch_stage.hpp"
#include "moe_dispatch/errors.hpp"
#include "queued_timing.hpp"
#include "routing.hpp"
#include "two_streams.hpp"

namespace md = moe_dispatch;

namespace {

constexpr double kOneNodeFloorUs = 1.7;  // DESIGN.md §4, same H100

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}
double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0
                   : v[std::min(v.size() - 1,
                                static_cast<std::size_t>(q * static_cast<double>(v.size())))];
}

// Median over `trials` of (GPU time of `calls` invocations of `body`) / calls, in microseconds.
double time_per_call_us(cudaStream_t stream, int trials, int calls,
                        const std::function<void()>& body) {
  const md::Event start = md::make_event(true);
  const md::Event stop = md::make_event(true);
  for (int i = 0; i < calls; ++i) body();  // warm-up
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<double> samples;
  for (int t = 0; t < trials; ++t) {
    MOE_DISPATCH_CUDA_CHECK(cudaEventRecord(start.get(), stream));
    for (int i = 0; i < calls; ++i) body();
    MOE_DISPATCH_CUDA_CHECK(cudaEventRecord(stop.get(), stream));
    MOE_DISPATCH_CUDA_CHECK(cudaEventSynchronize(stop.get()));
    float ms = 0;
    MOE_DISPATCH_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
    samples.push_back(1000.0 * ms / calls);
  }
  return median(samples);
}

// Persistent buffers for align_async at one capacity.
struct EagerBuffers {
  md::DeviceBuffer<std::int32_t> input, count, sorted, expert_ids, post_pad;
  md::DeviceBuffer<char> scratch;
  md::AlignBuffersView view;
  EagerBuffers(const md::AlignShape& shape, int tokens, const std::vector<std::int32_t>& ids)
      : input(ids.size()),
        count(1),
        sorted(static_cast<std::size_t>(
            md::sorted_capacity(shape, std::int64_t{tokens} * shape.top_k))),
        expert_ids(static_cast<std::size_t>(
            md::expert_ids_capacity(shape, std::int64_t{tokens} * shape.top_k))),
        post_pad(4),
        scratch(md::align_scratch_bytes(shape, tokens)) {
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemcpy(input.get(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(count.get(), &tokens, 4, cudaMemcpyHostToDevice));
    view.topk_ids = input.get();
    view.num_tokens = count.get();
    view.sorted_token_ids = sorted.get();
    view.expert_ids = expert_ids.get();
    view.num_tokens_post_pad = post_pad.get();
    view.scratch = scratch.get();
  }
};

using Shape = md::bench::GridShape;

// Best peer kernel under graph replay on the same H100 (DESIGN.md §6), where measured.
double peer_graph_us(const Shape& s, int tokens) {
  struct Point {
    int tokens, experts, top_k, block;
    double us;
  };
  static const Point points[] = {
      {1, 256, 8, 64, 5.3},     {8, 64, 2, 64, 10.4},     {64, 8, 2, 64, 4.3},
      {256, 256, 8, 64, 6.4},   {1024, 256, 8, 64, 9.4},  {4096, 64, 2, 128, 9.1},
      {4096, 256, 8, 64, 21.6}, {16384, 64, 2, 64, 21.9}, {16384, 256, 8, 64, 71.0}};
  for (const Point& p : points) {
    if (p.tokens == tokens && p.experts == s.experts && p.top_k == s.top_k && p.block == s.block) {
      return p.us;
    }
  }
  return 0.0;
}

std::string fmt(double v, int prec = 2) {
  if (v <= 0) return "—";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

void write_file(const std::string& path, const std::string& text) {
  if (path.empty()) return;
  std::ofstream out(path);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

// The grid points to measure: those of the listed shapes (E, top_k, B, and the token count when
// given), or every point when none is listed.
struct PointFilter {
  struct Entry {
    int experts = 0, top_k = 0, block = 0, tokens = 0;  // tokens 0: every count
  };
  std::vector<Entry> entries;
  bool takes(const Shape& s, int tokens) const {
    return entries.empty() || std::any_of(entries.begin(), entries.end(), [&](const Entry& e) {
             return s.experts == e.experts && s.top_k == e.top_k && s.block == e.block &&
                    (e.tokens == 0 || e.tokens == tokens);
           });
  }
};

// Kernel time of `tokens` per call: 100 align_async() calls captured in one graph, instantiated
// (not uploaded), replayed; medians of 15 samples of 10 launches.
double graph_us_per_call(const md::AlignShape& shape, int tokens, const md::AlignBuffersView& view,
                         cudaStream_t stream) {
  constexpr int kPerGraph = 100;
  MOE_DISPATCH_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kPerGraph; ++i) md::align_async(shape, tokens, view, stream);
  cudaGraph_t raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaStreamEndCapture(stream, &raw));
  md::Graph graph(raw);
  cudaGraphExec_t exec_raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphInstantiate(&exec_raw, graph.get(), 0));
  md::GraphExec exec(exec_raw);
  return time_per_call_us(stream, 15, 10,
                          [&] { MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec.get(), stream)); }) /
         kPerGraph;
}

int bench_kernels(const std::string& json_path, const std::string& md_path,
                  const PointFilter& only) {
  const md::Stream stream_owner = md::make_stream();
  cudaStream_t stream = stream_owner.get();
  std::mt19937 rng(md::bench::kGridSeed);
  struct GridPoint {
    Shape shape;
    int tokens;
    std::vector<std::int32_t> ids;
    double graph_one_stream_us = 0;
  };
  std::vector<GridPoint> points;
  for (const Shape& s : md::bench::kGridShapes) {
    for (const int tokens : md::bench::kGridTokens) {
      // Drawn for every point, so a point measured alone gets the ids of the whole walk.
      auto ids = md::bench::distinct_routing(tokens, s.top_k, s.experts, rng);
      if (only.takes(s, tokens)) points.push_back({s, tokens, std::move(ids)});
    }
  }
  // First the graph column in a process that has run work on this one stream only.
  for (GridPoint& pt : points) {
    const md::AlignShape shape{pt.shape.experts, pt.shape.top_k, pt.shape.block, false};
    const EagerBuffers eb(shape, pt.tokens, pt.ids);
    pt.graph_one_stream_us = graph_us_per_call(shape, pt.tokens, eb.view, stream);
  }
  // Everything else in the state of an engine's process (bench/two_streams.hpp).
  md::bench::run_work_on_two_streams();
  std::ostringstream json, table;
  json << "{\"mode\": \"kernels\", \"rows\": [\n";
  table << "| model | E | top_k | B | tokens | launches | eager µs | graph µs | "
           "graph µs, one stream | replay µs | replay GPU µs, queued | floor/replay | "
           "best peer graph µs |\n"
        << "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  bool first = true;
  for (const GridPoint& pt : points) {
    const Shape& s = pt.shape;
    const int tokens = pt.tokens;
    const std::vector<std::int32_t>& ids = pt.ids;
    const md::AlignShape shape{s.experts, s.top_k, s.block, false};
    EagerBuffers eb(shape, tokens, ids);
    const double eager =
        time_per_call_us(stream, 15, 200, [&] { md::align_async(shape, tokens, eb.view, stream); });
    const double graph_us = graph_us_per_call(shape, tokens, eb.view, stream);

    md::DispatchConfig cfg;
    cfg.num_experts = s.experts;
    cfg.top_k = s.top_k;
    cfg.block_size = s.block;
    cfg.buckets = {tokens};
    cfg.log = false;
    md::DispatchStage stage(cfg);
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemcpy(stage.input(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    const double replay = time_per_call_us(stream, 15, 1000, [&] { stage.run(tokens, stream); });
    const double queued =
        md::bench::queued_us_per_call(stream, 15, 64, [&] { stage.run(tokens, stream); });
    const int launches = md::align_kernel_launches(shape, tokens);
    const double peer = peer_graph_us(s, tokens);

    json << (first ? "" : ",\n") << "  {\"model\": \"" << s.model
         << "\", \"experts\": " << s.experts << ", \"top_k\": " << s.top_k
         << ", \"block\": " << s.block << ", \"tokens\": " << tokens
         << ", \"launches\": " << launches << ", \"eager_us\": " << eager
         << ", \"graph_us\": " << graph_us
         << ", \"graph_one_stream_us\": " << pt.graph_one_stream_us << ", \"replay_us\": " << replay
         << ", \"replay_queued_us\": " << queued
         << ", \"floor_fraction\": " << kOneNodeFloorUs / replay << ", \"peer_graph_us\": " << peer
         << "}";
    first = false;
    table << "| " << s.model << " | " << s.experts << " | " << s.top_k << " | " << s.block << " | "
          << tokens << " | " << launches << " | " << fmt(eager) << " | " << fmt(graph_us) << " | "
          << fmt(pt.graph_one_stream_us) << " | " << fmt(replay) << " | " << fmt(queued) << " | "
          << fmt(kOneNodeFloorUs / replay) << " | " << fmt(peer, 1) << " |\n";
    std::fprintf(stderr, "%s tokens=%d eager=%.2f graph=%.2f one-stream=%.2f replay=%.2f\n",
                 s.model, tokens, eager, graph_us, pt.graph_one_stream_us, replay);
  }
  json << "\n]}\n";
  write_file(json_path, json.str());
  write_file(md_path, table.str());
  std::printf("%s", table.str().c_str());
  return 0;
}

int bench_stage(const std::string& config_path, std::optional<int> fixed_count_graphs_up_to,
                const std::string& json_path, const std::string& md_path) {
  md::DispatchConfig cfg = md::load_config(config_path);
  cfg.log = false;
  if (fixed_count_graphs_up_to) cfg.fixed_count_graphs_up_to = *fixed_count_graphs_up_to;
  MOE_DISPATCH_CUDA_CHECK(cudaFree(nullptr));  // the context exists before the clock starts
  md::bench::run_work_on_two_streams();        // an engine's process state (two_streams.hpp)
  std::size_t free_before = 0, free_after = 0, total = 0;
  MOE_DISPATCH_CUDA_CHECK(cudaMemGetInfo(&free_before, &total));
  const auto construction_start = std::chrono::steady_clock::now();
  md::DispatchStage stage(cfg);
  const double construction_ms = std::chrono::duration<double, std::milli>(
                                     std::chrono::steady_clock::now() - construction_start)
                                     .count();
  MOE_DISPATCH_CUDA_CHECK(cudaMemGetInfo(&free_after, &total));
  // Signed: another process may free memory meanwhile.
  const double construction_mib =
      (static_cast<double>(free_before) - static_cast<double>(free_after)) / (1 << 20);
  int fixed_graphs = 0;
  for (const md::BucketStats& b : stage.stats().buckets) fixed_graphs += b.fixed_count_graphs;
  const md::AlignShape shape = md::shape_of(cfg);
  const md::Stream stream_owner = md::make_stream();
  cudaStream_t stream = stream_owner.get();
  std::mt19937 rng(43);
  const auto all_ids =
      md::bench::distinct_routing(cfg.max_tokens(), cfg.top_k, cfg.num_experts, rng);
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(stage.input(), all_ids.data(), all_ids.size() * 4, cudaMemcpyHostToDevice));
  md::DeviceBuffer<std::int32_t> device_count(1);  // the count for run_device_count()
  const std::int64_t allocations_before = stage.stats().device_allocations;

  std::ostringstream json, table;
  json << "{\"mode\": \"stage\", \"config\": \"" << config_path
       << "\", \"fixed_count_graphs_up_to\": " << cfg.fixed_count_graphs_up_to << ", \"rows\": [\n";
  table
      << "| bucket | run() host µs | run() host µs, count changing | run_device_count() host µs "
         "| replay GPU µs | replay GPU µs, queued | run+sync p50 µs | run+sync p99 µs | eager GPU "
         "µs | eager+alloc GPU µs |\n"
      << "|---|---|---|---|---|---|---|---|---|---|\n";
  bool first = true;
  int previous_bucket = -1;  // counts previous_bucket + 1 .. bucket replay this bucket's graph
  for (const int bucket : cfg.buckets) {
    // Host submit: the time run() takes on the host, batches of 100 with the queue drained between;
    // once at a fixed count and once with the count changing every call, walking down from the
    // bucket through every count it takes (as in serving, where a count seldom repeats soon: the
    // two updatable graphs of a bucket above fixed_count_graphs_up_to take no update for a count
    // one of them holds; 0 when the bucket takes one count only).
    // run_device_count() reads the count from device memory at replay time (one pointer, bound
    // once), whatever it is.
    const auto host_submit_us = [&](const auto& call) {
      std::vector<double> samples;
      for (int t = 0; t < 50; ++t) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < 100; ++i) call(i);
        const auto t1 = std::chrono::steady_clock::now();
        samples.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() / 100);
        MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
      }
      return median(samples);
    };
    const double host = host_submit_us([&](int) { stage.run(bucket, stream); });
    const int smallest_count = previous_bucket + 1;
    const auto changing = [&](int i) {
      stage.run(bucket - i % (bucket - smallest_count + 1), stream);
    };
    const double host_changing = smallest_count < bucket ? host_submit_us(changing) : 0.0;
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(device_count.get(), &bucket, 4, cudaMemcpyHostToDevice));
    const double host_device_count =
        host_submit_us([&](int) { stage.run_device_count(device_count.get(), bucket, stream); });
    previous_bucket = bucket;
    const double replay = time_per_call_us(stream, 15, 1000, [&] { stage.run(bucket, stream); });
    const double queued =
        md::bench::queued_us_per_call(stream, 15, 64, [&] { stage.run(bucket, stream); });
    std::vector<double> round_trip;
    for (int i = 0; i < 2000; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      stage.run(bucket, stream);
      MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
      round_trip.push_back(
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    const std::vector<std::int32_t> ids(all_ids.begin(),
                                        all_ids.begin() + std::int64_t{bucket} * cfg.top_k);
    EagerBuffers eb(shape, bucket, ids);
    const double eager =
        time_per_call_us(stream, 15, 200, [&] { md::align_async(shape, bucket, eb.view, stream); });
    const std::int64_t numel = std::int64_t{bucket} * cfg.top_k;
    const std::size_t sorted_bytes =
        static_cast<std::size_t>(md::sorted_capacity(shape, numel)) * 4;
    const std::size_t blocks_bytes =
        static_cast<std::size_t>(md::expert_ids_capacity(shape, numel)) * 4;
    const std::size_t scratch_bytes = md::align_scratch_bytes(shape, bucket);
    const double eager_alloc = time_per_call_us(stream, 15, 200, [&] {
      md::AlignBuffersView v = eb.view;
      void* sorted = nullptr;
      void* blocks = nullptr;
      void* post = nullptr;
      void* scratch = nullptr;
      MOE_DISPATCH_CUDA_CHECK(cudaMallocAsync(&sorted, sorted_bytes, stream));
      MOE_DISPATCH_CUDA_CHECK(cudaMallocAsync(&blocks, blocks_bytes, stream));
      MOE_DISPATCH_CUDA_CHECK(cudaMallocAsync(&post, 16, stream));
      if (scratch_bytes > 0)
        MOE_DISPATCH_CUDA_CHECK(cudaMallocAsync(&scratch, scratch_bytes, stream));
      v.sorted_token_ids = static_cast<std::int32_t*>(sorted);
      v.expert_ids = static_cast<std::int32_t*>(blocks);
      v.num_tokens_post_pad = static_cast<std::int32_t*>(post);
      v.scratch = scratch;
      md::align_async(shape, bucket, v, stream);
      MOE_DISPATCH_CUDA_CHECK(cudaFreeAsync(sorted, stream));
      MOE_DISPATCH_CUDA_CHECK(cudaFreeAsync(blocks, stream));
      MOE_DISPATCH_CUDA_CHECK(cudaFreeAsync(post, stream));
      if (scratch != nullptr) MOE_DISPATCH_CUDA_CHECK(cudaFreeAsync(scratch, stream));
    });
    const double p50 = percentile(round_trip, 0.5);
    const double p99 = percentile(round_trip, 0.99);
    json << (first ? "" : ",\n") << "  {\"bucket\": " << bucket << ", \"run_host_us\": " << host
         << ", \"run_host_changing_us\": " << host_changing
         << ", \"run_device_count_host_us\": " << host_device_count
         << ", \"replay_gpu_us\": " << replay << ", \"replay_queued_gpu_us\": " << queued
         << ", \"round_trip_p50_us\": " << p50 << ", \"round_trip_p99_us\": " << p99
         << ", \"eager_gpu_us\": " << eager << ", \"eager_alloc_gpu_us\": " << eager_alloc << "}";
    first = false;
    table << "| " << bucket << " | " << fmt(host) << " | " << fmt(host_changing) << " | "
          << fmt(host_device_count) << " | " << fmt(replay) << " | " << fmt(queued) << " | "
          << fmt(p50) << " | " << fmt(p99) << " | " << fmt(eager) << " | " << fmt(eager_alloc)
          << " |\n";
    std::fprintf(stderr, "bucket %d done\n", bucket);
  }
  const std::int64_t allocations_after = stage.stats().device_allocations;
  json << "\n], \"allocations_after_construction\": " << (allocations_after - allocations_before)
       << ", \"device_bytes\": " << stage.stats().device_bytes
       << ", \"construction_ms\": " << construction_ms
       << ", \"construction_device_mib\": " << construction_mib
       << ", \"fixed_count_graphs\": " << fixed_graphs << "}\n";
  table << "\nAllocations by the stage after construction: "
        << (allocations_after - allocations_before)
        << "; device bytes held: " << stage.stats().device_bytes
        << "; construction (allocation, capture of every bucket): " << fmt(construction_ms, 1)
        << " ms, " << fmt(construction_mib, 1) << " MiB of device memory (driver included); "
        << fixed_graphs
        << " fixed-count graphs (fixed_count_graphs_up_to: " << cfg.fixed_count_graphs_up_to
        << ")\n";
  write_file(json_path, json.str());
  write_file(md_path, table.str());
  std::printf("%s", table.str().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::vector<std::string> args(argv + 1, argv + argc);
    std::string json_path, md_path, mode, config;
    std::optional<int> fixed_count_graphs_up_to;
    PointFilter only;
    for (std::size_t i = 0; i < args.size(); ++i) {
      if (args[i] == "--fixed-count-graphs-up-to" && i + 1 < args.size()) {
        const std::string value = args[++i];
        char* end = nullptr;
        const long parsed = std::strtol(value.c_str(), &end, 10);
        if (value.empty() || *end != '\0' || parsed < 0 || parsed > md::kMaxFixedCountTokens) {
          throw std::runtime_error("--fixed-count-graphs-up-to " + value + ": allowed 0.." +
                                   std::to_string(md::kMaxFixedCountTokens));
        }
        fixed_count_graphs_up_to = static_cast<int>(parsed);
      } else if (args[i] == "--only" && i + 1 < args.size()) {
        const std::string value = args[++i];
        PointFilter::Entry e;
        int used = 0;
        const int fields = std::sscanf(value.c_str(), "%d,%d,%d%n@%d%n", &e.experts, &e.top_k,
                                       &e.block, &used, &e.tokens, &used);
        if (fields < 3 || static_cast<std::size_t>(used) != value.size() || e.experts < 1) {
          throw std::runtime_error("--only " + value + ": expected E,TOP_K,B or E,TOP_K,B@TOKENS");
        }
        only.entries.push_back(e);
      } else if (args[i] == "--json" && i + 1 < args.size()) {
        json_path = args[++i];
      } else if (args[i] == "--md" && i + 1 < args.size()) {
        md_path = args[++i];
      } else if (mode.empty()) {
        mode = args[i];
      } else if (config.empty()) {
        config = args[i];
      } else {
        throw std::runtime_error("unexpected argument " + args[i]);
      }
    }
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      std::fprintf(stderr, "dispatch_bench: no CUDA device; nothing to measure\n");
      return 77;
    }
    cudaDeviceProp prop{};
    MOE_DISPATCH_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    int driver = 0;
    MOE_DISPATCH_CUDA_CHECK(cudaDriverGetVersion(&driver));
    std::fprintf(stderr, "dispatch_bench on %s (driver API %d)\n", prop.name, driver);
    if (mode == "kernels") return bench_kernels(json_path, md_path, only);
    if (mode == "stage" && !config.empty()) {
      return bench_stage(config, fixed_count_graphs_up_to, json_path, md_path);
    }
    std::fprintf(
        stderr,
        "usage: dispatch_bench kernels [--only E,TOP_K,B[@TOKENS]]... [--json F] [--md F]\n"
        "       dispatch_bench stage CONFIG [--fixed-count-graphs-up-to N] [--json F] "
        "[--md F]\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dispatch_bench: %s\n", e.what());
    return 1;
  }
}
