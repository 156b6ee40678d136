// variant_bench: the measurement behind plan_align()'s choices: the variant, the small variant's
// block shapes, the large variant's forms and the one-kernel grids. A tuning tool over the internal
// kernels (not public API): per shape and token count, kernel time with 100 calls captured in one
// graph (medians of 15 replays), and, for the shapes and grids, GPU time per one-node replay.
// It runs its work on one stream, so its kernel times compare with dispatch_bench's "one stream"
// column, ~0.18 us below an engine's process state (bench/two_streams.hpp).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "design_grid.hpp"
#include "kernels/align.hpp"
#include "kernels/align_variants.hpp"
#include "moe_dispatch/align.hpp"
#include "moe_dispatch/align_async.hpp"
#include "moe_dispatch/cuda_raii.hpp"
#include "moe_dispatch/dispatch_stage.hpp"
#include "moe_dispatch/errors.hpp"
#include "queued_timing.hpp"
#include "routing.hpp"
#include "runtime/graph_cache.hpp"

namespace md = moe_dispatch;
namespace mk = moe_dispatch::kernels;

namespace {

// E, top_k and B of a measured shape.
struct Shape {
  int experts, top_k, block;
};
// The shapes the sweeps of the small variant and the crossover share.
constexpr Shape kSweepShapes[] = {{8, 2, 64},   {64, 2, 128}, {128, 8, 64},
                                  {256, 8, 64}, {512, 8, 64}, {1024, 8, 128}};

// `calls` alignments captured in one graph, instantiated and uploaded (the capture ended and
// released whatever a launch returned).
md::GraphExec capture_align(const mk::AlignParams& p, const mk::AlignPlan& plan, int calls,
                            cudaStream_t stream) {
  MOE_DISPATCH_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  cudaError_t launched = cudaSuccess;
  for (int i = 0; i < calls && launched == cudaSuccess; ++i) {
    launched = mk::launch_align(p, plan, stream);
  }
  cudaGraph_t raw = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &raw);
  const md::Graph graph(raw);
  MOE_DISPATCH_CUDA_CHECK(launched);
  MOE_DISPATCH_CUDA_CHECK(ended);
  return md::detail::instantiate_uploaded(graph.get(), stream);
}

// The calls `enqueue` makes on `stream`, captured in one graph and instantiated, not uploaded (as
// dispatch_bench times its graph column).
template <typename Enqueue>
md::GraphExec capture_not_uploaded(Enqueue&& enqueue, cudaStream_t stream) {
  MOE_DISPATCH_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  enqueue();
  cudaGraph_t raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaStreamEndCapture(stream, &raw));
  const md::Graph graph(raw);
  cudaGraphExec_t exec_raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphInstantiate(&exec_raw, graph.get(), 0));
  return md::GraphExec(exec_raw);
}

// Per call: the median over 15 samples of `per_sample` launches of `exec` (a graph of `calls`
// alignments), after `per_sample` launches of warm-up.
double median_graph_us(const md::GraphExec& exec, int calls, int per_sample, cudaStream_t stream) {
  const md::Event start = md::make_event(true);
  const md::Event stop = md::make_event(true);
  for (int i = 0; i < per_sample; ++i) MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec.get(), stream));
  std::vector<double> samples;
  for (int t = 0; t < 15; ++t) {
    MOE_DISPATCH_CUDA_CHECK(cudaEventRecord(start.get(), stream));
    for (int i = 0; i < per_sample; ++i)
      MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec.get(), stream));
    MOE_DISPATCH_CUDA_CHECK(cudaEventRecord(stop.get(), stream));
    MOE_DISPATCH_CUDA_CHECK(cudaEventSynchronize(stop.get()));
    float ms = 0;
    MOE_DISPATCH_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
    samples.push_back(1000.0 * ms / (calls * per_sample));
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

double graph_us(const mk::AlignParams& p, const mk::AlignPlan& plan, cudaStream_t stream) {
  constexpr int kCalls = 100;
  return median_graph_us(capture_align(p, plan, kCalls, stream), kCalls, 1, stream);
}

// GPU time per replay of one alignment captured as a one-node graph (queued, so the host's submit
// time is not in it), as a DispatchStage bucket replays it.
double replay_us(const mk::AlignParams& p, const mk::AlignPlan& plan, cudaStream_t stream) {
  const md::GraphExec exec = capture_align(p, plan, 1, stream);
  return md::bench::queued_us_per_call(
      stream, 15, 64, [&] { MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec.get(), stream)); });
}

// The parameters with the count as a kernel parameter, as DispatchStage::run() passes it.
mk::AlignParams with_host_count(mk::AlignParams p, int tokens) {
  p.num_tokens = nullptr;
  p.host_num_tokens = tokens;
  return p;
}

// The parameters of one alignment over the given buffers (post: the post-pad count, then the
// counters), the count read from `count`.
mk::AlignParams align_params(const Shape& s, int tokens, const std::int32_t* input,
                             const std::int32_t* count, std::int32_t* post, std::int32_t* sorted,
                             std::int32_t* blocks, std::int32_t* scratch) {
  mk::AlignParams p;
  p.topk_ids = input;
  p.num_tokens = count;
  p.sorted_token_ids = sorted;
  p.expert_ids = blocks;
  p.num_tokens_post_pad = post;
  p.counters = post + 1;
  p.scratch = scratch;
  p.num_experts = s.experts;
  p.top_k = s.top_k;
  p.block_size = s.block;
  p.max_tokens = tokens;
  return p;
}

// Device buffers and parameters for one shape and token count, with distinct_routing().
struct Point {
  md::DeviceBuffer<std::int32_t> input, count, post, sorted, blocks, scratch;
  mk::AlignParams params;

  Point(int experts, int top_k, int block, int tokens, std::size_t scratch_ints, std::mt19937& rng)
      : input(static_cast<std::size_t>(tokens) * top_k),
        count(1),
        post(4),
        sorted(static_cast<std::size_t>(md::sorted_capacity(
            md::AlignShape{experts, top_k, block, false}, std::int64_t{tokens} * top_k))),
        blocks(static_cast<std::size_t>(md::expert_ids_capacity(
            md::AlignShape{experts, top_k, block, false}, std::int64_t{tokens} * top_k))),
        scratch(std::max<std::size_t>(scratch_ints, 1)) {
    const std::vector<std::int32_t> ids = md::bench::distinct_routing(tokens, top_k, experts, rng);
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemcpy(input.get(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(count.get(), &tokens, 4, cudaMemcpyHostToDevice));
    params = align_params({experts, top_k, block}, tokens, input.get(), count.get(), post.get(),
                          sorted.get(), blocks.get(), scratch.get());
  }

  // The same buffers for align_async(), the count read from `count`.
  md::AlignBuffersView view() const {
    md::AlignBuffersView v;
    v.topk_ids = input.get();
    v.num_tokens = count.get();
    v.sorted_token_ids = sorted.get();
    v.expert_ids = blocks.get();
    v.num_tokens_post_pad = post.get();
    v.scratch = scratch.get();
    return v;
  }
};

// How `variant_bench shapes` marks a clustered shape's exchange ("" for the cluster barrier).
const char* exchange_suffix(mk::ClusterExchange exchange) {
  switch (exchange) {
    case mk::ClusterExchange::kReleased:
      return " (released)";
    case mk::ClusterExchange::kBarrier:
      break;
  }
  return "";
}

// variant_bench shapes: every small-variant block and cluster shape that holds the step (with at
// most four times its slots), per shape and slot count: kernel time in a graph of 100 calls
// (count in device memory) and GPU time per one-node replay (count as a parameter).
int sweep_small_shapes(cudaStream_t stream) {
  std::mt19937 rng(9);
  std::printf(
      "| E | top_k | B | numel | threads x items x cluster | grid | µs | replay µs |\n"
      "|---|---|---|---|---|---|---|---|\n");
  for (const Shape& s : kSweepShapes) {
    for (std::int64_t numel = 128; numel <= mk::kSmallMaxNumel; numel *= 2) {
      const int tokens = static_cast<int>(numel / s.top_k);
      Point point(s.experts, s.top_k, s.block, tokens, 0, rng);
      for (const mk::SmallShape& shape : mk::kSmallShapes) {
        if (shape.capacity() < numel || shape.capacity() > 4 * numel) continue;
        const mk::AlignPlan plan = mk::small_plan(numel, s.experts, s.block, shape);
        std::printf("| %d | %d | %d | %lld | %d x %d x %d%s%s%s | %d | %.2f | %.2f |\n", s.experts,
                    s.top_k, s.block, static_cast<long long>(numel), shape.threads, shape.items,
                    shape.cluster, shape.fill > 0 ? " + fill " : "",
                    shape.fill > 0 ? std::to_string(shape.fill).c_str() : "",
                    exchange_suffix(shape.exchange), plan.grid,
                    graph_us(point.params, plan, stream),
                    replay_us(with_host_count(point.params, tokens), plan, stream));
      }
    }
  }
  return 0;
}

// variant_bench planned: the planner's plan at every shape and slot count of the sweeps, kernel
// time in a graph of 100 calls (count in device memory) and GPU time per one-node replay (count as
// a kernel parameter): the short table to compare builds with.
int sweep_planned(cudaStream_t stream) {
  const std::int64_t numels[] = {8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384};
  std::mt19937 rng(17);
  std::printf(
      "| E | top_k | B | numel | variant | threads x items x cluster + fill | grid | kernels "
      "| µs | replay µs |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Shape& s : kSweepShapes) {
    for (const std::int64_t numel : numels) {
      if (numel % s.top_k != 0) continue;
      const int tokens = static_cast<int>(numel / s.top_k);
      const mk::AlignPlan plan = mk::plan_align(numel, s.experts, s.block);
      Point point(s.experts, s.top_k, s.block, tokens, mk::align_scratch_ints(plan, s.experts),
                  rng);
      const char* variant = plan.variant == mk::AlignVariant::kTiny
                                ? "tiny"
                                : (plan.variant == mk::AlignVariant::kSmall ? "small" : "large");
      std::printf("| %d | %d | %d | %lld | %s | %d x %d x %d + %d | %d | %d | %.2f | %.2f |\n",
                  s.experts, s.top_k, s.block, static_cast<long long>(numel), variant, plan.threads,
                  plan.items, plan.cluster, plan.fill_threads, plan.grid, plan.kernels,
                  graph_us(point.params, plan, stream),
                  replay_us(with_host_count(point.params, tokens), plan, stream));
    }
  }
  return 0;
}

// variant_bench exchange: the planner's clustered small plans with each way the blocks of a
// cluster exchange their totals (mk::ClusterExchange), kernel time in a graph of 100 calls (count
// in device memory) and GPU time per one-node replay (count as a kernel parameter), in two rounds.
int sweep_exchanges(cudaStream_t stream) {
  const std::int64_t numels[] = {1024, 2048, 4096, 8192, 16384};
  constexpr mk::ClusterExchange kExchanges[] = {mk::ClusterExchange::kBarrier,
                                                mk::ClusterExchange::kReleased};
  std::mt19937 rng(23);
  std::printf(
      "| E | top_k | B | numel | threads x items x cluster | round | barrier µs | released µs | "
      "barrier replay µs | released replay µs |\n|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Shape& s : kSweepShapes) {
    for (const std::int64_t numel : numels) {
      if (numel % s.top_k != 0) continue;
      const mk::AlignPlan planned = mk::plan_align(numel, s.experts, s.block);
      if (planned.variant != mk::AlignVariant::kSmall || planned.cluster == 1) continue;
      const int tokens = static_cast<int>(numel / s.top_k);
      Point point(s.experts, s.top_k, s.block, tokens, 0, rng);
      for (int round = 1; round <= 2; ++round) {
        double kernel[std::size(kExchanges)];
        double replay[std::size(kExchanges)];
        for (std::size_t i = 0; i < std::size(kExchanges); ++i) {
          const mk::AlignPlan plan =
              mk::small_plan(numel, s.experts, s.block,
                             mk::SmallShape{planned.threads, planned.items, planned.cluster,
                                            planned.fill_threads, kExchanges[i]});
          kernel[i] = graph_us(point.params, plan, stream);
          replay[i] = replay_us(with_host_count(point.params, tokens), plan, stream);
        }
        std::printf("| %d | %d | %d | %lld | %d x %d x %d | %d |", s.experts, s.top_k, s.block,
                    static_cast<long long>(numel), planned.threads, planned.items, planned.cluster,
                    round);
        for (const double us : kernel) std::printf(" %.2f |", us);
        for (const double us : replay) std::printf(" %.2f |", us);
        std::printf("\n");
      }
    }
  }
  return 0;
}

// variant_bench large: the large variant at 2, 4 and 8 slots per thread, each with two kernels
// (the scatter kernel adds up the cluster totals) and three (a prefix kernel scans them first),
// and the planner's choice.
int sweep_large_kernels(cudaStream_t stream) {
  const Shape shapes[] = {{8, 2, 64},   {64, 2, 128},   {128, 8, 64},  {256, 8, 64},
                          {512, 8, 64}, {1024, 8, 128}, {2048, 8, 64}, {4096, 8, 64}};
  const int token_counts[] = {1024, 4096, 8192, 16384, 32768, 65536};
  std::mt19937 rng(11);
  std::printf("| E | top_k | B | tokens | numel | planner (slots x kernels) |");
  std::printf(" 2 x 2 | 2 x 3 | 4 x 2 | 4 x 3 | 8 x 2 | 8 x 3 |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Shape& s : shapes) {
    for (const int tokens : token_counts) {
      const std::int64_t numel = std::int64_t{tokens} * s.top_k;
      const mk::AlignPlan chosen =
          mk::plan_align(numel, s.experts, s.block, mk::AlignVariant::kLarge);
      // Two slots per thread have the largest grid, hence the most scratch.
      const mk::AlignPlan widest = mk::large_plan(numel, s.experts, s.block, 3, 2);
      Point point(s.experts, s.top_k, s.block, tokens, mk::align_scratch_ints(widest, s.experts),
                  rng);
      std::printf("| %d | %d | %d | %d | %lld | %d x %d |", s.experts, s.top_k, s.block, tokens,
                  static_cast<long long>(numel), chosen.items, chosen.kernels);
      for (const int items : {2, 4, 8}) {
        for (const int kernels : {2, 3}) {
          const mk::AlignPlan plan = mk::large_plan(numel, s.experts, s.block, kernels, items);
          std::printf(" %.2f |", graph_us(point.params, plan, stream));
        }
      }
      std::printf("\n");
    }
  }
  return 0;
}

// variant_bench grids: the one-kernel plans (tiny, small without clusters, then small in
// clusters, by whole clusters) at other grids than planned, each replayed as a one-node graph (GPU
// time per replay, queued), as a DispatchStage bucket replays it. A replay pays for every block of
// the grid, idle ones too, while more blocks share the fill of the outputs (numel + E * (B - 1)
// entries).
int sweep_one_kernel_grids(const std::vector<Shape>& shapes, cudaStream_t stream) {
  const std::int64_t numels[] = {8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384};
  // Grids of the plans without clusters, and clusters per grid of the clustered ones.
  const int grids[] = {1, 2, 3, 5, 9, 17, 33, 65, 128};
  const int clusters[] = {1, 2, 3, 4, 6, 8, 12, 16};
  std::mt19937 rng(13);
  // One table per kind of plan: rows of `grids` blocks or of `clusters` whole clusters.
  const auto table = [&](bool clustered, const auto& sizes) {
    std::printf(clustered ? "\n| E | top_k | B | numel | shape | count | planned clusters | µs per "
                            "replay at clusters"
                          : "| E | top_k | B | numel | variant | count | planned grid | µs per "
                            "replay at grid");
    for (const int g : sizes) std::printf(" %d |", g);
    std::printf("\n|---|---|---|---|---|---|---|---|");
    for (std::size_t i = 1; i < std::size(sizes); ++i) std::printf("---|");
    std::printf("\n");
    for (const Shape& s : shapes) {
      for (const std::int64_t numel : numels) {
        if (numel % s.top_k != 0) continue;
        const mk::AlignPlan planned = mk::plan_align(numel, s.experts, s.block);
        if (planned.kernels != 1 || (planned.cluster > 1) != clustered) continue;
        const int tokens = static_cast<int>(numel / s.top_k);
        Point point(s.experts, s.top_k, s.block, tokens, 0, rng);
        // The count as a kernel parameter (a DispatchStage's run()) and read from device memory
        // (run_device_count()): the kernel waits for the latter, which hides more of the fill.
        for (const bool device_count : {false, true}) {
          const mk::AlignParams params =
              device_count ? point.params : with_host_count(point.params, tokens);
          const std::string shape =
              clustered ? std::to_string(planned.threads) + " x " + std::to_string(planned.items) +
                              " x " + std::to_string(planned.cluster)
                        : (planned.variant == mk::AlignVariant::kTiny ? "tiny" : "small");
          std::printf("| %d | %d | %d | %lld | %s | %s | %d |", s.experts, s.top_k, s.block,
                      static_cast<long long>(numel), shape.c_str(),
                      device_count ? "device" : "host",
                      clustered ? planned.grid / planned.cluster : planned.grid);
          for (const int size : sizes) {
            mk::AlignPlan plan = planned;
            plan.grid = clustered ? size * planned.cluster : size;
            if (plan.grid > 128) {
              std::printf(" |");
              continue;
            }
            std::printf(" %.2f |", replay_us(params, plan, stream));
          }
          std::printf("\n");
        }
      }
    }
  };
  table(false, grids);
  table(true, clusters);
  return 0;
}

// The points the placement and state probes measure: where dispatch_bench and variant_bench
// measured the same plans apart, and three where they agreed.
struct Probe {
  Shape shape;
  int tokens;
};
constexpr Probe kProbes[] = {{{256, 8, 64}, 256}, {{128, 8, 64}, 256}, {{64, 2, 128}, 1024},
                             {{64, 2, 64}, 1024}, {{8, 2, 64}, 1024},  {{256, 8, 64}, 1},
                             {{128, 8, 64}, 8},   {{256, 8, 64}, 64},  {{256, 8, 64}, 512}};

// Buffers (this tool's ids, drawn from rng) and the planner's plan for each probe.
void probe_points(const std::vector<Probe>& probes, std::mt19937& rng, std::vector<Point>& points,
                  std::vector<mk::AlignPlan>& plans) {
  for (const Probe& pr : probes) {
    const std::int64_t numel = std::int64_t{pr.tokens} * pr.shape.top_k;
    plans.push_back(mk::plan_align(numel, pr.shape.experts, pr.shape.block));
    points.emplace_back(pr.shape.experts, pr.shape.top_k, pr.shape.block, pr.tokens, 0, rng);
  }
}

// variant_bench placement: the planner's plan at a few points with the same ids and outputs laid
// out six ways in device memory, kernel time in a graph of 100 calls (count in device memory) and
// GPU time per one-node replay (count as a parameter), rounds interleaved.
int sweep_placement(cudaStream_t stream) {
  const auto& probes = kProbes;
  const char* names[] = {"separate",  "arena",        "arena 2M",
                         "spread 2M", "sorted at 2M", "after 256M"};
  constexpr std::size_t kTwoMiB = std::size_t{1} << 21;
  const auto up = [](std::size_t v, std::size_t a) { return (v + a - 1) / a * a; };
  std::mt19937 rng(21);
  std::printf(
      "| E | top_k | B | tokens | layout | input | sorted | expert_ids | post | µs r1 | "
      "µs r2 | µs r3 | replay r1 | replay r2 | replay r3 |\n|---|---|---|---|---|---|---|"
      "---|---|---|---|---|---|---|---|\n");
  for (const Probe& pr : probes) {
    const Shape& s = pr.shape;
    const std::int64_t numel = std::int64_t{pr.tokens} * s.top_k;
    const mk::AlignPlan plan = mk::plan_align(numel, s.experts, s.block);
    const std::vector<std::int32_t> ids =
        md::bench::distinct_routing(pr.tokens, s.top_k, s.experts, rng);
    const md::AlignShape ashape{s.experts, s.top_k, s.block, false};
    const std::size_t in_b = up(ids.size() * 4, 256);
    const std::size_t sorted_b =
        up(static_cast<std::size_t>(md::sorted_capacity(ashape, numel)) * 4, 256);
    const std::size_t blocks_b =
        up(static_cast<std::size_t>(md::expert_ids_capacity(ashape, numel)) * 4, 256);
    const std::size_t small_b = 256;  // count and post pad with the counters
    struct Layout {
      std::vector<md::DeviceBuffer<char>> owners;
      char *input, *count, *post, *sorted, *blocks;
      mk::AlignParams params;
    };
    std::vector<Layout> layouts(std::size(names));
    for (std::size_t l = 0; l < layouts.size(); ++l) {
      Layout& L = layouts[l];
      const auto alloc = [&](std::size_t bytes) {
        L.owners.emplace_back(bytes);
        return L.owners.back().get();
      };
      if (l == 0 || l == 5) {
        if (l == 5) alloc(std::size_t{256} << 20);
        L.input = alloc(in_b);
        L.count = alloc(small_b);
        L.post = alloc(small_b);
        L.sorted = alloc(sorted_b);
        L.blocks = alloc(blocks_b);
      } else if (l == 3) {
        L.input = alloc(up(in_b, kTwoMiB));
        L.count = alloc(kTwoMiB);
        L.post = alloc(kTwoMiB);
        L.sorted = alloc(up(sorted_b, kTwoMiB));
        L.blocks = alloc(up(blocks_b, kTwoMiB));
      } else {
        const std::size_t total = 2 * small_b + in_b + sorted_b + blocks_b;
        char* base = alloc(total + 3 * kTwoMiB);
        if (l != 1)
          base = reinterpret_cast<char*>(up(reinterpret_cast<std::uintptr_t>(base), kTwoMiB));
        std::size_t at = 0;
        L.count = base + at;
        L.post = base + at + 128;
        at += small_b;
        L.input = base + at;
        at += in_b;
        if (l == 4) at = std::max(at, kTwoMiB - sorted_b / 2 / 256 * 256);
        L.sorted = base + at;
        at += sorted_b;
        L.blocks = base + at;
      }
      MOE_DISPATCH_CUDA_CHECK(
          cudaMemcpy(L.input, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
      MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(L.count, &pr.tokens, 4, cudaMemcpyHostToDevice));
      const auto ints = [](char* q) { return reinterpret_cast<std::int32_t*>(q); };
      L.params = align_params(s, pr.tokens, ints(L.input), ints(L.count), ints(L.post),
                              ints(L.sorted), ints(L.blocks), nullptr);
    }
    double us[std::size(names)][3], rep[std::size(names)][3];
    for (int r = 0; r < 3; ++r) {
      for (std::size_t l = 0; l < layouts.size(); ++l) {
        us[l][r] = graph_us(layouts[l].params, plan, stream);
        rep[l][r] = replay_us(with_host_count(layouts[l].params, pr.tokens), plan, stream);
      }
    }
    // The first layout timed as dispatch_bench times its graph column: the same graph of 100
    // calls, not uploaded, launched 10 times per sample after 10 launches of warm-up.
    {
      const mk::AlignParams& p0 = layouts[0].params;
      const md::GraphExec exec = capture_not_uploaded(
          [&] {
            for (int i = 0; i < 100; ++i)
              MOE_DISPATCH_CUDA_CHECK(mk::launch_align(p0, plan, stream));
          },
          stream);
      for (int per : {1, 10}) {
        std::printf("(separate, not uploaded, %d launches per sample: %.2f)\n", per,
                    median_graph_us(exec, 100, per, stream));
      }
    }
    const auto mod = [](const char* q) {
      return static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(q) % kTwoMiB);
    };
    for (std::size_t l = 0; l < layouts.size(); ++l) {
      const Layout& L = layouts[l];
      std::printf(
          "| %d | %d | %d | %d | %s | %p (%llx) | %p (%llx) | %p (%llx) | %p | %.2f | %.2f | "
          "%.2f | %.2f | %.2f | %.2f |\n",
          s.experts, s.top_k, s.block, pr.tokens, names[l], static_cast<void*>(L.input),
          mod(L.input), static_cast<void*>(L.sorted), mod(L.sorted), static_cast<void*>(L.blocks),
          mod(L.blocks), static_cast<void*>(L.post), us[l][0], us[l][1], us[l][2], rep[l][0],
          rep[l][1], rep[l][2]);
    }
  }
  return 0;
}

// variant_bench state: the planner's plan at a few points, kernel time in a graph of 100 calls,
// measured fresh and again after each of a series of things a benchmark process does before.
int sweep_state(cudaStream_t stream) {
  // The first six points (the table's columns).
  const std::vector<Probe> probes(std::begin(kProbes), std::begin(kProbes) + 6);
  std::mt19937 rng(21);
  std::vector<Point> points;
  std::vector<mk::AlignPlan> plans;
  probe_points(probes, rng, points, plans);
  const auto measure = [&](const char* state) {
    std::printf("| %s |", state);
    for (std::size_t i = 0; i < points.size(); ++i)
      std::printf(" %.2f |", graph_us(points[i].params, plans[i], stream));
    std::printf("\n");
  };
  std::printf(
      "| state | 256x8x64 @256 | 128x8x64 @256 | 64x2x128 @1024 | 64x2x64 @1024 | "
      "8x2x64 @1024 | 256x8x64 @1 |\n|---|---|---|---|---|---|---|\n");
  measure("fresh");
  measure("fresh again");
  {
    const mk::AlignPlan big = mk::plan_align(16384 * 8, 256, 64);
    Point large(256, 8, 64, 16384, mk::align_scratch_ints(big, 256), rng);
    for (int i = 0; i < 3000; ++i)
      MOE_DISPATCH_CUDA_CHECK(mk::launch_align(large.params, big, stream));
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  measure("after 3000 large-variant launches (16384x256x8)");
  const auto stage_once = [&](int experts, int top_k, int block, int tokens) {
    md::DispatchConfig cfg;
    cfg.num_experts = experts;
    cfg.top_k = top_k;
    cfg.block_size = block;
    cfg.buckets = {tokens};
    cfg.log = false;
    md::DispatchStage stage(cfg);
    for (int i = 0; i < 1000; ++i) stage.run(tokens, stream);
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
  };
  stage_once(8, 2, 64, 1024);
  measure("after one DispatchStage (8x2x64, 1024 tokens), 1000 runs, destroyed");
  stage_once(256, 8, 64, 16384);
  measure("after one DispatchStage (256x8x64, 16384 tokens), 1000 runs, destroyed");
  for (int k = 0; k < 10; ++k) stage_once(64, 2, 64, 1 << k);
  measure("after 10 more DispatchStages");
  {
    std::vector<md::Stream> streams;
    for (int k = 0; k < 64; ++k) streams.push_back(md::make_stream());
  }
  measure("after 64 streams created and destroyed");
  // What slows the later points of dispatch_bench kernels' walk (docs/BENCHMARKS.md, 2026-12-04):
  // the eager calls at its first two shapes, 3200 align_async() per point on the walk's ids.
  for (const md::bench::GridShape& g : {md::bench::kGridShapes[0], md::bench::kGridShapes[1]}) {
    for (const int tokens : md::bench::kGridTokens) {
      const md::AlignShape shape{g.experts, g.top_k, g.block, false};
      const mk::AlignPlan plan = mk::plan_align(std::int64_t{tokens} * g.top_k, g.experts, g.block);
      Point point(g.experts, g.top_k, g.block, tokens, mk::align_scratch_ints(plan, g.experts),
                  rng);
      const std::vector<std::int32_t> ids =
          md::bench::grid_routing(g.experts, g.top_k, g.block, tokens);
      MOE_DISPATCH_CUDA_CHECK(
          cudaMemcpy(point.input.get(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
      const md::AlignBuffersView view = point.view();
      for (int k = 0; k < 3200; ++k) md::align_async(shape, tokens, view, stream);
      MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
  }
  measure("after dispatch_bench's eager calls at its first two shapes (14 x 3200)");
  measure("again");
  return 0;
}

// variant_bench gap: the points where dispatch_bench kernels measured the planner's plans
// ~0.16 us slower than this tool, and one where the two agreed; kernel time in a graph of 100
// calls each way the two programs' graph columns differ, in three interleaved rounds: on this
// tool's ids; on the ids dispatch_bench draws for the point; on those after the eager calls
// dispatch_bench makes before its graph (3200 launches, its eager column's); and, on them still,
// 100 align_async() calls captured as dispatch_bench captures them (the public entry point, not
// launch_align()), not uploaded, 10 launches per sample.
int sweep_gap(cudaStream_t stream) {
  const std::vector<Probe> probes(std::begin(kProbes), std::begin(kProbes) + 5);
  std::mt19937 rng(21);
  std::vector<Point> points;
  std::vector<mk::AlignPlan> plans;
  probe_points(probes, rng, points, plans);
  std::vector<std::vector<std::int32_t>> own_ids, grid_ids;
  for (std::size_t i = 0; i < probes.size(); ++i) {
    const Shape& s = probes[i].shape;
    own_ids.emplace_back(points[i].input.size());
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(own_ids.back().data(), points[i].input.get(),
                                       points[i].input.bytes(), cudaMemcpyDeviceToHost));
    grid_ids.push_back(md::bench::grid_routing(s.experts, s.top_k, s.block, probes[i].tokens));
  }
  const auto load = [](Point& point, const std::vector<std::int32_t>& ids) {
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemcpy(point.input.get(), ids.data(), point.input.bytes(), cudaMemcpyHostToDevice));
  };
  std::printf(
      "| E | top_k | B | tokens | round | own ids µs | dispatch_bench's ids µs | after 3200 eager "
      "µs | align_async graph µs |\n|---|---|---|---|---|---|---|---|---|\n");
  for (int round = 1; round <= 3; ++round) {
    for (std::size_t i = 0; i < points.size(); ++i) {
      Point& point = points[i];
      const mk::AlignPlan& plan = plans[i];
      const Shape& s = probes[i].shape;
      const int tokens = probes[i].tokens;
      load(point, own_ids[i]);
      const double own = graph_us(point.params, plan, stream);
      load(point, grid_ids[i]);
      const double grid = graph_us(point.params, plan, stream);
      for (int k = 0; k < 3200; ++k)
        MOE_DISPATCH_CUDA_CHECK(mk::launch_align(point.params, plan, stream));
      MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
      const double after_eager = graph_us(point.params, plan, stream);
      const md::AlignShape shape{s.experts, s.top_k, s.block, false};
      const md::AlignBuffersView view = point.view();
      const md::GraphExec exec = capture_not_uploaded(
          [&] {
            for (int k = 0; k < 100; ++k) md::align_async(shape, tokens, view, stream);
          },
          stream);
      const double public_path = median_graph_us(exec, 100, 10, stream);
      std::printf("| %d | %d | %d | %d | %d | %.2f | %.2f | %.2f | %.2f |\n", s.experts, s.top_k,
                  s.block, tokens, round, own, grid, after_eager, public_path);
    }
  }
  return 0;
}
}  // namespace

// Usage: variant_bench [E TOP_K B TOKENS | shapes | planned | exchange | placement | state | gap |
// large | grids [E TOP_K B]]  (one point, e.g. under a profiler; the small variant's shapes; the
// planner's plans; the planner's clustered plans with each exchange; the planner's plans over six
// layouts of their buffers, after what a benchmark process does before, and each way
// dispatch_bench's graph column differs from this tool's; the large variant's two- and three-kernel
// forms; the one-kernel plans' grids per replay, for every shape or one; default: the crossover
// grid)
int main(int argc, char** argv) {
  const auto usage = [] {
    std::fprintf(
        stderr,
        "usage: variant_bench [E TOP_K B TOKENS | shapes | planned | exchange | placement | "
        "state | gap | "
        "large | "
        "grids [E TOP_K B]] "
        "(positive integers)\n");
    return 2;
  };
  // A shape argument: a positive integer, else 0.
  const auto positive = [](const char* text) {
    char* end = nullptr;
    const long value = std::strtol(text, &end, 10);
    return (*end != '\0' || value < 1 || value > 1 << 30) ? 0 : static_cast<int>(value);
  };
  // E, top_k and B from three arguments; experts 0 when any is not a positive integer.
  const auto shape_at = [&](char** args) {
    const Shape shape{positive(args[0]), positive(args[1]), positive(args[2])};
    return (shape.top_k == 0 || shape.block == 0) ? Shape{0, 0, 0} : shape;
  };
  // The sweeps that take no arguments.
  const struct {
    const char* name;
    int (*sweep)(cudaStream_t);
  } sweeps[] = {{"shapes", sweep_small_shapes}, {"planned", sweep_planned},
                {"exchange", sweep_exchanges},  {"placement", sweep_placement},
                {"state", sweep_state},         {"gap", sweep_gap},
                {"large", sweep_large_kernels}};
  for (const auto& mode : sweeps) {
    if (argc == 2 && std::string(argv[1]) == mode.name) {
      const md::Stream stream = md::make_stream();
      return mode.sweep(stream.get());
    }
  }
  if (argc >= 2 && std::string(argv[1]) == "grids") {
    std::vector<Shape> shapes(std::begin(kSweepShapes), std::end(kSweepShapes));
    shapes.push_back({2048, 8, 64});
    if (argc != 2 && argc != 5) return usage();
    if (argc == 5) {
      shapes = {shape_at(argv + 2)};
      if (shapes[0].experts == 0) return usage();
    }
    const md::Stream stream = md::make_stream();
    return sweep_one_kernel_grids(shapes, stream.get());
  }
  std::vector<Shape> shapes(std::begin(kSweepShapes), std::end(kSweepShapes));
  std::vector<int> token_counts{1, 2, 4, 8, 16, 64, 256, 512, 1024, 2048, 4096, 16384};
  if (argc != 1 && argc != 5) return usage();
  if (argc == 5) {
    shapes = {shape_at(argv + 1)};
    token_counts = {positive(argv[4])};
    if (shapes[0].experts == 0 || token_counts[0] == 0) return usage();
  }
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(5);
  std::printf(
      "| E | top_k | B | tokens | numel | tiny µs | small µs (grid) | large µs "
      "|\n|---|---|---|---|---|---|---|---|\n");
  for (const Shape& s : shapes) {
    for (const int tokens : token_counts) {
      const std::int64_t numel = std::int64_t{tokens} * s.top_k;
      const mk::AlignPlan tiny = mk::plan_align(numel, s.experts, s.block, mk::AlignVariant::kTiny);
      const mk::AlignPlan small =
          mk::plan_align(numel, s.experts, s.block, mk::AlignVariant::kSmall);
      const mk::AlignPlan large =
          mk::plan_align(numel, s.experts, s.block, mk::AlignVariant::kLarge);
      Point point(s.experts, s.top_k, s.block, tokens, mk::align_scratch_ints(large, s.experts),
                  rng);
      const mk::AlignParams& p = point.params;
      const bool small_fits = numel <= mk::kSmallMaxNumel && s.experts <= mk::kSmallMaxExperts;
      const bool tiny_fits = numel <= mk::kTinyMaxNumel;
      std::printf("| %d | %d | %d | %d | %lld | %.2f | %.2f (%d) | %.2f |\n", s.experts, s.top_k,
                  s.block, tokens, static_cast<long long>(numel),
                  tiny_fits ? graph_us(p, tiny, stream.get()) : 0.0,
                  small_fits ? graph_us(p, small, stream.get()) : 0.0, small.grid,
                  graph_us(p, large, stream.get()));
    }
  }
  return 0;
}
