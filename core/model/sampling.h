// Choosing the next token from logits: greedy, temperature, top-k, top-p.
#ifndef OPTREC_CORE_MODEL_SAMPLING_H_
#define OPTREC_CORE_MODEL_SAMPLING_H_

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace optrec {

struct SamplingParams {
  // Most tokens to generate; must be positive.
  int64_t max_tokens = 64;
  // 0 = greedy (argmax); otherwise logits are divided by it before sampling.
  double temperature = 0.0;
  // Keep only the k most likely tokens; 0 = no limit.
  int64_t top_k = 0;
  // Keep the smallest set of most likely tokens whose probability reaches
  // top_p; 1 = no limit. Must be in (0, 1].
  double top_p = 1.0;
  // Seed of this request's random stream; the same seed and inputs give the
  // same tokens.
  uint64_t seed = 0;
  // Generation ends when the decoded text contains one of these; the text
  // returned stops before it. Needs a tokenizer.
  std::vector<std::string> stop;
  // Generation ends after one of these ids (not included in the text).
  // Empty = the model's end-of-sequence ids.
  std::vector<int32_t> stop_ids;
};

// Checks the fields; InvalidArgument names the bad field and value.
absl::Status ValidateSamplingParams(const SamplingParams& params);

// Picks one token per call from a row's logits. Not thread-safe: one
// sampler per sequence.
class TokenSampler {
 public:
  explicit TokenSampler(const SamplingParams& params);
  // logits: [V] on any device and dtype. Returns the chosen id, or
  // Internal when the logits are not finite (a numerical failure upstream)
  // or LibTorch fails.
  absl::StatusOr<int32_t> Next(const torch::Tensor& logits);

 private:
  SamplingParams params_;
  at::Generator generator_;
};

}  // namespace optrec

#endif  // OPTREC_CORE_MODEL_SAMPLING_H_
