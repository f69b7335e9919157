#include "tests/testlib/tuning_fixture.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "core/model/random_model.h"
#include "core/util/files.h"
#include "core/util/hash.h"
#include "tests/testlib/tiny_models.h"
#include "tuning/module/prompt_module.h"
#include "tuning/tune/task_batch.h"
#include "tuning/world/generate.h"
#include "tuning/world/world.h"

namespace optrec {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    throw std::runtime_error(absl::StrCat(what, ": ", status.ToString()));
  }
}

}  // namespace

RandomModelSpec FixtureModelSpec(uint64_t seed) {
  RandomModelSpec spec;
  spec.model_type = "llama";
  spec.hidden = 32;
  spec.layers = 2;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.ffn = 64;
  spec.vocab = 2048;
  spec.max_positions = 256;
  spec.tied = true;
  spec.seed = seed;
  return spec;
}

namespace {

TuningFixture Build() {
  TuningFixture f;
  f.dir = MakeTempDir("tuning");
  f.world = f.dir + "/world";
  f.model = f.dir + "/model";
  WorldConfig config;
  config.seed = 3;
  config.items = 200;
  config.users = 60;
  config.days = 40;
  config.ctr_sample_rate = 0.5;
  config.direct_user_fraction = 1.0;
  Check(GenerateWorld(config, f.world, {}), "world");

  Check(WriteRandomModel(f.model, FixtureModelSpec(5)), "model");
  fs::copy_file(
      std::string(OPTREC_SOURCE_DIR) + "/models/default/tokenizer.model",
      f.model + "/tokenizer.model");
  return f;
}

Json Common(const std::string& task, const std::string& kind,
            const std::string& data) {
  return {{"task", task},       {"kind", kind},      {"data", data},
          {"prompt_length", 4}, {"adapter_rank", 2}, {"max_tokens", 96},
          {"max_history", 3}};
}

}  // namespace

const TuningFixture& SharedTuningFixture() {
  static const TuningFixture* fixture = new TuningFixture(Build());
  return *fixture;
}

Json TestSpec(const std::string& kind) {
  if (kind == "score") {
    Json s = Common("ctr", "score", "tasks/ctr");
    s["catalog"] = "catalog.jsonl";
    s["options"] = {{{"label", 0}, {"text", "no"}},
                    {{"label", 1}, {"text", "yes"}}};
    s["templates"] = {
        {{"name", "shown"},
         {"input",
          {"{profile}", "{history}", "Shown: {candidate}", "Clicked it"}}},
        {{"name", "asked"},
         {"input", {"{history}", "Would they click {candidate}? <|answer|>"}},
         {"held_out", true}}};
    s["zero_shot"] = {{"input", {"{profile}", "{history}", "Clicked:"}},
                      {"continuations", {" {item.title}."}}};
    return s;
  }
  if (kind == "rating") {
    Json s = Common("rating", "score", "tasks/rating");
    s["prompt_length"] = 6;
    s["label_field"] = "target";
    Json options = Json::array();
    for (int r = 1; r <= 5; ++r) {
      options.push_back({{"label", r}, {"text", std::to_string(r)}});
    }
    s["options"] = options;
    s["templates"] = {
        {{"name", "stars"},
         {"input", {"{history}", "Reviewed: {candidate}", "Stars"}}}};
    return s;
  }
  if (kind == "generate") {
    Json s = Common("explanation", "generate", "tasks/explanation");
    s["max_new_tokens"] = 8;
    s["templates"] = {
        {{"name", "why"},
         {"input", {"{history}", "Purchased: {candidate}", "Reason:"}}}};
    s["zero_shot"] = {
        {"input", {"{history}", "Purchased: {candidate}", "Reason:"}}};
    return s;
  }
  if (kind == "retrieve") {
    Json s = Common("next_click", "retrieve", "tasks/next_click");
    s["catalog"] = "catalog.jsonl";
    s["embedding_dim"] = 8;
    s["templates"] = {{{"name", "next"},
                       {"input", {"{profile}", "{history}", "Next click"}}}};
    s["item_template"] = {{"input", {"{text}"}}};
    s["zero_shot"] = {{"input", {"{history}", "Clicked:"}},
                      {"continuations", {" {title}."}}};
    return s;
  }
  if (kind == "sequential") {
    Json s = Common("sequential", "generate", "tasks/sequential");
    s["catalog"] = "catalog.jsonl";
    s["constrain_field"] = "title";
    s["max_new_tokens"] = 16;
    s["templates"] = {
        {{"name", "next"}, {"input", {"{history}", "Next purchase:"}}}};
    return s;
  }
  throw std::runtime_error("no test spec " + kind);
}

std::string WriteSpec(const Json& spec, const std::string& name) {
  const std::string path = MakeTempDir("spec") + "/" + name + ".json";
  Check(WriteFileAtomic(path, spec.dump(2)), "spec");
  return path;
}

std::shared_ptr<const TransformerLM> LoadFixtureModel(torch::ScalarType dtype) {
  LoadOptions load;
  load.device.dtype = dtype;
  auto model = TransformerLM::Load(SharedTuningFixture().model, load);
  Check(model.status(), "loading the fixture model");
  return *model;
}

std::string BackboneChecksum(const TransformerLM& model) {
  std::string bytes;
  for (const torch::Tensor& t : model.parameters()) {
    torch::Tensor c = t.contiguous().to(torch::kCPU);
    bytes.append(static_cast<const char*>(c.data_ptr()), c.nbytes());
  }
  return Xxh3Hex128(bytes);
}

std::string WriteRandomModule(const std::string& kind,
                              const std::string& version, uint64_t seed) {
  auto model = LoadFixtureModel();
  auto spec = ParseTaskSpec(TestSpec(kind), kind);
  EXPECT_TRUE(spec.ok()) << spec.status();
  auto task = MakeTaskContext(*spec, *model, SharedTuningFixture().world);
  EXPECT_TRUE(task.ok()) << task.status();
  auto module = PromptModule::Create(*spec, TuningMethod::kOptionAdapter,
                                     *model, *(*task)->encoder, seed);
  EXPECT_TRUE(module.ok()) << module.status();
  torch::manual_seed(seed);
  PromptModule::Named values;
  for (const auto& [name, t] : (*module)->NamedTensors()) {
    values.emplace_back(name, torch::randn(t.sizes()) * 0.2);
  }
  EXPECT_TRUE((*module)->CopyFrom(values).ok());
  (*module)->info()["version"] = version;
  const std::string path = absl::StrCat(MakeTempDir("module"), "/", spec->task,
                                        ".", version, ".safetensors");
  EXPECT_TRUE((*module)->Save(path).ok());
  return path;
}

}  // namespace optrec
