#include "core/model/scoring.h"

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace optrec {

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
    torch::Tensor t_idx = torch::tensor(target, long_opts).to(dev);
    torch::Tensor picked = out.hidden.index({r_idx, p_idx});  // [N, D]
    torch::Tensor logp = model.Project(picked)
                             .to(torch::kFloat32)
                             .log_softmax(-1)
                             .gather(1, t_idx.unsqueeze(1))
                             .squeeze(1)
                             .to(torch::kCPU, torch::kFloat64);  // [N]
    auto lp = logp.accessor<double, 1>();
    for (size_t n = 0; n < row_index.size(); ++n) {
      ContinuationScore& s = scores[row_index[n]];
      s.log_likelihood += lp[n];
      s.tokens += 1;
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("scoring failed: ", e.what_without_backtrace()));
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
