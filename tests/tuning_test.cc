// Option tuning: task specs and their data checks, templates, prompt
// modules, mixed-task batches (against task-by-task runs and finite
// differences), the frozen backbone, constrained decoding against an
// exhaustive ranking, and whole tuning jobs (resume after a kill, NaN loss,
// immutable versions).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/checkpoint/safetensors.h"
#include "core/model/scoring.h"
#include "core/util/files.h"
#include "tests/cli_path.h"
#include "tests/testlib/tiny_models.h"
#include "tests/testlib/tuning_fixture.h"
#include "tuning/module/prompt_module.h"
#include "tuning/tasks/examples.h"
#include "tuning/tasks/render.h"
#include "tuning/tasks/task_spec.h"
#include "tuning/tune/constrained_decoding.h"
#include "tuning/tune/evaluate.h"
#include "tuning/tune/task_batch.h"
#include "tuning/tune/tuner.h"

namespace optrec {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using ::testing::HasSubstr;

std::string Message(const absl::Status& s) { return std::string(s.message()); }

// A task context with a fresh module and the first `n` training examples.
struct Loaded {
  std::unique_ptr<TaskContext> task;
  TaskData data;
};

Loaded Load(const TransformerLM& model, const std::string& kind,
            TuningMethod method, int64_t n, uint64_t seed = 1) {
  Loaded l;
  absl::StatusOr<TaskSpec> spec = ParseTaskSpec(TestSpec(kind), kind);
  EXPECT_TRUE(spec.ok()) << spec.status();
  auto task = MakeTaskContext(*spec, model, SharedTuningFixture().world);
  EXPECT_TRUE(task.ok()) << task.status();
  l.task = *std::move(task);
  TaskDataOptions options;
  options.limit = n;
  auto data = LoadTaskData(
      l.task->spec,
      ResolveDataPath(SharedTuningFixture().world, l.task->spec.data) +
          "/train.jsonl",
      l.task->catalog.get(), options);
  EXPECT_TRUE(data.ok()) << data.status();
  l.data = *std::move(data);
  auto module =
      PromptModule::Create(l.task->spec, method, model, *l.task->encoder, seed);
  EXPECT_TRUE(module.ok()) << module.status();
  l.task->module = *module;
  return l;
}

BatchPart Part(const Loaded& l, size_t first, size_t n) {
  BatchPart part;
  part.task = l.task.get();
  part.module = l.task->module.get();
  for (size_t i = first; i < first + n; ++i) {
    auto p =
        PrepareExample(*l.task, l.data.examples[i], l.task->spec.templates[0]);
    EXPECT_TRUE(p.ok()) << p.status();
    part.examples.push_back(*p);
  }
  return part;
}

// Gives every module tensor random values, so that no gradient is zero by
// construction (adapters start with up = 0).
void Randomise(PromptModule& m, uint64_t seed) {
  torch::manual_seed(seed);
  PromptModule::Named values;
  for (const auto& [name, t] : m.NamedTensors()) {
    values.emplace_back(name, torch::randn(t.sizes()) * 0.3);
  }
  ASSERT_TRUE(m.CopyFrom(values).ok());
}

// ---- Specs and data. ----

TEST(TaskSpecTest, BadSpecsNameTheField) {
  Json spec = TestSpec("score");
  spec["kind"] = "classify";
  absl::Status s = ParseTaskSpec(spec, "x.json").status();
  EXPECT_THAT(Message(s), HasSubstr("field 'kind'"));
  EXPECT_THAT(Message(s), HasSubstr("unknown task kind 'classify'"));

  spec = TestSpec("score");
  spec["prompt_lenght"] = 8;
  EXPECT_THAT(Message(ParseTaskSpec(spec, "x.json").status()),
              HasSubstr("unknown field 'prompt_lenght'"));

  spec = TestSpec("generate");
  spec["options"] = TestSpec("score")["options"];
  EXPECT_THAT(Message(ParseTaskSpec(spec, "x.json").status()),
              HasSubstr("'options' is only for score tasks"));

  spec = TestSpec("rating");
  spec["prompt_length"] = 3;
  EXPECT_THAT(Message(ParseTaskSpec(spec, "x.json").status()),
              HasSubstr("shorter than the 5 options"));

  spec = TestSpec("score");
  spec["options"][1]["label"] = 0;
  EXPECT_THAT(Message(ParseTaskSpec(spec, "x.json").status()),
              HasSubstr("repeats the label 0"));

  spec = TestSpec("score");
  for (Json& t : spec["templates"]) t["held_out"] = true;
  EXPECT_THAT(Message(ParseTaskSpec(spec, "x.json").status()),
              HasSubstr("none is left to train"));

  spec = TestSpec("rating");
  spec["select_metric"] = "auc";  // five options: no AUC
  EXPECT_THAT(Message(ParseTaskSpec(spec, "x.json").status()),
              HasSubstr("this task reports accuracy, neg_log_loss, neg_rmse"));
  spec["select_metric"] = "rmse";  // lower is better: neg_rmse
  EXPECT_THAT(Message(ParseTaskSpec(spec, "x.json").status()),
              HasSubstr("'select_metric' is 'rmse'"));

  spec = TestSpec("generate");
  spec["templates"][0]["input"].push_back("<|mark|>");
  EXPECT_THAT(Message(ParseTaskSpec(spec, "x.json").status()),
              HasSubstr("generate tasks do not support"));
}

TEST(TaskDataTest, BadLinesAreNamedByFileAndLine) {
  auto model = LoadFixtureModel();
  auto spec = ParseTaskSpec(TestSpec("score"), "score");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto task = MakeTaskContext(*spec, *model, SharedTuningFixture().world);
  ASSERT_TRUE(task.ok()) << task.status();
  const std::string dir = MakeTempDir("data");
  const Json good = {{"segments",
                      {{"profile", "Shopper"},
                       {"history", {"Clicked: a lamp"}},
                       {"candidate", "a desk"}}},
                     {"item_id", (*task)->catalog->id(0)},
                     {"label", 1}};
  auto load = [&](const std::vector<std::string>& lines) {
    const std::string path = dir + "/split.jsonl";
    std::ofstream out(path);
    for (const std::string& l : lines) out << l << "\n";
    out.close();
    return LoadTaskData((*task)->spec, path, (*task)->catalog.get()).status();
  };
  ASSERT_TRUE(load({good.dump()}).ok());

  Json no_history = good;
  no_history["segments"].erase("history");
  absl::Status s = load({good.dump(), no_history.dump()});
  EXPECT_THAT(Message(s), HasSubstr("split.jsonl:2: no field 'history'"));

  Json bad_label = good;
  bad_label["label"] = 3;
  s = load({good.dump(), good.dump(), bad_label.dump()});
  EXPECT_THAT(Message(s), HasSubstr("split.jsonl:3: label 3"));
  EXPECT_THAT(Message(s), HasSubstr("not one of task ctr's option labels"));

  s = load({"{\"segments\": "});
  EXPECT_THAT(Message(s), HasSubstr("split.jsonl:1: not valid JSON"));

  Json unknown_item = good;
  unknown_item["item_id"] = "no-such-item";
  s = load({unknown_item.dump()});
  EXPECT_THAT(Message(s), HasSubstr("names item no-such-item"));

  EXPECT_THAT(Message(load({})), HasSubstr("no examples"));
}

// ---- Templates. ----

TEST(RenderTest, ListsKeepTheNewestAndSpecialTokensArePlaced) {
  TaskTemplate t;
  t.input = {"{profile}", "{history}", "Shown: {candidate}"};
  FieldMap fields;
  fields["profile"].text = "Shopper aged 25-34";
  fields["history"].is_list = true;
  fields["history"].list = {"Clicked: a", "Clicked: b", "Clicked: c"};
  fields["candidate"].text = "a lamp";
  auto text = RenderTemplate(t, fields, nullptr, 2);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "Shopper aged 25-34. Clicked: b. Clicked: c. Shown: a lamp");
  t.input = {"Seen {history}!"};
  EXPECT_EQ(*RenderTemplate(t, fields, nullptr, 2),
            "Seen Clicked: b. Clicked: c!");
  // Markers come from the template only: a field value stays text.
  fields["candidate"].text = "a <|answer|> lamp";
  t.input = {"Shown: {candidate} <|answer|>"};
  auto pieces = RenderPieces(t, fields, nullptr, 2);
  ASSERT_TRUE(pieces.ok());
  ASSERT_EQ(pieces->size(), 2u);
  EXPECT_FALSE((*pieces)[0].special);
  EXPECT_EQ((*pieces)[0].text, "Shown: a <|answer|> lamp ");
  EXPECT_TRUE((*pieces)[1].special);
  EXPECT_EQ((*pieces)[1].text, "answer");
  fields["candidate"].text = "a lamp";
  t.input = {"{missing}"};
  EXPECT_THAT(Message(RenderTemplate(t, fields, nullptr, 1).status()),
              HasSubstr("{missing}"));

  auto model = LoadFixtureModel();
  auto spec = ParseTaskSpec(TestSpec("score"), "score");
  ASSERT_TRUE(spec.ok());
  InputEncoder encoder(*spec, *model->tokenizer(), nullptr);
  ASSERT_EQ(encoder.special_names(), std::vector<std::string>{"answer"});
  Example e;
  e.fields = fields;
  auto in = encoder.EncodeExample(e, 1);  // "... <|answer|>"
  ASSERT_TRUE(in.ok()) << in.status();
  ASSERT_EQ(in->special_at.size(), 1u);
  EXPECT_EQ(in->special_at[0], static_cast<int64_t>(in->ids.size()) - 1);
  EXPECT_EQ(in->ids[0], model->tokenizer()->special().bos_id);
  // Without the marker the same text has the same ids before it.
  auto plain = model->tokenizer()->Encode(
      "Clicked: a. Clicked: b. Clicked: c. Would they click a lamp?", true);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(std::vector<int32_t>(in->ids.begin(), in->ids.end() - 1), *plain);
}

TEST(RenderTest, LongInputsDropTheOldestHistoryFirst) {
  auto model = LoadFixtureModel();
  Json j = TestSpec("score");
  j["max_history"] = 50;
  j["max_tokens"] = 40;
  auto spec = ParseTaskSpec(j, "score");
  ASSERT_TRUE(spec.ok());
  InputEncoder encoder(*spec, *model->tokenizer(), nullptr);
  Example e;
  e.fields["profile"].text = "Shopper aged 25-34";
  e.fields["history"].is_list = true;
  for (int i = 0; i < 30; ++i) {
    e.fields["history"].list.push_back(absl::StrCat("Clicked: lamp ", i));
  }
  e.fields["candidate"].text = "a lamp";
  auto in = encoder.EncodeExample(e, 0);
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_LE(in->ids.size(), 40u);
  auto text = model->tokenizer()->Decode(in->ids, true);
  ASSERT_TRUE(text.ok());
  EXPECT_THAT(*text, HasSubstr("lamp 29. Shown: a lamp. Clicked it"));
  EXPECT_THAT(*text, ::testing::Not(HasSubstr("lamp 0.")));
  EXPECT_THAT(*text, HasSubstr("Shopper aged 25-34"));
}

// ---- Modules. ----

TEST(PromptModuleTest, SavedModulesReloadExactlyAndOnlyOnTheirBase) {
  auto model = LoadFixtureModel();
  Loaded l = Load(*model, "score", TuningMethod::kOptionAdapter, 4);
  Randomise(*l.task->module, 3);
  l.task->module->info()["version"] = "v7";
  const std::string path = MakeTempDir("module") + "/ctr.v7.safetensors";
  ASSERT_TRUE(l.task->module->Save(path).ok());
  auto back = PromptModule::Load(path, *model);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)->method(), TuningMethod::kOptionAdapter);
  EXPECT_EQ((*back)->info()["version"], "v7");
  const auto a = l.task->module->NamedTensors(), b = (*back)->NamedTensors();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(torch::equal(a[i].second.detach(), b[i].second)) << a[i].first;
  }

  // Another backbone: refused with both fingerprints named.
  const std::string other = MakeTempDir("other");
  ASSERT_TRUE(WriteRandomModel(other, FixtureModelSpec(99)).ok());
  auto other_model = TransformerLM::Load(other);
  ASSERT_TRUE(other_model.ok());
  auto refused = PromptModule::Load(path, **other_model);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(refused.status()), HasSubstr(model->fingerprint()));
  EXPECT_THAT(Message(refused.status()),
              HasSubstr((*other_model)->fingerprint()));
}

// The demo modules in models/modules (served by the quickstart) were
// trained on the committed default model: rebuilding that model without
// retraining them would make the server refuse them.
TEST(PromptModuleTest, CommittedDemoModulesLoadOnTheCommittedDefaultModel) {
  const std::string root = OPTREC_SOURCE_DIR;
  auto model = TransformerLM::Load(root + "/models/default");
  ASSERT_TRUE(model.ok()) << model.status();
  const std::pair<const char*, TaskKind> demos[] = {
      {"ctr", TaskKind::kScore},
      {"next_click", TaskKind::kRetrieve},
      {"explanation", TaskKind::kGenerate}};
  for (const auto& [task, kind] : demos) {
    SCOPED_TRACE(task);
    auto module =
        PromptModule::Load(absl::StrCat(root, "/models/modules/", task,
                                        ".option_adapter.safetensors"),
                           **model);
    ASSERT_TRUE(module.ok()) << module.status()
                             << " (retrain the demo modules: "
                                "models/modules/README.md)";
    EXPECT_EQ((*module)->spec().task, task);
    EXPECT_EQ((*module)->spec().kind, kind);
    EXPECT_EQ((*module)->method(), TuningMethod::kOptionAdapter);
    // About 1% of the backbone; the retrieval module's two towers with
    // their 128 x 128 projections come to under 4% of this small one.
    EXPECT_LT((*module)->ParameterCount(), (*model)->parameter_count() / 25);
  }
}

TEST(PromptModuleTest, EvaluationSpecsMustShapeRowsLikeTheModule) {
  auto model = LoadFixtureModel();
  Loaded l = Load(*model, "score", TuningMethod::kOption, 1);
  Json other = TestSpec("score");
  other["data"] = "elsewhere";  // data and templates may differ
  other["templates"][0]["name"] = "renamed";
  EXPECT_TRUE(l.task->module->CheckSpecFits(*ParseTaskSpec(other, "o")).ok());
  other["prompt_length"] = 8;
  EXPECT_THAT(
      Message(l.task->module->CheckSpecFits(*ParseTaskSpec(other, "o"))),
      HasSubstr("'prompt_length' is 8 there and 4 in the module"));
  other = TestSpec("score");
  other["options"][1]["label"] = 2;
  other["positive_label"] = 2;
  EXPECT_THAT(
      Message(l.task->module->CheckSpecFits(*ParseTaskSpec(other, "o"))),
      HasSubstr("'options'"));
}

TEST(PromptModuleTest, ParameterCountsFollowTheMethod) {
  auto model = LoadFixtureModel();
  const int64_t d = 32, p = 4, l = 2, r = 2, e = 8;
  // Score: prompt (+ head for the prompt method) + the <|answer|> token.
  EXPECT_EQ(Load(*model, "score", TuningMethod::kPrompt, 1)
                .task->module->ParameterCount(),
            p * d + 2 * d + 2 + d);
  EXPECT_EQ(Load(*model, "score", TuningMethod::kOption, 1)
                .task->module->ParameterCount(),
            p * d + d);
  EXPECT_EQ(Load(*model, "score", TuningMethod::kOptionAdapter, 1)
                .task->module->ParameterCount(),
            p * d + d + l * (2 * d * r + 1));
  // Retrieve: two towers with prompt and projection each.
  EXPECT_EQ(Load(*model, "retrieve", TuningMethod::kOption, 2)
                .task->module->ParameterCount(),
            2 * (p * d + e * d));
}

TEST(PromptModuleTest, OptionVectorsStartAtTheOptionWords) {
  auto model = LoadFixtureModel();
  Loaded l = Load(*model, "score", TuningMethod::kOption, 1);
  const torch::Tensor prompt = l.task->module->user().prompt.detach();
  for (int o = 0; o < 2; ++o) {
    auto ids = l.task->encoder->EncodeText(" " + l.task->spec.options[o].text);
    ASSERT_TRUE(ids.ok());
    std::vector<int64_t> wide(ids->begin(), ids->end());
    torch::Tensor expected =
        model->EmbedTokens(torch::tensor(wide, torch::kInt64)).mean(0);
    EXPECT_TRUE(torch::allclose(prompt[2 + o], expected)) << "option " << o;
  }
}

// ---- Mixed batches. ----

// Gradients of every module tensor after backward (cloned, then cleared).
std::vector<torch::Tensor> TakeGrads(const PromptModule& m) {
  std::vector<torch::Tensor> out;
  for (torch::Tensor t : m.Parameters()) {
    out.push_back(t.grad().defined() ? t.grad().clone() : torch::zeros_like(t));
    t.mutable_grad() = torch::Tensor();
  }
  return out;
}

TEST(MixedBatchTest, SameLossesAndGradientsAsTaskByTask) {
  auto model = LoadFixtureModel();
  std::vector<Loaded> tasks;
  tasks.push_back(Load(*model, "score", TuningMethod::kOptionAdapter, 5, 1));
  tasks.push_back(Load(*model, "rating", TuningMethod::kPrompt, 3, 2));
  tasks.push_back(Load(*model, "generate", TuningMethod::kOptionAdapter, 4, 3));
  tasks.push_back(Load(*model, "retrieve", TuningMethod::kOptionAdapter, 6, 4));
  std::vector<BatchPart> parts;
  for (size_t i = 0; i < tasks.size(); ++i) {
    Randomise(*tasks[i].task->module, 10 + i);
    parts.push_back(Part(tasks[i], 0, tasks[i].data.examples.size()));
  }
  auto mixed = RunMixedBatch(*model, parts);
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  torch::Tensor total = (*mixed)[0].loss;
  for (size_t i = 1; i < mixed->size(); ++i) total = total + (*mixed)[i].loss;
  total.backward();
  std::vector<std::vector<torch::Tensor>> mixed_grads;
  for (const Loaded& t : tasks)
    mixed_grads.push_back(TakeGrads(*t.task->module));

  for (size_t i = 0; i < tasks.size(); ++i) {
    auto alone = RunMixedBatch(*model, {parts[i]});
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_NEAR((*alone)[0].loss.item<double>(),
                (*mixed)[i].loss.item<double>(), 1e-5)
        << tasks[i].task->spec.task;
    (*alone)[0].loss.backward();
    const std::vector<torch::Tensor> grads = TakeGrads(*tasks[i].task->module);
    const PromptModule::Named named = tasks[i].task->module->NamedTensors();
    for (size_t g = 0; g < grads.size(); ++g) {
      const double scale = 1e-6 + grads[g].abs().max().item<double>();
      EXPECT_LT((grads[g] - mixed_grads[i][g]).abs().max().item<double>(),
                1e-4 * scale)
          << tasks[i].task->spec.task << " tensor " << g;
      // Real gradients, not zeros that would match trivially (the special
      // token is only in the held-out template).
      if (named[g].first != "special") {
        EXPECT_GT(grads[g].abs().sum().item<double>(), 0.0)
            << tasks[i].task->spec.task << " " << named[g].first;
      }
    }
  }
}

TEST(MixedBatchTest, RetrievalDrawWithOneTargetIsSkippedNotAnError) {
  auto model = LoadFixtureModel();
  Loaded l = Load(*model, "retrieve", TuningMethod::kOption, 1);
  BatchPart part = Part(l, 0, 1);
  part.examples.push_back(part.examples[0]);  // the same target twice
  auto out = RunMixedBatch(*model, {part});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE((*out)[0].skipped);
  EXPECT_EQ((*out)[0].loss.item<double>(), 0.0);
  (*out)[0].loss.backward();  // still on the tape, with zero gradients
  EXPECT_EQ(l.task->module->user().prompt.grad().abs().sum().item<double>(),
            0.0);
}

// Central differences of the loss against autograd, in double precision,
// for a few entries of every module tensor.
void CheckFiniteDifferences(const std::string& kind, TuningMethod method,
                            int64_t examples) {
  auto model = LoadFixtureModel(torch::kFloat64);
  Loaded l = Load(*model, kind, method, examples);
  PromptModule& m = *l.task->module;
  Randomise(m, 21);
  const BatchPart part = Part(l, 0, examples);
  auto loss_of = [&]() {
    torch::NoGradGuard no_grad;
    auto out = RunMixedBatch(*model, {part});
    EXPECT_TRUE(out.ok()) << out.status();
    return (*out)[0].loss.item<double>();
  };
  auto out = RunMixedBatch(*model, {part});
  ASSERT_TRUE(out.ok()) << out.status();
  (*out)[0].loss.backward();
  int checked = 0;
  for (const auto& [name, t] : m.NamedTensors()) {
    torch::Tensor flat = t.detach().view({-1});
    // A tensor the rows do not use (a special token of another template)
    // gets no gradient: its numeric one must be zero.
    torch::Tensor grad =
        t.grad().defined() ? t.grad().view({-1}) : torch::zeros_like(flat);
    for (int64_t k : {int64_t{0}, flat.numel() / 2, flat.numel() - 1}) {
      const float original = flat[k].item<float>();
      const float up = original + 1e-2f, down = original - 1e-2f;
      flat[k] = up;
      const double loss_up = loss_of();
      flat[k] = down;
      const double loss_down = loss_of();
      flat[k] = original;
      const double numeric =
          (loss_up - loss_down) / (static_cast<double>(up) - down);
      const double analytic = grad[k].item<double>();
      EXPECT_NEAR(analytic, numeric, 2e-3 * (1 + std::abs(numeric)))
          << kind << " " << name << "[" << k << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

TEST(GradientTest, ScoreModulesMatchFiniteDifferences) {
  CheckFiniteDifferences("score", TuningMethod::kOptionAdapter, 3);
  CheckFiniteDifferences("rating", TuningMethod::kPrompt, 3);
}

TEST(GradientTest, GenerateAndRetrieveModulesMatchFiniteDifferences) {
  CheckFiniteDifferences("generate", TuningMethod::kOptionAdapter, 2);
  CheckFiniteDifferences("retrieve", TuningMethod::kOptionAdapter, 4);
}

TEST(FrozenBackboneTest, TrainingStepsLeaveTheBackboneBitIdentical) {
  auto model = LoadFixtureModel();
  const std::string before = BackboneChecksum(*model);
  Loaded score = Load(*model, "score", TuningMethod::kOptionAdapter, 8);
  Loaded retrieve = Load(*model, "retrieve", TuningMethod::kOptionAdapter, 8);
  std::vector<torch::Tensor> params = score.task->module->Parameters();
  for (const torch::Tensor& t : retrieve.task->module->Parameters()) {
    params.push_back(t);
  }
  const torch::Tensor prompt_before = score.task->module->user().prompt.clone();
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(1e-2));
  for (int step = 0; step < 3; ++step) {
    auto out = RunMixedBatch(*model, {Part(score, 0, 8), Part(retrieve, 0, 8)});
    ASSERT_TRUE(out.ok()) << out.status();
    optimizer.zero_grad();
    ((*out)[0].loss + (*out)[1].loss).backward();
    optimizer.step();
  }
  EXPECT_EQ(BackboneChecksum(*model), before);
  for (const torch::Tensor& w : model->parameters()) {
    EXPECT_FALSE(w.requires_grad());
    EXPECT_FALSE(w.grad().defined());
  }
  // While the module did train.
  EXPECT_FALSE(torch::equal(score.task->module->user().prompt, prompt_before));
}

// ---- Constrained decoding. ----

TEST(ConstrainedDecodingTest, WideBeamEqualsTheExhaustiveRanking) {
  auto model = LoadFixtureModel();
  const Tokenizer& tok = *model->tokenizer();
  const std::vector<std::string> titles = {"Northpeak trail running shoes, red",
                                           "Northpeak trail running shoes",
                                           "Northpeak yoga mat",
                                           "Lanternhouse mystery novel",
                                           "Lanternhouse mystery novel, blue",
                                           "Kestrel Labs laptop"};
  TokenTrie trie;
  std::vector<std::vector<int32_t>> spelled;
  for (size_t i = 0; i < titles.size(); ++i) {
    auto ids = tok.Encode(" " + titles[i], false);
    ASSERT_TRUE(ids.ok());
    ids->push_back(tok.special().eos_id);
    trie.Add(*ids, static_cast<int64_t>(i));
    spelled.push_back(*ids);
  }
  auto context = tok.Encode("Shopper aged 25-34. Clicked:", true);
  ASSERT_TRUE(context.ok());
  RowInput row;
  row.ids = *context;
  auto hits = ConstrainedBeamSearch(*model, row, trie, 10);
  ASSERT_TRUE(hits.ok()) << hits.status();
  ASSERT_EQ(hits->size(), titles.size());

  auto scores = ScoreSharedContext(*model, *context, spelled);
  ASSERT_TRUE(scores.ok());
  std::vector<size_t> order(titles.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return (*scores)[a].log_likelihood > (*scores)[b].log_likelihood;
  });
  for (size_t r = 0; r < order.size(); ++r) {
    ASSERT_EQ((*hits)[r].values.size(), 1u);
    EXPECT_EQ((*hits)[r].values[0], static_cast<int64_t>(order[r])) << r;
    EXPECT_NEAR((*hits)[r].log_prob, (*scores)[order[r]].log_likelihood, 1e-3);
  }
  // A narrow beam returns that many of the best, each a real title.
  auto top2 = ConstrainedBeamSearch(*model, row, trie, 2);
  ASSERT_TRUE(top2.ok());
  ASSERT_EQ(top2->size(), 2u);
  for (const BeamHit& h : *top2) {
    EXPECT_LT(h.values[0], static_cast<int64_t>(titles.size()));
  }
}

// ---- Evaluation. ----

TEST(EvaluateTest, EveryKindReportsItsMetricsWithAModuleAndZeroShot) {
  auto model = LoadFixtureModel();
  auto check = [&](const std::string& kind,
                   const std::vector<std::string>& with,
                   const std::vector<std::string>& zero) {
    Loaded l = Load(*model, kind, TuningMethod::kOption, 12);
    EvalOptions o;
    o.ks = {1, 10};
    auto m = EvaluateTask(model, *l.task, l.data.examples, o);
    ASSERT_TRUE(m.ok()) << kind << ": " << m.status();
    EXPECT_EQ((*m)["examples"], 12);
    for (const std::string& key : with) {
      EXPECT_TRUE((*m)[key].is_number())
          << kind << " " << key << " " << m->dump();
    }
    if (zero.empty()) return;
    o.zero_shot = true;
    auto z = EvaluateTask(model, *l.task, l.data.examples, o);
    ASSERT_TRUE(z.ok()) << kind << ": " << z.status();
    for (const std::string& key : zero) {
      EXPECT_TRUE((*z)[key].is_number())
          << kind << " " << key << " " << z->dump();
    }
  };
  check("score", {"auc", "accuracy", "log_loss"}, {"auc"});
  check("rating", {"rmse", "mae", "accuracy"}, {});
  check("generate", {"perplexity", "bleu4", "rouge1", "rouge_l"},
        {"perplexity", "bleu4"});
  check("retrieve", {"hr@1", "hr@10", "ndcg@10"}, {"hr@10"});
  check("sequential", {"perplexity", "hr@1", "hr@10"}, {});
}

TEST(EvaluateTest, SelectionValuesNegateLowerIsBetterMetrics) {
  const Json m = {{"rmse", 0.8}, {"auc", 0.7}};
  EXPECT_DOUBLE_EQ(SelectionValue(m, "auc"), 0.7);
  EXPECT_DOUBLE_EQ(SelectionValue(m, "neg_rmse"), -0.8);
  EXPECT_TRUE(std::isnan(SelectionValue(m, "hr@10")));
}

// ---- Whole jobs. ----

struct Job {
  std::string dir, spec, flags;
};

Job MakeJob(const std::string& kind, int steps,
            const std::string& extra = "--checkpoint-every 5") {
  Job j;
  j.dir = MakeTempDir("job");
  j.spec = WriteSpec(TestSpec(kind), kind);
  j.flags = absl::StrCat(
      "tune --model ", SharedTuningFixture().model, " --world ",
      SharedTuningFixture().world, " --task ", j.spec, " --steps ", steps,
      " --warmup 2 --batch 4 --eval-every 10 --eval-examples 16 ",
      "--max-train-examples 200 ", extra);
  return j;
}

int RunCli(const std::string& args, std::string* output = nullptr) {
  const std::string log = MakeTempDir("log") + "/out.txt";
  const std::string command =
      std::string(OPTREC_CLI_PATH) + " " + args + " > " + log + " 2>&1";
  const int status = std::system(command.c_str());
  if (output != nullptr) *output = ReadFile(log).value_or("");
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::map<std::string, torch::Tensor> ModuleTensors(const std::string& path) {
  std::map<std::string, torch::Tensor> out;
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return out;
  for (const std::string& name : (*file)->names()) {
    out[name] = ToTorch(*file, *(*file)->Find(name), torch::kFloat32)->clone();
  }
  return out;
}

TEST(TuneJobTest, KilledJobResumesToTheSameModule) {
  Job job = MakeJob("score", 300);
  std::string log;
  ASSERT_EQ(RunCli(job.flags + " --out " + job.dir + "/straight", &log), 0)
      << log;

  const std::string killed = job.dir + "/killed";
  const std::string work = job.dir + "/work";
  const std::string flags =
      job.flags + " --out " + killed + " --work-dir " + work;
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const std::string command =
        std::string(OPTREC_CLI_PATH) + " " + flags + " > /dev/null 2>&1";
    execl("/bin/sh", "sh", "-c", ("exec " + command).c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(work + "/latest") &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the job ended before it was killed";
  ASSERT_FALSE(fs::exists(killed + "/ctr.v1.safetensors"))
      << "a killed job left a module behind";

  ASSERT_EQ(RunCli(flags, &log), 0) << log;
  EXPECT_THAT(log, HasSubstr("resuming from the checkpoint"));
  const auto a = ModuleTensors(job.dir + "/straight/ctr.v1.safetensors");
  const auto b = ModuleTensors(killed + "/ctr.v1.safetensors");
  ASSERT_EQ(a.size(), b.size());
  ASSERT_FALSE(a.empty());
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(torch::equal(t, b.at(name))) << name;
  }
}

TEST(TuneJobTest, MixedJobWritesAModulePerTaskWithMetadata) {
  Job job = MakeJob("score", 20);
  const std::string retrieve = WriteSpec(TestSpec("retrieve"), "retrieve");
  const std::string out = job.dir + "/out";
  std::string log;
  ASSERT_EQ(RunCli(job.flags + " --task " + retrieve +
                       ",method=option_adapter,version=v2 --out " + out,
                   &log),
            0)
      << log;
  auto model = LoadFixtureModel();
  auto ctr = PromptModule::Load(out + "/ctr.v1.safetensors", *model);
  ASSERT_TRUE(ctr.ok()) << ctr.status();
  auto next = PromptModule::Load(out + "/next_click.v2.safetensors", *model);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ((*next)->method(), TuningMethod::kOptionAdapter);
  const Json& info = (*ctr)->info();
  EXPECT_EQ(info["version"], "v1");
  EXPECT_EQ(info["train_data"]["hash"].get<std::string>().size(), 32u);
  EXPECT_TRUE(info["validation"]["auc"].is_number()) << info.dump();
  EXPECT_EQ(info["curve"].size(), 2u);  // steps 10 and 20
  EXPECT_EQ(info["train_templates"], Json({"shown"}));
  EXPECT_THAT(log, HasSubstr("loss ctr"));
  EXPECT_THAT(log, HasSubstr("next_click"));

  // Versions are immutable: the same version again is refused.
  ASSERT_EQ(RunCli(job.flags + " --out " + out, &log), 1);
  EXPECT_THAT(log, HasSubstr("exists; module versions are immutable"));

  // The module evaluates through the CLI, each template in turn.
  ASSERT_EQ(RunCli(absl::StrCat("eval --model ", SharedTuningFixture().model,
                                " --world ", SharedTuningFixture().world,
                                " --module ", out, "/ctr.v1.safetensors ",
                                "--split valid --limit 20"),
                   &log),
            0)
      << log;
  EXPECT_THAT(log, HasSubstr("template shown"));
  EXPECT_THAT(log, HasSubstr("template asked (held out)"));
}

TEST(TuneJobTest, NonFiniteLossStopsAndKeepsTheLastGoodCheckpoint) {
  Job job = MakeJob("score", 50,
                    "--method option_adapter --lr 1e30 --min-lr 1e30 --clip 0 "
                    "--checkpoint-every 1");
  const std::string out = job.dir + "/out", work = job.dir + "/work";
  std::string log;
  ASSERT_EQ(RunCli(job.flags + " --out " + out + " --work-dir " + work, &log),
            1)
      << log;
  EXPECT_THAT(log, ::testing::ContainsRegex(
                       "task ctr: the (loss|gradient) became -?(nan|inf)"));
  EXPECT_THAT(log, HasSubstr("the last good checkpoint is kept"));
  EXPECT_FALSE(fs::exists(out + "/ctr.v1.safetensors"));
  ASSERT_TRUE(fs::exists(work + "/latest"));
  auto latest = ReadFile(work + "/latest");
  ASSERT_TRUE(latest.ok());
  const std::string checkpoint =
      work + "/" + latest->substr(0, latest->find('\n'));
  auto state = Json::parse(ReadFile(checkpoint + "/state.json").value_or("{}"));
  EXPECT_GE(state["step"].get<int>(), 1);
  // The checkpointed module is finite: it is the last good one.
  for (const auto& [name, t] :
       ModuleTensors(checkpoint + "/task-0.safetensors")) {
    EXPECT_TRUE(torch::isfinite(t).all().item<bool>()) << name;
  }
}

TEST(TuneJobTest, BadFlagsAreUsageErrors) {
  Job job = MakeJob("score", 10);
  std::string log;
  EXPECT_EQ(RunCli(job.flags + " --out " + job.dir + " --method magic", &log),
            2);
  EXPECT_THAT(log, HasSubstr("unknown tuning method 'magic'"));
  const std::string base = absl::StrCat(
      "tune --model ", SharedTuningFixture().model, " --world ",
      SharedTuningFixture().world, " --task ", job.spec, " --out ", job.dir);
  EXPECT_EQ(RunCli(base + " --batch 0", &log), 2);
  EXPECT_THAT(log, HasSubstr("--batch must be positive"));
  // Two specs of one task and version would write the same module file.
  const std::string twin = WriteSpec(TestSpec("score"), "score");
  EXPECT_EQ(RunCli(base + " --task " + twin, &log), 1);
  EXPECT_THAT(log, HasSubstr("would both write"));
  EXPECT_EQ(RunCli("eval --model " + SharedTuningFixture().model, &log), 2);
  EXPECT_THAT(log, HasSubstr("give exactly one"));
}

}  // namespace
}  // namespace optrec
