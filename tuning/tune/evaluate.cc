#include "tuning/tune/evaluate.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/model/generation.h"
#include "core/model/scoring.h"
#include "core/util/status_macros.h"
#include "core/util/torch_errors.h"
#include "tuning/metrics/metrics.h"
#include "tuning/tune/constrained_decoding.h"

namespace optrec {
namespace {

using Json = nlohmann::json;

// A metric as JSON: NaN (undefined) becomes null.
Json Number(double v) { return std::isfinite(v) ? Json(v) : Json(); }

const TaskTemplate& EvalTemplate(const TaskContext& task,
                                 const EvalOptions& o) {
  return o.zero_shot ? task.spec.zero_shot.input
                     : task.spec.templates[o.template_index];
}

// Examples [begin, end) prepared under the evaluation's template.
absl::StatusOr<BatchPart> PreparePart(const TaskContext& task,
                                      const std::vector<Example>& examples,
                                      size_t begin, size_t end,
                                      const EvalOptions& o) {
  BatchPart part;
  part.task = &task;
  part.module = o.zero_shot ? nullptr : task.module.get();
  for (size_t i = begin; i < end; ++i) {
    ASSIGN_OR_RETURN(PreparedExample p,
                     PrepareExample(task, examples[i], EvalTemplate(task, o)));
    part.examples.push_back(std::move(p));
  }
  return part;
}

// Whether candidate `k` (score a) ranks ahead of the target `i` (score b):
// a higher score, or an equal one earlier in the list, so that ties never
// count in the model's favour (a module scoring everything alike gets
// chance-level ranks, not perfect ones).
bool TiedRankAhead(double a, size_t k, double b, size_t i) {
  return a > b || (a == b && k < i);
}

// Candidate-list tasks: hr@k / ndcg@k of each line's positive among its
// candidates, ranked by `score` (higher first).
void GroupRanking(const std::vector<Example>& examples,
                  const std::vector<double>& score, int positive,
                  const std::vector<int>& ks, nlohmann::json* out) {
  if (examples.empty() || examples[0].group < 0) return;
  RankingAccumulator acc(ks);
  for (size_t begin = 0; begin < examples.size();) {
    size_t end = begin;
    while (end < examples.size() &&
           examples[end].group == examples[begin].group) {
      ++end;
    }
    for (size_t i = begin; i < end; ++i) {
      if (examples[i].label != positive) continue;
      int64_t rank = 0;
      for (size_t k = begin; k < end; ++k) {
        rank += TiedRankAhead(score[k], k, score[i], i) ? 1 : 0;
      }
      acc.Add(rank);
    }
    begin = end;
  }
  for (const RankingAtK& r : acc.Means()) {
    (*out)[absl::StrCat("hr@", r.k)] = Number(r.hit_rate);
    (*out)[absl::StrCat("ndcg@", r.k)] = Number(r.ndcg);
  }
}

// The metrics of class probabilities [N][C].
void ScoreMetrics(const TaskSpec& spec, const std::vector<Example>& examples,
                  const std::vector<int>& ks,
                  const std::vector<std::vector<double>>& probs,
                  const std::vector<int>& labels, Json* out) {
  (*out)["accuracy"] = Number(Accuracy(probs, labels));
  (*out)["log_loss"] = Number(LogLoss(probs, labels));
  if (spec.options.size() == 2) {
    const int positive = spec.OptionIndex(spec.positive_label);
    std::vector<double> p;
    std::vector<int> y;
    for (size_t i = 0; i < probs.size(); ++i) {
      p.push_back(probs[i][positive]);
      y.push_back(labels[i] == positive ? 1 : 0);
    }
    (*out)["auc"] = Number(Auc(p, y));
    GroupRanking(examples, p, positive, ks, out);
    return;
  }
  std::vector<double> expected, truth;
  for (size_t i = 0; i < probs.size(); ++i) {
    double v = 0;
    for (size_t c = 0; c < probs[i].size(); ++c) {
      v += probs[i][c] * spec.options[c].label;
    }
    expected.push_back(v);
    truth.push_back(spec.options[labels[i]].label);
  }
  (*out)["rmse"] = Number(Rmse(expected, truth));
  (*out)["mae"] = Number(Mae(expected, truth));
}

std::vector<double> Softmax(const std::vector<double>& x) {
  const double top = *std::max_element(x.begin(), x.end());
  std::vector<double> e;
  double sum = 0;
  for (double v : x) {
    e.push_back(std::exp(v - top));
    sum += e.back();
  }
  for (double& v : e) v /= sum;
  return e;
}

absl::Status EvaluateScore(const TransformerLM& model, const TaskContext& task,
                           const std::vector<Example>& examples,
                           const EvalOptions& o, Json* out) {
  const TaskSpec& spec = task.spec;
  std::vector<std::vector<double>> probs;
  std::vector<int> labels;
  for (const Example& e : examples) labels.push_back(e.label);
  if (!o.zero_shot) {
    for (size_t begin = 0; begin < examples.size(); begin += o.batch_rows) {
      const size_t end = std::min(examples.size(), begin + o.batch_rows);
      ASSIGN_OR_RETURN(BatchPart part,
                       PreparePart(task, examples, begin, end, o));
      ASSIGN_OR_RETURN(std::vector<PartOutput> results,
                       RunMixedBatch(model, {part}));
      torch::Tensor p =
          torch::softmax(results[0].logits.to(torch::kFloat64), -1)
              .to(torch::kCPU)
              .contiguous();
      for (int64_t i = 0; i < p.size(0); ++i) {
        probs.emplace_back(p[i].data_ptr<double>(),
                           p[i].data_ptr<double>() + p.size(1));
      }
    }
    ScoreMetrics(spec, examples, o.ks, probs, labels, out);
    return absl::OkStatus();
  }
  // Zero-shot: each continuation's mean log-likelihood after the context.
  const std::vector<std::string>& conts = spec.zero_shot.continuations;
  std::vector<double> ranking;  // single-continuation specs
  std::vector<ContinuationRequest> requests;
  auto flush = [&]() -> absl::Status {
    if (requests.empty()) return absl::OkStatus();
    ASSIGN_OR_RETURN(std::vector<ContinuationScore> scores,
                     ScoreContinuations(model, requests));
    for (size_t i = 0; i < scores.size(); i += conts.size()) {
      if (conts.size() == 1) {
        ranking.push_back(scores[i].mean_log_likelihood);
        continue;
      }
      std::vector<double> ll;
      for (size_t c = 0; c < conts.size(); ++c) {
        ll.push_back(scores[i + c].mean_log_likelihood);
      }
      probs.push_back(Softmax(ll));
    }
    requests.clear();
    return absl::OkStatus();
  };
  for (const Example& e : examples) {
    ASSIGN_OR_RETURN(EncodedInput in,
                     task.encoder->EncodeWith(spec.zero_shot.input, e));
    const FieldMap* item = task.catalog != nullptr && e.item >= 0
                               ? &task.catalog->fields(e.item)
                               : nullptr;
    for (const std::string& c : conts) {
      ASSIGN_OR_RETURN(
          std::string text,
          FillText(c, e.fields, item, spec.zero_shot.input.separator));
      ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                       task.encoder->EncodeText(text));
      requests.push_back({in.ids, ids, {}});
    }
    if (static_cast<int64_t>(requests.size()) >= o.batch_rows) {
      RETURN_IF_ERROR(flush());
    }
  }
  RETURN_IF_ERROR(flush());
  if (conts.size() > 1) {
    ScoreMetrics(spec, examples, o.ks, probs, labels, out);
    return absl::OkStatus();
  }
  const int positive = spec.OptionIndex(spec.positive_label);
  std::vector<int> y;
  for (int label : labels) y.push_back(label == positive ? 1 : 0);
  (*out)["auc"] = Number(Auc(ranking, y));
  GroupRanking(examples, ranking, positive, o.ks, out);
  return absl::OkStatus();
}

void AddRanking(const RankingAccumulator& acc, Json* out) {
  for (const RankingAtK& r : acc.Means()) {
    (*out)[absl::StrCat("hr@", r.k)] = Number(r.hit_rate);
    (*out)[absl::StrCat("ndcg@", r.k)] = Number(r.ndcg);
  }
}

// The row that continues an example's input under the module (or bare).
RowInput ContextRow(const TaskContext& task, const EncodedInput& in,
                    bool zero_shot) {
  if (!zero_shot) return task.module->MakeRow(in, false);
  RowInput row;
  row.ids = in.ids;
  return row;
}

absl::Status EvaluateGenerate(const std::shared_ptr<const TransformerLM>& model,
                              const TaskContext& task,
                              const std::vector<Example>& examples,
                              const EvalOptions& o, Json* out) {
  const TaskSpec& spec = task.spec;
  // Teacher-forced perplexity of the targets.
  double nll = 0;
  int64_t tokens = 0;
  for (size_t begin = 0; begin < examples.size(); begin += o.batch_rows) {
    const size_t end = std::min(examples.size(), begin + o.batch_rows);
    ASSIGN_OR_RETURN(BatchPart part,
                     PreparePart(task, examples, begin, end, o));
    ASSIGN_OR_RETURN(std::vector<PartOutput> results,
                     RunMixedBatch(*model, {part}));
    nll += results[0].loss.item<double>() * results[0].target_tokens;
    tokens += results[0].target_tokens;
  }
  (*out)["perplexity"] = Number(std::exp(nll / tokens));
  if (!o.decode) return absl::OkStatus();

  const TaskTemplate& t = EvalTemplate(task, o);
  if (!spec.constrain_field.empty()) {
    // Ranked catalog entries from the beam over the trie of their texts.
    TokenTrie trie;
    const int32_t eos = task.encoder->tokenizer().special().eos_id;
    for (int64_t i = 0; i < task.catalog->size(); ++i) {
      const FieldValue& v = task.catalog->fields(i).at(spec.constrain_field);
      ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                       task.encoder->EncodeText(" " + v.text));
      if (eos >= 0) ids.push_back(eos);
      trie.Add(ids, i);
    }
    const int beam = *std::max_element(o.ks.begin(), o.ks.end());
    RankingAccumulator acc(o.ks);
    for (size_t n = 0; n < examples.size(); ++n) {
      const Example& e = examples[n];
      ASSIGN_OR_RETURN(EncodedInput in, task.encoder->EncodeWith(t, e));
      ASSIGN_OR_RETURN(
          std::vector<BeamHit> hits,
          ConstrainedBeamSearch(*model, ContextRow(task, in, o.zero_shot), trie,
                                beam));
      int64_t rank = -1;
      for (size_t r = 0; r < hits.size() && rank < 0; ++r) {
        for (int64_t v : hits[r].values) {
          if (v == e.target_item) rank = static_cast<int64_t>(r);
        }
      }
      acc.Add(rank);
      if (static_cast<int64_t>(n) < o.samples && !hits.empty()) {
        (*out)["samples"].push_back(
            {{"line", e.line},
             {"target", e.target},
             {"top", task.catalog->fields(hits[0].values[0])
                         .at(spec.constrain_field)
                         .text}});
      }
    }
    AddRanking(acc, out);
    return absl::OkStatus();
  }

  // Free text: greedy decoding to the end of the sentence.
  std::vector<std::string> outputs, references;
  const size_t chunk = static_cast<size_t>(std::max<int64_t>(1, o.batch_rows));
  for (size_t begin = 0; begin < examples.size(); begin += chunk) {
    const size_t end = std::min(examples.size(), begin + chunk);
    std::vector<GenerationRequest> requests;
    for (size_t i = begin; i < end; ++i) {
      ASSIGN_OR_RETURN(EncodedInput in,
                       task.encoder->EncodeWith(t, examples[i]));
      RowInput row = ContextRow(task, in, o.zero_shot);
      GenerationRequest r;
      r.prompt_ids = row.ids;
      r.soft_prompt = row.prompt;
      r.adapter = row.adapter;
      r.params.max_tokens = spec.max_new_tokens;
      r.params.stop = {"\n"};
      requests.push_back(std::move(r));
    }
    ASSIGN_OR_RETURN(std::vector<GenerationResult> results,
                     Generate(model, requests));
    for (size_t i = begin; i < end; ++i) {
      std::string text = results[i - begin].text;
      while (!text.empty() && text.front() == ' ') text.erase(0, 1);
      if (static_cast<int64_t>(i) < o.samples) {
        (*out)["samples"].push_back({{"line", examples[i].line},
                                     {"target", examples[i].target},
                                     {"output", text}});
      }
      outputs.push_back(std::move(text));
      references.push_back(examples[i].target);
    }
  }
  (*out)["bleu4"] = Number(Bleu4(outputs, references));
  const RougeScores rouge = Rouge(outputs, references);
  (*out)["rouge1"] = Number(rouge.rouge1);
  (*out)["rouge2"] = Number(rouge.rouge2);
  (*out)["rouge_l"] = Number(rouge.rouge_l);
  return absl::OkStatus();
}

// Embeddings [N, E] of encoded inputs through one tower.
absl::StatusOr<torch::Tensor> EmbedRows(const TransformerLM& model,
                                        const PromptModule& module,
                                        const std::vector<EncodedInput>& inputs,
                                        bool item_tower, int64_t batch_rows) {
  std::vector<torch::Tensor> parts;
  ForwardOptions options;
  options.logits = ForwardOptions::Logits::kNone;
  for (size_t begin = 0; begin < inputs.size(); begin += batch_rows) {
    const size_t end = std::min(inputs.size(), begin + batch_rows);
    std::vector<RowInput> rows;
    for (size_t i = begin; i < end; ++i) {
      rows.push_back(module.MakeRow(inputs[i], item_tower));
    }
    ASSIGN_OR_RETURN(ForwardOutput out, model.Forward(rows, nullptr, options));
    std::vector<int64_t> flat;
    const int64_t t = out.hidden.size(1);
    for (size_t r = 0; r < rows.size(); ++r) {
      flat.push_back(static_cast<int64_t>(r) * t + out.lengths[r] - 1);
    }
    torch::Tensor h =
        out.hidden.reshape({-1, out.hidden.size(2)})
            .index_select(
                0, torch::tensor(flat, torch::kInt64).to(out.hidden.device()));
    parts.push_back(
        module.Embed(h, item_tower).to(torch::kCPU, torch::kFloat32));
  }
  return torch::cat(parts, 0);
}

absl::Status EvaluateRetrieve(const TransformerLM& model,
                              const TaskContext& task,
                              const std::vector<Example>& examples,
                              const EvalOptions& o, Json* out) {
  const Catalog& catalog = *task.catalog;
  RankingAccumulator acc(o.ks);
  if (!o.zero_shot) {
    std::vector<EncodedInput> items, users;
    for (int64_t i = 0; i < catalog.size(); ++i) {
      ASSIGN_OR_RETURN(EncodedInput in, task.encoder->EncodeItem(i));
      items.push_back(std::move(in));
    }
    for (const Example& e : examples) {
      ASSIGN_OR_RETURN(EncodedInput in,
                       task.encoder->EncodeExample(e, o.template_index));
      users.push_back(std::move(in));
    }
    ASSIGN_OR_RETURN(torch::Tensor item_emb,
                     EmbedRows(model, *task.module, items, true, o.batch_rows));
    ASSIGN_OR_RETURN(
        torch::Tensor user_emb,
        EmbedRows(model, *task.module, users, false, o.batch_rows));
    torch::Tensor scores = torch::matmul(user_emb, item_emb.t());  // [N, I]
    for (size_t n = 0; n < examples.size(); ++n) {
      const int64_t target_item = examples[n].target_item;
      torch::Tensor row = scores[n];
      const float target = row[target_item].item<float>();
      const int64_t ahead =
          row.gt(target).sum().item<int64_t>() +
          row.narrow(0, 0, target_item).eq(target).sum().item<int64_t>();
      acc.Add(ahead);
    }
    AddRanking(acc, out);
    return absl::OkStatus();
  }
  // Zero-shot: every catalog item's continuation scored after the context.
  std::vector<std::vector<int32_t>> conts;
  for (int64_t i = 0; i < catalog.size(); ++i) {
    ASSIGN_OR_RETURN(
        std::string text,
        FillText(task.spec.zero_shot.continuations[0], catalog.fields(i),
                 nullptr, task.spec.zero_shot.input.separator));
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, task.encoder->EncodeText(text));
    conts.push_back(std::move(ids));
  }
  for (const Example& e : examples) {
    ASSIGN_OR_RETURN(EncodedInput in,
                     task.encoder->EncodeWith(task.spec.zero_shot.input, e));
    ASSIGN_OR_RETURN(std::vector<ContinuationScore> scores,
                     ScoreSharedContext(model, in.ids, conts, {}, 256));
    const double target = scores[e.target_item].mean_log_likelihood;
    int64_t rank = 0;
    for (size_t k = 0; k < scores.size(); ++k) {
      rank += TiedRankAhead(scores[k].mean_log_likelihood, k, target,
                            static_cast<size_t>(e.target_item))
                  ? 1
                  : 0;
    }
    acc.Add(rank);
  }
  AddRanking(acc, out);
  return absl::OkStatus();
}

}  // namespace

double SelectionValue(const Json& metrics, const std::string& name) {
  const bool negate = name.rfind("neg_", 0) == 0;
  const std::string key = negate ? name.substr(4) : name;
  if (!metrics.contains(key) || !metrics[key].is_number()) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  const double v = metrics[key].get<double>();
  return negate ? -v : v;
}

absl::StatusOr<Json> EvaluateTask(
    const std::shared_ptr<const TransformerLM>& model, const TaskContext& task,
    const std::vector<Example>& examples, const EvalOptions& o) {
  const TaskSpec& spec = task.spec;
  if (examples.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("task ", spec.task, ": no examples to evaluate"));
  }
  if (o.zero_shot && !spec.zero_shot.defined()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "task ", spec.task, " has no zero_shot section in its spec"));
  }
  if (!o.zero_shot && task.module == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("task ", spec.task, ": no module to evaluate"));
  }
  if (!o.zero_shot && o.template_index >= spec.templates.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "task ", spec.task, " has no template ", o.template_index));
  }
  if (o.batch_rows < 1) {
    return absl::InvalidArgumentError("batch_rows must be positive");
  }
  torch::NoGradGuard no_grad;
  Json out = Json::object();
  out["examples"] = static_cast<int64_t>(examples.size());
  out["template"] =
      o.zero_shot ? "zero_shot" : spec.templates[o.template_index].name;
  try {
    switch (spec.kind) {
      case TaskKind::kScore:
        RETURN_IF_ERROR(EvaluateScore(*model, task, examples, o, &out));
        break;
      case TaskKind::kGenerate:
        RETURN_IF_ERROR(EvaluateGenerate(model, task, examples, o, &out));
        break;
      case TaskKind::kRetrieve:
        RETURN_IF_ERROR(EvaluateRetrieve(*model, task, examples, o, &out));
        break;
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("evaluating task ", spec.task,
                                            " failed: ", TorchErrorMessage(e)));
  }
  return out;
}

}  // namespace optrec
