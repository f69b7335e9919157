#include "core/model/scoring.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"
#include "core/util/torch_errors.h"

namespace optrec {

namespace {

// Log-probabilities [N] (f64, CPU) of targets [N] under the logits the model
// gives hidden states [N, D].
torch::Tensor TargetLogProbs(const TransformerLM& model,
                             const torch::Tensor& hidden,
                             const std::vector<int64_t>& targets) {
  torch::Tensor t_idx =
      torch::tensor(targets, torch::dtype(torch::kInt64)).to(hidden.device());
  return model.Project(hidden)
      .to(torch::kFloat32)
      .log_softmax(-1)
      .gather(1, t_idx.unsqueeze(1))
      .squeeze(1)
      .to(torch::kCPU, torch::kFloat64);  // [N]
}

}  // namespace

absl::StatusOr<std::vector<ContinuationScore>> ScoreContinuations(
    const TransformerLM& model, const std::vector<ContinuationRequest>& reqs) {
  if (reqs.empty()) return std::vector<ContinuationScore>{};
  std::vector<RowInput> rows(reqs.size());
  // (row, position, target) of every continuation token.
  std::vector<int64_t> row_index, position, target;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const ContinuationRequest& r = reqs[i];
    if (r.context.empty() || r.continuation.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "request ", i, ": context and continuation must both be non-empty"));
    }
    rows[i].prompt = r.soft_prompt;
    rows[i].ids = r.context;
    rows[i].ids.insert(rows[i].ids.end(), r.continuation.begin(),
                       r.continuation.end());
    const int64_t offset =
        (r.soft_prompt.defined() ? r.soft_prompt.size(0) : 0) +
        static_cast<int64_t>(r.context.size()) - 1;
    for (size_t j = 0; j < r.continuation.size(); ++j) {
      row_index.push_back(static_cast<int64_t>(i));
      position.push_back(offset + static_cast<int64_t>(j));
      target.push_back(r.continuation[j]);
    }
  }
  ForwardOptions options;
  options.logits = ForwardOptions::Logits::kNone;
  ASSIGN_OR_RETURN(ForwardOutput out, model.Forward(rows, nullptr, options));
  std::vector<ContinuationScore> scores(reqs.size());
  try {
    const auto dev = out.hidden.device();
    const auto long_opts = torch::dtype(torch::kInt64);
    torch::Tensor r_idx = torch::tensor(row_index, long_opts).to(dev);
    torch::Tensor p_idx = torch::tensor(position, long_opts).to(dev);
    torch::Tensor picked = out.hidden.index({r_idx, p_idx});     // [N, D]
    torch::Tensor logp = TargetLogProbs(model, picked, target);  // [N]
    auto lp = logp.accessor<double, 1>();
    for (size_t n = 0; n < row_index.size(); ++n) {
      ContinuationScore& s = scores[row_index[n]];
      s.log_likelihood += lp[n];
      s.tokens += 1;
    }
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("scoring failed: ", TorchErrorMessage(e)));
  }
  for (ContinuationScore& s : scores) {
    s.mean_log_likelihood = s.log_likelihood / static_cast<double>(s.tokens);
  }
  return scores;
}

absl::StatusOr<std::vector<ContinuationScore>> ScoreSharedContext(
    const TransformerLM& model, const std::vector<int32_t>& context,
    const std::vector<std::vector<int32_t>>& continuations,
    const torch::Tensor& soft_prompt, int64_t max_rows) {
  if (context.empty()) {
    return absl::InvalidArgumentError("shared-context scoring: empty context");
  }
  if (max_rows < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared-context scoring: max_rows must be positive, got ", max_rows));
  }
  const int64_t vocab = model.config().vocab_size;
  for (size_t i = 0; i < continuations.size(); ++i) {
    if (continuations[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shared-context scoring: continuation ", i, " is empty"));
    }
    // The first token is looked up directly, before any forward pass could
    // reject it.
    for (size_t j = 0; j < continuations[i].size(); ++j) {
      const int32_t id = continuations[i][j];
      if (id < 0 || id >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat(
            "shared-context scoring: continuation ", i, " token ", j, ": id ",
            id, " outside the vocabulary [0, ", vocab, ")"));
      }
    }
  }
  std::vector<ContinuationScore> scores(continuations.size());
  if (continuations.empty()) return scores;

  // The context once; its last hidden state predicts every continuation's
  // first token.
  KVCache context_cache = model.NewCache(1);
  ForwardOptions hidden_only;
  hidden_only.logits = ForwardOptions::Logits::kNone;
  RowInput context_row;
  context_row.ids = context;
  context_row.prompt = soft_prompt;
  ASSIGN_OR_RETURN(ForwardOutput head,
                   model.Forward({context_row}, &context_cache, hidden_only));
  try {
    const int64_t last = head.lengths[0] - 1;
    torch::Tensor last_hidden = head.hidden[0][last].unsqueeze(0);  // [1, D]
    torch::Tensor first_token_logp = model.Project(last_hidden)
                                         .to(torch::kFloat32)
                                         .log_softmax(-1)
                                         .squeeze(0)
                                         .to(torch::kCPU, torch::kFloat64);
    auto first = first_token_logp.accessor<double, 1>();
    for (size_t i = 0; i < continuations.size(); ++i) {
      scores[i].log_likelihood = first[continuations[i][0]];
      scores[i].tokens = 1;
    }
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("scoring failed: ", TorchErrorMessage(e)));
  }

  const int64_t n = static_cast<int64_t>(continuations.size());
  for (int64_t start = 0; start < n; start += max_rows) {
    const int64_t rows = std::min(max_rows, n - start);
    // Every row continues the same context: copies of its cache row.
    KVCache cache = context_cache;
    RETURN_IF_ERROR(cache.SelectRows(std::vector<int64_t>(rows, 0)));
    std::vector<RowInput> inputs(rows);
    // (row, position, target) of every continuation token after the first:
    // position j predicts token j + 1.
    std::vector<int64_t> row_index, position, target;
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<int32_t>& ids = continuations[start + r];
      inputs[r].ids = ids;
      for (size_t j = 0; j + 1 < ids.size(); ++j) {
        row_index.push_back(r);
        position.push_back(static_cast<int64_t>(j));
        target.push_back(ids[j + 1]);
      }
    }
    ASSIGN_OR_RETURN(ForwardOutput out,
                     model.Forward(inputs, &cache, hidden_only));
    if (target.empty()) continue;
    try {
      const auto long_opts = torch::dtype(torch::kInt64);
      const auto dev = out.hidden.device();
      torch::Tensor picked =
          out.hidden.index({torch::tensor(row_index, long_opts).to(dev),
                            torch::tensor(position, long_opts).to(dev)});
      torch::Tensor logp = TargetLogProbs(model, picked, target);  // [N]
      auto lp = logp.accessor<double, 1>();
      for (size_t k = 0; k < row_index.size(); ++k) {
        ContinuationScore& s = scores[start + row_index[k]];
        s.log_likelihood += lp[k];
        s.tokens += 1;
      }
    } catch (const std::exception& e) {
      return absl::InternalError(
          absl::StrCat("scoring failed: ", TorchErrorMessage(e)));
    }
  }
  for (ContinuationScore& s : scores) {
    s.mean_log_likelihood = s.log_likelihood / static_cast<double>(s.tokens);
  }
  return scores;
}

torch::Tensor PoolHidden(const torch::Tensor& hidden,
                         const torch::Tensor& valid, PoolMode mode) {
  // Weights and counts in f32 whatever the hidden dtype.
  torch::Tensor mask = valid.to(torch::kFloat32).unsqueeze(-1);  // [B, T, 1]
  torch::Tensor any = valid.any(1);                              // [B]
  if (mode == PoolMode::kMean) {
    torch::Tensor count = mask.sum(1).clamp_min(1.0);  // [B, 1]
    return ((hidden.to(torch::kFloat32) * mask).sum(1) / count)
        .to(hidden.scalar_type());
  }
  // Index of the last valid position, wherever the valid ones are.
  torch::Tensor steps = torch::arange(1, valid.size(1) + 1, valid.device());
  torch::Tensor last = (valid.to(torch::kInt64) * steps).argmax(1);  // [B]
  torch::Tensor rows = torch::arange(hidden.size(0), last.options());
  torch::Tensor picked = hidden.index({rows, last});  // [B, D]
  return picked * any.to(hidden.scalar_type()).unsqueeze(-1);
}

}  // namespace optrec
