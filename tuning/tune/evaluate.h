// Evaluation of a task on a set of examples, with its prompt module or
// zero-shot (the backbone alone, M6-Rec's length-normalised log-likelihood
// of verbalised alternatives). Metrics by kind:
//   score:    accuracy, log_loss; auc for two options (the probability of
//             the positive label ranks); rmse and mae of the expected
//             option value for more options (ratings). A zero-shot spec
//             with a single continuation gives auc only (its
//             log-likelihood ranks examples, no probability exists).
//   generate: perplexity of the target (teacher forcing); with decoding,
//             bleu4 and rouge1/rouge2/rouge_l of greedy output, or with a
//             catalog constraint, hr@k / ndcg@k of the beam's ranked items.
//   retrieve: hr@k / ndcg@k of the target item among every catalog item.
// Every metric name is a key of the returned JSON object, with "examples";
// the selection metrics "neg_<name>" (neg_rmse, neg_perplexity, ...) are
// derived by SelectionValue.
#ifndef OPTREC_TUNING_TUNE_EVALUATE_H_
#define OPTREC_TUNING_TUNE_EVALUATE_H_

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/transformer.h"
#include "tuning/tune/task_batch.h"

namespace optrec {

struct EvalOptions {
  // The template used (index into spec.templates); ignored zero-shot,
  // which uses the spec's zero_shot input.
  size_t template_index = 0;
  // Evaluate the backbone alone instead of task.module.
  bool zero_shot = false;
  // Rows per forward pass.
  int64_t batch_rows = 32;
  // Cut-offs of hr@k and ndcg@k.
  std::vector<int> ks = {1, 5, 10, 20};
  // Generate tasks: decode (greedy, or the constrained beam) and score the
  // output; false computes perplexity only (cheap, for validation).
  bool decode = true;
  // Keep this many predictions in the result's "samples" list.
  int64_t samples = 0;
};

// Evaluates `examples` of the task. `model` must be the module's base
// model. FailedPrecondition when zero_shot is false and the task has no
// module, or zero_shot is true and the spec has no zero_shot section;
// InvalidArgument for no examples or a bad template index; encoding and
// forward errors name the example's line.
absl::StatusOr<nlohmann::json> EvaluateTask(
    const std::shared_ptr<const TransformerLM>& model, const TaskContext& task,
    const std::vector<Example>& examples, const EvalOptions& options);

// The value of selection metric `name` in `metrics` (higher is better):
// the metric itself, or minus metric X for "neg_X". NaN when absent.
double SelectionValue(const nlohmann::json& metrics, const std::string& name);

}  // namespace optrec

#endif  // OPTREC_TUNING_TUNE_EVALUATE_H_
