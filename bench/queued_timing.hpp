// GPU time per call with the host taken out: the calls are enqueued while a host function holds
// the stream, so once it returns the GPU runs them back to back, and the events around them time
// the device alone. Timed the usual way (events around calls the host submits as it goes), a call
// that takes the GPU about as long as the host takes to submit it measures the slower of the two
// at each moment.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "moe_dispatch/cuda_raii.hpp"
#include "moe_dispatch/errors.hpp"

namespace moe_dispatch::bench {

// How long the host function holds the stream: far more than submitting a batch takes.
inline constexpr int kHoldMs = 10;
// Calls queued before the start event: the GPU's restart after the hold is not timed.
inline constexpr int kLeadIn = 8;

inline void CUDART_CB hold_stream(void*) {
  std::this_thread::sleep_for(std::chrono::milliseconds(kHoldMs));
}

// Median over `trials` of the GPU time of `calls` back-to-back `body()` calls, per call. A batch
// whose submission outlasted most of the hold (the host blocked, e.g. on a full launch queue, and
// the GPU may have waited for it) is not counted and is measured again, up to `trials` times
// more; throws when that leaves fewer than `trials` samples.
template <typename Body>
double queued_us_per_call(cudaStream_t stream, int trials, int calls, const Body& body) {
  const Event start = make_event(true);
  const Event stop = make_event(true);
  for (int i = 0; i < calls; ++i) body();  // warm-up
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<double> samples;
  for (int attempt = 0; attempt < 2 * trials && static_cast<int>(samples.size()) < trials;
       ++attempt) {
    const auto submit_start = std::chrono::steady_clock::now();
    MOE_DISPATCH_CUDA_CHECK(cudaLaunchHostFunc(stream, hold_stream, nullptr));
    for (int i = 0; i < kLeadIn; ++i) body();
    MOE_DISPATCH_CUDA_CHECK(cudaEventRecord(start.get(), stream));
    for (int i = 0; i < calls; ++i) body();
    MOE_DISPATCH_CUDA_CHECK(cudaEventRecord(stop.get(), stream));
    const std::chrono::duration<double, std::milli> submit =
        std::chrono::steady_clock::now() - submit_start;
    MOE_DISPATCH_CUDA_CHECK(cudaEventSynchronize(stop.get()));
    if (submit.count() > 0.8 * kHoldMs) continue;
    float ms = 0;
    MOE_DISPATCH_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
    samples.push_back(1000.0 * ms / calls);
  }
  if (static_cast<int>(samples.size()) < trials) {
    throw std::runtime_error("queued timing: submitting a batch outlasted the stream hold in " +
                             std::to_string(2 * trials - static_cast<int>(samples.size())) +
                             " of " + std::to_string(2 * trials) + " attempts");
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

}  // namespace moe_dispatch::bench
