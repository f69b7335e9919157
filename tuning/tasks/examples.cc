#include "tuning/tasks/examples.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "core/util/hash.h"
#include "core/util/jsonl.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

// Every {reference} in a text, in order.
std::vector<std::string> References(const std::string& text) {
  std::vector<std::string> out;
  size_t pos = 0;
  while ((pos = text.find('{', pos)) != std::string::npos) {
    const size_t end = text.find('}', pos + 1);
    if (end == std::string::npos) break;
    out.push_back(text.substr(pos + 1, end - pos - 1));
    pos = end + 1;
  }
  return out;
}

void CollectExampleRefs(const TaskTemplate& t, FieldRefs* refs) {
  for (const std::string& part : t.input) {
    for (const std::string& ref : References(part)) {
      if (ref.rfind("item.", 0) == 0) {
        refs->item.insert(ref.substr(5));
      } else {
        refs->example.insert(ref);
      }
    }
  }
}

// A JSON value as a field: strings as they are, lists of strings as lists,
// other scalars as JSON prints them. InvalidArgument for objects and lists
// of non-strings.
absl::StatusOr<FieldValue> ToField(const nlohmann::json& v) {
  FieldValue f;
  if (v.is_string()) {
    f.text = v.get<std::string>();
  } else if (v.is_array()) {
    f.is_list = true;
    for (const nlohmann::json& e : v) {
      if (!e.is_string()) {
        return absl::InvalidArgumentError("is a list with a non-string entry");
      }
      f.list.push_back(e.get<std::string>());
    }
  } else if (v.is_number() || v.is_boolean()) {
    f.text = v.dump();
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("is ", v.is_null() ? "null" : "an object",
                     ", not text, a number or a list of texts"));
  }
  return f;
}

// Field `name` of an example line: in "segments" first, then top-level.
const nlohmann::json* FindField(const nlohmann::json& line,
                                const std::string& name) {
  auto segments = line.find("segments");
  if (segments != line.end() && segments->is_object()) {
    auto it = segments->find(name);
    if (it != segments->end()) return &*it;
  }
  auto it = line.find(name);
  return it == line.end() ? nullptr : &*it;
}

// The text of an id field (a string, or an integer printed).
bool IdText(const nlohmann::json& v, std::string* out) {
  if (v.is_string()) {
    *out = v.get<std::string>();
    return true;
  }
  if (v.is_number_integer()) {
    *out = v.dump();
    return true;
  }
  return false;
}

// One example per candidate of a candidate-list line (see TaskSpec); `base`
// holds the line's other fields.
absl::Status ExpandCandidates(const TaskSpec& spec, const nlohmann::json& j,
                              const std::string& at,
                              const TaskDataOptions& options, int64_t group,
                              Example base, std::vector<Example>* out) {
  const nlohmann::json* candidates = FindField(j, spec.candidates_field);
  const nlohmann::json* labels = FindField(j, spec.candidate_labels_field);
  if (candidates == nullptr || !candidates->is_array() || candidates->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(at, "no candidate list '", spec.candidates_field, "'"));
  }
  if (labels == nullptr || !labels->is_array() ||
      labels->size() != candidates->size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(at, "'", spec.candidate_labels_field,
                     "' must be a list of labels, one per candidate"));
  }
  std::vector<Example> positives, negatives;
  for (size_t c = 0; c < candidates->size(); ++c) {
    const nlohmann::json& text = (*candidates)[c];
    const nlohmann::json& label = (*labels)[c];
    if (!text.is_string() || !label.is_number()) {
      return absl::InvalidArgumentError(absl::StrCat(
          at, "candidate ", c, " needs a text and a numeric label"));
    }
    Example e = base;
    e.group = group;
    e.fields["candidate"].text = text.get<std::string>();
    e.label = spec.OptionIndex(label.get<double>());
    if (e.label < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          at, "candidate ", c, " has label ", label.dump(),
          ", which is not one of task ", spec.task, "'s option labels"));
    }
    const bool positive = label.get<double>() == spec.positive_label;
    (positive ? positives : negatives).push_back(std::move(e));
  }
  if (options.training && spec.train_negatives > 0 &&
      static_cast<int64_t>(negatives.size()) > spec.train_negatives) {
    // A fixed draw per line (Fisher-Yates on a SplitMix64 stream).
    uint64_t state = options.seed * 0x9E3779B97F4A7C15ULL + group;
    auto next = [&state] {
      uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
      return z ^ (z >> 31);
    };
    for (size_t i = negatives.size() - 1; i > 0; --i) {
      std::swap(negatives[i], negatives[next() % (i + 1)]);
    }
    negatives.resize(spec.train_negatives);
  }
  for (Example& e : positives) out->push_back(std::move(e));
  for (Example& e : negatives) out->push_back(std::move(e));
  return absl::OkStatus();
}

}  // namespace

FieldRefs ReferencedFields(const TaskSpec& spec) {
  FieldRefs refs;
  for (const TaskTemplate& t : spec.templates) CollectExampleRefs(t, &refs);
  if (spec.zero_shot.defined()) {
    CollectExampleRefs(spec.zero_shot.input, &refs);
  }
  auto catalog_refs = [&refs](const std::string& text) {
    for (const std::string& ref : References(text)) refs.catalog.insert(ref);
  };
  if (spec.kind == TaskKind::kRetrieve) {
    for (const std::string& part : spec.item_template.input) {
      catalog_refs(part);
    }
    for (const std::string& c : spec.zero_shot.continuations) catalog_refs(c);
  } else {
    // Zero-shot continuations of score tasks read the example.
    for (const std::string& c : spec.zero_shot.continuations) {
      for (const std::string& ref : References(c)) {
        if (ref.rfind("item.", 0) == 0) {
          refs.item.insert(ref.substr(5));
        } else {
          refs.example.insert(ref);
        }
      }
    }
  }
  if (!spec.constrain_field.empty()) refs.catalog.insert(spec.constrain_field);
  for (const std::string& f : refs.item) refs.catalog.insert(f);
  return refs;
}

std::vector<std::string> SpecialTokenNames(const TaskSpec& spec) {
  std::set<std::string> names;
  auto scan = [&names](const TaskTemplate& t) {
    for (const std::string& part : t.input) {
      size_t pos = 0;
      while ((pos = part.find("<|", pos)) != std::string::npos) {
        const size_t end = part.find("|>", pos + 2);
        if (end == std::string::npos) break;
        names.insert(part.substr(pos + 2, end - pos - 2));
        pos = end + 2;
      }
    }
  };
  for (const TaskTemplate& t : spec.templates) scan(t);
  if (spec.kind == TaskKind::kRetrieve) scan(spec.item_template);
  return std::vector<std::string>(names.begin(), names.end());
}

absl::StatusOr<std::shared_ptr<const Catalog>> Catalog::Load(
    const std::string& path, const std::string& id_field,
    const std::set<std::string>& keep) {
  auto catalog = std::make_shared<Catalog>();
  catalog->path_ = path;
  ASSIGN_OR_RETURN(catalog->hash_, FileXxh3Hex128(path));
  RETURN_IF_ERROR(ForEachJsonl(
      path,
      [&](int64_t number, const nlohmann::json& j) -> absl::StatusOr<bool> {
        const std::string at = absl::StrCat(path, ":", number, ": ");
        if (!j.is_object()) {
          return absl::InvalidArgumentError(
              absl::StrCat(at, "not a JSON object"));
        }
        std::string id;
        if (!j.contains(id_field) || !IdText(j[id_field], &id)) {
          return absl::InvalidArgumentError(absl::StrCat(
              at, "no '", id_field, "' (a string or integer item id)"));
        }
        FieldMap fields;
        for (const std::string& name : keep) {
          if (!j.contains(name)) {
            return absl::InvalidArgumentError(
                absl::StrCat(at, "item ", id, " has no field '", name, "'"));
          }
          absl::StatusOr<FieldValue> f = ToField(j[name]);
          if (!f.ok()) {
            return absl::InvalidArgumentError(
                absl::StrCat(at, "field '", name, "' ", f.status().message()));
          }
          fields[name] = *std::move(f);
        }
        const int64_t index = static_cast<int64_t>(catalog->ids_.size());
        if (!catalog->index_.emplace(id, index).second) {
          return absl::InvalidArgumentError(
              absl::StrCat(at, "repeats item id ", id));
        }
        catalog->ids_.push_back(id);
        catalog->fields_.push_back(std::move(fields));
        return true;
      }));
  if (catalog->ids_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no items"));
  }
  return std::shared_ptr<const Catalog>(std::move(catalog));
}

int64_t Catalog::Find(const std::string& id) const {
  auto it = index_.find(id);
  return it == index_.end() ? -1 : it->second;
}

absl::StatusOr<TaskData> LoadTaskData(const TaskSpec& spec,
                                      const std::string& path,
                                      const Catalog* catalog,
                                      const TaskDataOptions& options) {
  const FieldRefs refs = ReferencedFields(spec);
  const bool needs_item = !refs.item.empty();
  const bool needs_target_item =
      spec.kind == TaskKind::kRetrieve || !spec.constrain_field.empty();
  if ((needs_item || needs_target_item) && catalog == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "task ", spec.task, " looks items up but no catalog was loaded"));
  }
  TaskData data;
  data.path = path;
  ASSIGN_OR_RETURN(data.hash, FileXxh3Hex128(path));
  int64_t lines = 0;
  auto item_index = [&](const nlohmann::json& j, const std::string& field,
                        const std::string& at, int64_t* out) -> absl::Status {
    const nlohmann::json* v = FindField(j, field);
    std::string id;
    if (v == nullptr || !IdText(*v, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, "no '", field, "' (an item id)"));
    }
    *out = catalog->Find(id);
    if (*out < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, "field '", field, "' names item ", id,
                       ", which is not in ", catalog->path()));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(ForEachJsonl(
      path,
      [&](int64_t number, const nlohmann::json& j) -> absl::StatusOr<bool> {
        const std::string at = absl::StrCat(path, ":", number, ": ");
        if (!j.is_object()) {
          return absl::InvalidArgumentError(
              absl::StrCat(at, "not a JSON object"));
        }
        Example e;
        e.line = number;
        const bool grouped = !spec.candidates_field.empty();
        for (const std::string& name : refs.example) {
          if (grouped && name == "candidate") continue;
          const nlohmann::json* v = FindField(j, name);
          if (v == nullptr) {
            return absl::InvalidArgumentError(
                absl::StrCat(at, "no field '", name, "', which task ",
                             spec.task, "'s templates use"));
          }
          absl::StatusOr<FieldValue> f = ToField(*v);
          if (!f.ok()) {
            return absl::InvalidArgumentError(
                absl::StrCat(at, "field '", name, "' ", f.status().message()));
          }
          e.fields[name] = *std::move(f);
        }
        if (needs_item) {
          RETURN_IF_ERROR(item_index(j, spec.item_id_field, at, &e.item));
        }
        if (needs_target_item) {
          RETURN_IF_ERROR(
              item_index(j, spec.target_item_field, at, &e.target_item));
        }
        if (j.contains("user_id") && j["user_id"].is_string()) {
          e.user_id = j["user_id"].get<std::string>();
        }
        if (grouped) {
          RETURN_IF_ERROR(ExpandCandidates(spec, j, at, options, lines,
                                           std::move(e), &data.examples));
          ++lines;
          return options.limit <= 0 || lines < options.limit;
        }
        if (spec.kind == TaskKind::kScore) {
          const nlohmann::json* v = FindField(j, spec.label_field);
          if (v == nullptr || !v->is_number()) {
            return absl::InvalidArgumentError(absl::StrCat(
                at, "no numeric label field '", spec.label_field, "'"));
          }
          e.label = spec.OptionIndex(v->get<double>());
          if (e.label < 0) {
            return absl::InvalidArgumentError(absl::StrCat(
                at, "label ", v->dump(), " in '", spec.label_field,
                "' is not one of task ", spec.task, "'s option labels"));
          }
        }
        if (spec.kind == TaskKind::kGenerate) {
          const nlohmann::json* v = FindField(j, spec.target_field);
          if (v == nullptr || !v->is_string() ||
              v->get<std::string>().empty()) {
            return absl::InvalidArgumentError(absl::StrCat(
                at, "no target text in '", spec.target_field, "'"));
          }
          e.target = v->get<std::string>();
        }
        data.examples.push_back(std::move(e));
        ++lines;
        return options.limit <= 0 || lines < options.limit;
      }));
  if (data.examples.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no examples"));
  }
  return data;
}

std::vector<Example> SampleExamples(const std::vector<Example>& examples,
                                    int64_t n, uint64_t seed) {
  // The units drawn: lines (candidate-list rows of a line stay together).
  std::vector<size_t> unit_start;
  for (size_t i = 0; i < examples.size(); ++i) {
    if (i == 0 || examples[i].group < 0 ||
        examples[i].group != examples[i - 1].group) {
      unit_start.push_back(i);
    }
  }
  const int64_t total = static_cast<int64_t>(unit_start.size());
  if (n <= 0 || n >= total) return examples;
  unit_start.push_back(examples.size());
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  torch::Tensor picked = std::get<0>(
      torch::randperm(total, gen, torch::kInt64).narrow(0, 0, n).sort());
  std::vector<Example> out;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t u = picked[i].item<int64_t>();
    for (size_t k = unit_start[u]; k < unit_start[u + 1]; ++k) {
      out.push_back(examples[k]);
    }
  }
  return out;
}

}  // namespace optrec
