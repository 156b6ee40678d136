// The process state the benchmarks measure in. Once a CUDA context has run enough work on two
// streams, every kernel node of a graph launched afterwards takes about 0.18 us more on the H100
// (an empty kernel 0.81 -> 0.99 us per node of a graph of 100), whatever the kernel, the graph's
// stream and its priority, or the graph's instantiation flags, and nothing measured leaves the
// state; a process that has run work on one stream only does not pay it (docs/BENCHMARKS.md,
// 2026-12-06). What is enough was not isolated: one memset on each of two streams was not; 3200
// memsets or eager kernel launches on one stream and then on another were, and so was an earlier
// benchmark walk after a dozen points. An engine's process runs work on many streams, so
// dispatch_bench and floor_bench enter the state on purpose before the figures that stand for an
// engine's, and measure the one-stream state first where they report it too.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "moe_dispatch/cuda_raii.hpp"
#include "moe_dispatch/errors.hpp"

namespace moe_dispatch::bench {

// 3200 memsets of 1 MiB on one stream, then as many on a second one after the first is gone,
// each waited for: the sequence that entered the state in the 2026-12-06 probes (one memset on
// each of two streams did not).
inline void run_work_on_two_streams() {
  constexpr std::size_t kBytes = std::size_t{1} << 20;
  constexpr int kMemsets = 3200;
  const DeviceBuffer<char> buffer(kBytes);
  for (int stream_index = 0; stream_index < 2; ++stream_index) {
    const Stream stream = make_stream();
    for (int i = 0; i < kMemsets; ++i) {
      MOE_DISPATCH_CUDA_CHECK(cudaMemsetAsync(buffer.get(), 0, kBytes, stream.get()));
    }
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  }
}

}  // namespace moe_dispatch::bench
