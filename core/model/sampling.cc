#include "core/model/sampling.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/util/torch_errors.h"

namespace optrec {

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (p.max_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be positive, got ", p.max_tokens));
  }
  if (!(p.temperature >= 0.0) || !std::isfinite(p.temperature)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "temperature must be finite and >= 0, got ", p.temperature));
  }
  if (p.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k must be >= 0, got ", p.top_k));
  }
  if (!(p.top_p > 0.0 && p.top_p <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_p must be in (0, 1], got ", p.top_p));
  }
  for (const std::string& s : p.stop) {
    if (s.empty()) {
      return absl::InvalidArgumentError("stop sequences must not be empty");
    }
  }
  return absl::OkStatus();
}

TokenSampler::TokenSampler(const SamplingParams& params)
    : params_(params),
      generator_(at::make_generator<at::CPUGeneratorImpl>(params.seed)) {}

absl::StatusOr<int32_t> TokenSampler::Next(const torch::Tensor& logits) {
  torch::NoGradGuard no_grad;
  try {
    torch::Tensor scores = logits.to(torch::kCPU, torch::kFloat32).flatten();
    if (!torch::isfinite(scores).all().item<bool>()) {
      return absl::InternalError("sampling: the logits are not all finite");
    }
    if (params_.temperature == 0.0) {
      return static_cast<int32_t>(scores.argmax().item<int64_t>());
    }
    // Candidates in descending order of score, shifted so the best is 0:
    // dividing by a tiny temperature then cannot overflow.
    torch::Tensor sorted, order;
    std::tie(sorted, order) = scores.sort(/*dim=*/0, /*descending=*/true);
    sorted = (sorted - sorted[0]) / params_.temperature;
    int64_t keep = sorted.size(0);
    if (params_.top_k > 0) keep = std::min(keep, params_.top_k);
    torch::Tensor probs = sorted.narrow(0, 0, keep).softmax(0);
    if (params_.top_p < 1.0) {
      // Smallest prefix whose mass reaches top_p (at least one token).
      torch::Tensor cumulative = probs.cumsum(0);
      int64_t within = (cumulative < params_.top_p).sum().item<int64_t>() + 1;
      keep = std::min(keep, within);
      probs = probs.narrow(0, 0, keep);
      probs = probs / probs.sum();
    }
    int64_t pick =
        torch::multinomial(probs, 1, false, generator_).item<int64_t>();
    return static_cast<int32_t>(order[pick].item<int64_t>());
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("sampling failed: ", TorchErrorMessage(e)));
  }
}

}  // namespace optrec
