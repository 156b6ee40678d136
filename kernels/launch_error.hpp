// The launchers report a launch's failure through cudaGetLastError(), which also returns an error
// that any earlier runtime call left pending (the caller's own, say, already returned to it).
#pragma once

#include <cuda_runtime_api.h>

namespace moe_dispatch::kernels {

// Call first in a launcher: clears a pending non-sticky error so the cudaGetLastError() after the
// launch reports that launch only. A sticky error stays and fails the launch itself.
inline void discard_pending_error() { static_cast<void>(cudaGetLastError()); }

}  // namespace moe_dispatch::kernels
