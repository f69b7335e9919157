#include "tuning/tune/task_batch.h"

#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "cache/segment_key.h"
#include "cache/sharded_lru_cache.h"
#include "core/util/status_macros.h"
#include "core/util/torch_errors.h"

namespace optrec {
namespace {

namespace F = torch::nn::functional;

// Rows of one part inside the batch.
struct PartRows {
  int64_t first_user = 0;  // rows [first_user, first_user + N)
  int64_t first_item = 0;  // retrieve: rows [first_item, first_item + N)
};

// Final states [N, D] at the last valid position of rows [first, first+n).
torch::Tensor LastStates(const ForwardOutput& out, int64_t first, int64_t n) {
  const int64_t t = out.hidden.size(1);
  std::vector<int64_t> flat;
  for (int64_t r = first; r < first + n; ++r) {
    flat.push_back(r * t + out.lengths[r] - 1);
  }
  torch::Tensor index =
      torch::tensor(flat, torch::kInt64).to(out.hidden.device());
  return out.hidden.reshape({-1, out.hidden.size(2)}).index_select(0, index);
}

PartOutput ScoreLoss(const BatchPart& part, const PartRows& rows,
                     const ForwardOutput& out) {
  const int64_t n = part.examples.size();
  PartOutput result;
  torch::Tensor h = LastStates(out, rows.first_user, n);  // [N, D]
  result.logits = part.module->OptionLogits(h);           // [N, C]
  std::vector<int64_t> labels;
  for (const PreparedExample& e : part.examples) labels.push_back(e.label);
  torch::Tensor y = torch::tensor(labels, torch::kInt64).to(h.device());
  result.loss = F::cross_entropy(result.logits.to(torch::kFloat32), y);
  return result;
}

PartOutput GenerateLoss(const BatchPart& part, const PartRows& rows,
                        const ForwardOutput& out, const TransformerLM& model) {
  const int64_t t = out.hidden.size(1);
  const int64_t p =
      part.module != nullptr ? part.module->user().prompt.size(0) : 0;
  std::vector<int64_t> at, targets;
  for (size_t i = 0; i < part.examples.size(); ++i) {
    const PreparedExample& e = part.examples[i];
    const int64_t r = rows.first_user + static_cast<int64_t>(i);
    const int64_t n_in = static_cast<int64_t>(e.input.ids.size());
    // Target token k sits at id position n_in + k (hidden index p + n_in +
    // k) and is predicted from the position before it.
    for (size_t k = 0; k < e.target.size(); ++k) {
      at.push_back(r * t + p + n_in + static_cast<int64_t>(k) - 1);
      targets.push_back(e.target[k]);
    }
  }
  const auto dev = out.hidden.device();
  torch::Tensor h =
      out.hidden.reshape({-1, out.hidden.size(2)})
          .index_select(0, torch::tensor(at, torch::kInt64).to(dev));
  torch::Tensor logits = model.Project(h).to(torch::kFloat32);  // [K, V]
  PartOutput result;
  result.loss =
      F::cross_entropy(logits, torch::tensor(targets, torch::kInt64).to(dev));
  result.target_tokens = static_cast<int64_t>(targets.size());
  return result;
}

PartOutput RetrieveLoss(const BatchPart& part, const PartRows& rows,
                        const ForwardOutput& out) {
  const int64_t n = part.examples.size();
  const PromptModule& m = *part.module;
  PartOutput result;
  result.user = m.Embed(LastStates(out, rows.first_user, n), false);  // [N, E]
  result.item = m.Embed(LastStates(out, rows.first_item, n), true);   // [N, E]
  std::vector<int64_t> items;
  for (const PreparedExample& e : part.examples) items.push_back(e.target_item);
  torch::Tensor ids =
      torch::tensor(items, torch::kInt64).to(result.user.device());
  // Another row with the same target is not a negative.
  torch::Tensor same = ids.unsqueeze(1).eq(ids.unsqueeze(0));  // [N, N]
  torch::Tensor eye = torch::eye(n, same.options());
  if (same.all().item<bool>()) {
    // A draw whose rows all share one target has no negative: no signal
    // this step (zero loss and gradient, still on autograd's tape).
    result.loss = (result.user * result.item).sum() * 0.0;
    result.skipped = true;
    return result;
  }
  torch::Tensor sim = torch::matmul(result.user, result.item.t())
                          .to(torch::kFloat32)
                          .div(part.task->spec.temperature);  // [N, N]
  sim = sim.masked_fill(same.logical_and(eye.logical_not()), -1e9);
  result.loss = F::cross_entropy(
      sim, torch::arange(n, torch::dtype(torch::kInt64).device(sim.device())));
  return result;
}

}  // namespace

std::string ResolveDataPath(const std::string& data_root,
                            const std::string& path) {
  if (path.empty() || path.front() == '/' || data_root.empty()) return path;
  return (std::filesystem::path(data_root) / path).string();
}

absl::StatusOr<std::unique_ptr<TaskContext>> MakeTaskContext(
    const TaskSpec& spec, const TransformerLM& model,
    const std::string& data_root) {
  if (model.tokenizer() == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", model.directory(),
                     " has no tokenizer; task templates need one"));
  }
  auto task = std::make_unique<TaskContext>();
  task->spec = spec;
  const FieldRefs refs = ReferencedFields(task->spec);
  if (!task->spec.catalog.empty()) {
    ASSIGN_OR_RETURN(task->catalog,
                     Catalog::Load(ResolveDataPath(data_root, spec.catalog),
                                   spec.catalog_id_field, refs.catalog));
  }
  if (spec.lower_layers > 0) {
    ShardedLruCache::Options cache;
    cache.capacity_bytes = kTaskSegmentCacheBytes;
    ASSIGN_OR_RETURN(task->segment_cache, ShardedLruCache::Create(cache));
  }
  task->tokenizer = model.shared_tokenizer();
  task->encoder = std::make_unique<InputEncoder>(task->spec, *task->tokenizer,
                                                 task->catalog.get());
  return task;
}

absl::StatusOr<PreparedExample> PrepareExample(const TaskContext& task,
                                               const Example& e,
                                               const TaskTemplate& t) {
  PreparedExample p;
  ASSIGN_OR_RETURN(p.input, task.encoder->EncodeWith(t, e));
  p.label = e.label;
  p.target_item = e.target_item;
  switch (task.spec.kind) {
    case TaskKind::kScore:
      break;
    case TaskKind::kGenerate: {
      ASSIGN_OR_RETURN(p.target, task.encoder->EncodeText(" " + e.target));
      const int32_t eos = task.encoder->tokenizer().special().eos_id;
      if (eos >= 0) p.target.push_back(eos);
      // Within the decoding budget, so a row never outgrows the positions
      // the module was checked against (a cut target loses its EOS).
      if (static_cast<int64_t>(p.target.size()) > task.spec.max_new_tokens) {
        p.target.resize(task.spec.max_new_tokens);
      }
      if (p.target.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "example at line ", e.line, ": the target encodes to no tokens"));
      }
      break;
    }
    case TaskKind::kRetrieve:
      ASSIGN_OR_RETURN(p.item, task.encoder->EncodeItem(e.target_item));
      break;
  }
  return p;
}

namespace {

// Whether a part runs through late interaction (segments through the
// lower layers, its rows through the upper ones).
bool IsJoint(const BatchPart& part) {
  return part.module != nullptr && part.task->spec.kind == TaskKind::kScore &&
         part.task->spec.lower_layers > 0;
}

// The rows of every plain part, in part order (a retrieve part's user rows,
// then its item rows). LibTorch errors propagate as exceptions.
std::vector<RowInput> BatchRows(const std::vector<BatchPart>& parts,
                                std::vector<PartRows>* layout) {
  std::vector<RowInput> rows;
  for (size_t i = 0; i < parts.size(); ++i) {
    const BatchPart& part = parts[i];
    if (IsJoint(part)) continue;
    const PromptModule* m = part.module;
    (*layout)[i].first_user = static_cast<int64_t>(rows.size());
    for (const PreparedExample& e : part.examples) {
      RowInput row;
      if (m != nullptr) {
        row = m->MakeRow(e.input, false);
      } else {
        row.ids = e.input.ids;
      }
      row.ids.insert(row.ids.end(), e.target.begin(), e.target.end());
      rows.push_back(std::move(row));
    }
    if (part.task->spec.kind == TaskKind::kRetrieve) {
      (*layout)[i].first_item = static_cast<int64_t>(rows.size());
      for (const PreparedExample& e : part.examples) {
        rows.push_back(m->MakeRow(e.item, true));
      }
    }
  }
  return rows;
}

// The lower-layer states of every segment of a late-interaction part's
// examples, in order: from the task's segment cache (misses encoded in one
// batch), or encoded here, each distinct segment once.
absl::StatusOr<std::vector<torch::Tensor>> PartStates(
    const TransformerLM& model, const BatchPart& part) {
  const int64_t lower = part.task->spec.lower_layers;
  std::vector<const std::vector<int32_t>*> segments;
  for (const PreparedExample& e : part.examples) {
    for (const std::vector<int32_t>& seg : e.input.segments) {
      segments.push_back(&seg);
    }
  }
  SegmentStateCache* cache = part.task->segment_cache.get();
  if (cache != nullptr) {
    std::vector<SegmentKey> keys;
    for (const auto* seg : segments) {
      keys.push_back(SegmentKey::Make(model.fingerprint(), lower, *seg));
    }
    return cache->GetOrEncode(keys, [&](const std::vector<size_t>& missing) {
      std::vector<std::vector<int32_t>> batch;
      for (size_t i : missing) batch.push_back(*segments[i]);
      return model.EncodeSegments(batch, lower);
    });
  }
  std::map<std::vector<int32_t>, size_t> index;  // segment ids -> unique
  std::vector<std::vector<int32_t>> unique;
  for (const auto* seg : segments) {
    if (index.emplace(*seg, unique.size()).second) unique.push_back(*seg);
  }
  ASSIGN_OR_RETURN(std::vector<torch::Tensor> states,
                   model.EncodeSegments(unique, lower));
  std::vector<torch::Tensor> out;
  for (const auto* seg : segments) out.push_back(states[index.at(*seg)]);
  return out;
}

// Runs the late-interaction parts whose spec has `lower_layers`: their
// segments' lower-layer states (PartStates), then one joint pass over all
// their rows. Sets their layout (rows of `out`).
absl::Status RunJointParts(const TransformerLM& model,
                           const std::vector<BatchPart>& parts,
                           int64_t lower_layers, std::vector<PartRows>* layout,
                           ForwardOutput* out) {
  std::vector<JointRowInput> rows;
  for (size_t i = 0; i < parts.size(); ++i) {
    const BatchPart& part = parts[i];
    if (!IsJoint(part) || part.task->spec.lower_layers != lower_layers) {
      continue;
    }
    ASSIGN_OR_RETURN(std::vector<torch::Tensor> states,
                     PartStates(model, part));
    (*layout)[i].first_user = static_cast<int64_t>(rows.size());
    size_t next = 0;
    for (const PreparedExample& e : part.examples) {
      std::vector<torch::Tensor> own(
          states.begin() + next,
          states.begin() + next + e.input.segments.size());
      next += e.input.segments.size();
      rows.push_back(part.module->MakeJointRow(e.input, std::move(own)));
    }
  }
  ForwardOptions options;
  options.logits = ForwardOptions::Logits::kNone;
  ASSIGN_OR_RETURN(*out, model.ForwardJoint(rows, lower_layers, options));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<PartOutput>> RunMixedBatch(
    const TransformerLM& model, const std::vector<BatchPart>& parts) {
  for (size_t i = 0; i < parts.size(); ++i) {
    const BatchPart& part = parts[i];
    const bool bare_ok =
        part.task != nullptr && part.task->spec.kind == TaskKind::kGenerate;
    if (part.task == nullptr || part.examples.empty() ||
        (part.module == nullptr && !bare_ok)) {
      return absl::InvalidArgumentError(
          absl::StrCat("batch part ", i, " has no task module or no examples"));
    }
    for (const PreparedExample& e : part.examples) {
      if (part.module == nullptr && e.input.ids.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("task ", part.task->spec.task,
                         ": an example without a module has no input tokens"));
      }
      if (IsJoint(part) && e.input.segments.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "task ", part.task->spec.task,
            ": late interaction needs segmented inputs (lower_layers ",
            part.task->spec.lower_layers, ")"));
      }
    }
  }
  std::vector<PartRows> layout(parts.size());
  std::vector<RowInput> rows;
  try {
    rows = BatchRows(parts, &layout);
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("building the batch failed: ", TorchErrorMessage(e)));
  }
  ForwardOptions options;
  options.logits = ForwardOptions::Logits::kNone;
  ForwardOutput out;
  if (!rows.empty()) {
    ASSIGN_OR_RETURN(out, model.Forward(rows, nullptr, options));
  }
  // Late-interaction parts: one joint pass per split.
  std::map<int64_t, ForwardOutput> joint;
  for (const BatchPart& part : parts) {
    if (!IsJoint(part)) continue;
    const int64_t lower = part.task->spec.lower_layers;
    if (joint.count(lower) > 0) continue;
    try {
      RETURN_IF_ERROR(
          RunJointParts(model, parts, lower, &layout, &joint[lower]));
    } catch (const std::exception& e) {
      return absl::InternalError(
          absl::StrCat("building the late-interaction batch failed: ",
                       TorchErrorMessage(e)));
    }
  }
  std::vector<PartOutput> results;
  try {
    for (size_t i = 0; i < parts.size(); ++i) {
      switch (parts[i].task->spec.kind) {
        case TaskKind::kScore:
          results.push_back(ScoreLoss(
              parts[i], layout[i],
              IsJoint(parts[i]) ? joint.at(parts[i].task->spec.lower_layers)
                                : out));
          break;
        case TaskKind::kGenerate:
          results.push_back(GenerateLoss(parts[i], layout[i], out, model));
          break;
        case TaskKind::kRetrieve:
          results.push_back(RetrieveLoss(parts[i], layout[i], out));
          break;
      }
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(
        "computing the task losses failed: ", TorchErrorMessage(e)));
  }
  return results;
}

}  // namespace optrec
