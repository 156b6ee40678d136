// Percentiles of latency samples in constant memory. A soak replays a million steps; keeping every
// sample (8 bytes each, per layer) would make the loop's own memory grow, which is exactly what the
// soak watches for. So samples go into a fixed set of log-spaced bins instead.
#pragma once

#include <cstdint>
#include <vector>

namespace serving_loop {

struct Percentiles {
  double p50 = 0.0;
  double p99 = 0.0;
  double max = 0.0;
};

// Nearest-rank p50 / p99 within 1 % of the exact value (bins 1 % wide from 0.01 us to 100 s;
// samples outside that range fall into the first or last bin), exact max. Allocates once, at
// construction.
class LatencyHistogram {
 public:
  LatencyHistogram();
  void add(double us);
  // All zero for no samples.
  Percentiles percentiles() const;

 private:
  std::vector<std::int64_t> counts_;
  std::int64_t total_ = 0;
  double min_ = 0.0;
  double max_ = 0.0;
};

}  // namespace serving_loop
