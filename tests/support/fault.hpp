// A kernel that faults on purpose, for tests of how errors left by someone else's work surface.
// The fault is sticky: it ruins the CUDA context of the process, so only a child process that
// exits right after should launch it.
#pragma once

#include <cuda_runtime_api.h>

namespace moe_dispatch::test {

// Enqueues one thread that stores through a null pointer on `stream` (cudaErrorIllegalAddress once
// it runs); returns the launch error, which is cudaSuccess: the fault is asynchronous.
cudaError_t launch_illegal_address_write(cudaStream_t stream);

}  // namespace moe_dispatch::test
