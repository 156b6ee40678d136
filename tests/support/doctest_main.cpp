// One main for every suite. gpu-labelled suites define kNeedsGpu = true: without a device they
// print why and exit 77, which CTest reports as "Skipped" (SKIP_RETURN_CODE), so the skip is
// visible and a failing cpu suite still fails the run.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "support/gpu.hpp"

// Defined by each test binary.
extern const bool kNeedsGpu;

int main(int argc, char** argv) {
  if (kNeedsGpu && !moe_dispatch::test::has_gpu()) {
    std::printf("SKIPPED: no CUDA device visible; this suite needs a GPU\n");
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
