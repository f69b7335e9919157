#include "core/runtime/blas_kernels.h"

#include <ATen/CPUGeneratorImpl.h>
#include <dlfcn.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/util/log.h"

namespace optrec {
namespace {

constexpr char kCoreTypeVar[] = "OPENBLAS_CORETYPE";
constexpr char kReexecVar[] = "OPTREC_BLAS_REEXEC";
// Set to the core name when optrec (not the user) chose OPENBLAS_CORETYPE.
constexpr char kSelectedVar[] = "OPTREC_BLAS_SELECTED";
constexpr char kWaitPolicyVar[] = "OMP_WAIT_POLICY";
constexpr char kSpinCountVar[] = "GOMP_SPINCOUNT";

// OpenBLAS exports these C functions; LibTorch loads it through libblas.so.3,
// so they are found in the global symbol table when OpenBLAS is the BLAS.
using CharFn = char* (*)();
using IntFn = int (*)();

template <typename Fn>
Fn FindSymbol(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name));
}

std::string CallString(const char* symbol) {
  auto fn = FindSymbol<CharFn>(symbol);
  if (fn == nullptr) return "";
  const char* text = fn();
  return text ? std::string(text) : std::string();
}

}  // namespace

const char* IsaLevelName(IsaLevel level) {
  switch (level) {
    case IsaLevel::kSse:
      return "sse";
    case IsaLevel::kAvx:
      return "avx";
    case IsaLevel::kAvx2:
      return "avx2";
    case IsaLevel::kAvx512:
      return "avx512";
    case IsaLevel::kUnknown:
      break;
  }
  return "unknown";
}

IsaLevel CpuIsaLevel() {
#if defined(__x86_64__) || defined(__i386__)
  // GCC's runtime checks both the CPUID bits and, for AVX and AVX-512, that
  // the OS enabled the register state (XGETBV).
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq")) {
    return IsaLevel::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return IsaLevel::kAvx2;
  }
  if (__builtin_cpu_supports("avx")) return IsaLevel::kAvx;
  return IsaLevel::kSse;
#else
  return IsaLevel::kUnknown;
#endif
}

IsaLevel OpenBlasCoreLevel(const std::string& core_name) {
  // Core names as openblas_get_corename() prints them (lower-cased here),
  // grouped by the widest vector unit their kernels use.
  static const auto* kLevels = new std::map<std::string, IsaLevel>{
      {"skylakex", IsaLevel::kAvx512},
      {"cooperlake", IsaLevel::kAvx512},
      {"sapphirerapids", IsaLevel::kAvx512},
      {"haswell", IsaLevel::kAvx2},
      {"zen", IsaLevel::kAvx2},
      {"skylake", IsaLevel::kAvx2},
      {"sandybridge", IsaLevel::kAvx},
      {"bulldozer", IsaLevel::kAvx},
      {"piledriver", IsaLevel::kAvx},
      {"steamroller", IsaLevel::kAvx},
      {"excavator", IsaLevel::kAvx},
      {"prescott", IsaLevel::kSse},
      {"core2", IsaLevel::kSse},
      {"penryn", IsaLevel::kSse},
      {"dunnington", IsaLevel::kSse},
      {"nehalem", IsaLevel::kSse},
      {"atom", IsaLevel::kSse},
      {"nano", IsaLevel::kSse},
      {"opteron", IsaLevel::kSse},
      {"opteron_sse3", IsaLevel::kSse},
      {"barcelona", IsaLevel::kSse},
      {"bobcat", IsaLevel::kSse},
      {"katmai", IsaLevel::kSse},
      {"coppermine", IsaLevel::kSse},
      {"northwood", IsaLevel::kSse},
      {"banias", IsaLevel::kSse},
      {"athlon", IsaLevel::kSse},
  };
  std::string key = core_name;
  std::transform(key.begin(), key.end(), key.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  auto it = kLevels->find(key);
  return it == kLevels->end() ? IsaLevel::kUnknown : it->second;
}

std::string CoreTypeForLevel(IsaLevel level) {
  switch (level) {
    case IsaLevel::kAvx512:
      return "SkylakeX";
    case IsaLevel::kAvx2:
      return "Haswell";
    case IsaLevel::kAvx:
      return "Sandybridge";
    default:
      return "";
  }
}

BlasKernelInfo CurrentBlasKernels() {
  BlasKernelInfo info;
  info.cpu_level = CpuIsaLevel();
  info.core_name = CallString("openblas_get_corename");
  info.config = CallString("openblas_get_config");
  info.library = info.core_name.empty() ? "unknown BLAS" : "OpenBLAS";
  info.core_level = OpenBlasCoreLevel(info.core_name);
  info.selected = std::getenv(kSelectedVar) != nullptr;
  info.user_set = std::getenv(kCoreTypeVar) != nullptr && !info.selected;
  const char* wait_policy = std::getenv(kWaitPolicyVar);
  info.omp_wait_policy = wait_policy ? wait_policy : "";
  if (auto threads = FindSymbol<IntFn>("openblas_get_num_threads")) {
    info.threads = threads();
  }
  return info;
}

std::string DescribeBlasKernels(const BlasKernelInfo& info) {
  if (info.core_name.empty()) {
    return absl::StrCat(info.library, " (cpu ", IsaLevelName(info.cpu_level),
                        "; not OpenBLAS, kernels not known)");
  }
  const char* source = info.selected   ? "selected by optrec"
                       : info.user_set ? "set by OPENBLAS_CORETYPE"
                                       : "detected by OpenBLAS";
  return absl::StrFormat(
      "OpenBLAS core %s (cpu %s, %s, %d threads; OpenMP waiting %s)",
      info.core_name, IsaLevelName(info.cpu_level), source, info.threads,
      info.omp_wait_policy.empty() ? "default (spinning)"
                                   : info.omp_wait_policy);
}

void SelectBlasKernels(int argc, char** argv) {
  (void)argc;
  if (std::getenv(kReexecVar) != nullptr) return;  // tried once already
  std::vector<std::pair<const char*, std::string>> wanted;

  // Kernels no older than the CPU allows, unless the user chose a core.
  BlasKernelInfo info = CurrentBlasKernels();
  std::string core;
  if (std::getenv(kCoreTypeVar) == nullptr && !info.core_name.empty() &&
      info.core_level != IsaLevel::kUnknown &&
      info.core_level < info.cpu_level) {
    core = CoreTypeForLevel(info.cpu_level);
    if (!core.empty()) {
      wanted.emplace_back(kCoreTypeVar, core);
      wanted.emplace_back(kSelectedVar, core);
    }
  }
  // LibTorch's OpenMP threads spin after each parallel loop by default,
  // taking the cores from OpenBLAS's own threads in the next product; on
  // two cores that halves the speed of small batches. Passive waiting fixes
  // it, unless the user tuned OpenMP waiting already.
  if (std::getenv(kWaitPolicyVar) == nullptr &&
      std::getenv(kSpinCountVar) == nullptr) {
    wanted.emplace_back(kWaitPolicyVar, "PASSIVE");
  }
  if (wanted.empty()) return;

  for (const auto& [name, value] : wanted) {
    setenv(name, value.c_str(), /*overwrite=*/1);
  }
  setenv(kReexecVar, "1", /*overwrite=*/1);
  execv("/proc/self/exe", argv);
  // Only reached when execv failed; carry on as loaded.
  const std::string reason = std::strerror(errno);
  for (const auto& [name, value] : wanted) unsetenv(name);
  LOG_WARNING << "could not re-execute to set the kernel environment"
              << (core.empty() ? "" : " (OpenBLAS core " + core + ")") << ": "
              << reason << "; running " << DescribeBlasKernels(info);
}

absl::StatusOr<double> CheckBlasProduct() {
  // A deterministic 67x53 by 53x71 product: odd sizes exercise the kernels'
  // edge handling as well as their main loops.
  constexpr int kM = 67, kK = 53, kN = 71;
  torch::NoGradGuard no_grad;
  torch::manual_seed(20261203);
  torch::Tensor a = torch::randn({kM, kK});        // [M, K]
  torch::Tensor b = torch::randn({kK, kN});        // [K, N]
  torch::Tensor c = torch::mm(a, b).contiguous();  // [M, N] through the BLAS
  const float* pa = a.data_ptr<float>();
  const float* pb = b.data_ptr<float>();
  const float* pc = c.data_ptr<float>();
  double worst = 0.0;
  for (int i = 0; i < kM; ++i) {
    for (int j = 0; j < kN; ++j) {
      double want = 0.0, scale = 0.0;
      for (int k = 0; k < kK; ++k) {
        double term = static_cast<double>(pa[i * kK + k]) * pb[k * kN + j];
        want += term;
        scale += std::fabs(term);
      }
      double err = std::fabs(pc[i * kN + j] - want) / std::max(scale, 1e-30);
      worst = std::max(worst, err);
    }
  }
  if (worst > 1e-4) {
    return absl::InternalError(absl::StrFormat(
        "BLAS product check failed: relative error %.3g against a plain "
        "loop with %s",
        worst, DescribeBlasKernels(CurrentBlasKernels())));
  }
  return worst;
}

}  // namespace optrec
