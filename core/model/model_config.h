// The architecture of a checkpoint, read from its Hugging Face config.json.
#ifndef OPTREC_CORE_MODEL_MODEL_CONFIG_H_
#define OPTREC_CORE_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace optrec {

// The two families the forward pass implements.
//  kLlama: RMSNorm, RoPE (rotate-half layout), SwiGLU, grouped-query
//          attention. model_type llama, mistral, qwen2, qwen3.
//  kGpt2:  LayerNorm, learned positions, GELU MLP. model_type gpt2.
enum class Family { kLlama, kGpt2 };

// How RoPE frequencies are rescaled for long contexts (config key
// rope_scaling). kNone also covers rope_type "default".
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;           // llama3 only
  double high_freq_factor = 4.0;          // llama3 only
  int64_t original_max_positions = 8192;  // llama3 only
};

struct ModelConfig {
  std::string model_type;  // "llama", "mistral", "qwen2", "qwen3", "gpt2"
  Family family = Family::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // D
  int64_t num_layers = 0;         // L
  int64_t num_heads = 0;          // H, query heads
  int64_t num_kv_heads = 0;       // K, key/value heads (H for GPT-2)
  int64_t head_dim = 0;           // E
  int64_t intermediate_size = 0;  // F, MLP width
  // Longest position the checkpoint was trained for. GPT-2's learned
  // positions make this a hard limit; for RoPE models it is advisory.
  int64_t max_positions = 0;
  double norm_eps = 1e-5;       // RMSNorm / LayerNorm epsilon
  double rope_theta = 10000.0;  // RoPE base (kLlama)
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;  // LM head shares the token embedding
  bool qkv_bias = false;             // q/k/v projections have biases (qwen2)
  bool o_bias = false;               // output projection has a bias
  bool mlp_bias = false;             // MLP projections have biases
  bool qk_norm = false;              // per-head RMSNorm on q and k (qwen3)
  // Keys further back than this many positions are not attended to (mistral).
  // 0 = no window.
  int64_t sliding_window = 0;
  // MLP activation: "silu" (SwiGLU gate), "gelu_new"/"gelu_pytorch_tanh"
  // (tanh approximation) or "gelu" (exact).
  std::string activation = "silu";
  int32_t bos_id = -1;           // -1 = none given
  std::vector<int32_t> eos_ids;  // empty = none given
  int32_t pad_id = -1;
  std::string torch_dtype;  // dtype the weights were saved in, if given

  // The parsed fields, as sorted JSON: the part of the model fingerprint
  // that comes from the config (formatting of config.json does not count).
  std::string CanonicalText() const;
};

// Parses config.json contents. `source` (a path) is named in every error.
// Unknown model types, missing required keys, inconsistent sizes (hidden not
// divisible by heads, heads not divisible by kv heads) and unsupported
// options (rope scaling types other than linear and llama3, attention layer
// scaling in GPT-2) are errors naming the field and its value.
absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& json,
                                             const std::string& source);

// Reads and parses `dir`/config.json; end-of-sequence ids listed in
// `dir`/generation_config.json, when present, are added to eos_ids.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

}  // namespace optrec

#endif  // OPTREC_CORE_MODEL_MODEL_CONFIG_H_
