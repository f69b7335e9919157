// Process start-up shared by every optrec entry point (CLI, server, tests,
// benchmarks).
#ifndef OPTREC_CORE_RUNTIME_PROCESS_H_
#define OPTREC_CORE_RUNTIME_PROCESS_H_

#include "absl/status/status.h"
#include "core/runtime/blas_kernels.h"

namespace optrec {

struct ProcessOptions {
  // Threads for LibTorch's own parallel loops. 0 = one per CPU this process
  // may run on (sched affinity). The environment variable OPTREC_THREADS,
  // when set, wins over this field.
  int intra_op_threads = 0;
  // Keep freed heap memory in the process for reuse instead of returning it
  // to the OS: activations of a batch are tens of MB, which glibc would
  // otherwise map and unmap on every allocation, paying page faults each
  // time (measured: half the system time, and up to a quarter more forward
  // throughput at 16x128 on GPT-2 small). Memory stays at its high-water
  // mark. Skipped when the user tunes malloc (GLIBC_TUNABLES or
  // MALLOC_MMAP_MAX_/MALLOC_TRIM_THRESHOLD_ set).
  bool retain_freed_memory = true;
  // Log the BLAS kernels in use at INFO. Tests and tools that print their
  // own report may turn it off.
  bool log_kernels = true;
};

// Call first in main(). Selects the BLAS kernels (may re-execute the process,
// see SelectBlasKernels), sets LibTorch's thread count, checks one small
// product against a plain loop and logs which kernels run. Returns the
// check's error when the BLAS computes wrong results; callers exit with it.
absl::Status InitProcess(int argc, char** argv,
                         const ProcessOptions& options = {});

// The number of CPUs this process may run on (at least 1).
int AvailableCpus();

}  // namespace optrec

#endif  // OPTREC_CORE_RUNTIME_PROCESS_H_
