// A/B experiments end to end: the documented assignment hash, arm and
// enrollment frequencies against the weights and traffic, assignments that
// survive restarts and traffic changes, layers that keep experiments
// exclusive or independent, the refusals of Define and of the state
// machine, the definition's JSON, and the report read back from experiment
// logs, its numbers checked against the textbook formulas computed here.
#include "server/experiments/experiment.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <xxhash.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/experiments/experiment_set.h"
#include "server/experiments/exposure_log.h"
#include "server/experiments/records.h"
#include "server/experiments/report.h"

namespace optrec {
namespace {

using ::testing::HasSubstr;

// The two-sided 95% critical value of the standard normal, z with
// P(Z <= z) = 0.975.
constexpr double kZ95 = 1.959963984540054;
// A time in microseconds since the epoch (November 2023).
constexpr int64_t kT0 = int64_t{1700000000} * 1000000;
constexpr int64_t kSecondUs = 1000000;

// ---- Helpers. ----

// A new, empty folder for the running test; `tag` tells several apart.
std::string FreshDir(const std::string& tag = "") {
  const std::string name =
      ::testing::UnitTest::GetInstance()->current_test_info()->name();
  const std::string dir = absl::StrCat(::testing::TempDir(), "experiment_",
                                       name, "_", tag, "_", ::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// A draft experiment of `task` with arms "control", "treatment1", ... of the
// given weights, serving versions "v1", "v2", ...
ExperimentDefinition Definition(const std::string& name,
                                const std::string& task,
                                const std::vector<double>& weights,
                                double traffic = 1) {
  ExperimentDefinition d;
  d.name = name;
  d.task = task;
  d.traffic = traffic;
  for (size_t i = 0; i < weights.size(); ++i) {
    ExperimentArm arm;
    arm.name = i == 0 ? "control" : absl::StrCat("treatment", i);
    arm.version = absl::StrCat("v", i + 1);
    arm.weight = weights[i];
    d.arms.push_back(arm);
  }
  return d;
}

std::unique_ptr<ExperimentSet> OpenSet(
    ExperimentSet::Options options = {},
    const std::vector<ExperimentDefinition>& configured = {}) {
  absl::StatusOr<std::unique_ptr<ExperimentSet>> set =
      ExperimentSet::Open(std::move(options), configured);
  EXPECT_TRUE(set.ok()) << set.status();
  return set.ok() ? std::move(*set) : nullptr;
}

// Defines `d` and, unless `state` is draft, moves it there.
ExperimentDefinition DefineIn(
    ExperimentSet& set, ExperimentDefinition d,
    ExperimentState state = ExperimentState::kRunning) {
  absl::StatusOr<ExperimentDefinition> stored = set.Define(std::move(d));
  EXPECT_TRUE(stored.ok()) << stored.status();
  if (!stored.ok()) return {};
  if (state == ExperimentState::kDraft) return *stored;
  absl::StatusOr<ExperimentDefinition> moved =
      set.SetState(stored->name, state);
  EXPECT_TRUE(moved.ok()) << moved.status();
  return moved.ok() ? *moved : *stored;
}

std::string UnitId(int64_t i) { return absl::StrCat("user-", i); }

// The arm name serving each of units 0..n-1 for `task`; "" when none.
std::vector<std::string> Assignments(const ExperimentSet& set,
                                     const std::string& task, int64_t n) {
  std::vector<std::string> arms(n);
  for (int64_t i = 0; i < n; ++i) {
    std::optional<ExperimentAssignment> a = set.Assign(task, "user", UnitId(i));
    if (a.has_value()) arms[i] = a->arm;
  }
  return arms;
}

int64_t CountEnrolled(const std::vector<std::string>& arms) {
  int64_t n = 0;
  for (const std::string& arm : arms) n += arm.empty() ? 0 : 1;
  return n;
}

// Five binomial standard deviations of `n` draws with probability `p`.
double FiveSigma(int64_t n, double p) {
  return 5 * std::sqrt(static_cast<double>(n) * p * (1 - p));
}

// Writes `lines` into a new experiment log in `dir` and closes it.
void WriteLog(const std::string& dir, const std::vector<std::string>& lines) {
  DurableLog::Options options;
  options.dir = dir;
  options.file_prefix = kExperimentLogPrefix;
  options.flush_records = options.max_pending_records;
  absl::StatusOr<std::unique_ptr<DurableLog>> log = DurableLog::Open(options);
  ASSERT_TRUE(log.ok()) << log.status();
  for (const std::string& line : lines) {
    ASSERT_TRUE((*log)->Append(line).ok());
  }
  ASSERT_TRUE((*log)->Close().ok());
}

Exposure MakeExposure(int64_t time_us, const std::string& request_id,
                      const std::string& experiment, const std::string& arm,
                      const std::string& unit) {
  Exposure e;
  e.time_us = time_us;
  e.request_id = request_id;
  e.task = "rank";
  e.experiment = experiment;
  e.arm = arm;
  e.version = arm == "control" ? "v1" : "v2";
  e.unit_type = "user";
  e.unit = unit;
  return e;
}

// An event keyed by request id.
FeedbackEvent RequestEvent(int64_t time_us, EventKind kind, double value,
                           const std::string& request_id) {
  FeedbackEvent e;
  e.time_us = time_us;
  e.kind = kind;
  e.value = value;
  e.request_id = request_id;
  return e;
}

// An event keyed by (experiment, unit), with no request id.
FeedbackEvent UnitEvent(int64_t time_us, EventKind kind, double value,
                        const std::string& experiment,
                        const std::string& unit) {
  FeedbackEvent e;
  e.time_us = time_us;
  e.kind = kind;
  e.value = value;
  e.experiment = experiment;
  e.unit_type = "user";
  e.unit = unit;
  return e;
}

ExperimentReport Report(const std::vector<std::string>& dirs,
                        const std::string& experiment) {
  ReportOptions options;
  options.experiment = experiment;
  absl::StatusOr<ExperimentReport> report =
      BuildExperimentReport(dirs, options);
  EXPECT_TRUE(report.ok()) << report.status();
  return report.ok() ? *std::move(report) : ExperimentReport{};
}

// Sample mean and variance (divisor n - 1), two passes.
std::pair<double, double> MeanAndVariance(const std::vector<double>& xs) {
  double sum = 0;
  for (double x : xs) sum += x;
  const double mean = sum / xs.size();
  double squares = 0;
  for (double x : xs) squares += (x - mean) * (x - mean);
  return {mean, squares / (xs.size() - 1)};
}

// P(|T| >= |t|) for Student's t with `df` degrees of freedom, by Simpson's
// rule over the density from 0 to |t|.
double StudentTwoSidedP(double t, double df) {
  const double log_norm = std::lgamma((df + 1) / 2) - std::lgamma(df / 2) -
                          0.5 * std::log(df * M_PI);
  auto density = [&](double x) {
    return std::exp(log_norm - (df + 1) / 2 * std::log1p(x * x / df));
  };
  const int steps = 20000;  // even
  const double h = std::abs(t) / steps;
  double sum = density(0) + density(std::abs(t));
  for (int i = 1; i < steps; ++i) sum += (i % 2 ? 4 : 2) * density(i * h);
  return 1 - 2 * (sum * h / 3);
}

// The Wilson score interval of s successes in n at critical value z.
stats::Interval Wilson(double s, double n, double z) {
  const double p = s / n;
  const double denominator = 1 + z * z / n;
  const double center = (p + z * z / (2 * n)) / denominator;
  const double half =
      z / denominator * std::sqrt(p * (1 - p) / n + z * z / (4 * n * n));
  return {center - half, center + half};
}

// ---- The assignment hash. ----

TEST(ExperimentHashTest, BucketsAreXxh3OfTheDocumentedBytes) {
  // The library itself: the published XXH3_64 of no bytes with seed 0.
  EXPECT_EQ(XXH3_64bits("", 0), 0x2D06800538D394C2ULL);

  const std::string zero(1, '\0');
  for (const std::string unit : {"alice", "bob", "", "user-123456"}) {
    const std::string layer_bytes =
        "layer" + zero + "ranking" + zero + "session" + zero + unit;
    EXPECT_EQ(LayerBucket("ranking", "session", unit),
              static_cast<int64_t>(
                  XXH3_64bits(layer_bytes.data(), layer_bytes.size()) % 10000))
        << unit;
    const std::string arm_bytes = "salt-7" + zero + unit;
    EXPECT_EQ(ArmBucket("salt-7", unit),
              static_cast<int64_t>(
                  XXH3_64bits(arm_bytes.data(), arm_bytes.size()) % 10000))
        << unit;
  }
}

TEST(ExperimentHashTest, BucketsKeepTheirGoldenValues) {
  // Computed once with libxxhash 0.8; a change of the formula, the byte
  // layout or the hash moves every unit and must fail here.
  EXPECT_EQ(LayerBucket("default", "user", "alice"), 323);
  EXPECT_EQ(LayerBucket("default", "user", "bob"), 2134);
  EXPECT_EQ(LayerBucket("ranking", "session", "s-42"), 8505);
  EXPECT_EQ(ArmBucket("exp1", "alice"), 3094);
  EXPECT_EQ(ArmBucket("exp1", "bob"), 3637);
  EXPECT_EQ(ArmBucket("salt-7", "u123"), 5529);
}

TEST(ExperimentHashTest, ArmOfFollowsTheWeightedSlicesOfTheArmBucket) {
  // Weights {1, 1, 2}: slices [0, 2500), [2500, 5000), [5000, 10000) of the
  // arm bucket, the salt defaulting to the name.
  const ExperimentDefinition d = Definition("exp1", "rank", {1, 1, 2});
  for (int64_t i = 0; i < 2000; ++i) {
    const int64_t bucket = ArmBucket("exp1", UnitId(i));
    const int expected = bucket < 2500 ? 0 : bucket < 5000 ? 1 : 2;
    ASSERT_EQ(ArmOf(d, UnitId(i)), expected) << UnitId(i);
  }
}

// ---- Frequencies. ----

TEST(ExperimentSetTest, ArmFrequenciesMatchTheWeights) {
  std::unique_ptr<ExperimentSet> set = OpenSet();
  ASSERT_NE(set, nullptr);
  DefineIn(*set, Definition("split", "rank", {1, 1, 2}));

  constexpr int64_t kUnits = 200000;
  const std::vector<std::string> arms = Assignments(*set, "rank", kUnits);
  std::map<std::string, int64_t> counts;
  for (const std::string& arm : arms) ++counts[arm];
  ASSERT_EQ(counts.count(""), 0u) << "traffic 1 enrolls every unit";

  const std::map<std::string, double> shares = {
      {"control", 0.25}, {"treatment1", 0.25}, {"treatment2", 0.5}};
  double chi_square = 0;
  for (const auto& [arm, share] : shares) {
    const double expected = kUnits * share;
    EXPECT_NEAR(counts[arm], expected, FiveSigma(kUnits, share)) << arm;
    chi_square +=
        (counts[arm] - expected) * (counts[arm] - expected) / expected;
  }
  // With 2 degrees of freedom P(X >= x) = exp(-x / 2): 1e-6 at 27.63.
  EXPECT_LT(chi_square, 27.63);
  EXPECT_EQ(counts.size(), 3u);
}

TEST(ExperimentSetTest, EnrolledShareMatchesTheTraffic) {
  std::unique_ptr<ExperimentSet> set = OpenSet();
  ASSERT_NE(set, nullptr);
  DefineIn(*set, Definition("partial", "rank", {1, 1}, 0.3));

  constexpr int64_t kUnits = 200000;
  const int64_t enrolled = CountEnrolled(Assignments(*set, "rank", kUnits));
  EXPECT_NEAR(enrolled, 0.3 * kUnits, FiveSigma(kUnits, 0.3));
  // Another unit type, or no unit id, is never enrolled.
  for (int64_t i = 0; i < 1000; ++i) {
    EXPECT_FALSE(set->Assign("rank", "session", UnitId(i)).has_value()) << i;
  }
  EXPECT_FALSE(set->Assign("rank", "user", "").has_value());
}

// ---- Restarts and traffic. ----

TEST(ExperimentSetTest, UnitKeepsItsArmAcrossRestarts) {
  const std::string path = FreshDir() + "/experiments.json";
  ExperimentSet::Options options;
  options.state_path = path;
  constexpr int64_t kUnits = 20000;

  std::vector<std::string> before;
  {
    std::unique_ptr<ExperimentSet> set = OpenSet(options);
    ASSERT_NE(set, nullptr);
    DefineIn(*set, Definition("restart", "rank", {1, 3}, 0.5));
    before = Assignments(*set, "rank", kUnits);
  }
  EXPECT_NEAR(CountEnrolled(before), 0.5 * kUnits, FiveSigma(kUnits, 0.5));

  std::unique_ptr<ExperimentSet> reopened = OpenSet(options);
  ASSERT_NE(reopened, nullptr);
  absl::StatusOr<ExperimentDefinition> d = reopened->Get("restart");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->state, ExperimentState::kRunning);
  EXPECT_EQ(Assignments(*reopened, "rank", kUnits), before);
}

TEST(ExperimentSetTest, CorruptStateFileIsDataLossNamingIt) {
  const std::string path = FreshDir() + "/experiments.json";
  {
    std::ofstream out(path);
    out << "{\"experiments\": [";
  }
  ExperimentSet::Options options;
  options.state_path = path;
  const absl::Status status = ExperimentSet::Open(options, {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr(path));
}

TEST(ExperimentSetTest, ConfiguredDefinitionIsPlacedAndTheFileWinsOnReopen) {
  const std::string path = FreshDir() + "/experiments.json";
  ExperimentSet::Options options;
  options.state_path = path;
  {
    std::unique_ptr<ExperimentSet> set = OpenSet(options);
    ASSERT_NE(set, nullptr);
    DefineIn(*set, Definition("first", "rank", {1, 1}, 0.5));
  }

  // Placed after "first" in the default layer, running as configured.
  ExperimentDefinition configured = Definition("cfg", "search", {1, 1}, 0.25);
  configured.state = ExperimentState::kRunning;
  {
    std::unique_ptr<ExperimentSet> set = OpenSet(options, {configured});
    ASSERT_NE(set, nullptr);
    absl::StatusOr<ExperimentDefinition> cfg = set->Get("cfg");
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    EXPECT_EQ(cfg->layer_offset, 5000);
    EXPECT_EQ(cfg->layer_share, 0.25);
    EXPECT_EQ(cfg->state, ExperimentState::kRunning);
  }
  {
    // Persisted: a reopen without configuration still holds it.
    std::unique_ptr<ExperimentSet> set = OpenSet(options);
    ASSERT_NE(set, nullptr);
    absl::StatusOr<ExperimentDefinition> cfg = set->Get("cfg");
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    EXPECT_EQ(cfg->layer_offset, 5000);
  }

  // A changed configuration does not replace the file's definition.
  ExperimentDefinition changed = configured;
  changed.traffic = 0.1;
  changed.arms[1].version = "v9";
  std::unique_ptr<ExperimentSet> set = OpenSet(options, {changed});
  ASSERT_NE(set, nullptr);
  absl::StatusOr<ExperimentDefinition> cfg = set->Get("cfg");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->traffic, 0.25);
  EXPECT_EQ(cfg->arms[1].version, "v2");
  EXPECT_EQ(cfg->layer_offset, 5000);
  EXPECT_EQ(set->List().size(), 2u);
}

TEST(ExperimentSetTest, GrowingTrafficKeepsEnrolledUnitsInTheirArms) {
  std::unique_ptr<ExperimentSet> set = OpenSet();
  ASSERT_NE(set, nullptr);
  ExperimentDefinition d = Definition("grow", "rank", {1, 1}, 0.2);
  d.layer_share = 0.6;
  DefineIn(*set, d);

  constexpr int64_t kUnits = 100000;
  const std::vector<std::string> small = Assignments(*set, "rank", kUnits);
  EXPECT_NEAR(CountEnrolled(small), 0.2 * kUnits, FiveSigma(kUnits, 0.2));

  ASSERT_TRUE(set->SetTraffic("grow", 0.6).ok());
  const std::vector<std::string> large = Assignments(*set, "rank", kUnits);
  for (int64_t i = 0; i < kUnits; ++i) {
    if (!small[i].empty()) {
      ASSERT_EQ(large[i], small[i]) << UnitId(i);
    }
  }
  EXPECT_NEAR(CountEnrolled(large), 0.6 * kUnits, FiveSigma(kUnits, 0.6));

  // Past the reserved share is refused; shrinking keeps a subset.
  EXPECT_EQ(set->SetTraffic("grow", 0.7).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(set->SetTraffic("grow", 0.1).ok());
  const std::vector<std::string> shrunk = Assignments(*set, "rank", kUnits);
  for (int64_t i = 0; i < kUnits; ++i) {
    if (!shrunk[i].empty()) {
      ASSERT_EQ(shrunk[i], small[i]) << UnitId(i);
    }
  }
  EXPECT_NEAR(CountEnrolled(shrunk), 0.1 * kUnits, FiveSigma(kUnits, 0.1));
}

// ---- Layers. ----

TEST(ExperimentSetTest, ExperimentsOfOneLayerNeverShareAUnit) {
  std::unique_ptr<ExperimentSet> set = OpenSet();
  ASSERT_NE(set, nullptr);
  const ExperimentDefinition a =
      DefineIn(*set, Definition("a", "rank", {1, 1}, 0.5));
  const ExperimentDefinition b =
      DefineIn(*set, Definition("b", "search", {1, 1}, 0.4));
  EXPECT_EQ(a.layer_offset, 0);
  EXPECT_EQ(b.layer_offset, 5000);

  constexpr int64_t kUnits = 200000;
  const std::vector<std::string> in_a = Assignments(*set, "rank", kUnits);
  const std::vector<std::string> in_b = Assignments(*set, "search", kUnits);
  int64_t both = 0;
  for (int64_t i = 0; i < kUnits; ++i) {
    both += !in_a[i].empty() && !in_b[i].empty();
  }
  EXPECT_EQ(both, 0);
  EXPECT_NEAR(CountEnrolled(in_a), 0.5 * kUnits, FiveSigma(kUnits, 0.5));
  EXPECT_NEAR(CountEnrolled(in_b), 0.4 * kUnits, FiveSigma(kUnits, 0.4));
}

TEST(ExperimentSetTest, ExperimentsOfTwoLayersOverlapIndependently) {
  std::unique_ptr<ExperimentSet> set = OpenSet();
  ASSERT_NE(set, nullptr);
  ExperimentDefinition x = Definition("x", "rank", {1, 1}, 0.5);
  x.layer = "ranking";
  ExperimentDefinition y = Definition("y", "search", {1, 1}, 0.4);
  y.layer = "retrieval";
  DefineIn(*set, x);
  DefineIn(*set, y);

  constexpr int64_t kUnits = 200000;
  const std::vector<std::string> in_x = Assignments(*set, "rank", kUnits);
  const std::vector<std::string> in_y = Assignments(*set, "search", kUnits);
  int64_t both = 0;
  for (int64_t i = 0; i < kUnits; ++i) {
    both += !in_x[i].empty() && !in_y[i].empty();
  }
  EXPECT_NEAR(both, 0.2 * kUnits, FiveSigma(kUnits, 0.2));
  EXPECT_NEAR(CountEnrolled(in_x), 0.5 * kUnits, FiveSigma(kUnits, 0.5));
  EXPECT_NEAR(CountEnrolled(in_y), 0.4 * kUnits, FiveSigma(kUnits, 0.4));
}

// ---- Define's refusals. ----

TEST(ExperimentSetTest, DefineRefusesConflictsAndInvalidDefinitions) {
  ExperimentSet::Options options;
  options.check_version = [](const std::string& task,
                             const std::string& version) -> absl::Status {
    if (version == "v404") {
      return absl::InvalidArgumentError(
          absl::StrCat("version ", version, " of ", task, " is not loaded"));
    }
    return absl::OkStatus();
  };
  std::unique_ptr<ExperimentSet> set = OpenSet(options);
  ASSERT_NE(set, nullptr);
  DefineIn(*set, Definition("a", "t1", {1, 1}, 0.6));

  auto refusal = [&](const ExperimentDefinition& d) {
    return set->Define(d).status();
  };
  EXPECT_EQ(refusal(Definition("a", "t9", {1, 1}, 0.1)).code(),
            absl::StatusCode::kAlreadyExists);

  ExperimentDefinition overlapping = Definition("b", "t2", {1, 1}, 0.2);
  overlapping.layer_offset = 5000;
  const absl::Status overlap = refusal(overlapping);
  EXPECT_EQ(overlap.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(overlap.message(), HasSubstr("'a'"));

  const absl::Status full = refusal(Definition("c", "t3", {1, 1}, 0.5));
  EXPECT_EQ(full.code(), absl::StatusCode::kFailedPrecondition) << full;

  ExperimentDefinition other_layer = Definition("d", "t1", {1, 1}, 0.1);
  other_layer.layer = "elsewhere";
  const absl::Status split_task = refusal(other_layer);
  EXPECT_EQ(split_task.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(split_task.message(), HasSubstr("'a'"));

  const absl::Status one_arm = refusal(Definition("e", "t4", {1}, 0.1));
  EXPECT_EQ(one_arm.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(one_arm.message(), HasSubstr("arms"));

  ExperimentDefinition twins = Definition("f", "t4", {1, 1}, 0.1);
  twins.arms[1].name = "control";
  const absl::Status duplicate = refusal(twins);
  EXPECT_EQ(duplicate.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(duplicate.message(), HasSubstr("arms[1].name"));

  // Weights that are not positive, or so far apart that an arm would get
  // no bucket of the split (no unit at all).
  for (double weight : {0.0, -1.0, std::nan(""), 1e-5}) {
    const absl::Status bad = refusal(Definition("g", "t4", {1, weight}, 0.1));
    EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << weight;
    EXPECT_THAT(bad.message(), HasSubstr("arms[1].weight")) << weight;
  }
  const absl::Status overflow =
      refusal(Definition("g", "t4", {1e308, 1e308}, 0.1));
  EXPECT_EQ(overflow.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(overflow.message(), HasSubstr("sum"));
  // The smallest share that still gets a bucket is accepted.
  EXPECT_TRUE(set->Define(Definition("g", "t4", {9999, 1}, 0.1)).ok());
  ASSERT_TRUE(set->SetState("g", ExperimentState::kStopped).ok());
  for (double traffic : {0.0, -0.1, 1.5, std::nan("")}) {
    const absl::Status bad = refusal(Definition("h", "t4", {1, 1}, traffic));
    EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << traffic;
    EXPECT_THAT(bad.message(), HasSubstr("traffic")) << traffic;
  }

  ExperimentDefinition unloaded = Definition("i", "t4", {1, 1}, 0.1);
  unloaded.arms[1].version = "v404";
  const absl::Status hook = refusal(unloaded);
  EXPECT_EQ(hook.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(hook.message(), HasSubstr("arms[1]"));
  EXPECT_THAT(hook.message(), HasSubstr("version v404 of t4 is not loaded"));

  // Nothing refused was kept.
  EXPECT_EQ(set->List().size(), 2u);
}

TEST(ExperimentSetTest, StoppedExperimentFreesItsSlot) {
  std::unique_ptr<ExperimentSet> set = OpenSet();
  ASSERT_NE(set, nullptr);
  DefineIn(*set, Definition("whole", "t1", {1, 1}, 1.0));
  EXPECT_EQ(set->Define(Definition("next", "t2", {1, 1}, 0.5)).status().code(),
            absl::StatusCode::kFailedPrecondition);

  ASSERT_TRUE(set->SetState("whole", ExperimentState::kStopped).ok());
  absl::StatusOr<ExperimentDefinition> next =
      set->Define(Definition("next", "t2", {1, 1}, 0.5));
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->layer_offset, 0);
}

// ---- The state machine. ----

TEST(ExperimentSetTest, StateMachineAllowsOnlyDocumentedMoves) {
  std::unique_ptr<ExperimentSet> set = OpenSet();
  ASSERT_NE(set, nullptr);
  std::vector<std::pair<std::string, ExperimentState>> changes;
  set->set_on_change([&](const ExperimentDefinition& d) {
    changes.push_back({d.name, d.state});
  });
  using S = ExperimentState;
  auto serves = [&] {
    int64_t n = 0;
    for (int64_t i = 0; i < 200; ++i) {
      n += set->Assign("rank", "user", UnitId(i)).has_value();
    }
    return n;
  };

  ASSERT_TRUE(set->Define(Definition("sm", "rank", {1, 1})).ok());
  EXPECT_EQ(serves(), 0) << "draft";
  EXPECT_EQ(set->SetState("sm", S::kPaused).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(set->SetState("sm", S::kRunning).ok());
  EXPECT_EQ(serves(), 200) << "running";
  ASSERT_TRUE(set->SetState("sm", S::kPaused).ok());
  EXPECT_EQ(serves(), 0) << "paused";
  ASSERT_TRUE(set->SetState("sm", S::kRunning).ok());
  EXPECT_EQ(serves(), 200) << "running again";
  ASSERT_TRUE(set->SetState("sm", S::kStopped).ok());
  EXPECT_EQ(serves(), 0) << "stopped";

  const absl::Status restart = set->SetState("sm", S::kRunning).status();
  EXPECT_EQ(restart.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(restart.message(), HasSubstr("stopped"));
  EXPECT_EQ(set->SetTraffic("sm", 0.5).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(set->SetState("nobody", S::kRunning).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(set->SetTraffic("nobody", 0.5).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(set->Get("nobody").status().code(), absl::StatusCode::kNotFound);

  const std::vector<std::pair<std::string, ExperimentState>> expected = {
      {"sm", S::kDraft},
      {"sm", S::kRunning},
      {"sm", S::kPaused},
      {"sm", S::kRunning},
      {"sm", S::kStopped}};
  EXPECT_EQ(changes, expected);
}

// ---- JSON. ----

TEST(ExperimentJsonTest, DefinitionRoundTripsThroughJsonText) {
  ExperimentDefinition d = Definition("round", "rank", {1, 2.5, 0.5}, 0.3);
  d.unit_type = "session";
  d.layer = "ranking";
  d.salt = "pepper";
  d.layer_share = 0.4;
  d.layer_offset = 1234;
  d.state = ExperimentState::kPaused;

  const nlohmann::json text = nlohmann::json::parse(ExperimentToJson(d).dump());
  absl::StatusOr<ExperimentDefinition> back = ExperimentFromJson(text);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->name, "round");
  EXPECT_EQ(back->task, "rank");
  EXPECT_EQ(back->unit_type, "session");
  EXPECT_EQ(back->layer, "ranking");
  EXPECT_EQ(back->salt, "pepper");
  EXPECT_EQ(back->traffic, 0.3);
  EXPECT_EQ(back->layer_share, 0.4);
  EXPECT_EQ(back->layer_offset, 1234);
  EXPECT_EQ(back->state, ExperimentState::kPaused);
  ASSERT_EQ(back->arms.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(back->arms[i].name, d.arms[i].name);
    EXPECT_EQ(back->arms[i].version, d.arms[i].version);
    EXPECT_EQ(back->arms[i].weight, d.arms[i].weight);
  }
  EXPECT_TRUE(ValidateExperiment(*back).ok());
}

TEST(ExperimentJsonTest, UnknownFieldsAndWrongTypesAreRefusedByName) {
  const nlohmann::json good =
      ExperimentToJson(Definition("json", "rank", {1, 1}));

  nlohmann::json unknown = good;
  unknown["colour"] = "red";
  absl::Status status = ExperimentFromJson(unknown, "cfg").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("colour"));

  nlohmann::json unknown_arm_field = good;
  unknown_arm_field["arms"][1]["share"] = 3;
  status = ExperimentFromJson(unknown_arm_field, "cfg").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("share"));
  EXPECT_THAT(status.message(), HasSubstr("cfg.arms[1]"));

  nlohmann::json text_traffic = good;
  text_traffic["traffic"] = "half";
  status = ExperimentFromJson(text_traffic, "cfg").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("cfg: field 'traffic'"));

  nlohmann::json fractional_offset = good;
  fractional_offset["layer_offset"] = 1.5;
  status = ExperimentFromJson(fractional_offset, "cfg").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("layer_offset"));

  nlohmann::json unknown_state = good;
  unknown_state["state"] = "sleeping";
  EXPECT_EQ(ExperimentFromJson(unknown_state).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- The report. ----

// Control units "c-i" and treatment units "t-i", i < 400, with known
// exposures and events, and the plain tallies the report must reproduce.
struct KnownLog {
  std::vector<std::string> lines;
  int64_t exposures[2] = {0, 0};
  int64_t click_events[2] = {0, 0};
  int64_t click_units[2] = {0, 0};
  int64_t purchase_events[2] = {0, 0};
  double purchase_sum[2] = {0, 0};
  int64_t purchase_units[2] = {0, 0};
  std::vector<double> ratings[2];
};

KnownLog MakeKnownLog(const std::string& experiment) {
  KnownLog log;
  ExperimentDefinition d = Definition(experiment, "rank", {1, 1});
  d.arms[1].name = "treatment";
  d.layer_offset = 0;
  d.state = ExperimentState::kRunning;
  log.lines.push_back(ExperimentRecord(d, kT0 - kSecondUs));
  for (int arm = 0; arm < 2; ++arm) {
    const std::string arm_name = arm == 0 ? "control" : "treatment";
    for (int i = 0; i < 400; ++i) {
      const std::string unit = absl::StrCat(arm == 0 ? "c-" : "t-", i);
      const int64_t t = kT0 + (2 * i + arm) * kSecondUs;
      // Control: every fourth unit is served 3 times; treatment: every
      // fifth twice.
      const int served = arm == 0 ? (i % 4 == 0 ? 3 : 1) : (i % 5 == 0 ? 2 : 1);
      for (int k = 0; k < served; ++k) {
        log.lines.push_back(ExposureRecord(
            MakeExposure(t + k * 100, absl::StrCat("r-", unit, "-", k),
                         experiment, arm_name, unit)));
        ++log.exposures[arm];
      }
      const std::string request = absl::StrCat("r-", unit, "-0");
      const int64_t later = t + 500;
      // Clicks: 80 control units, 120 treatment units; every tenth clicks
      // twice; every third is keyed by unit instead of request.
      if (i < (arm == 0 ? 80 : 120)) {
        const int clicks = i % 10 == 0 ? 2 : 1;
        for (int k = 0; k < clicks; ++k) {
          log.lines.push_back(EventRecord(
              i % 3 == 0
                  ? UnitEvent(later, EventKind::kClick, 1, experiment, unit)
                  : RequestEvent(later, EventKind::kClick, 1, request)));
          ++log.click_events[arm];
        }
        ++log.click_units[arm];
      }
      // Purchases of 2 items: every 20th control unit, every 16th
      // treatment unit; a purchase of 0 items for unit 1 (an event, but
      // no purchasing unit).
      if (i % (arm == 0 ? 20 : 16) == 0) {
        log.lines.push_back(
            EventRecord(RequestEvent(later, EventKind::kPurchase, 2, request)));
        ++log.purchase_events[arm];
        log.purchase_sum[arm] += 2;
        ++log.purchase_units[arm];
      } else if (i == 1) {
        log.lines.push_back(
            EventRecord(RequestEvent(later, EventKind::kPurchase, 0, request)));
        ++log.purchase_events[arm];
      }
      // Ratings: 60 control units rate 1..5, 50 treatment units 2..5.
      if (i < (arm == 0 ? 60 : 50)) {
        const double rating = arm == 0 ? 1 + (i * 7) % 5 : 2 + (i * 3) % 4;
        log.lines.push_back(EventRecord(
            RequestEvent(later, EventKind::kRating, rating, request)));
        log.ratings[arm].push_back(rating);
      }
    }
  }
  return log;
}

TEST(ExperimentReportTest, ReportMatchesPlainFormulas) {
  const std::string dir = FreshDir();
  const KnownLog known = MakeKnownLog("known");
  WriteLog(dir, known.lines);
  const ExperimentReport report = Report({dir}, "known");
  ASSERT_EQ(report.arms.size(), 2u);
  ASSERT_EQ(report.comparisons.size(), 1u);
  EXPECT_EQ(report.log.torn_lines, 0);
  EXPECT_EQ(report.unmatched_events, 0);
  EXPECT_EQ(report.units_in_several_arms, 0);

  const int kClick = static_cast<int>(EventKind::kClick);
  const int kPurchase = static_cast<int>(EventKind::kPurchase);
  const int kRating = static_cast<int>(EventKind::kRating);
  for (int arm = 0; arm < 2; ++arm) {
    const ArmResult& a = report.arms[arm];
    SCOPED_TRACE(a.arm.name);
    EXPECT_EQ(a.units, 400);
    EXPECT_EQ(a.exposures, known.exposures[arm]);
    EXPECT_EQ(a.events[kClick], known.click_events[arm]);
    EXPECT_EQ(a.events[kPurchase], known.purchase_events[arm]);
    EXPECT_EQ(a.event_values[kPurchase], known.purchase_sum[arm]);
    EXPECT_EQ(a.events[kRating],
              static_cast<int64_t>(known.ratings[arm].size()));
    for (int k = 0; k < kRateKinds; ++k) {
      const int64_t s =
          k == kClick ? known.click_units[arm] : known.purchase_units[arm];
      ASSERT_TRUE(a.rates[k].has_value());
      EXPECT_EQ(a.rates[k]->counts.successes, s);
      EXPECT_EQ(a.rates[k]->counts.trials, 400);
      EXPECT_DOUBLE_EQ(a.rates[k]->rate, s / 400.0);
      const stats::Interval wilson = Wilson(s, 400, kZ95);
      EXPECT_NEAR(a.rates[k]->interval.lower, wilson.lower, 1e-9);
      EXPECT_NEAR(a.rates[k]->interval.upper, wilson.upper, 1e-9);
    }
    const auto [mean, variance] = MeanAndVariance(known.ratings[arm]);
    EXPECT_EQ(a.rating.count, static_cast<int64_t>(known.ratings[arm].size()));
    EXPECT_NEAR(a.rating.mean, mean, 1e-12);
    EXPECT_NEAR(a.rating.variance, variance, 1e-12);
  }
  // The known tallies themselves, so a slip in the data shows here.
  EXPECT_EQ(known.click_units[0], 80);
  EXPECT_EQ(known.click_units[1], 120);

  const ArmComparison& c = report.comparisons[0];
  EXPECT_EQ(c.arm, "treatment");
  for (int k = 0; k < kRateKinds; ++k) {
    SCOPED_TRACE(EventKindName(static_cast<EventKind>(k)));
    const int64_t* units =
        k == kClick ? known.click_units : known.purchase_units;
    const double pc = units[0] / 400.0, pt = units[1] / 400.0;
    const double pooled = (units[0] + units[1]) / 800.0;
    const double z =
        (pt - pc) / std::sqrt(pooled * (1 - pooled) * (1 / 400.0 + 1 / 400.0));
    const double p_value = std::erfc(std::abs(z) / std::sqrt(2.0));
    const double wald =
        kZ95 * std::sqrt(pt * (1 - pt) / 400 + pc * (1 - pc) / 400);
    ASSERT_TRUE(c.rates[k].has_value());
    const stats::ProportionComparison& p = *c.rates[k];
    EXPECT_NEAR(p.difference, pt - pc, 1e-12);
    EXPECT_NEAR(p.difference_interval.lower, pt - pc - wald, 1e-9);
    EXPECT_NEAR(p.difference_interval.upper, pt - pc + wald, 1e-9);
    EXPECT_TRUE(p.lift_defined);
    EXPECT_NEAR(p.lift, (pt - pc) / pc, 1e-12);
    EXPECT_NEAR(p.z, z, 1e-9);
    EXPECT_NEAR(p.p_value, p_value, 1e-9);
  }
  // Clicks 0.2 against 0.3: z = 0.1 / sqrt(0.25 * 0.75 / 200) = 3.266.
  EXPECT_NEAR(c.rates[kClick]->z, 3.2660, 1e-4);

  const auto [mc, vc] = MeanAndVariance(known.ratings[0]);
  const auto [mt, vt] = MeanAndVariance(known.ratings[1]);
  const double nc = known.ratings[0].size(), nt = known.ratings[1].size();
  const double se2 = vt / nt + vc / nc;
  const double t = (mt - mc) / std::sqrt(se2);
  const double df =
      se2 * se2 /
      ((vt / nt) * (vt / nt) / (nt - 1) + (vc / nc) * (vc / nc) / (nc - 1));
  ASSERT_TRUE(c.rating.has_value());
  EXPECT_NEAR(c.rating->difference, mt - mc, 1e-12);
  EXPECT_NEAR(c.rating->standard_error, std::sqrt(se2), 1e-12);
  EXPECT_NEAR(c.rating->t, t, 1e-9);
  EXPECT_NEAR(c.rating->df, df, 1e-9);
  EXPECT_NEAR(c.rating->p_value, StudentTwoSidedP(t, df), 1e-9);

  ASSERT_TRUE(report.sample_ratio.has_value());
  EXPECT_EQ(report.sample_ratio->chi_square, 0);
  EXPECT_FALSE(report.sample_ratio->mismatch);
  EXPECT_EQ(report.first_exposure_us, kT0);
}

TEST(ExperimentReportTest, EventsJoinByRequestOrUnitAcrossFolders) {
  const std::string exposures_dir = FreshDir("exposures");
  const std::string events_dir = FreshDir("events");
  ExperimentDefinition join = Definition("join", "rank", {1, 1});
  join.arms[1].name = "treatment";
  join.layer_offset = 0;
  ExperimentDefinition other = Definition("other", "search", {1, 1});
  other.arms[1].name = "treatment";
  other.layer_offset = 5000;
  WriteLog(
      exposures_dir,
      {ExperimentRecord(join, kT0), ExperimentRecord(other, kT0),
       ExposureRecord(MakeExposure(kT0 + 1, "r1", "join", "control", "u1")),
       ExposureRecord(MakeExposure(kT0 + 2, "r2", "join", "treatment", "u2")),
       ExposureRecord(MakeExposure(kT0 + 3, "r3", "join", "control", "u3")),
       ExposureRecord(MakeExposure(kT0 + 4, "o1", "other", "control", "u1"))});
  const int64_t t = kT0 + 100;
  WriteLog(events_dir,
           {// Joined: by request, by unit, by request.
            EventRecord(RequestEvent(t, EventKind::kClick, 1, "r1")),
            EventRecord(UnitEvent(t, EventKind::kClick, 1, "join", "u2")),
            EventRecord(RequestEvent(t, EventKind::kPurchase, 1, "r3")),
            // Unmatched: no exposure of any experiment holds it.
            EventRecord(RequestEvent(t, EventKind::kClick, 1, "r-missing")),
            // Unmatched: a unit of this experiment never exposed.
            EventRecord(UnitEvent(t, EventKind::kClick, 1, "join", "u99")),
            // Another experiment's: neither counted nor unmatched.
            EventRecord(RequestEvent(t, EventKind::kClick, 1, "o1")),
            EventRecord(UnitEvent(t, EventKind::kClick, 1, "other", "u1"))});

  // A crash cut the newest events file's last line short.
  std::filesystem::path newest;
  for (const auto& entry : std::filesystem::directory_iterator(events_dir)) {
    if (newest.empty() || entry.path() > newest) newest = entry.path();
  }
  ASSERT_FALSE(newest.empty());
  {
    std::ofstream out(newest, std::ios::app | std::ios::binary);
    out << R"({"type": "event", "time_us": 17000, "kind": "cli)";
  }

  const ExperimentReport report = Report({exposures_dir, events_dir}, "join");
  ASSERT_EQ(report.arms.size(), 2u);
  const int kClick = static_cast<int>(EventKind::kClick);
  const int kPurchase = static_cast<int>(EventKind::kPurchase);
  EXPECT_EQ(report.arms[0].units, 2);
  EXPECT_EQ(report.arms[0].exposures, 2);
  EXPECT_EQ(report.arms[0].events[kClick], 1);
  EXPECT_EQ(report.arms[0].events[kPurchase], 1);
  EXPECT_EQ(report.arms[1].units, 1);
  EXPECT_EQ(report.arms[1].exposures, 1);
  EXPECT_EQ(report.arms[1].events[kClick], 1);
  EXPECT_EQ(report.arms[1].events[kPurchase], 0);
  ASSERT_TRUE(report.arms[0].rates[kClick].has_value());
  EXPECT_EQ(report.arms[0].rates[kClick]->counts.successes, 1);
  EXPECT_EQ(report.arms[0].rates[kPurchase]->counts.successes, 1);
  EXPECT_EQ(report.unmatched_events, 2);
  EXPECT_EQ(report.log.torn_lines, 1);
  EXPECT_EQ(report.log.corrupt_lines, 0);
  EXPECT_EQ(report.log.files, 2);

  ReportOptions missing;
  missing.experiment = "nobody";
  EXPECT_EQ(BuildExperimentReport({exposures_dir, events_dir}, missing)
                .status()
                .code(),
            absl::StatusCode::kNotFound);
}

// One exposure each of `control` then `treatment` units of a 1:1
// experiment "srm".
std::vector<std::string> SplitLog(int64_t control, int64_t treatment) {
  ExperimentDefinition d = Definition("srm", "rank", {1, 1});
  d.arms[1].name = "treatment";
  d.layer_offset = 0;
  std::vector<std::string> lines = {ExperimentRecord(d, kT0)};
  for (int64_t i = 0; i < control + treatment; ++i) {
    const std::string arm = i < control ? "control" : "treatment";
    lines.push_back(ExposureRecord(
        MakeExposure(kT0 + i, absl::StrCat("r", i), "srm", arm, UnitId(i))));
  }
  return lines;
}

TEST(ExperimentReportTest, InjectedSplitSetsSampleRatioMismatch) {
  const std::string dir = FreshDir();
  WriteLog(dir, SplitLog(2200, 1800));
  const ExperimentReport report = Report({dir}, "srm");
  ASSERT_TRUE(report.sample_ratio.has_value());
  // (2200 - 2000)^2 / 2000 + (1800 - 2000)^2 / 2000.
  EXPECT_NEAR(report.sample_ratio->chi_square, 40.0, 1e-9);
  EXPECT_TRUE(report.sample_ratio->mismatch);
}

TEST(ExperimentReportTest, SplitDrawnByArmOfPassesSampleRatioCheck) {
  ExperimentDefinition d = Definition("srm", "rank", {1, 1});
  d.arms[1].name = "treatment";
  d.layer_offset = 0;
  std::vector<std::string> lines = {ExperimentRecord(d, kT0)};
  int64_t observed[2] = {0, 0};
  for (int64_t i = 0; i < 4000; ++i) {
    const int arm = ArmOf(d, UnitId(i));
    ++observed[arm];
    lines.push_back(ExposureRecord(MakeExposure(
        kT0 + i, absl::StrCat("r", i), "srm", d.arms[arm].name, UnitId(i))));
  }
  const std::string dir = FreshDir();
  WriteLog(dir, lines);
  const ExperimentReport report = Report({dir}, "srm");
  ASSERT_TRUE(report.sample_ratio.has_value());
  const double chi_square =
      (observed[0] - 2000.0) * (observed[0] - 2000.0) / 2000 +
      (observed[1] - 2000.0) * (observed[1] - 2000.0) / 2000;
  EXPECT_NEAR(report.sample_ratio->chi_square, chi_square, 1e-9);
  EXPECT_FALSE(report.sample_ratio->mismatch);
  EXPECT_EQ(report.arms[0].units, observed[0]);
}

TEST(ExperimentReportTest, AaTestsRejectAtAboutTheNominalRate) {
  constexpr int kSeeds = 200;
  constexpr int64_t kUnits = 2000;
  int rejections = 0;
  for (int seed = 0; seed < kSeeds; ++seed) {
    ExperimentDefinition d = Definition("aa", "rank", {1, 1});
    d.arms[1].name = "treatment";
    d.salt = std::to_string(seed);
    d.layer_offset = 0;
    std::vector<std::string> lines = {ExperimentRecord(d, kT0)};
    std::mt19937_64 rng(seed);
    for (int64_t i = 0; i < kUnits; ++i) {
      const std::string unit = UnitId(i);
      const std::string request = absl::StrCat("r", i);
      lines.push_back(ExposureRecord(MakeExposure(
          kT0 + i, request, "aa", d.arms[ArmOf(d, unit)].name, unit)));
      // Uniform in [0, 1) from the top 53 bits.
      if (static_cast<double>(rng() >> 11) * 0x1.0p-53 < 0.1) {
        lines.push_back(EventRecord(
            RequestEvent(kT0 + i + 1, EventKind::kClick, 1, request)));
      }
    }
    const std::string dir = FreshDir(std::to_string(seed));
    WriteLog(dir, lines);
    const ExperimentReport report = Report({dir}, "aa");
    std::filesystem::remove_all(dir);
    ASSERT_EQ(report.comparisons.size(), 1u);
    ASSERT_TRUE(report.comparisons[0].rates[0].has_value()) << seed;
    rejections += report.comparisons[0].rates[0]->p_value < 0.05;
  }
  RecordProperty("rejections", rejections);
  // Binomial(200, 0.05): mean 10, standard deviation 3.08.
  const double sd = std::sqrt(0.05 * 0.95 / kSeeds);
  EXPECT_LT(rejections / static_cast<double>(kSeeds), 0.05 + 3 * sd);
  EXPECT_GT(rejections / static_cast<double>(kSeeds), 0.05 - 3 * sd);
}

// ---- The lift chart. ----

// Whether every tag of `xml` is closed in order (no attribute holds '<' or
// '>' in the chart).
bool TagsBalance(const std::string& xml) {
  std::vector<std::string> open;
  size_t at = 0;
  while ((at = xml.find('<', at)) != std::string::npos) {
    const size_t end = xml.find('>', at);
    if (end == std::string::npos) return false;
    const std::string tag = xml.substr(at + 1, end - at - 1);
    at = end + 1;
    if (tag.empty()) return false;
    if (tag.back() == '/') continue;  // self-closing
    const std::string name =
        tag.substr(tag[0] == '/' ? 1 : 0,
                   tag.find_first_of(" \n") - (tag[0] == '/' ? 1 : 0));
    if (tag[0] != '/') {
      open.push_back(name);
    } else {
      if (open.empty() || open.back() != name) return false;
      open.pop_back();
    }
  }
  return open.empty();
}

// The point lists of the chart's polylines, in order.
std::vector<std::vector<std::string>> Polylines(const std::string& svg) {
  std::vector<std::vector<std::string>> lines;
  const std::string marker = "<polyline points=\"";
  size_t at = 0;
  while ((at = svg.find(marker, at)) != std::string::npos) {
    at += marker.size();
    const std::string points = svg.substr(at, svg.find('"', at) - at);
    std::vector<std::string> parts =
        absl::StrSplit(points, ' ', absl::SkipEmpty());
    lines.push_back(std::move(parts));
  }
  return lines;
}

TEST(ExperimentReportTest, LiftSvgDrawsEveryDefinedPointOfEachTreatment) {
  // Three arms over ten hours; the control's first click comes late, so the
  // early curve points are undefined.
  ExperimentDefinition d = Definition("chart", "rank", {1, 1, 1});
  d.layer_offset = 0;
  std::vector<std::string> lines = {ExperimentRecord(d, kT0)};
  int64_t clicked[3] = {0, 0, 0};
  for (int i = 0; i < 300; ++i) {
    for (int arm = 0; arm < 3; ++arm) {
      const std::string unit = absl::StrCat(arm, "-", i);
      const std::string request = absl::StrCat("r", unit);
      const int64_t t = kT0 + (120 * i + 20 * arm) * kSecondUs;
      lines.push_back(ExposureRecord(
          MakeExposure(t, request, "chart", d.arms[arm].name, unit)));
      const bool clicks = arm == 0   ? i >= 150 && i % 5 == 0
                          : arm == 1 ? i % 8 == 0
                                     : i % 6 == 0;
      if (clicks) {
        lines.push_back(EventRecord(
            RequestEvent(t + 60 * kSecondUs, EventKind::kClick, 1, request)));
        ++clicked[arm];
      }
    }
  }
  const std::string dir = FreshDir();
  WriteLog(dir, lines);
  const ExperimentReport report = Report({dir}, "chart");
  ASSERT_EQ(report.lift_curves.size(), 2u);

  const std::string svg = report.LiftSvg();
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  const size_t close = svg.rfind("</svg>");
  ASSERT_NE(close, std::string::npos);
  EXPECT_EQ(svg.find_first_not_of(" \n", close + 6), std::string::npos);
  EXPECT_TRUE(TagsBalance(svg));

  const std::vector<std::vector<std::string>> polylines = Polylines(svg);
  ASSERT_EQ(polylines.size(), 2u);
  const double pc = clicked[0] / 300.0;
  for (size_t c = 0; c < 2; ++c) {
    const std::vector<LiftPoint>& curve = report.lift_curves[c];
    ASSERT_EQ(static_cast<int64_t>(curve.size()), 40);
    int64_t defined = 0;
    for (const LiftPoint& p : curve) defined += p.defined;
    EXPECT_GT(defined, 0);
    EXPECT_LT(defined, 40) << "the early points lack a control click";
    EXPECT_EQ(static_cast<int64_t>(polylines[c].size()), defined);

    // The last point covers every unit: the final comparison's lift.
    ASSERT_TRUE(curve.back().defined);
    ASSERT_TRUE(report.comparisons[c].rates[0].has_value());
    EXPECT_DOUBLE_EQ(curve.back().lift, report.comparisons[c].rates[0]->lift);
    const double pt = clicked[c + 1] / 300.0;
    EXPECT_NEAR(curve.back().lift, (pt - pc) / pc, 1e-12);
  }
}

}  // namespace
}  // namespace optrec
