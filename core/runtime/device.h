// The one place where optrec chooses the device and compute dtype that the
// frozen LM and prompt modules live on. Everything else asks here.
#ifndef OPTREC_CORE_RUNTIME_DEVICE_H_
#define OPTREC_CORE_RUNTIME_DEVICE_H_

#include <torch/torch.h>

#include <string>

#include "absl/status/statusor.h"

namespace optrec {

struct DeviceChoice {
  torch::Device device = torch::kCPU;
  // Dtype for weights and activations. f32 on CPU (LibTorch's CPU kernels
  // for bf16/f16 are slow); bf16 by default on CUDA.
  torch::ScalarType dtype = torch::kFloat32;
};

// Parses a device spec: "auto" (CUDA when this LibTorch has it and a GPU is
// visible, else CPU), "cpu", "cuda" or "cuda:N". `dtype` is "auto", "f32",
// "bf16" or "f16". Errors name the bad field and value, and say when CUDA
// was asked for but this build or machine has none.
absl::StatusOr<DeviceChoice> ResolveDevice(const std::string& device,
                                           const std::string& dtype = "auto");

// "f32", "bf16", "f16", ... for logs and metadata.
std::string DtypeName(torch::ScalarType dtype);

}  // namespace optrec

#endif  // OPTREC_CORE_RUNTIME_DEVICE_H_
