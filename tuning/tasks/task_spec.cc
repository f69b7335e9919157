#include "tuning/tasks/task_spec.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/files.h"
#include "core/util/json_fields.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

absl::Status Bad(const std::string& where, const std::string& field,
                 const std::string& problem) {
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": field '", field, "' ", problem));
}

// Refuses keys outside `allowed`, so a misspelt field is an error rather
// than a silently ignored setting.
absl::Status CheckKeys(const nlohmann::json& j, const std::string& where,
                       const std::string& prefix,
                       const std::set<std::string>& allowed) {
  return CheckKnownFields(j, where, prefix, allowed);
}

absl::StatusOr<std::string> GetString(const nlohmann::json& j,
                                      const std::string& key,
                                      const std::string& where,
                                      const std::string& fallback,
                                      bool required = false) {
  if (!j.contains(key)) {
    if (required) return Bad(where, key, "is required");
    return fallback;
  }
  if (!j[key].is_string()) return Bad(where, key, "must be a string");
  return j[key].get<std::string>();
}

absl::StatusOr<int64_t> GetInt(const nlohmann::json& j, const std::string& key,
                               const std::string& where, int64_t fallback,
                               int64_t low, int64_t high) {
  if (!j.contains(key)) return fallback;
  if (!j[key].is_number_integer()) return Bad(where, key, "must be an integer");
  const int64_t v = j[key].get<int64_t>();
  if (v < low || v > high) {
    return Bad(where, key,
               absl::StrCat("is ", v, "; must lie in [", low, ", ", high, "]"));
  }
  return v;
}

// Special-token markers <|name|> in a text.
bool HasSpecialMarker(const std::string& text) {
  const size_t open = text.find("<|");
  return open != std::string::npos &&
         text.find("|>", open + 2) != std::string::npos;
}

absl::StatusOr<TaskTemplate> ParseTemplate(const nlohmann::json& j,
                                           const std::string& where,
                                           const std::string& field,
                                           bool needs_name) {
  if (!j.is_object()) return Bad(where, field, "must be an object");
  RETURN_IF_ERROR(CheckKeys(j, where, field + ".",
                            {"name", "input", "separator", "held_out"}));
  TaskTemplate t;
  ASSIGN_OR_RETURN(t.name, GetString(j, "name", where, "", needs_name));
  if (needs_name && t.name.empty()) {
    return Bad(where, field + ".name", "must not be empty");
  }
  ASSIGN_OR_RETURN(t.separator, GetString(j, "separator", where, ". "));
  if (!j.contains("input") || !j["input"].is_array() || j["input"].empty()) {
    return Bad(where, field + ".input", "must be a non-empty list of strings");
  }
  for (const nlohmann::json& part : j["input"]) {
    if (!part.is_string()) {
      return Bad(where, field + ".input", "must hold only strings");
    }
    t.input.push_back(part.get<std::string>());
  }
  if (j.contains("held_out")) {
    if (!j["held_out"].is_boolean()) {
      return Bad(where, field + ".held_out", "must be true or false");
    }
    t.held_out = j["held_out"].get<bool>();
  }
  return t;
}

// The metrics evaluation produces for a spec that early stopping may
// follow, "neg_" marking the lower-is-better ones.
std::vector<std::string> SelectableMetrics(const TaskSpec& s) {
  std::vector<std::string> out;
  auto ranking = [&out] {
    for (int k : {1, 5, 10, 20}) {
      out.push_back(absl::StrCat("hr@", k));
      out.push_back(absl::StrCat("ndcg@", k));
    }
  };
  switch (s.kind) {
    case TaskKind::kScore:
      out = {"accuracy", "neg_log_loss"};
      if (s.options.size() == 2) {
        out.push_back("auc");
      } else {
        out.push_back("neg_rmse");
        out.push_back("neg_mae");
      }
      if (!s.candidates_field.empty()) ranking();
      break;
    case TaskKind::kGenerate:
      out = {"neg_perplexity"};
      if (!s.constrain_field.empty()) {
        ranking();
      } else {
        for (const char* m : {"bleu4", "rouge1", "rouge2", "rouge_l"}) {
          out.push_back(m);
        }
      }
      break;
    case TaskKind::kRetrieve:
      ranking();
      break;
  }
  return out;
}

}  // namespace

bool SelectNeedsDecoding(const TaskSpec& spec) {
  return spec.kind == TaskKind::kGenerate &&
         spec.SelectMetric() != "neg_perplexity";
}

const char* TaskKindName(TaskKind kind) {
  switch (kind) {
    case TaskKind::kScore:
      return "score";
    case TaskKind::kGenerate:
      return "generate";
    case TaskKind::kRetrieve:
      return "retrieve";
  }
  return "?";
}

const char* TuningMethodName(TuningMethod method) {
  switch (method) {
    case TuningMethod::kPrompt:
      return "prompt";
    case TuningMethod::kOption:
      return "option";
    case TuningMethod::kOptionAdapter:
      return "option_adapter";
  }
  return "?";
}

absl::StatusOr<TaskKind> ParseTaskKind(const std::string& name) {
  for (TaskKind k :
       {TaskKind::kScore, TaskKind::kGenerate, TaskKind::kRetrieve}) {
    if (name == TaskKindName(k)) return k;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown task kind '", name, "' (known: score, generate, retrieve)"));
}

absl::StatusOr<TuningMethod> ParseTuningMethod(const std::string& name) {
  for (TuningMethod m : {TuningMethod::kPrompt, TuningMethod::kOption,
                         TuningMethod::kOptionAdapter}) {
    if (name == TuningMethodName(m)) return m;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown tuning method '", name,
                   "' (known: prompt, option, option_adapter)"));
}

absl::StatusOr<size_t> TaskSpec::TemplateIndex(const std::string& name) const {
  std::vector<std::string> names;
  for (size_t i = 0; i < templates.size(); ++i) {
    if (templates[i].name == name) return i;
    names.push_back(templates[i].name);
  }
  return absl::NotFoundError(absl::StrCat("task ", task, " has no template '",
                                          name, "' (it has ",
                                          absl::StrJoin(names, ", "), ")"));
}

std::vector<size_t> TaskSpec::TrainingTemplates() const {
  std::vector<size_t> out;
  for (size_t i = 0; i < templates.size(); ++i) {
    if (!templates[i].held_out) out.push_back(i);
  }
  return out;
}

int TaskSpec::OptionIndex(double label) const {
  for (size_t i = 0; i < options.size(); ++i) {
    if (options[i].label == label) return static_cast<int>(i);
  }
  return -1;
}

std::string TaskSpec::SelectMetric() const {
  if (!select_metric.empty()) return select_metric;
  switch (kind) {
    case TaskKind::kScore:
      return options.size() == 2 ? "auc" : "accuracy";
    case TaskKind::kGenerate:
      return "neg_perplexity";
    case TaskKind::kRetrieve:
      return "hr@10";
  }
  return "";
}

absl::StatusOr<TaskSpec> ParseTaskSpec(const nlohmann::json& j,
                                       const std::string& where) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": a task spec must be a JSON object"));
  }
  RETURN_IF_ERROR(CheckKeys(j, where, "",
                            {"task",
                             "description",
                             "kind",
                             "method",
                             "data",
                             "catalog",
                             "item_id_field",
                             "catalog_id_field",
                             "prompt_length",
                             "adapter_rank",
                             "max_tokens",
                             "max_history",
                             "lower_layers",
                             "options",
                             "label_field",
                             "positive_label",
                             "candidates_field",
                             "candidate_labels_field",
                             "train_negatives",
                             "target_field",
                             "max_new_tokens",
                             "constrain_field",
                             "target_item_field",
                             "item_template",
                             "embedding_dim",
                             "temperature",
                             "templates",
                             "zero_shot",
                             "select_metric"}));
  TaskSpec s;
  s.json = j;
  ASSIGN_OR_RETURN(s.task, GetString(j, "task", where, "", true));
  if (s.task.empty() || !std::all_of(s.task.begin(), s.task.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
      })) {
    return Bad(where, "task",
               absl::StrCat("is '", s.task, "'; use [a-z0-9_]+"));
  }
  ASSIGN_OR_RETURN(s.description, GetString(j, "description", where, ""));
  ASSIGN_OR_RETURN(std::string kind, GetString(j, "kind", where, "", true));
  absl::StatusOr<TaskKind> parsed_kind = ParseTaskKind(kind);
  if (!parsed_kind.ok()) {
    return Bad(where, "kind", std::string(parsed_kind.status().message()));
  }
  s.kind = *parsed_kind;
  ASSIGN_OR_RETURN(std::string method, GetString(j, "method", where, "option"));
  absl::StatusOr<TuningMethod> parsed_method = ParseTuningMethod(method);
  if (!parsed_method.ok()) {
    return Bad(where, "method", std::string(parsed_method.status().message()));
  }
  s.method = *parsed_method;
  ASSIGN_OR_RETURN(s.data, GetString(j, "data", where, "", true));
  ASSIGN_OR_RETURN(s.catalog, GetString(j, "catalog", where, ""));
  ASSIGN_OR_RETURN(s.item_id_field,
                   GetString(j, "item_id_field", where, "item_id"));
  ASSIGN_OR_RETURN(s.catalog_id_field,
                   GetString(j, "catalog_id_field", where, "item_id"));
  ASSIGN_OR_RETURN(s.prompt_length,
                   GetInt(j, "prompt_length", where, 16, 1, 4096));
  ASSIGN_OR_RETURN(s.adapter_rank,
                   GetInt(j, "adapter_rank", where, 8, 1, 4096));
  ASSIGN_OR_RETURN(s.max_tokens,
                   GetInt(j, "max_tokens", where, 320, 8, 1 << 20));
  ASSIGN_OR_RETURN(s.max_history, GetInt(j, "max_history", where, 10, 0, 1000));
  ASSIGN_OR_RETURN(s.lower_layers,
                   GetInt(j, "lower_layers", where, 0, 0, 4096));
  ASSIGN_OR_RETURN(s.label_field, GetString(j, "label_field", where, "label"));
  ASSIGN_OR_RETURN(s.candidates_field,
                   GetString(j, "candidates_field", where, ""));
  ASSIGN_OR_RETURN(s.candidate_labels_field,
                   GetString(j, "candidate_labels_field", where, "labels"));
  ASSIGN_OR_RETURN(s.train_negatives,
                   GetInt(j, "train_negatives", where, 4, 0, 1 << 20));
  if (!s.candidates_field.empty() && s.kind != TaskKind::kScore) {
    return Bad(where, "candidates_field", "is only for score tasks");
  }
  ASSIGN_OR_RETURN(s.target_field,
                   GetString(j, "target_field", where, "target"));
  ASSIGN_OR_RETURN(s.max_new_tokens,
                   GetInt(j, "max_new_tokens", where, 32, 1, 4096));
  ASSIGN_OR_RETURN(s.constrain_field,
                   GetString(j, "constrain_field", where, ""));
  ASSIGN_OR_RETURN(s.target_item_field,
                   GetString(j, "target_item_field", where, "target_item_id"));
  ASSIGN_OR_RETURN(s.embedding_dim,
                   GetInt(j, "embedding_dim", where, 128, 1, 65536));
  ASSIGN_OR_RETURN(s.select_metric, GetString(j, "select_metric", where, ""));
  if (j.contains("temperature")) {
    if (!j["temperature"].is_number() ||
        !(j["temperature"].get<double>() > 0)) {
      return Bad(where, "temperature", "must be a positive number");
    }
    s.temperature = j["temperature"].get<double>();
  }

  // Options (score tasks only).
  if (j.contains("options")) {
    if (s.kind != TaskKind::kScore) {
      return Bad(where, "options", "is only for score tasks");
    }
    if (!j["options"].is_array()) {
      return Bad(where, "options", "must be a list of {label, text}");
    }
    for (const nlohmann::json& o : j["options"]) {
      if (!o.is_object() || !o.contains("label") || !o["label"].is_number() ||
          !o.contains("text") || !o["text"].is_string() ||
          o["text"].get<std::string>().empty()) {
        return Bad(where, "options",
                   absl::StrCat("entry ", o.dump(),
                                " needs a numeric 'label' and a non-empty "
                                "'text'"));
      }
      RETURN_IF_ERROR(CheckKeys(o, where, "options.", {"label", "text"}));
      TaskOption option{o["label"].get<double>(), o["text"].get<std::string>()};
      if (s.OptionIndex(option.label) >= 0) {
        return Bad(where, "options",
                   absl::StrCat("repeats the label ", o["label"].dump()));
      }
      s.options.push_back(option);
    }
  }
  if (s.kind == TaskKind::kScore) {
    if (s.options.size() < 2) {
      return Bad(where, "options", "needs at least two options");
    }
    if (j.contains("positive_label")) {
      if (!j["positive_label"].is_number()) {
        return Bad(where, "positive_label", "must be a number");
      }
      s.positive_label = j["positive_label"].get<double>();
    }
    if (s.options.size() == 2 && s.OptionIndex(s.positive_label) < 0) {
      return Bad(where, "positive_label",
                 absl::StrCat("is ", s.positive_label,
                              ", which is not one of the options' labels"));
    }
    if (static_cast<int64_t>(s.options.size()) > s.prompt_length) {
      return Bad(where, "prompt_length",
                 absl::StrCat("is ", s.prompt_length, ", shorter than the ",
                              s.options.size(),
                              " options whose vectors it must hold"));
    }
  }

  // Templates.
  if (!j.contains("templates") || !j["templates"].is_array() ||
      j["templates"].empty()) {
    return Bad(where, "templates", "must be a non-empty list");
  }
  std::set<std::string> names;
  for (size_t i = 0; i < j["templates"].size(); ++i) {
    ASSIGN_OR_RETURN(TaskTemplate t,
                     ParseTemplate(j["templates"][i], where,
                                   absl::StrCat("templates[", i, "]"), true));
    if (!names.insert(t.name).second) {
      return Bad(where, "templates", absl::StrCat("repeats the name ", t.name));
    }
    if (s.kind == TaskKind::kGenerate || s.lower_layers > 0) {
      for (const std::string& part : t.input) {
        if (HasSpecialMarker(part)) {
          return Bad(where, absl::StrCat("templates[", i, "].input"),
                     s.lower_layers > 0
                         ? "uses a <|special|> token, which late interaction "
                           "(lower_layers > 0) does not support: it would "
                           "make a segment's lower states depend on the task"
                         : "uses a <|special|> token, which generate tasks "
                           "do not support");
        }
      }
    }
    s.templates.push_back(std::move(t));
  }
  if (s.lower_layers > 0 && s.kind != TaskKind::kScore) {
    return Bad(where, "lower_layers",
               "is only for score tasks (late interaction of generate and "
               "retrieve tasks is not supported)");
  }
  if (s.TrainingTemplates().empty()) {
    return Bad(where, "templates", "are all held out; none is left to train");
  }
  if (s.kind == TaskKind::kRetrieve) {
    if (!j.contains("item_template")) {
      return Bad(where, "item_template", "is required for retrieve tasks");
    }
    ASSIGN_OR_RETURN(s.item_template, ParseTemplate(j["item_template"], where,
                                                    "item_template", false));
    if (s.catalog.empty()) {
      return Bad(where, "catalog", "is required for retrieve tasks");
    }
  } else if (j.contains("item_template")) {
    return Bad(where, "item_template", "is only for retrieve tasks");
  }
  if (!s.constrain_field.empty()) {
    if (s.kind != TaskKind::kGenerate) {
      return Bad(where, "constrain_field", "is only for generate tasks");
    }
    if (s.catalog.empty()) {
      return Bad(where, "catalog", "is required with constrain_field");
    }
  }
  if (j.contains("zero_shot")) {
    const nlohmann::json& z = j["zero_shot"];
    if (!z.is_object()) return Bad(where, "zero_shot", "must be an object");
    RETURN_IF_ERROR(CheckKeys(z, where, "zero_shot.",
                              {"input", "separator", "continuations"}));
    nlohmann::json input = {{"input", z.value("input", nlohmann::json())}};
    if (z.contains("separator")) input["separator"] = z["separator"];
    ASSIGN_OR_RETURN(s.zero_shot.input,
                     ParseTemplate(input, where, "zero_shot", false));
    if (z.contains("continuations")) {
      if (!z["continuations"].is_array()) {
        return Bad(where, "zero_shot.continuations", "must be a list");
      }
      for (const nlohmann::json& c : z["continuations"]) {
        if (!c.is_string() || c.get<std::string>().empty()) {
          return Bad(where, "zero_shot.continuations",
                     "must hold non-empty strings");
        }
        s.zero_shot.continuations.push_back(c.get<std::string>());
      }
    }
    const size_t n = s.zero_shot.continuations.size();
    if (s.kind == TaskKind::kScore && n != 1 && n != s.options.size()) {
      return Bad(where, "zero_shot.continuations",
                 absl::StrCat("has ", n, " entries; a score task needs one ",
                              "per option (", s.options.size(),
                              ") or a single ranking continuation"));
    }
    if (s.kind == TaskKind::kRetrieve && n != 1) {
      return Bad(where, "zero_shot.continuations",
                 "needs exactly one item continuation for retrieve tasks");
    }
    if (s.kind == TaskKind::kGenerate && n != 0) {
      return Bad(where, "zero_shot.continuations",
                 "is not used by generate tasks (decoding continues input)");
    }
  }
  if (!s.select_metric.empty()) {
    const std::vector<std::string> known = SelectableMetrics(s);
    if (std::find(known.begin(), known.end(), s.select_metric) == known.end()) {
      return Bad(where, "select_metric",
                 absl::StrCat("is '", s.select_metric, "'; this task reports ",
                              absl::StrJoin(known, ", "),
                              " (higher is better; neg_ negates)"));
    }
  }
  return s;
}

absl::StatusOr<TaskSpec> LoadTaskSpec(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  }
  return ParseTaskSpec(j, path);
}

}  // namespace optrec
