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

// Scores several continuations of one shared context: the context (after
// the optional soft prompt [P, D]) runs once and its keys and values are
// cached; each continuation then runs as its own row over that cache. The
// scores equal ScoreContinuations' with the same context in every request,
// to float rounding, for one context pass instead of one per continuation.
// Rows are processed `max_rows` at a time (the cache is copied once per
// row), which bounds memory. InvalidArgument for an empty context or
// continuation or a token id outside the vocabulary (naming continuation and
// token) or max_rows < 1; forward errors as
// TransformerLM::Forward's.
absl::StatusOr<std::vector<ContinuationScore>> ScoreSharedContext(
    const TransformerLM& model, const std::vector<int32_t>& context,
    const std::vector<std::vector<int32_t>>& continuations,
    const torch::Tensor& soft_prompt = {}, int64_t max_rows = 64);

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
