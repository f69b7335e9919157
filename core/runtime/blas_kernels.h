// Choosing the BLAS kernels that LibTorch's matrix products run on.
//
// Debian's LibTorch calls the system BLAS. OpenBLAS, built for many CPUs,
// picks its kernels when it is loaded, from the CPU it recognises; on virtual
// CPUs it may not recognise the model and fall back to its oldest x86-64
// kernels, four to five times slower than the AVX-512 ones the CPU runs. The
// only way to change that choice is the environment variable
// OPENBLAS_CORETYPE, read once when the library loads, so the choice has to
// be made before the process loads OpenBLAS: SelectBlasKernels re-executes
// the process with the variable set.
#ifndef OPTREC_CORE_RUNTIME_BLAS_KERNELS_H_
#define OPTREC_CORE_RUNTIME_BLAS_KERNELS_H_

#include <string>

#include "absl/status/statusor.h"

namespace optrec {

// Vector instruction levels, in increasing order.
enum class IsaLevel {
  kUnknown = 0,
  kSse = 1,
  kAvx = 2,
  kAvx2 = 3,
  kAvx512 = 4
};

const char* IsaLevelName(IsaLevel level);

// The best level this CPU and the operating system both support (AVX-512
// needs the OS to save the ZMM state; AVX2 counts only with FMA).
IsaLevel CpuIsaLevel();

// The instruction level an OpenBLAS core name targets ("SkylakeX" ->
// kAvx512, "Haswell" and "Zen" -> kAvx2, "Sandybridge" -> kAvx, older cores
// -> kSse). kUnknown for names this table does not know.
IsaLevel OpenBlasCoreLevel(const std::string& core_name);

// The OpenBLAS core name to force for a CPU of `level`: "SkylakeX" for
// kAvx512, "Haswell" for kAvx2, "Sandybridge" for kAvx; empty otherwise.
std::string CoreTypeForLevel(IsaLevel level);

// What the process runs on, as observed after start-up.
struct BlasKernelInfo {
  std::string library;    // "OpenBLAS", or "unknown BLAS" (not OpenBLAS)
  std::string config;     // openblas_get_config(), empty when unknown
  std::string core_name;  // openblas_get_corename(), empty when unknown
  IsaLevel cpu_level = IsaLevel::kUnknown;
  IsaLevel core_level = IsaLevel::kUnknown;
  bool user_set = false;        // OPENBLAS_CORETYPE came from the user
  bool selected = false;        // optrec set OPENBLAS_CORETYPE and re-executed
  std::string omp_wait_policy;  // OMP_WAIT_POLICY in force, empty if unset
  int threads = 0;              // openblas_get_num_threads(), 0 when unknown
};

// Reads which BLAS and kernels the running process uses. Cheap; no compute.
BlasKernelInfo CurrentBlasKernels();

// One line for logs and benchmark output, e.g.
// "OpenBLAS core SkylakeX (cpu avx512, selected by optrec, 2 threads)".
std::string DescribeBlasKernels(const BlasKernelInfo& info);

// To be called first in main(), before anything else runs, by every optrec
// entry point. Two settings are read only when a library loads, so they are
// made by setting the environment and re-executing the program once (same
// argv, via /proc/self/exe); in that case this call does not return:
//  - OPENBLAS_CORETYPE, when the user has not set it and the loaded OpenBLAS
//    runs kernels below this CPU's level: the matching core (never one the
//    CPU lacks);
//  - OMP_WAIT_POLICY=PASSIVE, when the user has set neither it nor
//    GOMP_SPINCOUNT: LibTorch's idle OpenMP threads otherwise spin and slow
//    the BLAS threads down.
// The user's own settings always win. Re-execution happens at most once
// (guarded by OPTREC_BLAS_REEXEC); if it fails, a warning is logged and the
// process carries on as loaded.
void SelectBlasKernels(int argc, char** argv);

// Multiplies two small random matrices with LibTorch (hence the BLAS) and
// with a plain triple loop in double precision, and compares. Returns the
// largest relative error, or Internal naming the kernels when it exceeds
// 1e-4 (kernels that compute wrong results).
absl::StatusOr<double> CheckBlasProduct();

}  // namespace optrec

#endif  // OPTREC_CORE_RUNTIME_BLAS_KERNELS_H_
