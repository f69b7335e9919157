// A plain-loop reference of the causal forward pass of the Llama family
// (Llama, Qwen2, Qwen3 layouts) and GPT-2, for tests only.
//
// Written independently of optrec's torch model as nested loops in double
// precision over std::vector<double>, using no torch operation for the math,
// so that a bug in the model code cannot hide in a shared helper. It is slow
// (no batching, no cache) and meant for tiny models.
#ifndef OPTREC_TESTS_TESTLIB_REFERENCE_FORWARD_H_
#define OPTREC_TESTS_TESTLIB_REFERENCE_FORWARD_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/checkpoint/weight_store.h"

namespace optrec {

// Tensor name -> (shape, row-major values).
using ReferenceWeights =
    std::map<std::string, std::pair<std::vector<int64_t>, std::vector<double>>>;

// The architecture numbers ReferenceForward needs.
struct ReferenceConfig {
  std::string family = "llama";  // "llama" or "gpt2".
  int hidden = 0;                // D, model width.
  int layers = 0;                // L.
  int heads = 0;                 // H, query heads.
  int kv_heads = 0;              // K, key/value heads; H % K == 0. gpt2: H.
  int head_dim = 0;              // Width of one head. gpt2: D / H.
  int ffn = 0;                   // F, MLP width (gpt2: usually 4 D).
  int vocab = 0;                 // V.
  double eps = 1e-5;             // RMSNorm eps (llama), LayerNorm eps (gpt2).
  double rope_theta = 10000.0;   // RoPE base; llama only.
  bool tied = false;  // Logits use the token embedding, not lm_head.weight.
};

// Logits [P + T][V] of a causal forward pass over `prefix` rows ([P][D]
// input embeddings, a soft prompt, at positions 0..P-1) followed by the
// tokens `ids` (at positions P..P+T-1). For gpt2 the learned position
// embeddings are added to the prefix rows too, as Hugging Face does for
// inputs_embeds.
//
// Llama weights: model.embed_tokens.weight, model.layers.{i}.self_attn.
// {q,k,v,o}_proj.weight (optional q/k/v biases), optional self_attn.{q,k}_norm
// .weight, mlp.{gate,up,down}_proj.weight, input_layernorm.weight,
// post_attention_layernorm.weight, model.norm.weight, lm_head.weight unless
// tied. GPT-2 weights: h.{i}.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,
// mlp.c_proj}.{weight,bias}, ln_f.*, wte.weight, wpe.weight, all optionally
// prefixed by "transformer."; Conv1D weights are [in, out].
//
// On a bad config, a missing weight, a weight of the wrong shape, a token id
// outside the vocabulary or a prefix row of the wrong width, records a gtest
// failure naming the problem and returns an empty vector.
std::vector<std::vector<double>> ReferenceForward(
    const ReferenceConfig& config, const ReferenceWeights& weights,
    const std::vector<int>& ids,
    const std::vector<std::vector<double>>& prefix = {});

// Late interaction in the reference: each segment alone through layers
// 0..lower_layers-1 at positions 0..N_i-1 (GPT-2: its learned positions
// added to the segment's tokens when lower_layers > 0), then the prefix rows
// followed by every segment's states (plus segment_embeddings[i] when
// given, one [D] row per segment) through layers lower_layers..L-1 at
// positions 0..S-1 (GPT-2: learned positions added there only when
// lower_layers is 0); returns logits [S][V]. Failures as ReferenceForward.
std::vector<std::vector<double>> ReferenceLateInteraction(
    const ReferenceConfig& config, const ReferenceWeights& weights,
    const std::vector<std::vector<int>>& segments, int lower_layers,
    const std::vector<std::vector<double>>& prefix = {},
    const std::vector<std::vector<double>>& segment_embeddings = {});

// Every tensor of `store`, converted to double. A tensor that cannot be read
// records a gtest failure and is left out.
ReferenceWeights ReadAllWeights(const WeightStore& store);

}  // namespace optrec

#endif  // OPTREC_TESTS_TESTLIB_REFERENCE_FORWARD_H_
