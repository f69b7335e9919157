#include "tuning/module/prompt_module.h"

#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/checkpoint/safetensors.h"
#include "core/util/status_macros.h"
#include "core/util/torch_errors.h"

namespace optrec {
namespace {

constexpr char kMetadataKey[] = "optrec_module";
constexpr int kFormatVersion = 1;

// The mean input embedding [D] of token ids (f32, no grad).
absl::StatusOr<torch::Tensor> MeanEmbedding(const TransformerLM& model,
                                            const std::vector<int32_t>& ids,
                                            const std::string& what) {
  if (ids.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has no tokens to start from"));
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= model.config().vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": token id ", id, " outside the vocabulary"));
    }
  }
  std::vector<int64_t> wide(ids.begin(), ids.end());
  torch::NoGradGuard no_grad;
  torch::Tensor e = model.EmbedTokens(
      torch::tensor(wide, torch::kInt64).to(model.device().device));
  return e.mean(0).to(torch::kCPU, torch::kFloat32);
}

torch::Tensor Trainable(torch::Tensor t) {
  return t.to(torch::kFloat32).contiguous().requires_grad_(true);
}

// A tower's initial weights.
TowerWeights NewTower(const TransformerLM& model, const TaskSpec& spec,
                      TuningMethod method, torch::Generator& gen) {
  const ModelConfig& c = model.config();
  const int64_t d = c.hidden_size, p = spec.prompt_length;
  const auto f32 = torch::dtype(torch::kFloat32);
  TowerWeights t;
  torch::Tensor tokens =
      torch::randint(3, c.vocab_size, {p}, gen, torch::dtype(torch::kInt64));
  {
    torch::NoGradGuard no_grad;
    t.prompt = model.EmbedTokens(tokens.to(model.device().device))
                   .to(torch::kCPU, torch::kFloat32);
  }
  if (method == TuningMethod::kOptionAdapter) {
    const int64_t r = spec.adapter_rank, l = c.num_layers;
    t.adapter.down = Trainable(torch::randn({l, d, r}, gen, f32) /
                               std::sqrt(static_cast<double>(d)));
    t.adapter.up = Trainable(torch::zeros({l, r, d}, f32));
    t.adapter.scale = Trainable(torch::ones({l}, f32));
  }
  if (spec.kind == TaskKind::kRetrieve) {
    t.projection = Trainable(torch::randn({spec.embedding_dim, d}, gen, f32) /
                             std::sqrt(static_cast<double>(d)));
  }
  return t;
}

void AddTower(const std::string& prefix, const TowerWeights& t,
              PromptModule::Named* out) {
  out->emplace_back(prefix + "prompt", t.prompt);
  if (t.adapter.defined()) {
    out->emplace_back(prefix + "adapter.down", t.adapter.down);
    out->emplace_back(prefix + "adapter.up", t.adapter.up);
    out->emplace_back(prefix + "adapter.scale", t.adapter.scale);
  }
  if (t.projection.defined()) {
    out->emplace_back(prefix + "projection", t.projection);
  }
}

}  // namespace

absl::StatusOr<std::shared_ptr<PromptModule>> PromptModule::Create(
    const TaskSpec& spec, TuningMethod method, const TransformerLM& model,
    const InputEncoder& encoder, uint64_t seed) {
  std::vector<std::vector<int32_t>> option_ids, special_ids;
  if (spec.kind == TaskKind::kScore) {
    for (const TaskOption& o : spec.options) {
      ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                       encoder.EncodeText(" " + o.text));
      option_ids.push_back(std::move(ids));
    }
  }
  for (const std::string& name : encoder.special_names()) {
    std::string words = name;
    for (char& ch : words) {
      if (ch == '_') ch = ' ';
    }
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, encoder.EncodeText(" " + words));
    special_ids.push_back(std::move(ids));
  }
  return CreateFromIds(spec, method, model, option_ids, special_ids, seed);
}

namespace {

// Validates what CreateFromIds needs before it touches LibTorch.
absl::Status CheckCreate(const TaskSpec& spec, const TransformerLM& model,
                         const std::vector<std::vector<int32_t>>& option_ids,
                         const std::vector<std::vector<int32_t>>& special_ids) {
  const ModelConfig& c = model.config();
  const int64_t generated =
      spec.kind == TaskKind::kGenerate ? spec.max_new_tokens : 0;
  if (spec.prompt_length + spec.max_tokens + generated > c.max_positions) {
    return absl::InvalidArgumentError(absl::StrCat(
        "task ", spec.task, ": prompt_length ", spec.prompt_length,
        " + max_tokens ", spec.max_tokens,
        generated > 0 ? absl::StrCat(" + max_new_tokens ", generated) : "",
        " exceed the model's ", c.max_positions, " positions"));
  }
  if (spec.lower_layers > c.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("task ", spec.task, ": lower_layers ", spec.lower_layers,
                     " exceeds the model's ", c.num_layers, " layers"));
  }
  const size_t options =
      spec.kind == TaskKind::kScore ? spec.options.size() : 0;
  const size_t specials = SpecialTokenNames(spec).size();
  if (option_ids.size() != options || special_ids.size() != specials) {
    return absl::InvalidArgumentError(absl::StrCat(
        "task ", spec.task, ": got words for ", option_ids.size(),
        " options and ", special_ids.size(), " special tokens; the spec has ",
        options, " and ", specials));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<PromptModule>> PromptModule::CreateFromIds(
    const TaskSpec& spec, TuningMethod method, const TransformerLM& model,
    const std::vector<std::vector<int32_t>>& option_ids,
    const std::vector<std::vector<int32_t>>& special_ids, uint64_t seed) {
  RETURN_IF_ERROR(CheckCreate(spec, model, option_ids, special_ids));
  try {
    return NewModule(spec, method, model, option_ids, special_ids, seed);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("creating the module of task ",
                                            spec.task,
                                            " failed: ", TorchErrorMessage(e)));
  }
}

absl::StatusOr<std::shared_ptr<PromptModule>> PromptModule::NewModule(
    const TaskSpec& spec, TuningMethod method, const TransformerLM& model,
    const std::vector<std::vector<int32_t>>& option_ids,
    const std::vector<std::vector<int32_t>>& special_ids, uint64_t seed) {
  const ModelConfig& c = model.config();
  const size_t options =
      spec.kind == TaskKind::kScore ? spec.options.size() : 0;
  const size_t specials = special_ids.size();
  std::shared_ptr<PromptModule> m(new PromptModule());
  m->spec_ = spec;
  m->method_ = method;
  m->base_fingerprint_ = model.fingerprint();
  m->backbone_parameters_ = model.parameter_count();
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  m->user_ = NewTower(model, spec, method, gen);
  if (spec.kind == TaskKind::kRetrieve) {
    m->item_ = NewTower(model, spec, method, gen);
  }
  const int64_t p = spec.prompt_length, n = static_cast<int64_t>(options);
  if (spec.kind == TaskKind::kScore) {
    if (method == TuningMethod::kPrompt) {
      m->head_weight_ = torch::zeros({n, c.hidden_size}, torch::kFloat32);
      m->head_bias_ = torch::zeros({n}, torch::kFloat32);
    } else {
      for (int64_t o = 0; o < n; ++o) {
        ASSIGN_OR_RETURN(
            torch::Tensor e,
            MeanEmbedding(model, option_ids[o], absl::StrCat("option ", o)));
        m->user_.prompt[p - n + o].copy_(e);
      }
    }
  }
  if (specials > 0) {
    std::vector<torch::Tensor> rows;
    for (size_t k = 0; k < specials; ++k) {
      ASSIGN_OR_RETURN(torch::Tensor e,
                       MeanEmbedding(model, special_ids[k],
                                     absl::StrCat("special token ", k)));
      rows.push_back(e);
    }
    m->special_ = torch::stack(rows);
  }
  if (spec.lower_layers > 0) {
    // Segment embeddings start at zero: the segments enter the upper layers
    // as the backbone computed them.
    m->segment_ =
        torch::zeros({SegmentRoles(spec), c.hidden_size}, torch::kFloat32);
  }
  for (const auto& [name, t] : m->NamedTensors()) {
    t.requires_grad_(true);
  }
  return m;
}

int64_t PromptModule::SegmentRoles(const TaskSpec& spec) {
  size_t parts = 0;
  for (const TaskTemplate& t : spec.templates) {
    parts = std::max(parts, t.input.size());
  }
  return static_cast<int64_t>(parts);
}

PromptModule::Named PromptModule::NamedTensors() const {
  Named out;
  AddTower("", user_, &out);
  if (head_weight_.defined()) {
    out.emplace_back("head.weight", head_weight_);
    out.emplace_back("head.bias", head_bias_);
  }
  if (special_.defined()) out.emplace_back("special", special_);
  if (segment_.defined()) out.emplace_back("segment", segment_);
  if (item_.prompt.defined()) AddTower("item.", item_, &out);
  return out;
}

std::vector<torch::Tensor> PromptModule::Parameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& [name, t] : NamedTensors()) out.push_back(t);
  return out;
}

int64_t PromptModule::ParameterCount() const {
  int64_t n = 0;
  for (const auto& [name, t] : NamedTensors()) n += t.numel();
  return n;
}

absl::Status PromptModule::CopyFrom(const Named& tensors) {
  std::map<std::string, torch::Tensor> given(tensors.begin(), tensors.end());
  const Named mine = NamedTensors();
  for (const auto& [name, t] : mine) {
    auto it = given.find(name);
    if (it == given.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("module tensor '", name, "' is missing"));
    }
    if (it->second.sizes() != t.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "module tensor '", name, "' has shape ", c10::str(it->second.sizes()),
          "; expected ", c10::str(t.sizes())));
    }
  }
  if (given.size() != mine.size()) {
    for (const auto& [name, t] : given) {
      bool known = false;
      for (const auto& [other, u] : mine) known |= other == name;
      if (!known) {
        return absl::InvalidArgumentError(
            absl::StrCat("unexpected module tensor '", name, "'"));
      }
    }
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : mine) {
    t.copy_(given[name].to(t.dtype()));
  }
  return absl::OkStatus();
}

absl::Status PromptModule::CheckSpecFits(const TaskSpec& other) const {
  auto differs = [&](const std::string& field, const std::string& mine,
                     const std::string& theirs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec ", other.task, " does not fit the module of task ", spec_.task,
        ": '", field, "' is ", theirs, " there and ", mine, " in the module"));
  };
  if (other.kind != spec_.kind) {
    return differs("kind", TaskKindName(spec_.kind), TaskKindName(other.kind));
  }
  if (other.prompt_length != spec_.prompt_length) {
    return differs("prompt_length", absl::StrCat(spec_.prompt_length),
                   absl::StrCat(other.prompt_length));
  }
  auto labels = [](const TaskSpec& s) {
    std::string out;
    for (const TaskOption& o : s.options) absl::StrAppend(&out, o.label, " ");
    return out;
  };
  if (labels(other) != labels(spec_)) {
    return differs("options", labels(spec_), labels(other));
  }
  if (SpecialTokenNames(other) != SpecialTokenNames(spec_)) {
    return differs("special tokens",
                   absl::StrJoin(SpecialTokenNames(spec_), ","),
                   absl::StrJoin(SpecialTokenNames(other), ","));
  }
  if (other.lower_layers != spec_.lower_layers) {
    return differs("lower_layers", absl::StrCat(spec_.lower_layers),
                   absl::StrCat(other.lower_layers));
  }
  if (other.lower_layers > 0 && SegmentRoles(other) > SegmentRoles(spec_)) {
    return differs("template parts", absl::StrCat(SegmentRoles(spec_)),
                   absl::StrCat(SegmentRoles(other)));
  }
  if (other.kind == TaskKind::kRetrieve &&
      other.embedding_dim != spec_.embedding_dim) {
    return differs("embedding_dim", absl::StrCat(spec_.embedding_dim),
                   absl::StrCat(other.embedding_dim));
  }
  return absl::OkStatus();
}

torch::Tensor PromptModule::OptionLogits(const torch::Tensor& h) const {
  if (head_weight_.defined()) {
    return torch::linear(h, head_weight_.to(h.device(), h.dtype()),
                         head_bias_.to(h.device(), h.dtype()));
  }
  const int64_t n = spec_.options.size();
  torch::Tensor options =
      user_.prompt.narrow(0, spec_.prompt_length - n, n);          // [C, D]
  return torch::matmul(h, options.to(h.device(), h.dtype()).t());  // [N, C]
}

torch::Tensor PromptModule::Embed(const torch::Tensor& h,
                                  bool item_tower) const {
  const TowerWeights& t = item_tower ? item_ : user_;
  torch::Tensor e =
      torch::linear(h, t.projection.to(h.device(), h.dtype()));  // [N, E]
  return torch::nn::functional::normalize(
      e, torch::nn::functional::NormalizeFuncOptions().dim(-1).eps(1e-12));
}

RowInput PromptModule::MakeRow(const EncodedInput& in, bool item_tower) const {
  const TowerWeights& t = item_tower ? item_ : user_;
  RowInput row;
  row.ids = in.ids;
  row.prompt = t.prompt;
  row.adapter = t.adapter;
  if (!in.special_at.empty()) {
    std::vector<int64_t> index(in.special_index.begin(),
                               in.special_index.end());
    row.override_at = in.special_at;
    row.override_embeddings =
        special_.index_select(0, torch::tensor(index, torch::kInt64));
  }
  return row;
}

JointRowInput PromptModule::MakeJointRow(
    const EncodedInput& in, std::vector<torch::Tensor> states) const {
  JointRowInput row;
  row.prompt = user_.prompt;
  row.adapter = user_.adapter;
  row.segments = std::move(states);
  if (segment_.defined()) {
    for (int part : in.segment_part) {
      row.segment_embeddings.push_back(segment_[part]);
    }
  }
  return row;
}

absl::Status PromptModule::CheckShapes(const ModelConfig& c,
                                       const std::string& where) const {
  const int64_t d = c.hidden_size, p = spec_.prompt_length;
  auto bad = [&](const std::string& name, const torch::Tensor& t,
                 const std::string& expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": tensor '", name, "' has shape ",
        t.defined() ? c10::str(t.sizes()) : "none", "; expected ", expected));
  };
  auto check_tower = [&](const std::string& prefix,
                         const TowerWeights& t) -> absl::Status {
    if (!t.prompt.defined() || t.prompt.dim() != 2 || t.prompt.size(0) != p ||
        t.prompt.size(1) != d) {
      return bad(prefix + "prompt", t.prompt,
                 absl::StrCat("[", p, ", ", d, "]"));
    }
    const bool wants_adapter = method_ == TuningMethod::kOptionAdapter;
    const bool any_adapter = t.adapter.down.defined() ||
                             t.adapter.up.defined() ||
                             t.adapter.scale.defined();
    if (wants_adapter != any_adapter) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": method ", TuningMethodName(method_),
          wants_adapter ? " needs" : " has no", " adapter tensors"));
    }
    if (wants_adapter) {
      const int64_t r = t.adapter.down.dim() == 3 ? t.adapter.down.size(2) : -1;
      const std::string shapes =
          absl::StrCat("[", c.num_layers, ", ", d, ", R], [", c.num_layers,
                       ", R, ", d, "], [", c.num_layers, "]");
      if (r < 1 || t.adapter.down.size(0) != c.num_layers ||
          t.adapter.down.size(1) != d || !t.adapter.up.defined() ||
          t.adapter.up.sizes() != torch::IntArrayRef({c.num_layers, r, d}) ||
          !t.adapter.scale.defined() ||
          t.adapter.scale.sizes() != torch::IntArrayRef({c.num_layers})) {
        return bad(prefix + "adapter.down", t.adapter.down, shapes);
      }
    }
    if (spec_.kind != TaskKind::kRetrieve && t.projection.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": tensor '", prefix,
                       "projection' is only for retrieve tasks"));
    }
    if (spec_.kind == TaskKind::kRetrieve &&
        (!t.projection.defined() ||
         t.projection.sizes() !=
             torch::IntArrayRef({spec_.embedding_dim, d}))) {
      return bad(prefix + "projection", t.projection,
                 absl::StrCat("[", spec_.embedding_dim, ", ", d, "]"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check_tower("", user_));
  if (spec_.kind == TaskKind::kRetrieve) {
    RETURN_IF_ERROR(check_tower("item.", item_));
  }
  const int64_t n = spec_.options.size();
  const bool wants_head =
      spec_.kind == TaskKind::kScore && method_ == TuningMethod::kPrompt;
  if (!wants_head && (head_weight_.defined() || head_bias_.defined())) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": tensors 'head.*' are only for score tasks tuned by prompt"));
  }
  if (spec_.kind == TaskKind::kScore && method_ == TuningMethod::kPrompt &&
      (!head_weight_.defined() ||
       head_weight_.sizes() != torch::IntArrayRef({n, d}) ||
       !head_bias_.defined() ||
       head_bias_.sizes() != torch::IntArrayRef({n}))) {
    return bad("head.weight", head_weight_, absl::StrCat("[", n, ", ", d, "]"));
  }
  return absl::OkStatus();
}

absl::Status PromptModule::Save(const std::string& path) const {
  nlohmann::json meta = info_;
  meta["format_version"] = kFormatVersion;
  meta["task"] = spec_.task;
  meta["kind"] = TaskKindName(spec_.kind);
  meta["method"] = TuningMethodName(method_);
  meta["spec"] = spec_.json;
  meta["base_model_fingerprint"] = base_fingerprint_;
  meta["parameters"] = ParameterCount();
  meta["backbone_parameters"] = backbone_parameters_;
  meta["parameter_share"] =
      backbone_parameters_ > 0
          ? static_cast<double>(ParameterCount()) / backbone_parameters_
          : 0.0;
  Named tensors;
  for (const auto& [name, t] : NamedTensors()) {
    tensors.emplace_back(name, t.detach().to(torch::kCPU, torch::kFloat32));
  }
  return WriteSafetensors(path, tensors, {{kMetadataKey, meta.dump()}});
}

absl::StatusOr<std::shared_ptr<PromptModule>> PromptModule::Load(
    const std::string& path, const TransformerLM& model) {
  ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  auto it = file->metadata().find(kMetadataKey);
  if (it == file->metadata().end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not an optrec prompt module (no '", kMetadataKey,
                     "' metadata)"));
  }
  nlohmann::json meta = nlohmann::json::parse(it->second, nullptr, false);
  if (!meta.is_object() || !meta.contains("spec") || !meta.contains("method") ||
      !meta["method"].is_string() || !meta.contains("base_model_fingerprint") ||
      !meta["base_model_fingerprint"].is_string()) {
    return absl::DataLossError(
        absl::StrCat(path, ": the module metadata are corrupt"));
  }
  const nlohmann::json& version = meta.contains("format_version")
                                      ? meta["format_version"]
                                      : nlohmann::json();
  if (!version.is_number_integer() || version.get<int>() != kFormatVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": module format_version ", version.dump(),
                     " is not ", kFormatVersion));
  }
  const std::string fingerprint = meta["base_model_fingerprint"];
  if (fingerprint != model.fingerprint()) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": this module was trained on base model ", fingerprint,
        ", not on the loaded model ", model.directory(), " (fingerprint ",
        model.fingerprint(), "); retrain it on this model"));
  }
  std::shared_ptr<PromptModule> m(new PromptModule());
  ASSIGN_OR_RETURN(m->spec_, ParseTaskSpec(meta["spec"], path + " (spec)"));
  ASSIGN_OR_RETURN(m->method_,
                   ParseTuningMethod(meta["method"].get<std::string>()));
  m->base_fingerprint_ = fingerprint;
  m->backbone_parameters_ = model.parameter_count();
  for (const char* key : {"format_version", "task", "kind", "method", "spec",
                          "base_model_fingerprint", "parameters",
                          "backbone_parameters", "parameter_share"}) {
    meta.erase(key);
  }
  m->info_ = std::move(meta);

  std::map<std::string, torch::Tensor> t;
  for (const std::string& name : file->names()) {
    ASSIGN_OR_RETURN(t[name],
                     ToTorch(file, *file->Find(name), torch::kFloat32));
    t[name] = t[name].clone();  // detach from the mapping
  }
  auto take = [&t](const std::string& name) {
    auto found = t.find(name);
    if (found == t.end()) return torch::Tensor();
    torch::Tensor v = found->second;
    t.erase(found);
    return v;
  };
  auto take_tower = [&](const std::string& prefix, TowerWeights* tower) {
    tower->prompt = take(prefix + "prompt");
    tower->adapter.down = take(prefix + "adapter.down");
    tower->adapter.up = take(prefix + "adapter.up");
    tower->adapter.scale = take(prefix + "adapter.scale");
    tower->projection = take(prefix + "projection");
  };
  take_tower("", &m->user_);
  if (m->spec_.kind == TaskKind::kRetrieve) take_tower("item.", &m->item_);
  m->head_weight_ = take("head.weight");
  m->head_bias_ = take("head.bias");
  m->special_ = take("special");
  m->segment_ = take("segment");
  if (!t.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": unexpected tensor '", t.begin()->first,
                     "' for a ", TaskKindName(m->spec_.kind), " task tuned by ",
                     TuningMethodName(m->method_)));
  }
  RETURN_IF_ERROR(m->CheckShapes(model.config(), path));
  const int64_t names = SpecialTokenNames(m->spec_).size();
  if ((names == 0) != !m->special_.defined() ||
      (names > 0 &&
       m->special_.sizes() !=
           torch::IntArrayRef({names, model.config().hidden_size}))) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": tensor 'special' does not hold the spec's ",
                     names, " special tokens"));
  }
  const int64_t roles = SegmentRoles(m->spec_);
  if (m->spec_.lower_layers > model.config().num_layers ||
      (m->spec_.lower_layers > 0) != m->segment_.defined() ||
      (m->segment_.defined() &&
       m->segment_.sizes() !=
           torch::IntArrayRef({roles, model.config().hidden_size}))) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": lower_layers ", m->spec_.lower_layers,
                     " does not fit the model's ", model.config().num_layers,
                     " layers, or tensor 'segment' does not hold one [",
                     model.config().hidden_size, "] embedding for each of the ",
                     roles, " template parts"));
  }
  return m;
}

}  // namespace optrec
