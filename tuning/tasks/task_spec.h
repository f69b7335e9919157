// Task specs: what a task is (its kind), how its examples become text
// (templates), what it predicts (options and their labels, a target text, an
// item), and how a prompt module for it is shaped (method, prompt length,
// adapter rank). A spec is a JSON file; docs/tuning.md documents every
// field, and models/tasks/ holds the specs of the default world's tasks.
//
// Templates. A template's "input" is a list of parts joined by its
// "separator" (default ". "). A part is text with {field} references:
//   - {name} is looked up in the example's "segments" object first, then
//     among its top-level fields; numbers are printed as JSON prints them;
//   - {item.name} is field `name` of the catalog line whose item id is the
//     example's `item_id_field` (for tasks whose examples name an item);
//   - a part that is exactly "{name}" of a list field (the behaviour
//     history) becomes one part per element, the newest `max_history` kept;
//     inside other text a list is joined with the separator;
//   - <|name|> is a trainable special token: one position whose input
//     embedding the module learns (option tuning; score and retrieve
//     templates only).
// P5 keeps several templates per task family and holds one out to test
// unseen prompts: templates flagged "held_out" are never trained on; the
// others are drawn per example.
#ifndef OPTREC_TUNING_TASKS_TASK_SPEC_H_
#define OPTREC_TUNING_TASKS_TASK_SPEC_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace optrec {

enum class TaskKind {
  kScore,     // C options, softmax, cross-entropy
  kGenerate,  // LM loss on a target text; decoding at evaluation
  kRetrieve,  // two towers, 128-d normalised embeddings, InfoNCE
};

enum class TuningMethod {
  kPrompt,         // soft prompt; a separate linear head for score tasks
  kOption,         // soft prompt whose last C vectors are the classifier
  kOptionAdapter,  // option tuning plus low-rank FFN adapters
};

// "score", "generate", "retrieve" / "prompt", "option", "option_adapter".
const char* TaskKindName(TaskKind kind);
const char* TuningMethodName(TuningMethod method);
absl::StatusOr<TaskKind> ParseTaskKind(const std::string& name);
absl::StatusOr<TuningMethod> ParseTuningMethod(const std::string& name);

// One of a score task's C options.
struct TaskOption {
  // The label value that means this option (ctr: 0 / 1; rating: 1..5), as
  // the data stores it. Also the option's numeric value for RMSE / MAE.
  double label = 0;
  // The option in words: the zero-shot continuation and the text whose
  // token embeddings initialise the option's soft vector.
  std::string text;
};

struct TaskTemplate {
  std::string name;
  std::vector<std::string> input;  // parts; see the file comment
  std::string separator = ". ";
  bool held_out = false;
};

// How a task is scored without a module (M6-Rec's zero-shot baseline): the
// length-normalised log-likelihood of each continuation after `input`.
// Score tasks: one continuation per option (softmax over their scores), or a
// single continuation whose score ranks examples (AUC only). Retrieve
// tasks: one continuation template over catalog lines, every catalog item
// scored. Generate tasks: decoding continues `input`; no continuations.
struct ZeroShotSpec {
  TaskTemplate input;
  std::vector<std::string> continuations;
  bool defined() const { return !input.input.empty(); }
};

struct TaskSpec {
  std::string task;  // name: [a-z0-9_]+
  std::string description;
  TaskKind kind = TaskKind::kScore;
  TuningMethod method = TuningMethod::kOption;  // the default method

  // Data: a folder with train.jsonl, valid.jsonl, test.jsonl, and for tasks
  // that look items up, a catalog JSONL; both relative to the data root
  // given to the job (the world's directory), or absolute.
  std::string data;
  std::string catalog;
  std::string item_id_field = "item_id";     // in examples
  std::string catalog_id_field = "item_id";  // in catalog lines

  int64_t prompt_length = 16;  // P soft vectors (per tower for retrieve)
  int64_t adapter_rank = 8;    // R of option_adapter
  int64_t max_tokens = 320;    // input budget; oldest history dropped first
  int64_t max_history = 10;    // newest list elements kept in a template
  // Late interaction (score tasks): L', the lower layers each segment runs
  // through alone. Each template part (each element of a whole-list part)
  // is one segment, tokenized alone with BOS; the module's prompt, segment
  // embeddings and adapter act in layers L'..L-1. 0 = the plain path: the
  // rendered template as one row through every layer.
  int64_t lower_layers = 0;

  // Score: the options, the example field holding the label, and (two
  // options) the label whose probability ranks examples for AUC.
  std::vector<TaskOption> options;
  std::string label_field = "label";
  double positive_label = 1;
  // Score tasks over a candidate list (P5's direct recommendation): each
  // example's `candidates_field` list (item texts) with the matching
  // `candidate_labels_field` list of labels becomes one row per candidate,
  // as field "candidate". Training keeps the positives and
  // `train_negatives` negatives drawn per example (0 = all); evaluation
  // scores every candidate and also ranks them within the example
  // (hr@k / ndcg@k of the positive).
  std::string candidates_field;
  std::string candidate_labels_field = "labels";
  int64_t train_negatives = 4;

  // Generate: the example field holding the target text, and how much is
  // generated at evaluation. With `constrain_field`, decoding is limited to
  // the values of that catalog field (a trie over item titles) and the
  // result is a ranked list of items (HR@K / NDCG@K against the example's
  // `target_item_field`).
  std::string target_field = "target";
  int64_t max_new_tokens = 32;
  std::string constrain_field;
  std::string target_item_field = "target_item_id";

  // Retrieve: the item tower's template over catalog lines; the user's
  // target item is `target_item_field`.
  TaskTemplate item_template;
  int64_t embedding_dim = 128;
  double temperature = 0.07;

  std::vector<TaskTemplate> templates;
  ZeroShotSpec zero_shot;

  // The validation metric that early stopping and the best module follow
  // ("auc", "accuracy", "neg_rmse", "hr@10", "neg_perplexity", ...: higher
  // is better). Empty = the kind's default.
  std::string select_metric;

  // The spec as read, stored in module metadata.
  nlohmann::json json;

  // Index of the template called `name`; NotFound listing the names.
  absl::StatusOr<size_t> TemplateIndex(const std::string& name) const;
  // Templates that training draws from (not held out).
  std::vector<size_t> TrainingTemplates() const;
  // The option whose label is `label`, or -1.
  int OptionIndex(double label) const;
  // The metric early stopping follows (select_metric or the default).
  std::string SelectMetric() const;
};

// Whether following the spec's selection metric needs decoding at
// validation (generate tasks selected by BLEU, ROUGE or HR@K).
bool SelectNeedsDecoding(const TaskSpec& spec);

// Parses and checks a spec. InvalidArgument naming `where` (a file path)
// and the field for: unknown kinds or methods, unknown keys (a typo must
// not be silently ignored), missing or empty templates, options on a
// non-score task, fewer than two options or duplicate labels, a prompt too
// short to hold the options, special tokens in generate templates, sizes
// out of range, a select_metric the task does not report.
absl::StatusOr<TaskSpec> ParseTaskSpec(const nlohmann::json& json,
                                       const std::string& where);
// Reads and parses a spec file. NotFound naming the path when unreadable.
absl::StatusOr<TaskSpec> LoadTaskSpec(const std::string& path);

}  // namespace optrec

#endif  // OPTREC_TUNING_TASKS_TASK_SPEC_H_
