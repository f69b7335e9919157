// Mixed-task batches: rows of several tasks, each row carrying its own
// task's module (soft prompt, adapter, special tokens), run through the
// frozen backbone in one forward pass; then each task's loss from its own
// rows. Training and validation share this.
//
// Shape legend: N examples of one task, B rows of a batch, T positions, D
// width, C options, E embedding width, V vocabulary.
#ifndef OPTREC_TUNING_TUNE_TASK_BATCH_H_
#define OPTREC_TUNING_TUNE_TASK_BATCH_H_

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cache/state_cache.h"
#include "core/model/transformer.h"
#include "tuning/module/prompt_module.h"
#include "tuning/tasks/examples.h"
#include "tuning/tasks/render.h"
#include "tuning/tasks/task_spec.h"

namespace optrec {

// Everything about one task that a job or an evaluation holds: the spec,
// the catalog it reads items from, the encoder, and the module being
// trained or evaluated (null for zero-shot evaluation). Not copyable: the
// encoder points into the spec and catalog.
struct TaskContext {
  TaskSpec spec;
  std::shared_ptr<const Tokenizer> tokenizer;  // kept alive for the encoder
  std::shared_ptr<const Catalog> catalog;      // null when the task has none
  std::unique_ptr<InputEncoder> encoder;
  std::shared_ptr<PromptModule> module;
  // Late interaction (spec.lower_layers > 0): the segments' lower-layer
  // states, kept across steps and evaluations (bf16, as a server keeps
  // them; a miss returns what a later hit will, so results do not depend
  // on what is cached). Null for other tasks.
  std::shared_ptr<SegmentStateCache> segment_cache;

  TaskContext() = default;
  TaskContext(const TaskContext&) = delete;
  TaskContext& operator=(const TaskContext&) = delete;
};

// Bytes the segment-state cache of a late-interaction task may hold.
constexpr int64_t kTaskSegmentCacheBytes = int64_t{1} << 30;

// Makes a context for `spec` over `model`'s tokenizer, loading the
// catalog the spec names (relative paths under `data_root`), with a
// segment-state cache of kTaskSegmentCacheBytes when the spec has
// lower_layers > 0. The module is left null. FailedPrecondition when the model
// has no tokenizer; catalog errors as Catalog::Load.
absl::StatusOr<std::unique_ptr<TaskContext>> MakeTaskContext(
    const TaskSpec& spec, const TransformerLM& model,
    const std::string& data_root);

// A path of the spec (data folder, catalog) resolved under `data_root`
// unless absolute.
std::string ResolveDataPath(const std::string& data_root,
                            const std::string& path);

// One example made ready for a batch.
struct PreparedExample {
  EncodedInput input;           // the (user) tower's input
  EncodedInput item;            // retrieve: the target item's input
  std::vector<int32_t> target;  // generate: target ids, then EOS
  int label = -1;               // score: option index
  int64_t target_item = -1;     // retrieve: catalog index of the target
};

// Encodes example `e` of the task under template `t` (one of the spec's
// templates, or its zero-shot input). Errors name the example's line.
absl::StatusOr<PreparedExample> PrepareExample(const TaskContext& task,
                                               const Example& e,
                                               const TaskTemplate& t);

// The examples of one task in a batch.
struct BatchPart {
  const TaskContext* task = nullptr;
  // The module its rows run with; generate tasks may have none (the
  // backbone alone: zero-shot perplexity).
  const PromptModule* module = nullptr;
  std::vector<PreparedExample> examples;
};

// Per-task results of one mixed forward pass.
struct PartOutput {
  torch::Tensor loss;         // scalar: this task's mean loss
  torch::Tensor logits;       // score: [N, C] option scores
  torch::Tensor user;         // retrieve: [N, E] user embeddings
  torch::Tensor item;         // retrieve: [N, E] target item embeddings
  int64_t target_tokens = 0;  // generate: tokens the loss averages over
  // Retrieve: every row had the same target, so there was no negative; the
  // loss is zero (with zero gradients).
  bool skipped = false;
};

// Runs every part's rows in one forward pass and computes each task's loss:
//   score:    cross-entropy of OptionLogits at the last position;
//   generate: mean next-token cross-entropy over target tokens (EOS
//             included);
//   retrieve: in-batch InfoNCE from users to their target items at the
//             spec's temperature, other rows with the same target item
//             masked out of the negatives (a part whose rows all share one
//             target gives a zero loss, `skipped`).
// The losses stay on autograd's tape when a module's tensors require grad.
// Every part needs at least one example. Errors: InvalidArgument for an
// empty part, or an example with no input and no module; forward errors as
// TransformerLM::Forward's; Internal for a LibTorch failure.
absl::StatusOr<std::vector<PartOutput>> RunMixedBatch(
    const TransformerLM& model, const std::vector<BatchPart>& parts);

}  // namespace optrec

#endif  // OPTREC_TUNING_TUNE_TASK_BATCH_H_
