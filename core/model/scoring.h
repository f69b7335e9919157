// Outputs built on the forward pass: log-likelihood of continuations (for
// zero-shot scoring of verbalised options) and pooled embeddings.
#ifndef OPTREC_CORE_MODEL_SCORING_H_
#define OPTREC_CORE_MODEL_SCORING_H_

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/transformer.h"

namespace optrec {

struct ContinuationRequest {
  std::vector<int32_t> context;       // must be non-empty (include BOS)
  std::vector<int32_t> continuation;  // must be non-empty
  torch::Tensor soft_prompt;          // [P, D] before the context, optional
};

struct ContinuationScore {
  double log_likelihood = 0.0;  // sum of log p(token) over the continuation
  int64_t tokens = 0;           // continuation length
  // log_likelihood / tokens: the length-normalised score used to rank
  // options of different lengths.
  double mean_log_likelihood = 0.0;
};

// Scores every request in one batched forward pass (causal). Only the
// continuation positions are projected to the vocabulary. Errors name the
// request index.
absl::StatusOr<std::vector<ContinuationScore>> ScoreContinuations(
    const TransformerLM& model, const std::vector<ContinuationRequest>& reqs);

enum class PoolMode {
  kMean,  // mean of the valid positions' hidden states
  kLast,  // hidden state at each row's last valid position
};

// Pools hidden [B, T, D] with validity [B, T] (on the same device) into
// [B, D]. Valid positions need not be contiguous. Rows with no valid
// position give zeros. Mismatched shapes throw c10::Error.
torch::Tensor PoolHidden(const torch::Tensor& hidden,
                         const torch::Tensor& valid, PoolMode mode);

}  // namespace optrec

#endif  // OPTREC_CORE_MODEL_SCORING_H_
