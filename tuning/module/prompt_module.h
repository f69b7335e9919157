// A task's prompt module: the small set of learned tensors that turns the
// frozen backbone into one task's model, with the metadata that says what
// it was trained for and on which backbone.
//
// What a module holds, by method (P prompt length, C options, R adapter
// rank, E embedding width, L layers, D backbone width, S special tokens):
//   prompt          [P, D]  input-layer soft prompt (every method)
//   head.weight     [C, D]  score tasks, prompt method: a separate linear
//   head.bias       [C]     classifier on the last position's final state
//   (option method: the last C rows of `prompt` are the classifier weights,
//   M6-Rec's soft options, so no head exists)
//   adapter.down    [L, D, R]  option_adapter: FFN(x) + scale[l] *
//   adapter.up      [L, R, D]  up[l](gelu(down[l] x)) in every layer
//   adapter.scale   [L]
//   special         [S, D]  embeddings of the templates' <|name|> tokens
//   segment         [G, D]  late interaction (spec.lower_layers > 0): one
//                           embedding per template part, added to that
//                           part's segments as they enter the upper layers
//   projection      [E, D]  retrieve: the user tower's projection
//   item.prompt, item.adapter.*, item.projection: the item tower's own
//
// File format: one safetensors file (f32 tensors under the names above)
// whose "__metadata__" holds "optrec_module": a JSON object with the task
// spec, version, method, the base model's fingerprint, the training data
// hash and the validation metrics (docs/tuning.md lists the keys).
#ifndef OPTREC_TUNING_MODULE_PROMPT_MODULE_H_
#define OPTREC_TUNING_MODULE_PROMPT_MODULE_H_

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/transformer.h"
#include "tuning/tasks/render.h"
#include "tuning/tasks/task_spec.h"

namespace optrec {

// One tower's tensors (score and generate tasks have one tower).
struct TowerWeights {
  torch::Tensor prompt;      // [P, D]
  RowAdapter adapter;        // undefined unless option_adapter
  torch::Tensor projection;  // [E, D], retrieve only
};

class PromptModule {
 public:
  using Named = std::vector<std::pair<std::string, torch::Tensor>>;

  // A fresh module for `spec` trained by `method` over `model`, with
  // initial weights drawn from `seed`:
  //   - prompt vectors are copies of the embeddings of random vocabulary
  //     tokens (Lester et al. 2021);
  //   - under the option methods the last C prompt vectors start as the
  //     mean embedding of each option's words, so the classifier starts
  //     where the backbone's own reading of those words is;
  //   - the prompt method's head starts at zero;
  //   - adapters start with up = 0 and scale = 1 (the backbone's output
  //     unchanged), down ~ N(0, 1/D);
  //   - special tokens start as the mean embedding of their name's words;
  //   - projections ~ N(0, 1/D).
  // The encoder supplies the tokenizer for the option and special words.
  // Every tensor requires grad. InvalidArgument when the spec cannot be
  // built on this model (prompt longer than the model's positions, say).
  static absl::StatusOr<std::shared_ptr<PromptModule>> Create(
      const TaskSpec& spec, TuningMethod method, const TransformerLM& model,
      const InputEncoder& encoder, uint64_t seed);

  // The same from token ids: `option_ids[c]` the words of option c (one
  // entry per option of a score task, else none) and `special_ids[s]` those
  // of special token s (SpecialTokenNames order). InvalidArgument for a
  // wrong number of entries or an empty one.
  static absl::StatusOr<std::shared_ptr<PromptModule>> CreateFromIds(
      const TaskSpec& spec, TuningMethod method, const TransformerLM& model,
      const std::vector<std::vector<int32_t>>& option_ids,
      const std::vector<std::vector<int32_t>>& special_ids, uint64_t seed);

  // Reads a module file and checks it against `model`: FailedPrecondition
  // naming both fingerprints when it was trained on another base model;
  // InvalidArgument naming the tensor or metadata field when shapes, kind
  // or method do not fit; NotFound / DataLoss for a missing or corrupt
  // file. Loaded tensors do not require grad.
  static absl::StatusOr<std::shared_ptr<PromptModule>> Load(
      const std::string& path, const TransformerLM& model);

  // Writes the module atomically (see WriteSafetensors). The metadata are
  // info() plus the fields the module itself knows (task, kind, method,
  // spec, base fingerprint, parameter counts).
  absl::Status Save(const std::string& path) const;

  // Whether `other` (a spec given for evaluation, with other data paths or
  // templates, say) shapes rows the way this module was trained for: same
  // kind, option labels, prompt length, special tokens and embedding
  // width. InvalidArgument naming the first field that differs.
  absl::Status CheckSpecFits(const TaskSpec& other) const;

  const TaskSpec& spec() const { return spec_; }
  TuningMethod method() const { return method_; }
  const std::string& base_fingerprint() const { return base_fingerprint_; }
  // Free-form metadata kept with the module: version, data hash, metrics.
  nlohmann::json& info() { return info_; }
  const nlohmann::json& info() const { return info_; }

  const TowerWeights& user() const { return user_; }
  const TowerWeights& item() const { return item_; }
  const torch::Tensor& special() const { return special_; }

  // Every learned tensor under its file name, in a fixed order.
  Named NamedTensors() const;
  std::vector<torch::Tensor> Parameters() const;
  int64_t ParameterCount() const;
  // Replaces the values of the tensors (same names and shapes, e.g. from a
  // checkpoint); InvalidArgument naming a missing or misshapen tensor, in
  // which case nothing changed.
  absl::Status CopyFrom(const Named& tensors);

  // Class scores [N, C] of final hidden states h [N, D] (score tasks).
  torch::Tensor OptionLogits(const torch::Tensor& h) const;
  // L2-normalised embeddings [N, E] of pooled final states h [N, D] of the
  // user tower (item_tower false) or the item tower.
  torch::Tensor Embed(const torch::Tensor& h, bool item_tower) const;

  // The row for one encoded input of a tower: ids, the tower's prompt and
  // adapter, and the special tokens' embeddings at their positions.
  RowInput MakeRow(const EncodedInput& in, bool item_tower) const;
  // Late interaction: the joint row of one segmented input (score tasks),
  // given its segments' lower-layer states [N_i, D] in order: the prompt,
  // the adapter, and each segment's part embedding.
  JointRowInput MakeJointRow(const EncodedInput& in,
                             std::vector<torch::Tensor> states) const;
  const torch::Tensor& segment() const { return segment_; }

  // Segment embeddings a spec's module holds: the most parts any of its
  // templates has.
  static int64_t SegmentRoles(const TaskSpec& spec);

 private:
  PromptModule() = default;
  // CreateFromIds after its checks; LibTorch errors propagate as
  // exceptions.
  static absl::StatusOr<std::shared_ptr<PromptModule>> NewModule(
      const TaskSpec& spec, TuningMethod method, const TransformerLM& model,
      const std::vector<std::vector<int32_t>>& option_ids,
      const std::vector<std::vector<int32_t>>& special_ids, uint64_t seed);
  absl::Status CheckShapes(const ModelConfig& config,
                           const std::string& where) const;

  TaskSpec spec_;
  TuningMethod method_ = TuningMethod::kOption;
  std::string base_fingerprint_;
  int64_t backbone_parameters_ = 0;
  nlohmann::json info_ = nlohmann::json::object();
  TowerWeights user_, item_;
  torch::Tensor head_weight_, head_bias_;  // [C, D], [C]: prompt method
  torch::Tensor special_;                  // [S, D] or undefined
  torch::Tensor segment_;                  // [G, D] or undefined
};

}  // namespace optrec

#endif  // OPTREC_TUNING_MODULE_PROMPT_MODULE_H_
