// variant_bench: the measurement behind plan_align()'s choice between the small and the large
// variant. A tuning tool over the internal kernels (not public API): per shape and token count,
// each variant's kernel time with 100 calls captured in one graph (medians of 15 replays).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/align.hpp"
#include "kernels/align_variants.hpp"
#include "moe_dispatch/align.hpp"
#include "moe_dispatch/cuda_raii.hpp"
#include "moe_dispatch/errors.hpp"

namespace md = moe_dispatch;
namespace mk = moe_dispatch::kernels;

namespace {

double graph_us(const mk::AlignParams& p, const mk::AlignPlan& plan, cudaStream_t stream) {
  constexpr int kCalls = 100;
  MOE_DISPATCH_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kCalls; ++i) MOE_DISPATCH_CUDA_CHECK(mk::launch_align(p, plan, stream));
  cudaGraph_t raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaStreamEndCapture(stream, &raw));
  md::Graph graph(raw);
  cudaGraphExec_t exec_raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphInstantiate(&exec_raw, graph.get(), 0));
  md::GraphExec exec(exec_raw);
  const md::Event start = md::make_event(true);
  const md::Event stop = md::make_event(true);
  MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec.get(), stream));
  std::vector<double> samples;
  for (int t = 0; t < 15; ++t) {
    MOE_DISPATCH_CUDA_CHECK(cudaEventRecord(start.get(), stream));
    MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec.get(), stream));
    MOE_DISPATCH_CUDA_CHECK(cudaEventRecord(stop.get(), stream));
    MOE_DISPATCH_CUDA_CHECK(cudaEventSynchronize(stop.get()));
    float ms = 0;
    MOE_DISPATCH_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
    samples.push_back(1000.0 * ms / kCalls);
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

}  // namespace

// Usage: variant_bench [E TOP_K B TOKENS]  (one point, e.g. under a profiler; default: the grid)
int main(int argc, char** argv) {
  struct Shape {
    int experts, top_k, block;
  };
  std::vector<Shape> shapes{{8, 2, 64}, {64, 2, 128}, {128, 8, 64}, {256, 8, 64}, {1024, 8, 128}};
  std::vector<int> token_counts{1, 2, 4, 8, 16, 64, 256, 512, 1024, 2048};
  if (argc == 5) {
    shapes = {{std::atoi(argv[1]), std::atoi(argv[2]), std::atoi(argv[3])}};
    token_counts = {std::atoi(argv[4])};
  }
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(5);
  std::printf(
      "| E | top_k | B | tokens | numel | tiny µs | small µs (grid) | large µs "
      "|\n|---|---|---|---|---|---|---|---|\n");
  for (const Shape& s : shapes) {
    for (const int tokens : token_counts) {
      const std::int64_t numel = std::int64_t{tokens} * s.top_k;
      const md::AlignShape shape{s.experts, s.top_k, s.block, false};
      std::vector<std::int32_t> ids(static_cast<std::size_t>(numel));
      std::uniform_int_distribution<int> pick(0, s.experts - 1);
      for (auto& id : ids) id = pick(rng);
      const mk::AlignPlan tiny = mk::plan_align(numel, s.experts, s.block, mk::AlignVariant::kTiny);
      const mk::AlignPlan small =
          mk::plan_align(numel, s.experts, s.block, mk::AlignVariant::kSmall);
      const mk::AlignPlan large =
          mk::plan_align(numel, s.experts, s.block, mk::AlignVariant::kLarge);
      md::DeviceBuffer<std::int32_t> input(ids.size()), count(1), post(4);
      md::DeviceBuffer<std::int32_t> sorted(
          static_cast<std::size_t>(md::sorted_capacity(shape, numel)));
      md::DeviceBuffer<std::int32_t> blocks(
          static_cast<std::size_t>(md::expert_ids_capacity(shape, numel)));
      md::DeviceBuffer<std::int32_t> scratch(mk::align_scratch_ints(large, s.experts));
      MOE_DISPATCH_CUDA_CHECK(
          cudaMemcpy(input.get(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
      MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(count.get(), &tokens, 4, cudaMemcpyHostToDevice));
      mk::AlignParams p;
      p.topk_ids = input.get();
      p.num_tokens = count.get();
      p.sorted_token_ids = sorted.get();
      p.expert_ids = blocks.get();
      p.num_tokens_post_pad = post.get();
      p.counters = post.get() + 1;
      p.scratch = scratch.get();
      p.num_experts = s.experts;
      p.top_k = s.top_k;
      p.block_size = s.block;
      p.max_tokens = tokens;
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
