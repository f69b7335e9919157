// The non-LM baselines on a small generated world, checked against plain
// recomputations from the world's files.
#include "tuning/baselines/baselines.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>

#include "core/util/jsonl.h"
#include "tests/testlib/tuning_fixture.h"
#include "tuning/metrics/metrics.h"
#include "tuning/world/datasets.h"

namespace optrec {
namespace {

using Json = nlohmann::json;

std::vector<Json> Lines(const std::string& path) {
  std::vector<Json> out;
  EXPECT_TRUE(ForEachJsonl(path, [&](int64_t, const Json& j) {
                out.push_back(j);
                return true;
              }).ok());
  return out;
}

class BaselinesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    BaselineOptions o;
    o.world = SharedTuningFixture().world;
    auto r = RunBaselines(o);
    ASSERT_TRUE(r.ok()) << r.status();
    results_ = *r;
  }
  std::string Task(const std::string& task, const std::string& split) {
    return SharedTuningFixture().world + "/tasks/" + task + "/" + split +
           ".jsonl";
  }
  Json results_;
};

TEST_F(BaselinesTest, OracleIsTheWorldsOwnClickProbability) {
  auto oracle = OracleAuc(Task("ctr", "test"));
  ASSERT_TRUE(oracle.ok()) << oracle.status();
  EXPECT_NEAR(results_["ctr"]["oracle"]["auc"].get<double>(), *oracle, 1e-12);
  for (const char* method : {"popularity", "logistic_regression"}) {
    const double auc = results_["ctr"][method]["auc"].get<double>();
    EXPECT_GT(auc, 0.0) << method;
    EXPECT_LT(auc, 1.0) << method;
    EXPECT_LE(auc, *oracle + 0.05) << method;
  }
}

TEST_F(BaselinesTest, TextBaselineRepeatsTheMostFrequentTrainingTarget) {
  std::map<std::string, int> counts;
  for (const Json& j : Lines(Task("explanation", "train"))) {
    ++counts[j["target"].get<std::string>()];
  }
  int top = 0;
  for (const auto& [text, n] : counts) top = std::max(top, n);
  const std::string output =
      results_["explanation"]["popularity"]["output"].get<std::string>();
  EXPECT_EQ(counts[output], top);
  // Its BLEU against the test targets, recomputed.
  std::vector<std::string> outputs, references;
  for (const Json& j : Lines(Task("explanation", "test"))) {
    outputs.push_back(output);
    references.push_back(j["target"].get<std::string>());
  }
  EXPECT_NEAR(results_["explanation"]["popularity"]["bleu4"].get<double>(),
              Bleu4(outputs, references), 1e-9);
}

TEST_F(BaselinesTest, RankingBaselinesGiveCreditOnlyForRealHits) {
  for (const char* task : {"next_click", "sequential", "direct"}) {
    const Json& m = results_[task]["popularity"];
    EXPECT_GT(m["examples"].get<int64_t>(), 0) << task;
    double previous = 0;
    for (int k : {1, 5, 10, 20}) {
      const double hr = m["hr@" + std::to_string(k)].get<double>();
      EXPECT_GE(hr, previous) << task << " hr@" << k;
      EXPECT_LE(m["ndcg@" + std::to_string(k)].get<double>(), hr + 1e-12);
      previous = hr;
    }
    EXPECT_LT(previous, 1.0) << task;
  }
  // Direct: 100 candidates, so chance is k / 100; a popularity ranking with
  // ties broken by catalog order cannot score every example at rank 0.
  EXPECT_LT(results_["direct"]["popularity"]["hr@1"].get<double>(), 1.0);
}

TEST_F(BaselinesTest, RatingBaselineBeatsAConstantGuessOfThree) {
  std::vector<double> threes, truth;
  for (const Json& j : Lines(Task("rating", "test"))) {
    threes.push_back(3.0);
    truth.push_back(j["target"].get<double>());
  }
  const double constant = Rmse(threes, truth);
  EXPECT_LT(results_["rating"]["popularity"]["rmse"].get<double>(), constant);
}

TEST(BaselinesOptionsTest, BadSplitAndMissingWorldAreNamed) {
  BaselineOptions o;
  o.world = SharedTuningFixture().world;
  o.split = "train";
  EXPECT_THAT(std::string(RunBaselines(o).status().message()),
              ::testing::HasSubstr("split must be valid or test"));
  o.split = "test";
  o.world = "/no/such/world";
  EXPECT_THAT(std::string(RunBaselines(o).status().message()),
              ::testing::HasSubstr("/no/such/world/catalog.jsonl"));
}

}  // namespace
}  // namespace optrec
