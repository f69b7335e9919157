// The server's module registry: immutable versions, defaults, unloading,
// refusal of foreign modules, and hot swaps while other threads resolve.
#include "server/registry/module_registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/testlib/tiny_models.h"
#include "tests/testlib/tuning_fixture.h"
#include "tuning/tune/task_batch.h"

namespace optrec {
namespace {

using ::testing::HasSubstr;

// Writes a fresh score module with `version` recorded; returns its path.
std::string WriteModule(const TransformerLM& model, const std::string& dir,
                        const std::string& version, uint64_t seed,
                        const std::string& kind = "score") {
  auto spec = ParseTaskSpec(TestSpec(kind), kind);
  EXPECT_TRUE(spec.ok()) << spec.status();
  auto task = MakeTaskContext(*spec, model, SharedTuningFixture().world);
  EXPECT_TRUE(task.ok()) << task.status();
  auto module = PromptModule::Create(*spec, TuningMethod::kOption, model,
                                     *(*task)->encoder, seed);
  EXPECT_TRUE(module.ok()) << module.status();
  (*module)->info()["version"] = version;
  const std::string path =
      absl::StrCat(dir, "/", spec->task, ".", version, ".safetensors");
  EXPECT_TRUE((*module)->Save(path).ok());
  return path;
}

TEST(ModuleRegistryTest, LateInteractionModulesLoadWithTheirSplit) {
  auto model = LoadFixtureModel();
  const std::string dir = MakeTempDir("registry-late");
  nlohmann::json json = TestSpec("score");
  json["templates"].erase(1);  // its special token cannot be segmented
  json["lower_layers"] = 1;
  auto spec = ParseTaskSpec(json, "late");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto task = MakeTaskContext(*spec, *model, SharedTuningFixture().world);
  ASSERT_TRUE(task.ok()) << task.status();
  auto module = PromptModule::Create(*spec, TuningMethod::kOption, *model,
                                     *(*task)->encoder, 1);
  ASSERT_TRUE(module.ok()) << module.status();
  (*module)->info()["version"] = "late";
  const std::string path = dir + "/ctr.late.safetensors";
  ASSERT_TRUE((*module)->Save(path).ok());
  ModuleRegistry registry(model);
  auto loaded = registry.Load(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto served = registry.Resolve("ctr");
  ASSERT_TRUE(served.ok()) << served.status();
  EXPECT_EQ(served->version, "late");
  EXPECT_EQ(served->module->spec().lower_layers, 1);
  EXPECT_TRUE(served->module->segment().defined());
}

TEST(ModuleRegistryTest, VersionsAreImmutableAndTheFirstIsTheDefault) {
  auto model = LoadFixtureModel();
  const std::string dir = MakeTempDir("registry");
  ModuleRegistry registry(model);
  ASSERT_TRUE(registry.Load(WriteModule(*model, dir, "v1", 1)).ok());
  ASSERT_TRUE(registry.Load(WriteModule(*model, dir, "v2", 2)).ok());
  auto v = registry.Resolve("ctr");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->version, "v1");
  EXPECT_EQ(registry.Resolve("ctr", "v2")->version, "v2");

  // The same version again, even from another file, is refused.
  auto again = registry.Load(WriteModule(*model, dir, "v1b", 3), "v1");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_FALSE(
      torch::equal(registry.Resolve("ctr", "v1")->module->user().prompt,
                   (*PromptModule::Load(dir + "/ctr.v1b.safetensors", *model))
                       ->user()
                       .prompt));

  ASSERT_TRUE(registry.SetDefault("ctr", "v2").ok());
  EXPECT_EQ(registry.Resolve("ctr")->version, "v2");
  EXPECT_THAT(std::string(registry.SetDefault("ctr", "v9").message()),
              HasSubstr("has no version v9 (it has v1, v2)"));
  EXPECT_THAT(std::string(registry.Resolve("rating").status().message()),
              HasSubstr("no task rating"));

  // The default cannot go while another version exists; the last can.
  EXPECT_EQ(registry.Unload("ctr", "v2").code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(registry.Unload("ctr", "v1").ok());
  ASSERT_TRUE(registry.Unload("ctr", "v2").ok());
  EXPECT_TRUE(registry.List().empty());
}

TEST(ModuleRegistryTest, BadFilesLeaveWhatIsServedUntouched) {
  auto model = LoadFixtureModel();
  const std::string dir = MakeTempDir("registry");
  ModuleRegistry registry(model);
  ASSERT_TRUE(registry.Load(WriteModule(*model, dir, "v1", 1)).ok());

  // A module of another backbone.
  const std::string other = MakeTempDir("other");
  ASSERT_TRUE(WriteRandomModel(other, FixtureModelSpec(77)).ok());
  std::filesystem::copy_file(SharedTuningFixture().model + "/tokenizer.model",
                             other + "/tokenizer.model");
  auto other_model = TransformerLM::Load(other);
  ASSERT_TRUE(other_model.ok());
  auto foreign = registry.Load(WriteModule(**other_model, dir, "v2", 2));
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kFailedPrecondition);

  // A file that is not a module, and one that does not exist.
  EXPECT_FALSE(
      registry.Load(SharedTuningFixture().model + "/model.safetensors").ok());
  EXPECT_FALSE(registry.Load(dir + "/missing.safetensors").ok());

  const std::vector<TaskListing> listed = registry.List();
  ASSERT_EQ(listed.size(), 1u);
  ASSERT_EQ(listed[0].versions.size(), 1u);
  EXPECT_EQ(listed[0].versions[0].first, "v1");
  EXPECT_EQ(listed[0].default_version, "v1");
  EXPECT_EQ(listed[0].versions[0].second["method"], "option");
}

TEST(ModuleRegistryTest, HotSwapsNeverFailAResolve) {
  auto model = LoadFixtureModel();
  const std::string dir = MakeTempDir("registry");
  ModuleRegistry registry(model);
  ASSERT_TRUE(registry.Load(WriteModule(*model, dir, "v0", 1)).ok());
  std::vector<std::string> files;
  for (int i = 1; i <= 6; ++i) {
    files.push_back(WriteModule(*model, dir, absl::StrCat("v", i), 10 + i));
  }
  std::atomic<bool> done{false};
  std::atomic<int> failures{0}, resolved{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&] {
      while (!done.load()) {
        auto v = registry.Resolve("ctr");
        if (!v.ok() || v->module == nullptr ||
            v->module->info()["version"] != v->version) {
          ++failures;
        }
        ++resolved;
      }
    });
  }
  // Load each version, promote it, and unload the one before. Each swap
  // waits for readers to resolve a few times first, so that resolves
  // overlap every swap however the threads are scheduled.
  std::string previous = "v0";
  for (const std::string& file : files) {
    for (const int seen = resolved.load(); resolved.load() < seen + 8;) {
      std::this_thread::yield();
    }
    auto loaded = registry.Load(file);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    ASSERT_TRUE(registry.SetDefault("ctr", loaded->version).ok());
    ASSERT_TRUE(registry.Unload("ctr", previous).ok());
    previous = loaded->version;
  }
  done = true;
  for (std::thread& t : readers) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(resolved.load(), 0);
  EXPECT_EQ(registry.Resolve("ctr")->version, "v6");
}

}  // namespace
}  // namespace optrec
