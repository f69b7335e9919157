// The frozen language model: loads a Hugging Face checkpoint and runs batched
// forward passes with per-row soft prompts, padding, causal or prefix-LM
// masks and a KV cache.
//
// Shape legend: B rows, T positions in this call (soft prompt + tokens,
// right-padded), S cached columns, D width, H query heads, K key/value heads,
// G = H/K queries per key/value head, E head dim, F MLP width, V vocabulary,
// P soft-prompt length, L layers.
#ifndef OPTREC_CORE_MODEL_TRANSFORMER_H_
#define OPTREC_CORE_MODEL_TRANSFORMER_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/kv_cache.h"
#include "core/model/model_config.h"
#include "core/runtime/device.h"
#include "core/tokenizer/tokenizer.h"

namespace optrec {

// A low-rank FFN adapter for one row: layer l's MLP output becomes
//   FFN(x) + scale[l] * up[l](gelu_tanh(down[l] x)),  x the MLP input,
// so a task can adjust every layer with (2 D R + 1) L parameters while the
// backbone stays frozen. Rows of one batch may carry different adapters (or
// none); Forward gathers each row's weights rather than splitting the
// batch. Tensors may require grad.
struct RowAdapter {
  torch::Tensor down;   // [L, D, R]
  torch::Tensor up;     // [L, R, D]
  torch::Tensor scale;  // [L]
  bool defined() const { return down.defined(); }
};

// One row of a batch.
struct RowInput {
  // Tokens of this row, after its soft prompt. May be empty when the prompt
  // is not.
  std::vector<int32_t> ids;
  // Soft prompt [P, D] placed before `ids` as input embeddings; undefined
  // for none. May require grad: gradients flow back to it.
  torch::Tensor prompt;
  // Prefix-LM: the first `bidirectional_prefix` positions of this call
  // (prompt included) attend to each other in both directions, whatever a
  // sliding window says; later positions attend causally. With a cache,
  // cached keys stay as they were computed. 0 = plain causal.
  int64_t bidirectional_prefix = 0;
  // Undefined for none.
  RowAdapter adapter;
  // Learned token embeddings: the input embedding of ids[override_at[i]] is
  // replaced by override_embeddings[i] ([N, D], may require grad). Used for
  // trainable special tokens inside a template. Positions must be distinct.
  std::vector<int64_t> override_at;
  torch::Tensor override_embeddings;
};

// Optional per-layer change to the MLP output, applied as
// out = hook(layer, mlp_input [B, T, D], mlp_output [B, T, D]). Used by
// adapters; an empty function means no change.
using MlpHook =
    std::function<torch::Tensor(int64_t layer, const torch::Tensor& mlp_input,
                                const torch::Tensor& mlp_output)>;

struct ForwardOptions {
  enum class Logits {
    kNone,  // hidden states only
    kLast,  // logits at each row's last valid position: [B, V]
    kAll,   // logits at every position: [B, T, V]
  };
  Logits logits = Logits::kAll;
  MlpHook mlp_hook;
};

struct ForwardOutput {
  torch::Tensor hidden;          // [B, T, D] after the final norm
  torch::Tensor logits;          // [B, T, V], [B, V] or undefined (see Logits)
  torch::Tensor valid;           // [B, T] bool: true where a prompt or token is
  torch::Tensor positions;       // [B, T] int64 positions used
  std::vector<int64_t> lengths;  // per row: P + number of ids
};

// One row of the joint (upper) stack of late interaction: the states of its
// segments after the lower L' layers, concatenated in order after an
// optional soft prompt. The prompt, the segment embeddings and the adapter
// act only in layers L'..L-1, so the segments' lower states do not depend on
// the task and can be cached (see EncodeSegments).
struct JointRowInput {
  // Soft prompt [P, D] entering at layer L', before the segments; undefined
  // for none. May require grad.
  torch::Tensor prompt;
  // Each segment's states [N_i, D] from EncodeSegments with the same L'.
  std::vector<torch::Tensor> segments;
  // Empty, or one [D] vector per segment added to every position of that
  // segment as it enters layer L' (learned segment embeddings; an undefined
  // entry adds nothing). May require grad.
  std::vector<torch::Tensor> segment_embeddings;
  // Adapter shaped for all L layers, of which only layers L'..L-1 are
  // applied. Undefined for none.
  RowAdapter adapter;
};

struct LoadOptions {
  DeviceChoice device;
  // Load the tokenizer of the model directory when it has one.
  bool load_tokenizer = true;
};

class TransformerLM {
 public:
  // Loads `dir` (config.json, model.safetensors or a sharded index, and
  // optionally a tokenizer). Every tensor the architecture needs is checked
  // for presence and shape; errors name the directory and the tensor or
  // config field. Weights are frozen: none requires grad.
  static absl::StatusOr<std::shared_ptr<const TransformerLM>> Load(
      const std::string& dir, const LoadOptions& options = {});

  ~TransformerLM();

  const ModelConfig& config() const { return config_; }
  const DeviceChoice& device() const { return device_; }
  const std::string& directory() const { return dir_; }
  // Stable hash of the config and weights: 32 hex digits.
  const std::string& fingerprint() const { return fingerprint_; }
  // The tokenizer, or nullptr when the directory has none (feed ids).
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }
  std::shared_ptr<const Tokenizer> shared_tokenizer() const {
    return tokenizer_;
  }
  // Parameters of the backbone (all frozen).
  int64_t parameter_count() const;
  // Every weight tensor the forward pass reads (shared, frozen: none
  // requires grad). For inspection and tests; callers must not modify them.
  std::vector<torch::Tensor> parameters() const;

  // Runs the rows. With `cache`, rows continue where the cache's rows end:
  // cache->rows() must equal the number of rows, positions continue from
  // each row's next_position, keys and values of this call are appended.
  // Thread-safe: the model is immutable, several threads may call Forward at
  // once with their own caches. Errors: InvalidArgument naming the row for
  // an id outside the vocabulary, a prompt of the wrong width, a position
  // beyond GPT-2's table, or a cache of the wrong size; Internal for a
  // LibTorch failure. Adapters of the wrong shape or token overrides that do
  // not match the ids are InvalidArgument naming the row.
  absl::StatusOr<ForwardOutput> Forward(
      const std::vector<RowInput>& rows, KVCache* cache = nullptr,
      const ForwardOptions& options = {}) const;

  // Late interaction (M6-Rec), lower half: runs each segment alone through
  // layers 0..lower_layers-1, its positions starting at 0, and returns its
  // residual stream entering layer `lower_layers`: one [N_i, D] tensor per
  // segment in the model's dtype, on its device, owning its memory, with no
  // autograd history. Segments are batched with padding; a segment's states
  // do not depend on the other segments of the call. With lower_layers 0 the
  // states are the token embeddings (GPT-2's learned positions are then
  // added in the joint stack, at the row's positions, as in Forward).
  // Thread-safe. Errors: InvalidArgument for lower_layers outside [0, L], an
  // empty segment or an id outside the vocabulary (naming the segment), a
  // segment longer than GPT-2's position table; Internal for a LibTorch
  // failure.
  absl::StatusOr<std::vector<torch::Tensor>> EncodeSegments(
      const std::vector<std::vector<int32_t>>& segments,
      int64_t lower_layers) const;

  // Late interaction, upper half: runs each row's prompt and segment states
  // (plus segment embeddings) through layers lower_layers..L-1, causally,
  // at positions 0..P+N-1 of the concatenation, then the final norm and the
  // logits `options` ask for. Output as Forward's. With lower_layers 0 and
  // states from EncodeSegments, equals Forward on the concatenated tokens.
  // With lower_layers > 0, GPT-2's learned positions were added per segment
  // and are not added again. Autograd reaches the prompt, the segment
  // embeddings and the adapter. Thread-safe. Errors: InvalidArgument naming
  // the row (and segment) for lower_layers outside [0, L], states or
  // embeddings of the wrong shape, a row with nothing in it, a bad adapter;
  // Internal for a LibTorch failure.
  absl::StatusOr<ForwardOutput> ForwardJoint(
      const std::vector<JointRowInput>& rows, int64_t lower_layers,
      const ForwardOptions& options = {}) const;

  // An empty cache for `rows` rows on the model's device and dtype.
  KVCache NewCache(int64_t rows) const;

  // Token embeddings [.., D] of ids [..] (int64 tensor).
  torch::Tensor EmbedTokens(const torch::Tensor& ids) const;

  // Logits [.., V] of final hidden states [.., D].
  torch::Tensor Project(const torch::Tensor& hidden) const;

  // Internals of the forward pass, named here so that the helpers in
  // transformer.cc can use them.
  struct Weights;
  struct CallContext;
  // One call's input embeddings [B, T, D], positions and validity [B, T],
  // row lengths (prompt + ids) and each row's first position.
  struct CallInputs {
    torch::Tensor x, positions, valid;
    std::vector<int64_t> lengths, starts;
  };

 private:
  TransformerLM() = default;

  // Forward after validation; LibTorch errors propagate as c10::Error.
  void ForwardImpl(const std::vector<RowInput>& rows, KVCache* cache,
                   const ForwardOptions& options, ForwardOutput* out) const;
  CallInputs PrepareInputs(const std::vector<RowInput>& rows,
                           KVCache* cache) const;
  // The joint stack's inputs: prompt and segment states concatenated per
  // row, right-padded, at positions from 0.
  CallInputs PrepareJointInputs(const std::vector<JointRowInput>& rows,
                                int64_t lower_layers) const;
  // Final norm, logits, validity and positions of a finished call.
  void FinishOutput(torch::Tensor x, CallInputs in,
                    const ForwardOptions& options, ForwardOutput* out) const;

  std::string dir_;
  ModelConfig config_;
  DeviceChoice device_;
  std::string fingerprint_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::unique_ptr<const Weights> weights_;
};

}  // namespace optrec

#endif  // OPTREC_CORE_MODEL_TRANSFORMER_H_
