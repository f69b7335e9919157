#include "core/runtime/process.h"

#include <malloc.h>
#include <sched.h>
#include <torch/torch.h>

#include <cstdlib>
#include <limits>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "core/util/log.h"

namespace optrec {

int AvailableCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int count = CPU_COUNT(&set);
    if (count > 0) return count;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

absl::Status InitProcess(int argc, char** argv, const ProcessOptions& options) {
  SelectBlasKernels(argc, argv);

  const bool user_tuned_malloc =
      std::getenv("GLIBC_TUNABLES") != nullptr ||
      std::getenv("MALLOC_MMAP_MAX_") != nullptr ||
      std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr;
  if (options.retain_freed_memory && !user_tuned_malloc) {
    // Large blocks from the heap rather than fresh mappings, and no
    // trimming of the heap's top (-1 disables it).
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, -1);
  }

  int threads =
      options.intra_op_threads > 0 ? options.intra_op_threads : AvailableCpus();
  if (const char* env = std::getenv("OPTREC_THREADS")) {
    int parsed = 0;
    if (absl::SimpleAtoi(env, &parsed) && parsed > 0) {
      threads = parsed;
    } else {
      return absl::InvalidArgumentError(
          std::string("OPTREC_THREADS must be a positive integer, got '") +
          env + "'");
    }
  }
  torch::set_num_threads(threads);

  auto check = CheckBlasProduct();
  if (!check.ok()) return check.status();
  if (options.log_kernels) {
    LOG_INFO << "BLAS: " << DescribeBlasKernels(CurrentBlasKernels())
             << "; torch threads " << threads << "; product check error "
             << *check;
  }
  return absl::OkStatus();
}

}  // namespace optrec
