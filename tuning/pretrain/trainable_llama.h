// A Llama-architecture language model whose weights train: the model
// `optrec pretrain` fits from scratch. Its parameters carry the Hugging Face
// names and layout, so the state written by StateDict() is a checkpoint the
// frozen core (core/model/transformer.h) loads like any other.
//
// The forward pass is written for training: whole blocks of tokens, causal
// attention, no cache, no padding. Serving uses the core's forward, which
// the tests check against this one.
//
// Shape legend: B blocks, T positions, D width, H query heads, K key/value
// heads, E head dim, F MLP width, V vocabulary, L layers.
#ifndef OPTREC_TUNING_PRETRAIN_TRAINABLE_LLAMA_H_
#define OPTREC_TUNING_PRETRAIN_TRAINABLE_LLAMA_H_

#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace optrec {

// The architecture of a trainable model.
struct LlamaShape {
  int64_t vocab = 2048;         // V, tokenizer pieces
  int64_t hidden = 128;         // D
  int64_t layers = 8;           // L
  int64_t heads = 4;            // H; hidden must be a multiple
  int64_t kv_heads = 2;         // K; heads must be a multiple
  int64_t ffn = 384;            // F, SwiGLU width
  int64_t max_positions = 512;  // longest block trained on
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  int32_t bos_id = 1;  // written to config.json
  int32_t eos_id = 2;
};

// InvalidArgument naming the field for a shape that cannot be built (a
// non-positive size, heads not dividing hidden, an odd head dim, ...).
absl::Status ValidateShape(const LlamaShape& shape);

// The config.json of the shape: model_type "llama", tied embeddings.
nlohmann::json LlamaConfigJson(const LlamaShape& shape);

class TrainableLlamaImpl : public torch::nn::Module {
 public:
  // Registers the parameters, initialised from LibTorch's global generator
  // (seed it first for a reproducible start): matrices ~ N(0, 0.02), the
  // projections that write into the residual stream (o_proj, down_proj)
  // scaled down by sqrt(2 L), norm weights 1. The shape must be valid.
  explicit TrainableLlamaImpl(const LlamaShape& shape);

  // Logits [B, T, V] (f32) of ids [B, T] (int64), each position seeing
  // itself and earlier ones. `compute` is the dtype matrix products run in
  // (kFloat32 or kBFloat16); parameters stay f32 and get f32 gradients.
  torch::Tensor Forward(const torch::Tensor& ids,
                        torch::ScalarType compute = torch::kFloat32);

  // Every parameter under its Hugging Face name, sorted by name. The
  // tensors are the live parameters (not copies).
  std::vector<std::pair<std::string, torch::Tensor>> StateDict() const;

  // Copies `tensors` into the parameters. InvalidArgument naming the tensor
  // for a missing name, an unknown name, or a shape mismatch; on error no
  // parameter has been changed.
  absl::Status LoadStateDict(
      const std::vector<std::pair<std::string, torch::Tensor>>& tensors);

  const LlamaShape& shape() const { return shape_; }
  int64_t parameter_count() const;

 private:
  struct Layer {
    torch::Tensor attn_norm, q, k, v, o;  // [D], [HE, D], [KE, D] x2, [D, HE]
    torch::Tensor mlp_norm, gate, up, down;  // [D], [F, D] x2, [D, F]
  };

  torch::Tensor Attention(const Layer& layer, const torch::Tensor& x,
                          torch::ScalarType compute) const;
  torch::Tensor Mlp(const Layer& layer, const torch::Tensor& x,
                    torch::ScalarType compute) const;

  LlamaShape shape_;
  torch::Tensor embed_;       // [V, D], also the LM head (tied)
  torch::Tensor final_norm_;  // [D]
  torch::Tensor inv_freq_;    // [E/2] RoPE frequencies (a buffer)
  std::vector<Layer> layers_;
  std::vector<std::pair<std::string, torch::Tensor>> named_;  // sorted
};
TORCH_MODULE(TrainableLlama);

}  // namespace optrec

#endif  // OPTREC_TUNING_PRETRAIN_TRAINABLE_LLAMA_H_
