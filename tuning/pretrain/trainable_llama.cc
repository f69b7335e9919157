#include "tuning/pretrain/trainable_llama.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"

namespace optrec {
namespace {

absl::Status Positive(const char* field, int64_t value) {
  if (value > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("model shape: ", field, " must be positive, got ", value));
}

// x * rsqrt(mean(x^2) + eps) * weight over the last dimension, in f32.
torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& weight,
                      double eps) {
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + eps) * weight;
}

// x [B, N, T, E] rotated pairwise (i, i + E/2) by cos/sin [T, E].
torch::Tensor Rope(const torch::Tensor& x, const torch::Tensor& cos,
                   const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  torch::Tensor rotated =
      torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& weight,
                     torch::ScalarType compute) {
  return torch::linear(x.to(compute), weight.to(compute));
}

}  // namespace

absl::Status ValidateShape(const LlamaShape& s) {
  for (auto [field, value] : {std::pair<const char*, int64_t>{"vocab", s.vocab},
                              {"hidden", s.hidden},
                              {"layers", s.layers},
                              {"heads", s.heads},
                              {"kv_heads", s.kv_heads},
                              {"ffn", s.ffn},
                              {"max_positions", s.max_positions}}) {
    if (absl::Status st = Positive(field, value); !st.ok()) return st;
  }
  if (s.hidden % s.heads != 0 || (s.hidden / s.heads) % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model shape: hidden ", s.hidden, " must split into ",
                     s.heads, " heads of an even size"));
  }
  if (s.heads % s.kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model shape: heads ", s.heads,
                     " must be a multiple of kv_heads ", s.kv_heads));
  }
  if (s.bos_id < 0 || s.bos_id >= s.vocab || s.eos_id < 0 ||
      s.eos_id >= s.vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("model shape: bos/eos ids ", s.bos_id, "/", s.eos_id,
                     " must lie in the vocabulary of ", s.vocab));
  }
  return absl::OkStatus();
}

nlohmann::json LlamaConfigJson(const LlamaShape& s) {
  nlohmann::json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["vocab_size"] = s.vocab;
  j["hidden_size"] = s.hidden;
  j["num_hidden_layers"] = s.layers;
  j["num_attention_heads"] = s.heads;
  j["num_key_value_heads"] = s.kv_heads;
  j["intermediate_size"] = s.ffn;
  j["max_position_embeddings"] = s.max_positions;
  j["rms_norm_eps"] = s.norm_eps;
  j["rope_theta"] = s.rope_theta;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = true;
  j["bos_token_id"] = s.bos_id;
  j["eos_token_id"] = s.eos_id;
  j["torch_dtype"] = "float32";
  return j;
}

TrainableLlamaImpl::TrainableLlamaImpl(const LlamaShape& shape)
    : shape_(shape) {
  const int64_t d = shape.hidden, e = shape.hidden / shape.heads;
  const int64_t h = shape.heads, k = shape.kv_heads, f = shape.ffn;
  const double std_in = 0.02;
  const double std_out = 0.02 / std::sqrt(2.0 * shape.layers);
  auto normal = [](std::vector<int64_t> dims, double std) {
    return torch::randn(dims, torch::kFloat32) * std;
  };
  std::map<std::string, torch::Tensor> named;
  // torch::nn::Module names may not contain dots: register under an
  // underscore form and keep the Hugging Face name for the state dict.
  auto reg = [&](const std::string& hf_name, torch::Tensor init) {
    std::string module_name = hf_name;
    std::replace(module_name.begin(), module_name.end(), '.', '_');
    torch::Tensor p = register_parameter(module_name, init);
    named[hf_name] = p;
    return p;
  };
  embed_ = reg("model.embed_tokens.weight", normal({shape.vocab, d}, std_in));
  final_norm_ = reg("model.norm.weight", torch::ones({d}));
  for (int64_t l = 0; l < shape.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    Layer layer;
    layer.attn_norm = reg(p + "input_layernorm.weight", torch::ones({d}));
    layer.q = reg(p + "self_attn.q_proj.weight", normal({h * e, d}, std_in));
    layer.k = reg(p + "self_attn.k_proj.weight", normal({k * e, d}, std_in));
    layer.v = reg(p + "self_attn.v_proj.weight", normal({k * e, d}, std_in));
    layer.o = reg(p + "self_attn.o_proj.weight", normal({d, h * e}, std_out));
    layer.mlp_norm =
        reg(p + "post_attention_layernorm.weight", torch::ones({d}));
    layer.gate = reg(p + "mlp.gate_proj.weight", normal({f, d}, std_in));
    layer.up = reg(p + "mlp.up_proj.weight", normal({f, d}, std_in));
    layer.down = reg(p + "mlp.down_proj.weight", normal({d, f}, std_out));
    layers_.push_back(layer);
  }
  named_.assign(named.begin(), named.end());

  std::vector<float> inv(e / 2);
  for (int64_t i = 0; i < e / 2; ++i) {
    inv[i] = static_cast<float>(std::pow(shape.rope_theta, -2.0 * i / e));
  }
  inv_freq_ = register_buffer("inv_freq", torch::tensor(inv));
}

int64_t TrainableLlamaImpl::parameter_count() const {
  int64_t n = 0;
  for (const auto& [name, p] : named_) n += p.numel();
  return n;
}

std::vector<std::pair<std::string, torch::Tensor>>
TrainableLlamaImpl::StateDict() const {
  return named_;
}

absl::Status TrainableLlamaImpl::LoadStateDict(
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  std::map<std::string, torch::Tensor> given(tensors.begin(), tensors.end());
  for (const auto& [name, p] : named_) {
    auto it = given.find(name);
    if (it == given.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("state dict: missing tensor ", name));
    }
    if (it->second.sizes() != p.sizes()) {
      return absl::InvalidArgumentError(
          absl::StrCat("state dict: tensor ", name, " has shape ",
                       c10::str(it->second.sizes()), ", the model needs ",
                       c10::str(p.sizes())));
    }
  }
  if (given.size() != named_.size()) {
    for (const auto& [name, t] : given) {
      const bool known =
          std::any_of(named_.begin(), named_.end(),
                      [&](const auto& entry) { return entry.first == name; });
      if (!known) {
        return absl::InvalidArgumentError(
            absl::StrCat("state dict: unknown tensor ", name));
      }
    }
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, p] : named_) p.copy_(given.at(name));
  return absl::OkStatus();
}

torch::Tensor TrainableLlamaImpl::Attention(const Layer& layer,
                                            const torch::Tensor& x,
                                            torch::ScalarType compute) const {
  const int64_t b = x.size(0), t = x.size(1);
  const int64_t h = shape_.heads, k = shape_.kv_heads, e = shape_.hidden / h;
  // Angles [T, E/2] -> cos/sin [T, E], shared by every row.
  torch::Tensor pos = torch::arange(t, torch::kFloat32).unsqueeze(1);
  torch::Tensor angles = torch::cat({pos * inv_freq_, pos * inv_freq_}, -1);
  torch::Tensor cos = angles.cos().to(compute), sin = angles.sin().to(compute);

  torch::Tensor q = Linear(x, layer.q, compute).view({b, t, h, e});
  torch::Tensor kk = Linear(x, layer.k, compute).view({b, t, k, e});
  torch::Tensor v = Linear(x, layer.v, compute).view({b, t, k, e});
  q = Rope(q.transpose(1, 2), cos, sin);    // [B, H, T, E]
  kk = Rope(kk.transpose(1, 2), cos, sin);  // [B, K, T, E]
  v = v.transpose(1, 2);                    // [B, K, T, E]
  if (k != h) {
    // Query head i reads key/value head i / (H / K).
    kk = kk.repeat_interleave(h / k, 1);  // [B, H, T, E]
    v = v.repeat_interleave(h / k, 1);
  }
  torch::Tensor scores = torch::matmul(q, kk.transpose(-1, -2))
                             .to(torch::kFloat32)
                             .mul(1.0 / std::sqrt(static_cast<double>(e)));
  torch::Tensor future =
      torch::ones({t, t}, torch::kBool).triu(1);  // [T, T] true above diag
  scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
  torch::Tensor attn = torch::softmax(scores, -1).to(compute);  // [B,H,T,T]
  torch::Tensor out = torch::matmul(attn, v)                    // [B,H,T,E]
                          .transpose(1, 2)
                          .reshape({b, t, h * e});
  return Linear(out, layer.o, compute).to(torch::kFloat32);  // [B, T, D]
}

torch::Tensor TrainableLlamaImpl::Mlp(const Layer& layer,
                                      const torch::Tensor& x,
                                      torch::ScalarType compute) const {
  torch::Tensor gate = torch::silu(Linear(x, layer.gate, compute));  // [B,T,F]
  torch::Tensor up = Linear(x, layer.up, compute);                   // [B,T,F]
  return Linear(gate * up, layer.down, compute).to(torch::kFloat32);
}

torch::Tensor TrainableLlamaImpl::Forward(const torch::Tensor& ids,
                                          torch::ScalarType compute) {
  torch::Tensor x = torch::embedding(embed_, ids);  // [B, T, D] f32
  for (const Layer& layer : layers_) {
    x = x +
        Attention(layer, RmsNorm(x, layer.attn_norm, shape_.norm_eps), compute);
    x = x + Mlp(layer, RmsNorm(x, layer.mlp_norm, shape_.norm_eps), compute);
  }
  torch::Tensor hidden = RmsNorm(x, final_norm_, shape_.norm_eps);
  return Linear(hidden, embed_, compute).to(torch::kFloat32);  // [B, T, V]
}

}  // namespace optrec
