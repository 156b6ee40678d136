// GPU-suite helpers for DispatchStage: poison a run's outputs, copy them back, and run a routing
// through a stage checked entry for entry against the host reference.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

#include "moe_dispatch/dispatch_stage.hpp"
#include "support/device_check.hpp"

namespace moe_dispatch::test {

// The stage the GPU suites share: E 64, top_k 2, B 16, buckets 1 8 64 256, no log.
DispatchConfig small_config();

// Writes kPoisonByte over every allocated entry of the outputs (and the counters), on `stream`.
void poison(const DispatchOutputs& out, cudaStream_t stream);

// The whole output buffers and counters, after synchronizing the device.
DeviceResult fetch(const DispatchOutputs& out);
// Only the entries `expected` defines (and the counters): for outputs not poisoned before the run,
// whose entries past the extent may never have been written.
DeviceResult fetch_defined(const DispatchOutputs& out, const HostAlignResult& expected);

// Writes `ids` to stage.input_for(), runs and compares the defined entries with the reference,
// then poisons the outputs, runs again and compares every entry (entries past the defined extent
// must still hold the poison). "" when both runs are equal to the reference.
std::string run_and_compare(DispatchStage& stage, const std::vector<std::int32_t>& ids,
                            cudaStream_t stream);

}  // namespace moe_dispatch::test
