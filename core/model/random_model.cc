#include "core/model/random_model.h"

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "core/checkpoint/safetensors.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

using Named = std::vector<std::pair<std::string, torch::Tensor>>;

class RandomWeights {
 public:
  explicit RandomWeights(const RandomModelSpec& spec) : spec_(spec) {
    torch::manual_seed(spec.seed);
  }
  void Matrix(const std::string& name, std::vector<int64_t> shape) {
    out_.emplace_back(name, torch::randn(shape) * spec_.weight_scale);
  }
  void Norm(const std::string& name, int64_t width) {
    out_.emplace_back(name, 1.0 + 0.1 * torch::randn({width}));
  }
  void Bias(const std::string& name, int64_t width) {
    out_.emplace_back(name, 0.1 * torch::randn({width}));
  }
  Named& tensors() { return out_; }

 private:
  const RandomModelSpec& spec_;
  Named out_;
};

Named LlamaWeights(const RandomModelSpec& s) {
  RandomWeights w(s);
  const int64_t d = s.hidden, e = s.hidden / s.heads, f = s.ffn;
  w.Matrix("model.embed_tokens.weight", {s.vocab, d});
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    w.Norm(p + "input_layernorm.weight", d);
    w.Norm(p + "post_attention_layernorm.weight", d);
    w.Matrix(p + "self_attn.q_proj.weight", {s.heads * e, d});
    w.Matrix(p + "self_attn.k_proj.weight", {s.kv_heads * e, d});
    w.Matrix(p + "self_attn.v_proj.weight", {s.kv_heads * e, d});
    w.Matrix(p + "self_attn.o_proj.weight", {d, s.heads * e});
    if (s.model_type == "qwen2") {
      w.Bias(p + "self_attn.q_proj.bias", s.heads * e);
      w.Bias(p + "self_attn.k_proj.bias", s.kv_heads * e);
      w.Bias(p + "self_attn.v_proj.bias", s.kv_heads * e);
    }
    if (s.model_type == "qwen3") {
      w.Norm(p + "self_attn.q_norm.weight", e);
      w.Norm(p + "self_attn.k_norm.weight", e);
    }
    w.Matrix(p + "mlp.gate_proj.weight", {f, d});
    w.Matrix(p + "mlp.up_proj.weight", {f, d});
    w.Matrix(p + "mlp.down_proj.weight", {d, f});
  }
  w.Norm("model.norm.weight", d);
  if (!s.tied) w.Matrix("lm_head.weight", {s.vocab, d});
  return std::move(w.tensors());
}

Named Gpt2Weights(const RandomModelSpec& s) {
  RandomWeights w(s);
  const int64_t d = s.hidden, f = s.ffn;
  const std::string root = s.gpt2_prefix ? "transformer." : "";
  w.Matrix(root + "wte.weight", {s.vocab, d});
  w.Matrix(root + "wpe.weight", {s.max_positions, d});
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = absl::StrCat(root, "h.", l, ".");
    w.Norm(p + "ln_1.weight", d);
    w.Bias(p + "ln_1.bias", d);
    w.Matrix(p + "attn.c_attn.weight", {d, 3 * d});  // Conv1D: [in, out]
    w.Bias(p + "attn.c_attn.bias", 3 * d);
    w.Matrix(p + "attn.c_proj.weight", {d, d});
    w.Bias(p + "attn.c_proj.bias", d);
    w.Norm(p + "ln_2.weight", d);
    w.Bias(p + "ln_2.bias", d);
    w.Matrix(p + "mlp.c_fc.weight", {d, f});
    w.Bias(p + "mlp.c_fc.bias", f);
    w.Matrix(p + "mlp.c_proj.weight", {f, d});
    w.Bias(p + "mlp.c_proj.bias", d);
  }
  w.Norm(root + "ln_f.weight", d);
  w.Bias(root + "ln_f.bias", d);
  return std::move(w.tensors());
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace

RandomModelSpec Gpt2SmallSpec() {
  RandomModelSpec s;
  s.model_type = "gpt2";
  s.hidden = 768;
  s.layers = 12;
  s.heads = 12;
  s.kv_heads = 12;
  s.ffn = 3072;
  s.vocab = 50257;
  s.max_positions = 1024;
  s.tied = true;
  s.weight_scale = 0.02;
  return s;
}

nlohmann::json RandomModelConfig(const RandomModelSpec& s) {
  nlohmann::json j;
  j["model_type"] = s.model_type;
  j["vocab_size"] = s.vocab;
  if (s.bos_id >= 0) j["bos_token_id"] = s.bos_id;
  if (s.eos_id >= 0) j["eos_token_id"] = s.eos_id;
  if (s.model_type == "gpt2") {
    j["architectures"] = {"GPT2LMHeadModel"};
    j["n_embd"] = s.hidden;
    j["n_layer"] = s.layers;
    j["n_head"] = s.heads;
    j["n_inner"] = s.ffn;
    j["n_positions"] = s.max_positions;
    j["layer_norm_epsilon"] = 1e-5;
    j["activation_function"] = "gelu_new";
    return j;
  }
  j["hidden_size"] = s.hidden;
  j["num_hidden_layers"] = s.layers;
  j["num_attention_heads"] = s.heads;
  j["num_key_value_heads"] = s.kv_heads;
  j["intermediate_size"] = s.ffn;
  j["max_position_embeddings"] = s.max_positions;
  j["rms_norm_eps"] = 1e-6;
  j["rope_theta"] = 10000.0;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = s.tied;
  if (s.model_type == "mistral" && s.sliding_window > 0) {
    j["sliding_window"] = s.sliding_window;
  }
  return j;
}

absl::Status WriteRandomModel(const std::string& dir,
                              const RandomModelSpec& s) {
  std::filesystem::create_directories(dir);
  RETURN_IF_ERROR(
      WriteText(dir + "/config.json", RandomModelConfig(s).dump(2) + "\n"));
  Named tensors = s.model_type == "gpt2" ? Gpt2Weights(s) : LlamaWeights(s);
  for (auto& [name, t] : tensors) t = t.to(s.disk_dtype);
  if (s.shards <= 1) {
    return WriteSafetensors(dir + "/model.safetensors", tensors,
                            {{"format", "pt"}});
  }
  std::vector<Named> shards(s.shards);
  nlohmann::json index;
  index["metadata"] = nlohmann::json::object();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int shard = static_cast<int>(i % s.shards);
    shards[shard].push_back(tensors[i]);
    index["weight_map"][tensors[i].first] =
        absl::StrCat("model-", shard + 1, "-of-", s.shards, ".safetensors");
  }
  for (int i = 0; i < s.shards; ++i) {
    RETURN_IF_ERROR(WriteSafetensors(
        absl::StrCat(dir, "/model-", i + 1, "-of-", s.shards, ".safetensors"),
        shards[i], {{"format", "pt"}}));
  }
  return WriteText(dir + "/model.safetensors.index.json", index.dump(2));
}

}  // namespace optrec
