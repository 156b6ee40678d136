#include "latency_histogram.hpp"

#include <algorithm>
#include <cmath>

namespace serving_loop {
namespace {

constexpr double kLowestUs = 0.01;  // lower edge of the first bin
constexpr double kHighestUs = 1e8;  // upper edge of the last bin: 100 s
constexpr double kBinRatio = 1.01;  // each bin is 1 % wider than the one before

const double kLogRatio = std::log(kBinRatio);
const auto kBins =
    static_cast<std::size_t>(std::ceil(std::log(kHighestUs / kLowestUs) / kLogRatio));

std::size_t bin_of(double us) {
  if (!(us > kLowestUs)) return 0;
  const auto bin = static_cast<std::size_t>(std::log(us / kLowestUs) / kLogRatio);
  return std::min(bin, kBins - 1);
}

// The geometric middle of a bin: within half a bin (0.5 %) of every sample in it.
double middle_of(std::size_t bin) {
  return kLowestUs * std::exp((static_cast<double>(bin) + 0.5) * kLogRatio);
}

}  // namespace

LatencyHistogram::LatencyHistogram() : counts_(kBins, 0) {}

void LatencyHistogram::add(double us) {
  ++counts_[bin_of(us)];
  min_ = total_ == 0 ? us : std::min(min_, us);
  max_ = total_ == 0 ? us : std::max(max_, us);
  ++total_;
}

Percentiles LatencyHistogram::percentiles() const {
  if (total_ == 0) return {};
  auto rank = [&](double p) {
    const auto wanted = std::max<std::int64_t>(
        1, static_cast<std::int64_t>(std::ceil(p * static_cast<double>(total_))));
    std::int64_t seen = 0;
    for (std::size_t bin = 0; bin < counts_.size(); ++bin) {
      seen += counts_[bin];
      if (seen >= wanted) return std::clamp(middle_of(bin), min_, max_);
    }
    return max_;
  };
  return Percentiles{rank(0.50), rank(0.99), max_};
}

}  // namespace serving_loop
