// A simulated experiment on the default model and shop world: next-click
// retrieval with the prompt-tuned module as control and the
// option-adapter module, which retrieves better offline (test HR@10 0.170
// against 0.103, docs/tuning.md), as treatment. The report must find the
// treatment better through every layer: assignment, Retrieve, exposure
// log, RecordEvents, the join and the test.
#include "server/cli/experiment_simulation.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <string>

#include "core/util/jsonl.h"
#include "tests/testlib/tiny_models.h"
#include "tuning/world/generate.h"
#include "tuning/world/world.h"

namespace optrec {
namespace {

TEST(ExperimentSimulationTest, ReportDetectsTheBetterRetrievalModule) {
  const std::string root = OPTREC_SOURCE_DIR;
  const std::string modules = root + "/models/experiments/modules";
  const std::string control = modules + "/next_click.prompt.safetensors";
  const std::string treatment =
      modules + "/next_click.option_adapter.safetensors";
  ASSERT_TRUE(std::filesystem::exists(control) &&
              std::filesystem::exists(treatment))
      << "the committed next-click modules are missing from " << modules;
  const std::string dir = MakeTempDir("simulation");
  const std::string world = dir + "/world";
  ASSERT_TRUE(GenerateWorld(SmallWorldConfig(1), world, {}).ok());

  SimulationOptions o;
  o.model_dir = root + "/models/default";
  o.world_dir = world;
  o.control_module = control;
  o.treatment_module = treatment;
  o.out_dir = dir + "/run";
  o.units = 0;  // every test user: about 1100 units, 3900 visits
  absl::StatusOr<SimulationResult> result = SimulateExperiment(o);
  ASSERT_TRUE(result.ok()) << result.status();
  const ExperimentReport& r = result->report;
  SCOPED_TRACE(r.ToText());

  // Every visit was exposed (traffic 1) and logged, every click joined.
  EXPECT_EQ(result->exposed_visits, result->visits);
  EXPECT_EQ(r.arms[0].exposures + r.arms[1].exposures, result->visits);
  std::set<std::string> users;
  ASSERT_TRUE(
      ForEachJsonl(
          world + "/tasks/next_click/test.jsonl",
          [&](int64_t, const nlohmann::json& j) -> absl::StatusOr<bool> {
            users.insert(j["user_id"].get<std::string>());
            return true;
          })
          .ok());
  EXPECT_EQ(r.arms[0].units + r.arms[1].units,
            static_cast<int64_t>(users.size()));
  EXPECT_EQ(r.arms[0].events[0] + r.arms[1].events[0], result->clicks);
  EXPECT_EQ(r.unmatched_events, 0);
  EXPECT_EQ(r.log.torn_lines, 0);
  ASSERT_TRUE(r.sample_ratio.has_value());
  EXPECT_FALSE(r.sample_ratio->mismatch);

  // The treatment wins, and the report says so with confidence.
  ASSERT_EQ(r.comparisons.size(), 1u);
  ASSERT_TRUE(r.comparisons[0].rates[0].has_value());
  const stats::ProportionComparison& click = *r.comparisons[0].rates[0];
  EXPECT_GT(click.difference, 0);
  EXPECT_GT(click.difference_interval.lower, 0);
  EXPECT_LT(click.p_value, 0.01);
  EXPECT_TRUE(std::filesystem::exists(o.out_dir + "/lift.svg"));
  EXPECT_TRUE(std::filesystem::exists(o.out_dir + "/report.json"));
}

}  // namespace
}  // namespace optrec
