// The main() of every optrec test binary: the same process start-up as the
// CLI and the server (BLAS kernel choice included), then GoogleTest.
#include <gtest/gtest.h>

#include <cstdio>

#include "core/runtime/process.h"

int main(int argc, char** argv) {
  optrec::ProcessOptions options;
  options.log_kernels = false;
  absl::Status status = optrec::InitProcess(argc, argv, options);
  if (!status.ok()) {
    std::fprintf(stderr, "optrec test start-up failed: %s\n",
                 status.ToString().c_str());
    return 1;
  }
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
