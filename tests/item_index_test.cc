// Retrieval indexes: flat search against a brute-force ranking of the
// same embeddings, HNSW recall, exclusions, and refusal of an index built
// by another module version.
#include "server/index/item_index.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/util/files.h"
#include "tests/testlib/tiny_models.h"
#include "tests/testlib/tuning_fixture.h"
#include "tuning/tune/task_batch.h"

namespace optrec {
namespace {

using ::testing::HasSubstr;

struct Built {
  std::shared_ptr<const TransformerLM> model = LoadFixtureModel();
  std::string dir = MakeTempDir("index");
  std::string module_path, catalog;
  std::shared_ptr<PromptModule> module;
  std::unique_ptr<TaskContext> task;

  explicit Built(uint64_t seed) {
    auto spec = ParseTaskSpec(TestSpec("retrieve"), "retrieve");
    task = *MakeTaskContext(*spec, *model, SharedTuningFixture().world);
    module = *PromptModule::Create(*spec, TuningMethod::kOption, *model,
                                   *task->encoder, seed);
    module->info()["version"] = absl::StrCat("s", seed);
    module_path = absl::StrCat(dir, "/next_click.s", seed, ".safetensors");
    EXPECT_TRUE(module->Save(module_path).ok());
    catalog = SharedTuningFixture().world + "/catalog.jsonl";
  }

  IndexBuildOptions Options(const std::string& out, const std::string& type) {
    IndexBuildOptions o;
    o.module_path = module_path;
    o.catalog_path = catalog;
    o.out_dir = out;
    o.type = type;
    return o;
  }

  // Every catalog item's score for one user query, by brute force.
  std::vector<std::pair<float, std::string>> Ranking(
      const std::vector<float>& query) {
    std::vector<std::pair<float, std::string>> out;
    torch::NoGradGuard no_grad;
    ForwardOptions options;
    options.logits = ForwardOptions::Logits::kNone;
    torch::Tensor q = torch::tensor(query);
    for (int64_t i = 0; i < task->catalog->size(); ++i) {
      auto in = task->encoder->EncodeItem(i);
      auto f = model->Forward({module->MakeRow(*in, true)}, nullptr, options);
      torch::Tensor h = f->hidden[0][f->lengths[0] - 1].unsqueeze(0);
      const float s = (module->Embed(h, true)[0] * q).sum().item<float>();
      out.emplace_back(s, task->catalog->id(i));
    }
    std::sort(out.begin(), out.end(),
              [](const auto& a, const auto& b) { return a.first > b.first; });
    return out;
  }
};

std::vector<float> Query(int64_t dim, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor q = torch::nn::functional::normalize(
      torch::randn({1, dim}),
      torch::nn::functional::NormalizeFuncOptions().dim(1))[0];
  return std::vector<float>(q.data_ptr<float>(), q.data_ptr<float>() + dim);
}

TEST(ItemIndexTest, FlatSearchIsTheExactRanking) {
  Built b(1);
  const std::string out = b.dir + "/flat";
  ASSERT_TRUE(ItemIndex::Build(*b.model, b.Options(out, "flat")).ok());
  auto index = ItemIndex::Load(out, "s1", b.module_path);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ((*index)->size(), b.task->catalog->size());
  EXPECT_EQ((*index)->meta()["type"], "flat");
  const std::vector<float> q = Query((*index)->dim(), 3);
  const auto exact = b.Ranking(q);
  auto hits = (*index)->Search(q, 10);
  ASSERT_TRUE(hits.ok());
  ASSERT_EQ(hits->size(), 10u);
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_EQ((*hits)[i].item_id, exact[i].second) << i;
    EXPECT_NEAR((*hits)[i].score, exact[i].first, 1e-4);
  }
  // Excluded items are skipped; the list is still k long.
  auto without = (*index)->Search(q, 10, {exact[0].second, exact[3].second});
  ASSERT_TRUE(without.ok());
  ASSERT_EQ(without->size(), 10u);
  EXPECT_EQ((*without)[0].item_id, exact[1].second);
  for (const SearchHit& h : *without) {
    EXPECT_NE(h.item_id, exact[0].second);
    EXPECT_NE(h.item_id, exact[3].second);
  }
  EXPECT_THAT(std::string((*index)->Search({1.0f}, 3).status().message()),
              HasSubstr("the query has 1 values"));
}

TEST(ItemIndexTest, HnswFindsNearlyAllTrueNeighbours) {
  Built b(2);
  const std::string out = b.dir + "/hnsw";
  ASSERT_TRUE(ItemIndex::Build(*b.model, b.Options(out, "hnsw")).ok());
  auto index = ItemIndex::Load(out, "s2", b.module_path);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ((*index)->meta()["type"], "hnsw");
  int found = 0, asked = 0;
  for (uint64_t seed = 10; seed < 15; ++seed) {
    const std::vector<float> q = Query((*index)->dim(), seed);
    const auto exact = b.Ranking(q);
    auto hits = (*index)->Search(q, 10);
    ASSERT_TRUE(hits.ok());
    for (size_t i = 0; i < 10; ++i) {
      ++asked;
      for (const SearchHit& h : *hits) found += h.item_id == exact[i].second;
    }
  }
  EXPECT_GE(found, asked * 9 / 10);
}

TEST(ItemIndexTest, AnIndexServesOnlyTheModuleVersionThatBuiltIt) {
  Built b(4);
  const std::string out = b.dir + "/idx";
  ASSERT_TRUE(ItemIndex::Build(*b.model, b.Options(out, "auto")).ok());
  // Another version name.
  auto other_version = ItemIndex::Load(out, "s9", b.module_path);
  EXPECT_EQ(other_version.status().code(),
            absl::StatusCode::kFailedPrecondition);
  // The same name, another file.
  Built other(5);
  auto other_file = ItemIndex::Load(out, "s4", other.module_path);
  EXPECT_EQ(other_file.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(other_file.status().message()),
              HasSubstr("rebuild it"));
  // An existing folder is not overwritten without force.
  EXPECT_EQ(ItemIndex::Build(*b.model, b.Options(out, "flat")).code(),
            absl::StatusCode::kAlreadyExists);
  // A corrupt index file.
  ASSERT_TRUE(WriteFileAtomic(out + "/index.faiss", "junk").ok());
  EXPECT_EQ(ItemIndex::Load(out, "s4", b.module_path).status().code(),
            absl::StatusCode::kDataLoss);
  // A score task's module cannot build an index.
  Built s(6);
  auto spec = ParseTaskSpec(TestSpec("score"), "score");
  auto task = MakeTaskContext(*spec, *s.model, SharedTuningFixture().world);
  auto score = PromptModule::Create(*spec, TuningMethod::kOption, *s.model,
                                    *(*task)->encoder, 1);
  ASSERT_TRUE((*score)->Save(s.dir + "/ctr.safetensors").ok());
  IndexBuildOptions wrong = s.Options(s.dir + "/wrong", "flat");
  wrong.module_path = s.dir + "/ctr.safetensors";
  wrong.version = "x";
  EXPECT_THAT(std::string(ItemIndex::Build(*s.model, wrong).message()),
              HasSubstr("is a score task"));
}

}  // namespace
}  // namespace optrec
