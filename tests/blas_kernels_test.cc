#include "core/runtime/blas_kernels.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/runtime/device.h"

namespace optrec {
namespace {

TEST(BlasKernelsTest, CoreNamesMapToTheirInstructionLevels) {
  EXPECT_EQ(OpenBlasCoreLevel("SkylakeX"), IsaLevel::kAvx512);
  EXPECT_EQ(OpenBlasCoreLevel("COOPERLAKE"), IsaLevel::kAvx512);
  EXPECT_EQ(OpenBlasCoreLevel("Haswell"), IsaLevel::kAvx2);
  EXPECT_EQ(OpenBlasCoreLevel("Zen"), IsaLevel::kAvx2);
  EXPECT_EQ(OpenBlasCoreLevel("Sandybridge"), IsaLevel::kAvx);
  EXPECT_EQ(OpenBlasCoreLevel("Prescott"), IsaLevel::kSse);
  EXPECT_EQ(OpenBlasCoreLevel("Nehalem"), IsaLevel::kSse);
  EXPECT_EQ(OpenBlasCoreLevel("NoSuchCore"), IsaLevel::kUnknown);
}

TEST(BlasKernelsTest, SelectedCoreNeverExceedsTheCpu) {
  for (IsaLevel level :
       {IsaLevel::kSse, IsaLevel::kAvx, IsaLevel::kAvx2, IsaLevel::kAvx512}) {
    std::string core = CoreTypeForLevel(level);
    if (core.empty()) continue;
    EXPECT_EQ(OpenBlasCoreLevel(core), level) << core;
  }
  EXPECT_EQ(CoreTypeForLevel(IsaLevel::kSse), "");
  EXPECT_EQ(CoreTypeForLevel(IsaLevel::kUnknown), "");
}

TEST(BlasKernelsTest, RunningKernelsAreNotOlderThanTheCpuAllows) {
  // The test binary starts like every entry point, so unless the user chose
  // a core, the kernels in use must match the CPU's level.
  BlasKernelInfo info = CurrentBlasKernels();
  if (info.core_name.empty()) {
    GTEST_SKIP() << "the BLAS is not OpenBLAS: " << DescribeBlasKernels(info);
  }
  if (info.user_set) {
    GTEST_SKIP() << "OPENBLAS_CORETYPE set by the user: "
                 << DescribeBlasKernels(info);
  }
  ASSERT_NE(info.core_level, IsaLevel::kUnknown) << info.core_name;
  EXPECT_GE(info.core_level, info.cpu_level) << DescribeBlasKernels(info);
  EXPECT_LE(info.core_level, info.cpu_level) << DescribeBlasKernels(info);
}

// Run only as a child of the test below: prints what the child process
// sees after its start-up.
TEST(BlasKernelsTest, DISABLED_PrintEnvironmentForParent) {
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  std::printf("OMP_WAIT_POLICY=%s\n", policy ? policy : "(unset)");
  std::printf("KERNELS=%s\n",
              DescribeBlasKernels(CurrentBlasKernels()).c_str());
}

std::string RunChild(const std::string& env_prefix) {
  std::array<char, 4096> self{};
  ssize_t n = readlink("/proc/self/exe", self.data(), self.size() - 1);
  EXPECT_GT(n, 0);
  std::string command =
      "env -u OPTREC_BLAS_REEXEC -u OPTREC_BLAS_SELECTED -u OMP_WAIT_POLICY "
      "-u GOMP_SPINCOUNT " +
      env_prefix + " " + std::string(self.data()) +
      " --gtest_also_run_disabled_tests "
      "--gtest_filter=BlasKernelsTest.DISABLED_PrintEnvironmentForParent";
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  if (pipe == nullptr) return out;
  std::array<char, 512> buffer;
  while (std::fgets(buffer.data(), buffer.size(), pipe)) out += buffer.data();
  EXPECT_EQ(pclose(pipe), 0) << out;
  return out;
}

TEST(BlasKernelsTest, StartUpReexecutesWithPassiveOpenMpWaiting) {
  std::string out = RunChild("");
  EXPECT_NE(out.find("OMP_WAIT_POLICY=PASSIVE"), std::string::npos) << out;
  EXPECT_NE(out.find("OpenMP waiting PASSIVE"), std::string::npos) << out;
}

TEST(BlasKernelsTest, UserSettingsWinOverStartUpChoices) {
  std::string out =
      RunChild("OMP_WAIT_POLICY=ACTIVE OPENBLAS_CORETYPE=Haswell");
  EXPECT_NE(out.find("OMP_WAIT_POLICY=ACTIVE"), std::string::npos) << out;
  if (out.find("OpenBLAS core") != std::string::npos) {
    EXPECT_NE(out.find("core Haswell"), std::string::npos) << out;
    EXPECT_NE(out.find("set by OPENBLAS_CORETYPE"), std::string::npos) << out;
  }
}

TEST(BlasKernelsTest, ProductMatchesPlainLoop) {
  auto error = CheckBlasProduct();
  ASSERT_TRUE(error.ok()) << error.status();
  EXPECT_LT(*error, 1e-5);
}

TEST(DeviceTest, ParsesSpecsAndNamesBadFields) {
  auto cpu = ResolveDevice("cpu", "f32");
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_TRUE(cpu->device.is_cpu());
  EXPECT_EQ(cpu->dtype, torch::kFloat32);

  auto bad = ResolveDevice("tpu");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("tpu"), std::string::npos);

  auto bad_dtype = ResolveDevice("cpu", "f8");
  EXPECT_EQ(bad_dtype.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_dtype.status().message().find("dtype"), std::string::npos);

  if (!torch::cuda::is_available()) {
    auto cuda = ResolveDevice("cuda:0");
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition);
  }
}

}  // namespace
}  // namespace optrec
