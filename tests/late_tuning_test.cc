// Option tuning with late interaction (a score spec's lower_layers > 0):
// inputs as segments, modules with segment embeddings, mixed batches that
// run such parts through EncodeSegments and ForwardJoint, a whole tune and
// eval job, and the checks that keep late and plain modules apart.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "tests/cli_path.h"
#include "tests/testlib/tiny_models.h"
#include "tests/testlib/tuning_fixture.h"
#include "tuning/module/prompt_module.h"
#include "tuning/tasks/examples.h"
#include "tuning/tasks/render.h"
#include "tuning/tasks/task_spec.h"
#include "tuning/tune/task_batch.h"

namespace optrec {
namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;

// The fixture's click task with its special-token template left out (late
// interaction refuses those) and L' = 1 of the fixture model's 2 layers.
Json LateSpec(int64_t lower_layers = 1) {
  Json s = TestSpec("score");
  Json kept = Json::array();
  for (const Json& t : s["templates"]) {
    if (t["name"] != "asked") kept.push_back(t);
  }
  kept.push_back({{"name", "would"},
                  {"input", {"{history}", "Would they click {candidate}?"}},
                  {"held_out", true}});
  s["templates"] = kept;
  s["lower_layers"] = lower_layers;
  return s;
}

struct Late {
  std::unique_ptr<TaskContext> task;
  TaskData data;
};

Late LoadLate(const TransformerLM& model, const Json& spec_json, int64_t n,
              uint64_t seed) {
  Late l;
  absl::StatusOr<TaskSpec> spec = ParseTaskSpec(spec_json, "late");
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
  auto module = PromptModule::Create(l.task->spec, TuningMethod::kOptionAdapter,
                                     model, *l.task->encoder, seed);
  EXPECT_TRUE(module.ok()) << module.status();
  l.task->module = *module;
  // Random values everywhere, so that no gradient is zero by construction.
  torch::manual_seed(seed);
  PromptModule::Named values;
  for (const auto& [name, t] : l.task->module->NamedTensors()) {
    values.emplace_back(name, torch::randn(t.sizes()) * 0.3);
  }
  EXPECT_TRUE(l.task->module->CopyFrom(values).ok());
  return l;
}

BatchPart PartOf(const Late& l) {
  BatchPart part;
  part.task = l.task.get();
  part.module = l.task->module.get();
  for (const Example& e : l.data.examples) {
    auto p = PrepareExample(*l.task, e, l.task->spec.templates[0]);
    EXPECT_TRUE(p.ok()) << p.status();
    part.examples.push_back(*p);
  }
  return part;
}

TEST(LateSpecTest, LowerLayersAreCheckedWhereTheyCannotWork) {
  Json special = TestSpec("score");  // its "asked" template has <|answer|>
  special["lower_layers"] = 1;
  auto refused = ParseTaskSpec(special, "spec.json");
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("templates[1].input"));
  EXPECT_THAT(refused.status().message(), HasSubstr("late interaction"));

  Json generate = TestSpec("generate");
  generate["lower_layers"] = 1;
  EXPECT_THAT(ParseTaskSpec(generate, "spec.json").status().message(),
              HasSubstr("lower_layers"));

  auto model = LoadFixtureModel();
  auto spec = ParseTaskSpec(LateSpec(3), "spec.json");  // the model has 2
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto task = MakeTaskContext(*spec, *model, SharedTuningFixture().world);
  ASSERT_TRUE(task.ok());
  auto module = PromptModule::Create(*spec, TuningMethod::kOption, *model,
                                     *(*task)->encoder, 1);
  EXPECT_THAT(module.status().message(),
              HasSubstr("lower_layers 3 exceeds the model's 2 layers"));
}

TEST(LateInputTest, EachTemplatePartIsASegmentTokenizedAloneWithBos) {
  auto model = LoadFixtureModel();
  Late l = LoadLate(*model, LateSpec(), 3, 1);
  const Tokenizer& tok = *model->tokenizer();
  int compared = 0;
  for (const Example& e : l.data.examples) {
    auto in = l.task->encoder->EncodeExample(e, 0);
    ASSERT_TRUE(in.ok()) << in.status();
    EXPECT_TRUE(in->ids.empty());
    // Expected by hand: profile, each kept history element, the candidate
    // part, the closing words (fixture: at most 3 history elements).
    std::vector<std::pair<std::string, int>> want;
    want.emplace_back(e.fields.at("profile").text, 0);
    const auto& history = e.fields.at("history").list;
    const size_t keep = std::min<size_t>(history.size(), 3);
    for (size_t i = history.size() - keep; i < history.size(); ++i) {
      want.emplace_back(history[i], 1);
    }
    want.emplace_back("Shown: " + e.fields.at("candidate").text, 2);
    want.emplace_back("Clicked it", 3);
    int64_t total = 0;
    for (const auto& seg : in->segments) total += seg.size();
    if (total < l.task->spec.max_tokens) {  // nothing was cut to fit
      ++compared;
      ASSERT_EQ(in->segments.size(), want.size());
      for (size_t s = 0; s < want.size(); ++s) {
        auto ids = tok.Encode(want[s].first, /*add_special=*/false);
        ASSERT_TRUE(ids.ok());
        ids->insert(ids->begin(), tok.special().bos_id);
        EXPECT_EQ(in->segments[s], *ids) << want[s].first;
        EXPECT_EQ(in->segment_part[s], want[s].second);
      }
    }
    EXPECT_LE(total, l.task->spec.max_tokens);
  }
  EXPECT_GT(compared, 0);
}

TEST(LateInputTest, TooLongInputsDropHistoryThenCutTheFirstSegments) {
  auto model = LoadFixtureModel();
  Json spec = LateSpec();
  spec["max_tokens"] = 16;
  Late l = LoadLate(*model, spec, 5, 1);
  const int32_t bos = model->tokenizer()->special().bos_id;
  ASSERT_GE(bos, 0);
  for (const Example& e : l.data.examples) {
    auto in = l.task->encoder->EncodeExample(e, 0);
    ASSERT_TRUE(in.ok()) << in.status();
    int64_t total = 0;
    for (size_t s = 0; s < in->segments.size(); ++s) {
      const auto& seg = in->segments[s];
      total += seg.size();
      ASSERT_GE(seg.size(), 2u) << "a segment holds more than BOS";
      EXPECT_EQ(seg[0], bos);
      EXPECT_NE(in->segment_part[s], 1) << "history is dropped first";
    }
    EXPECT_LE(total, 16);
    // The last segments stay whole: what is cut is the oldest text.
    auto closing = EncodeSegmentText(*model->tokenizer(), "Clicked it");
    ASSERT_TRUE(closing.ok());
    EXPECT_EQ(in->segments.back(), *closing);
    EXPECT_EQ(in->segment_part.back(), 3);
  }
}

TEST(LateBatchTest, ScoresAreTheCoreJointPassComposedByHand) {
  auto model = LoadFixtureModel();
  Late l = LoadLate(*model, LateSpec(), 4, 2);
  const BatchPart part = PartOf(l);
  auto result = RunMixedBatch(*model, {part});
  ASSERT_TRUE(result.ok()) << result.status();

  const PromptModule& m = *l.task->module;
  for (size_t i = 0; i < part.examples.size(); ++i) {
    const EncodedInput& in = part.examples[i].input;
    auto states = model->EncodeSegments(in.segments, 1);
    ASSERT_TRUE(states.ok()) << states.status();
    JointRowInput row;
    row.prompt = m.user().prompt;
    row.adapter = m.user().adapter;
    // The task's segment cache keeps states in bf16.
    for (const torch::Tensor& st : *states) {
      row.segments.push_back(st.to(torch::kBFloat16).to(torch::kFloat32));
    }
    for (int p : in.segment_part) {
      row.segment_embeddings.push_back(m.segment()[p]);
    }
    auto out = model->ForwardJoint({row}, 1);
    ASSERT_TRUE(out.ok()) << out.status();
    torch::Tensor h = out->hidden[0][out->lengths[0] - 1].unsqueeze(0);
    torch::Tensor want = m.OptionLogits(h)[0];
    EXPECT_LT((want - (*result)[0].logits[i]).abs().max().item<double>(), 1e-5)
        << "example " << i;
  }
}

TEST(LateBatchTest, CachedStatesGiveTheSameScoresWarmOrCold) {
  auto model = LoadFixtureModel();
  Late l = LoadLate(*model, LateSpec(), 6, 6);
  ASSERT_NE(l.task->segment_cache, nullptr);
  const BatchPart part = PartOf(l);
  auto cold = RunMixedBatch(*model, {part});
  ASSERT_TRUE(cold.ok()) << cold.status();
  const CacheStats after_cold = l.task->segment_cache->stats();
  EXPECT_GT(after_cold.entries, 0);
  auto warm = RunMixedBatch(*model, {part});
  ASSERT_TRUE(warm.ok()) << warm.status();
  const CacheStats after_warm = l.task->segment_cache->stats();
  EXPECT_EQ(after_warm.inserts, after_cold.inserts);  // nothing encoded again
  EXPECT_GT(after_warm.hits, after_cold.hits);
  EXPECT_TRUE(torch::equal((*cold)[0].logits, (*warm)[0].logits));

  // Without the cache (f32 states): the same scores to bf16's rounding.
  l.task->segment_cache = nullptr;
  auto uncached = RunMixedBatch(*model, {part});
  ASSERT_TRUE(uncached.ok()) << uncached.status();
  const double diff =
      ((*uncached)[0].logits - (*warm)[0].logits).abs().max().item<double>();
  EXPECT_LT(diff, 0.05);
  EXPECT_GT(diff, 0.0);  // the cache really held bf16
}

TEST(LateBatchTest, MixedWithPlainPartsSameLossesAndGradientsAsAlone) {
  auto model = LoadFixtureModel();
  Late late = LoadLate(*model, LateSpec(), 4, 3);
  Late plain = LoadLate(*model, TestSpec("rating"), 3, 4);
  const std::vector<BatchPart> parts = {PartOf(late), PartOf(plain)};
  auto mixed = RunMixedBatch(*model, parts);
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  ((*mixed)[0].loss + (*mixed)[1].loss).backward();
  std::map<std::string, torch::Tensor> mixed_grads;
  for (const auto& [name, t] : late.task->module->NamedTensors()) {
    mixed_grads[name] = t.grad().clone();
    t.mutable_grad() = torch::Tensor();
  }
  for (size_t i = 0; i < parts.size(); ++i) {
    auto alone = RunMixedBatch(*model, {parts[i]});
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_NEAR((*alone)[0].loss.item<double>(),
                (*mixed)[i].loss.item<double>(), 1e-6);
    if (i == 0) (*alone)[0].loss.backward();
  }
  const int64_t lower = 1;
  for (const auto& [name, t] : late.task->module->NamedTensors()) {
    ASSERT_TRUE(t.grad().defined()) << name;
    EXPECT_LT((t.grad() - mixed_grads[name]).abs().max().item<double>(), 1e-6)
        << name;
    if (name == "adapter.up" || name == "adapter.down") {
      // Adapters act in the upper layers only.
      EXPECT_EQ(t.grad()[0].abs().sum().item<double>(), 0.0) << name;
      EXPECT_GT(t.grad()[lower].abs().sum().item<double>(), 0.0) << name;
    } else if (name == "segment") {
      // Parts 0..3 of the training template each got a gradient.
      for (int64_t p = 0; p < 4; ++p) {
        EXPECT_GT(t.grad()[p].abs().sum().item<double>(), 0.0) << p;
      }
    } else if (name != "adapter.scale") {
      EXPECT_GT(t.grad().abs().sum().item<double>(), 0.0) << name;
    }
  }
}

TEST(LateModuleTest, SavedModuleKeepsItsSplitAndRefusesAnotherOne) {
  auto model = LoadFixtureModel();
  Late l = LoadLate(*model, LateSpec(), 1, 5);
  const std::string path = MakeTempDir("late-module") + "/ctr.v1.safetensors";
  ASSERT_TRUE(l.task->module->Save(path).ok());
  auto loaded = PromptModule::Load(path, *model);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->spec().lower_layers, 1);
  EXPECT_TRUE(torch::equal((*loaded)->segment(), l.task->module->segment()));
  EXPECT_EQ((*loaded)->segment().size(0), 4);  // "shown" has four parts

  auto plain = ParseTaskSpec(LateSpec(0), "plain");
  ASSERT_TRUE(plain.ok());
  EXPECT_THAT((*loaded)->CheckSpecFits(*plain).message(),
              HasSubstr("'lower_layers' is 0 there and 1 in the module"));
}

int RunCli(const std::string& args, std::string* output) {
  const std::string log = MakeTempDir("late-log") + "/out.txt";
  const int status = std::system(
      (std::string(OPTREC_CLI_PATH) + " " + args + " > " + log + " 2>&1")
          .c_str());
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  *output = text.str();
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(LateJobTest, TuneAndEvalRunThroughLateInteraction) {
  const std::string dir = MakeTempDir("late-job");
  const std::string spec = WriteSpec(LateSpec(), "late");
  const std::string& fx = SharedTuningFixture().model;
  const std::string& world = SharedTuningFixture().world;
  std::string log;
  ASSERT_EQ(RunCli(absl::StrCat("tune --model ", fx, " --world ", world,
                                " --task ", spec,
                                " --method option_adapter --steps 10 "
                                "--warmup 2 --batch 4 --eval-every 10 "
                                "--eval-examples 16 --max-train-examples 100 "
                                "--out ",
                                dir),
                   &log),
            0)
      << log;
  EXPECT_THAT(log, HasSubstr("loss ctr"));
  ASSERT_EQ(RunCli(absl::StrCat("eval --model ", fx, " --world ", world,
                                " --module ", dir, "/ctr.v1.safetensors",
                                " --split valid --limit 20"),
                   &log),
            0)
      << log;
  EXPECT_THAT(log, HasSubstr("template shown"));
  EXPECT_THAT(log, HasSubstr("template would (held out)"));
  EXPECT_THAT(log, HasSubstr("auc"));
}

}  // namespace
}  // namespace optrec
