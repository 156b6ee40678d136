// Fault injection for the test suites: makes failures that CUDA does not produce on demand
// reproducible, so the recovery paths they take are tested. Not part of the public API.
#pragma once

#include "moe_dispatch/dispatch_stage.hpp"

namespace moe_dispatch::detail {

struct StageTesting {
  // The next capture of the bucket with this token capacity fails as a real capture failure would
  // (a non-sticky CudaError inside the capture), so the stage takes its eager fallback.
  static void fail_capture_of(DispatchStage& stage, int bucket_tokens);
};

}  // namespace moe_dispatch::detail
