#include "core/model/model_config.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

using nlohmann::json;

// Reads config keys, naming the file and key in every error.
class ConfigReader {
 public:
  ConfigReader(const json& j, const std::string& source)
      : json_(j), source_(source) {}

  bool Has(const char* key) const {
    return json_.contains(key) && !json_[key].is_null();
  }

  absl::Status Error(const char* key, const std::string& what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": field '", key, "' ", what));
  }

  absl::StatusOr<int64_t> Int(const char* key) const {
    if (!Has(key)) return Error(key, "is missing");
    const json& v = json_[key];
    if (!v.is_number_integer()) {
      return Error(key, absl::StrCat("must be an integer, got ", v.dump()));
    }
    return v.get<int64_t>();
  }

  absl::StatusOr<int64_t> PositiveInt(const char* key) const {
    ASSIGN_OR_RETURN(int64_t value, Int(key));
    if (value <= 0) {
      return Error(key, absl::StrCat("must be positive, got ", value));
    }
    return value;
  }

  absl::StatusOr<int64_t> IntOr(const char* key, int64_t fallback) const {
    if (!Has(key)) return fallback;
    return Int(key);
  }

  absl::StatusOr<double> NumberOr(const char* key, double fallback) const {
    if (!Has(key)) return fallback;
    const json& v = json_[key];
    if (!v.is_number()) {
      return Error(key, absl::StrCat("must be a number, got ", v.dump()));
    }
    return v.get<double>();
  }

  absl::StatusOr<bool> BoolOr(const char* key, bool fallback) const {
    if (!Has(key)) return fallback;
    const json& v = json_[key];
    if (!v.is_boolean()) {
      return Error(key, absl::StrCat("must be true or false, got ", v.dump()));
    }
    return v.get<bool>();
  }

  absl::StatusOr<std::string> StringOr(const char* key,
                                       const std::string& fallback) const {
    if (!Has(key)) return fallback;
    const json& v = json_[key];
    if (!v.is_string()) {
      return Error(key, absl::StrCat("must be a string, got ", v.dump()));
    }
    return v.get<std::string>();
  }

  // An id or a list of ids (eos_token_id may be either).
  absl::StatusOr<std::vector<int32_t>> Ids(const char* key) const {
    std::vector<int32_t> ids;
    if (!Has(key)) return ids;
    const json& v = json_[key];
    if (v.is_number_integer()) {
      ids.push_back(v.get<int32_t>());
      return ids;
    }
    if (v.is_array()) {
      for (const json& item : v) {
        if (!item.is_number_integer()) {
          return Error(key, absl::StrCat("must hold integers, got ", v.dump()));
        }
        ids.push_back(item.get<int32_t>());
      }
      return ids;
    }
    return Error(
        key, absl::StrCat("must be an id or a list of ids, got ", v.dump()));
  }

  const json& raw() const { return json_; }
  const std::string& source() const { return source_; }

 private:
  const json& json_;
  const std::string& source_;
};

absl::Status ParseRopeScaling(const ConfigReader& reader,
                              const std::string& source, RopeScaling* scaling) {
  if (!reader.Has("rope_scaling")) return absl::OkStatus();
  const json& rs = reader.raw()["rope_scaling"];
  if (!rs.is_object()) {
    return reader.Error("rope_scaling", "must be an object");
  }
  ConfigReader inner(rs, source);
  ASSIGN_OR_RETURN(std::string type, inner.StringOr("rope_type", ""));
  if (type.empty()) {
    ASSIGN_OR_RETURN(type, inner.StringOr("type", "default"));
  }
  if (type == "default") return absl::OkStatus();
  ASSIGN_OR_RETURN(scaling->factor, inner.NumberOr("factor", 1.0));
  if (scaling->factor <= 0) {
    return reader.Error("rope_scaling.factor", "must be positive");
  }
  if (type == "linear") {
    scaling->type = RopeScaling::Type::kLinear;
    return absl::OkStatus();
  }
  if (type == "llama3") {
    scaling->type = RopeScaling::Type::kLlama3;
    ASSIGN_OR_RETURN(scaling->low_freq_factor,
                     inner.NumberOr("low_freq_factor", 1.0));
    ASSIGN_OR_RETURN(scaling->high_freq_factor,
                     inner.NumberOr("high_freq_factor", 4.0));
    ASSIGN_OR_RETURN(scaling->original_max_positions,
                     inner.IntOr("original_max_position_embeddings", 8192));
    if (scaling->low_freq_factor <= 0 || scaling->original_max_positions <= 0) {
      return reader.Error("rope_scaling",
                          "needs positive low_freq_factor and "
                          "original_max_position_embeddings");
    }
    if (scaling->high_freq_factor <= scaling->low_freq_factor) {
      return reader.Error("rope_scaling",
                          "needs high_freq_factor > low_freq_factor");
    }
    return absl::OkStatus();
  }
  return absl::UnimplementedError(
      absl::StrCat(source, ": field 'rope_scaling' has type '", type,
                   "'; supported: default, linear, llama3"));
}

absl::Status ParseLlama(const ConfigReader& r, const std::string& source,
                        ModelConfig* c) {
  ASSIGN_OR_RETURN(c->vocab_size, r.PositiveInt("vocab_size"));
  ASSIGN_OR_RETURN(c->hidden_size, r.PositiveInt("hidden_size"));
  ASSIGN_OR_RETURN(c->num_layers, r.PositiveInt("num_hidden_layers"));
  ASSIGN_OR_RETURN(c->num_heads, r.PositiveInt("num_attention_heads"));
  ASSIGN_OR_RETURN(c->num_kv_heads,
                   r.IntOr("num_key_value_heads", c->num_heads));
  ASSIGN_OR_RETURN(c->intermediate_size, r.PositiveInt("intermediate_size"));
  ASSIGN_OR_RETURN(c->max_positions, r.IntOr("max_position_embeddings", 0));
  ASSIGN_OR_RETURN(c->norm_eps, r.NumberOr("rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(c->rope_theta, r.NumberOr("rope_theta", 10000.0));
  if (!(c->norm_eps >= 0)) {
    return r.Error("rms_norm_eps",
                   absl::StrCat("must be >= 0, got ", c->norm_eps));
  }
  if (!(c->rope_theta > 0)) {
    return r.Error("rope_theta",
                   absl::StrCat("must be positive, got ", c->rope_theta));
  }
  ASSIGN_OR_RETURN(c->activation, r.StringOr("hidden_act", "silu"));
  if (c->activation != "silu") {
    return r.Error("hidden_act",
                   absl::StrCat("is '", c->activation,
                                "'; the Llama family supports silu"));
  }
  if (c->hidden_size % c->num_heads != 0 && !r.Has("head_dim")) {
    return r.Error(
        "num_attention_heads",
        absl::StrCat("(", c->num_heads, ") does not divide hidden_size (",
                     c->hidden_size, ") and head_dim is not given"));
  }
  ASSIGN_OR_RETURN(c->head_dim,
                   r.IntOr("head_dim", c->hidden_size / c->num_heads));
  if (c->head_dim <= 0 || c->head_dim % 2 != 0) {
    return r.Error("head_dim", absl::StrCat("must be positive and even for "
                                            "RoPE, got ",
                                            c->head_dim));
  }
  if (c->num_kv_heads <= 0 || c->num_heads % c->num_kv_heads != 0) {
    return r.Error(
        "num_key_value_heads",
        absl::StrCat("(", c->num_kv_heads,
                     ") must divide num_attention_heads (", c->num_heads, ")"));
  }
  RETURN_IF_ERROR(ParseRopeScaling(r, source, &c->rope_scaling));

  const std::string& type = c->model_type;
  ASSIGN_OR_RETURN(bool attention_bias, r.BoolOr("attention_bias", false));
  c->qkv_bias = attention_bias || type == "qwen2";
  c->o_bias = attention_bias && type != "qwen2" && type != "qwen3";
  ASSIGN_OR_RETURN(c->mlp_bias, r.BoolOr("mlp_bias", false));
  c->qk_norm = type == "qwen3";
  ASSIGN_OR_RETURN(c->tie_word_embeddings,
                   r.BoolOr("tie_word_embeddings", false));

  if (type == "mistral") {
    ASSIGN_OR_RETURN(c->sliding_window, r.IntOr("sliding_window", 0));
  } else if (type == "qwen2" || type == "qwen3") {
    ASSIGN_OR_RETURN(bool use_window, r.BoolOr("use_sliding_window", false));
    if (use_window) {
      return absl::UnimplementedError(absl::StrCat(
          source,
          ": field 'use_sliding_window' is true; per-layer sliding "
          "windows (max_window_layers) are not implemented"));
    }
  }
  if (c->sliding_window < 0) {
    return r.Error("sliding_window", "must not be negative");
  }
  return absl::OkStatus();
}

absl::Status ParseGpt2(const ConfigReader& r, ModelConfig* c) {
  ASSIGN_OR_RETURN(c->vocab_size, r.PositiveInt("vocab_size"));
  ASSIGN_OR_RETURN(c->hidden_size, r.PositiveInt("n_embd"));
  ASSIGN_OR_RETURN(c->num_layers, r.PositiveInt("n_layer"));
  ASSIGN_OR_RETURN(c->num_heads, r.PositiveInt("n_head"));
  c->num_kv_heads = c->num_heads;
  if (c->hidden_size % c->num_heads != 0) {
    return r.Error("n_head",
                   absl::StrCat("(", c->num_heads, ") does not divide n_embd (",
                                c->hidden_size, ")"));
  }
  c->head_dim = c->hidden_size / c->num_heads;
  ASSIGN_OR_RETURN(c->intermediate_size,
                   r.IntOr("n_inner", 4 * c->hidden_size));
  ASSIGN_OR_RETURN(c->max_positions, r.PositiveInt("n_positions"));
  ASSIGN_OR_RETURN(c->norm_eps, r.NumberOr("layer_norm_epsilon", 1e-5));
  ASSIGN_OR_RETURN(c->activation,
                   r.StringOr("activation_function", "gelu_new"));
  if (c->activation != "gelu_new" && c->activation != "gelu" &&
      c->activation != "gelu_pytorch_tanh") {
    return r.Error("activation_function",
                   absl::StrCat("is '", c->activation,
                                "'; supported: gelu_new, gelu_pytorch_tanh, "
                                "gelu"));
  }
  ASSIGN_OR_RETURN(bool scale_by_layer,
                   r.BoolOr("scale_attn_by_inverse_layer_idx", false));
  ASSIGN_OR_RETURN(bool scale, r.BoolOr("scale_attn_weights", true));
  if (scale_by_layer || !scale) {
    return absl::UnimplementedError(absl::StrCat(
        r.source(),
        ": GPT-2 attention scaling other than 1/sqrt(head_dim) "
        "(scale_attn_by_inverse_layer_idx, scale_attn_weights=false) is not "
        "implemented"));
  }
  c->qkv_bias = c->o_bias = c->mlp_bias = true;
  ASSIGN_OR_RETURN(c->tie_word_embeddings,
                   r.BoolOr("tie_word_embeddings", true));
  return absl::OkStatus();
}

}  // namespace

std::string ModelConfig::CanonicalText() const {
  json j;
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_layers"] = num_layers;
  j["num_heads"] = num_heads;
  j["num_kv_heads"] = num_kv_heads;
  j["head_dim"] = head_dim;
  j["intermediate_size"] = intermediate_size;
  j["max_positions"] = max_positions;
  j["norm_eps"] = norm_eps;
  j["rope_theta"] = rope_theta;
  j["rope_scaling"] = {{"type", static_cast<int>(rope_scaling.type)},
                       {"factor", rope_scaling.factor},
                       {"low", rope_scaling.low_freq_factor},
                       {"high", rope_scaling.high_freq_factor},
                       {"original", rope_scaling.original_max_positions}};
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["qkv_bias"] = qkv_bias;
  j["o_bias"] = o_bias;
  j["mlp_bias"] = mlp_bias;
  j["qk_norm"] = qk_norm;
  j["sliding_window"] = sliding_window;
  j["activation"] = activation;
  return j.dump();  // nlohmann::json objects keep keys sorted
}

absl::StatusOr<ModelConfig> ParseModelConfig(const json& j,
                                             const std::string& source) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": expected a JSON object"));
  }
  ConfigReader reader(j, source);
  ModelConfig c;
  ASSIGN_OR_RETURN(c.model_type, reader.StringOr("model_type", ""));
  if (c.model_type == "llama" || c.model_type == "mistral" ||
      c.model_type == "qwen2" || c.model_type == "qwen3") {
    c.family = Family::kLlama;
    RETURN_IF_ERROR(ParseLlama(reader, source, &c));
  } else if (c.model_type == "gpt2") {
    c.family = Family::kGpt2;
    RETURN_IF_ERROR(ParseGpt2(reader, &c));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": field 'model_type' is '", c.model_type,
        "'; supported architectures: llama, mistral, qwen2, qwen3, gpt2"));
  }
  ASSIGN_OR_RETURN(int64_t bos, reader.IntOr("bos_token_id", -1));
  ASSIGN_OR_RETURN(int64_t pad, reader.IntOr("pad_token_id", -1));
  c.bos_id = static_cast<int32_t>(bos);
  c.pad_id = static_cast<int32_t>(pad);
  ASSIGN_OR_RETURN(c.eos_ids, reader.Ids("eos_token_id"));
  ASSIGN_OR_RETURN(c.torch_dtype, reader.StringOr("torch_dtype", ""));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  json j = json::parse(buffer.str(), /*cb=*/nullptr,
                       /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  }
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(j, path));

  // Chat checkpoints often list extra end-of-sequence ids (an end-of-turn
  // token) only in generation_config.json; generation stops at all of them.
  const std::string gen_path = dir + "/generation_config.json";
  std::ifstream gen_in(gen_path);
  if (gen_in) {
    std::stringstream gen_buffer;
    gen_buffer << gen_in.rdbuf();
    json gen = json::parse(gen_buffer.str(), nullptr, false);
    if (gen.is_discarded() || !gen.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(gen_path, ": not a JSON object"));
    }
    ConfigReader reader(gen, gen_path);
    ASSIGN_OR_RETURN(std::vector<int32_t> extra, reader.Ids("eos_token_id"));
    for (int32_t id : extra) {
      if (std::find(config.eos_ids.begin(), config.eos_ids.end(), id) ==
          config.eos_ids.end()) {
        config.eos_ids.push_back(id);
      }
    }
  }
  return config;
}

}  // namespace optrec
