#include "core/runtime/device.h"

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace optrec {

absl::StatusOr<DeviceChoice> ResolveDevice(const std::string& device,
                                           const std::string& dtype) {
  DeviceChoice choice;
  const bool have_cuda = torch::cuda::is_available();
  if (device == "auto") {
    choice.device =
        have_cuda ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  } else if (device == "cpu") {
    choice.device = torch::kCPU;
  } else if (device == "cuda" || absl::StartsWith(device, "cuda:")) {
    int index = 0;
    if (device.size() > 5 && !absl::SimpleAtoi(device.substr(5), &index)) {
      return absl::InvalidArgumentError(
          absl::StrCat("device: bad CUDA index in '", device, "'"));
    }
    if (!have_cuda) {
      return absl::FailedPreconditionError(absl::StrCat(
          "device: '", device,
          "' asked for, but this LibTorch build has no CUDA or no GPU is "
          "visible"));
    }
    if (index < 0 || index >= static_cast<int>(torch::cuda::device_count())) {
      return absl::InvalidArgumentError(
          absl::StrCat("device: '", device, "' but only ",
                       torch::cuda::device_count(), " GPUs are visible"));
    }
    choice.device = torch::Device(torch::kCUDA, index);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "device: expected auto, cpu, cuda or cuda:N, got '", device, "'"));
  }

  if (dtype == "auto") {
    choice.dtype = choice.device.is_cuda() ? torch::kBFloat16 : torch::kFloat32;
  } else if (dtype == "f32" || dtype == "float32") {
    choice.dtype = torch::kFloat32;
  } else if (dtype == "bf16" || dtype == "bfloat16") {
    choice.dtype = torch::kBFloat16;
  } else if (dtype == "f16" || dtype == "float16") {
    choice.dtype = torch::kFloat16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "dtype: expected auto, f32, bf16 or f16, got '", dtype, "'"));
  }
  return choice;
}

std::string DtypeName(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32:
      return "f32";
    case torch::kBFloat16:
      return "bf16";
    case torch::kFloat16:
      return "f16";
    case torch::kFloat64:
      return "f64";
    default:
      return c10::toString(dtype);
  }
}

}  // namespace optrec
