// Tests of the shop world: the hand-written random streams, determinism of
// the generated files, the choice model, the time splits (no example sees
// its future), the direct task, the corpus (train period only), the text
// conventions, and bad output paths and corrupt files. A tiny world (300
// items, 200 users, 60 days) is generated once for the whole suite.
#include "tuning/world/world.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"
#include "tuning/world/datasets.h"
#include "tuning/world/generate.h"
#include "tuning/world/jsonl.h"
#include "tuning/world/lexicon.h"
#include "tuning/world/rng.h"
#include "tuning/world/simulate.h"

namespace optrec {
namespace {

namespace fs = std::filesystem;
using ::nlohmann::json;

WorldConfig TinyConfig(uint64_t seed) {
  WorldConfig config;
  config.seed = seed;
  config.items = 300;
  config.users = 200;
  config.days = 60;
  config.ctr_sample_rate = 1.0;
  config.direct_user_fraction = 1.0;
  return config;
}

// A fresh directory under the gtest temporary folder, removed at the end.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& stem) {
    path_ = fs::path(testing::TempDir()) /
            ("optrec_world_" + stem + "_" + std::to_string(::getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  fs::path path() const { return path_; }

 private:
  fs::path path_;
};

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// Every regular file under `root`, by relative path, with its bytes.
std::map<std::string, std::string> ReadTree(const fs::path& root) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    if (entry.is_regular_file()) {
      files[fs::relative(entry.path(), root).string()] = ReadFile(entry.path());
    }
  }
  return files;
}

std::vector<json> MustRead(const fs::path& path) {
  auto lines = ReadJsonl(path.string());
  EXPECT_TRUE(lines.ok()) << lines.status();
  return lines.ok() ? *lines : std::vector<json>{};
}

// One behaviour of a user as the files tell it: time and segment text.
struct Behaviour {
  int64_t time_s;
  std::string text;
};

class WorldTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir("suite");
    dir_ = new fs::path(scratch_->path() / "world");
    GenerateOptions options;
    absl::Status status = GenerateWorld(TinyConfig(7), dir_->string(), options);
    ASSERT_TRUE(status.ok()) << status;
    manifest_ = new json(json::parse(ReadFile(*dir_ / "world.json")));
    world_ = new ShopWorld(*ShopWorld::Build(TinyConfig(7)));
    LoadBehaviours();
  }
  static void TearDownTestSuite() {
    delete behaviours_;
    delete world_;
    delete manifest_;
    delete dir_;
    delete scratch_;
  }

  // Rebuilds every user's behaviour segments from events.jsonl,
  // reviews.jsonl and the catalog titles, in time order.
  static void LoadBehaviours() {
    std::map<std::string, std::string> titles;
    for (const json& item : MustRead(*dir_ / "catalog.jsonl")) {
      titles[item["item_id"]] = item["title"];
    }
    behaviours_ = new std::map<std::string, std::vector<Behaviour>>();
    for (const json& e : MustRead(*dir_ / "events.jsonl")) {
      const std::string type = e["type"];
      std::string text;
      if (type == "click") text = "Clicked: " + titles[e["item_id"]];
      if (type == "purchase") text = "Purchased: " + titles[e["item_id"]];
      if (type == "search") text = "Searched: " + e["query"].get<std::string>();
      if (type == "impression") text = "";  // kept for time order checks
      (*behaviours_)[e["user_id"]].push_back({e["time"].get<int64_t>(), text});
    }
    for (const json& r : MustRead(*dir_ / "reviews.jsonl")) {
      (*behaviours_)[r["user_id"]].push_back(
          {r["time"].get<int64_t>(),
           "Reviewed: " + titles[r["item_id"]] + ", " +
               std::to_string(r["rating"].get<int>()) + " stars"});
    }
    for (auto& [user, list] : *behaviours_) {
      std::stable_sort(list.begin(), list.end(),
                       [](const Behaviour& a, const Behaviour& b) {
                         return a.time_s < b.time_s;
                       });
    }
  }

  static std::vector<json> TaskLines(const std::string& task,
                                     const std::string& split) {
    return MustRead(*dir_ / "tasks" / task / (split + ".jsonl"));
  }

  static int64_t TrainEnd() {
    return (*manifest_)["time_cuts"]["train_end_s"].get<int64_t>();
  }

  static ScratchDir* scratch_;
  static fs::path* dir_;
  static json* manifest_;
  static ShopWorld* world_;
  static std::map<std::string, std::vector<Behaviour>>* behaviours_;
};

ScratchDir* WorldTest::scratch_ = nullptr;
fs::path* WorldTest::dir_ = nullptr;
json* WorldTest::manifest_ = nullptr;
ShopWorld* WorldTest::world_ = nullptr;
std::map<std::string, std::vector<Behaviour>>* WorldTest::behaviours_ = nullptr;

const std::vector<std::string> kTasks = {
    "ctr",        "next_click",     "explanation",
    "query_gen",  "product_design", "rating",
    "sequential", "p5_explanation", "review_summary",
    "direct"};
const std::vector<std::string> kSplits = {"train", "valid", "test"};

// ---- Random streams. ----

TEST(RngTest, SplitMixMatchesThePublishedSequence) {
  // The reference SplitMix64 from state 0 starts with these outputs.
  uint64_t state = 0;
  EXPECT_EQ(SplitMix64(state), 0xe220a8397b1dcdafULL);
  EXPECT_EQ(SplitMix64(state), 0x6e789e6aa1b965f4ULL);
}

TEST(RngTest, SameStreamGivesSameDrawsAndStreamsDiffer) {
  Rng a(5, StreamKind::kUser, 3), b(5, StreamKind::kUser, 3);
  Rng c(5, StreamKind::kUser, 4), d(5, StreamKind::kItem, 3);
  const uint64_t first = a.Next();
  EXPECT_EQ(first, b.Next());
  EXPECT_NE(first, c.Next());
  EXPECT_NE(first, d.Next());
}

TEST(RngTest, DistributionsHaveTheirMoments) {
  Rng rng(11);
  const int n = 200000;
  double uniform = 0, normal = 0, normal_sq = 0, gamma = 0, small_gamma = 0,
         poisson = 0;
  for (int i = 0; i < n; ++i) {
    const double u = rng.Uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    uniform += u;
    const double z = rng.Normal();
    normal += z;
    normal_sq += z * z;
    gamma += rng.Gamma(2.5);
    small_gamma += rng.Gamma(0.4);
    poisson += rng.Poisson(3.0);
  }
  EXPECT_NEAR(uniform / n, 0.5, 0.005);
  EXPECT_NEAR(normal / n, 0.0, 0.01);
  EXPECT_NEAR(normal_sq / n, 1.0, 0.02);
  EXPECT_NEAR(gamma / n, 2.5, 0.03);
  EXPECT_NEAR(small_gamma / n, 0.4, 0.01);
  EXPECT_NEAR(poisson / n, 3.0, 0.03);

  const std::vector<double> weights = {1, 0, 3};
  int counts[3] = {0, 0, 0};
  for (int i = 0; i < 40000; ++i) ++counts[rng.Categorical(weights)];
  EXPECT_EQ(counts[1], 0);
  EXPECT_NEAR(counts[2] / 40000.0, 0.75, 0.01);
  const std::vector<double> dirichlet = rng.Dirichlet({0.5, 0.5, 0.5, 0.5});
  double total = 0;
  for (double w : dirichlet) total += w;
  EXPECT_NEAR(total, 1.0, 1e-12);
}

// ---- Determinism. ----

TEST_F(WorldTest, SameSeedGivesByteIdenticalFilesOnAnyThreadCount) {
  ScratchDir again("again");
  GenerateOptions one_thread;
  one_thread.threads = 1;
  ASSERT_TRUE(
      GenerateWorld(TinyConfig(7), (again.path() / "w").string(), one_thread)
          .ok());
  const auto expected = ReadTree(*dir_);
  const auto actual = ReadTree(again.path() / "w");
  ASSERT_EQ(expected.size(), actual.size());
  EXPECT_EQ(expected.size(), 6u + 3u * kTasks.size() + 2u + 1u);
  for (const auto& [name, bytes] : expected) {
    ASSERT_TRUE(actual.count(name)) << name;
    EXPECT_TRUE(actual.at(name) == bytes) << name << " differs";
  }
}

TEST_F(WorldTest, AnotherSeedGivesAnotherWorld) {
  ScratchDir other("other");
  ASSERT_TRUE(
      GenerateWorld(TinyConfig(8), (other.path() / "w").string(), {}).ok());
  for (const char* name : {"catalog.jsonl", "users.jsonl", "events.jsonl"}) {
    EXPECT_NE(ReadFile(*dir_ / name), ReadFile(other.path() / "w" / name))
        << name;
  }
}

TEST_F(WorldTest, ManifestHashesAndCountsMatchTheFiles) {
  const json& files = (*manifest_)["files"];
  for (const auto& [name, bytes] : ReadTree(*dir_)) {
    if (name == "world.json") continue;
    ASSERT_TRUE(files.contains(name)) << name;
    EXPECT_EQ(files[name]["bytes"].get<uint64_t>(), bytes.size()) << name;
    EXPECT_EQ(files[name]["xxh3_64"].get<std::string>().size(), 16u);
  }
  for (const std::string& task : kTasks) {
    for (const std::string& split : kSplits) {
      EXPECT_EQ((*manifest_)["counts"]["examples"][task][split].get<size_t>(),
                TaskLines(task, split).size())
          << task << "/" << split;
    }
  }
  EXPECT_EQ((*manifest_)["counts"]["items"], 300);
  EXPECT_EQ((*manifest_)["counts"]["users"], 200);
}

// ---- The choice model. ----

TEST_F(WorldTest, ClickProbabilityIsHigherInTheTopInterestLeaf) {
  double top_sum = 0, zero_sum = 0;
  int top_n = 0, zero_n = 0;
  for (int64_t u = 0; u < world_->num_users(); ++u) {
    const User& user = world_->user(u);
    const auto top = *std::max_element(
        user.interests.begin(), user.interests.end(),
        [](const auto& a, const auto& b) { return a.second < b.second; });
    for (int64_t i = 0; i < world_->num_items(); ++i) {
      const Item& item = world_->item(i);
      const double p = world_->ClickProbability(user, {}, item, 1000);
      ASSERT_GT(p, 0.0);
      ASSERT_LT(p, 1.0);
      const bool zero_interest =
          std::none_of(user.interests.begin(), user.interests.end(),
                       [&](const auto& w) { return w.first == item.leaf; });
      if (item.leaf == top.first) {
        top_sum += p;
        ++top_n;
      } else if (zero_interest) {
        zero_sum += p;
        ++zero_n;
      }
    }
  }
  ASSERT_GT(top_n, 100);
  ASSERT_GT(zero_n, 100);
  EXPECT_GT(top_sum / top_n, 2.0 * zero_sum / zero_n);
}

TEST_F(WorldTest, ClickProbabilityRespondsToHistory) {
  // An item of a category that is not bought repeatedly (Sports).
  int64_t index = -1;
  for (int64_t i = 0; i < world_->num_items() && index < 0; ++i) {
    if (!Categories()[world_->leaves()[world_->item(i).leaf].top]
             .repeat_purchase) {
      index = i;
    }
  }
  ASSERT_GE(index, 0);
  const Item& item = world_->item(index);
  const User& user = world_->user(0);
  const int64_t now = 10 * kSecondsPerDay;
  Event click;
  click.type = EventType::kClick;
  click.item = static_cast<int32_t>(index);
  click.time_s = now - 600;
  Event purchase = click;
  purchase.type = EventType::kPurchase;
  purchase.time_s = now - 300;
  const std::vector<Event> clicked = {click};
  const std::vector<Event> bought = {click, purchase};

  const double fresh = world_->ClickProbability(user, {}, item, now);
  EXPECT_GT(world_->ClickProbability(user, clicked, item, now), fresh);
  EXPECT_LT(world_->ClickProbability(user, bought, item, now),
            world_->ClickProbability(user, clicked, item, now));
  // Old history (beyond the 30-day window) no longer matters.
  EXPECT_DOUBLE_EQ(
      world_->ClickProbability(user, clicked, item, now + 40 * kSecondsPerDay),
      world_->ClickProbability(user, {}, item, now + 40 * kSecondsPerDay));
}

TEST_F(WorldTest, OracleAucAndClickRateAreInSaneRanges) {
  auto auc = OracleAuc((*dir_ / "tasks/ctr/test.jsonl").string());
  ASSERT_TRUE(auc.ok()) << auc.status();
  EXPECT_GT(*auc, 0.6);
  EXPECT_LT(*auc, 0.97);
  const double ctr = (*manifest_)["counts"]["impression_ctr"].get<double>();
  EXPECT_GT(ctr, 0.03);
  EXPECT_LT(ctr, 0.25);
}

// ---- Time splits. ----

TEST_F(WorldTest, EventTimesStrictlyIncreasePerUser) {
  for (const auto& [user, list] : *behaviours_) {
    for (size_t i = 1; i < list.size(); ++i) {
      ASSERT_LT(list[i - 1].time_s, list[i].time_s) << user;
    }
  }
}

TEST_F(WorldTest, EveryExampleSeesOnlyItsPast) {
  const int64_t train_end = TrainEnd();
  const int64_t valid_end =
      (*manifest_)["time_cuts"]["valid_end_s"].get<int64_t>();
  int64_t checked = 0;
  for (const std::string& task : kTasks) {
    std::map<std::string, int64_t> last_train;  // per user
    std::map<std::string, int64_t> first_later;
    for (const std::string& split : kSplits) {
      for (const json& ex : TaskLines(task, split)) {
        const std::string user = ex["user_id"];
        const int64_t time = ex["time"];
        if (split == "train") {
          ASSERT_LT(time, train_end);
          last_train[user] = std::max(last_train[user], time);
        } else {
          ASSERT_GE(time, train_end);
          if (split == "valid") {
            ASSERT_LT(time, valid_end);
          } else {
            ASSERT_GE(time, valid_end);
          }
          auto [it, fresh] = first_later.emplace(user, time);
          if (!fresh) it->second = std::min(it->second, time);
        }
        // The history is exactly the last <= 20 behaviours before `time`.
        std::vector<std::string> expected;
        for (const Behaviour& b : behaviours_->at(user)) {
          if (b.time_s < time && !b.text.empty()) expected.push_back(b.text);
        }
        if (expected.size() > kHistorySegments) {
          expected.erase(expected.begin(), expected.end() - kHistorySegments);
        }
        ASSERT_EQ(ex["segments"]["history"].get<std::vector<std::string>>(),
                  expected)
            << task << "/" << split << " " << user << " at " << time;
        ++checked;
      }
    }
    for (const auto& [user, later] : first_later) {
      if (last_train.count(user)) {
        ASSERT_LT(last_train[user], later) << user;
      }
    }
  }
  EXPECT_GT(checked, 1000);
}

// ---- The direct task. ----

TEST_F(WorldTest, DirectExamplesHaveOnePositiveAndUntouchedNegatives) {
  std::map<std::string, std::set<std::string>> touched;
  for (const json& e : MustRead(*dir_ / "events.jsonl")) {
    if (e.contains("item_id")) touched[e["user_id"]].insert(e["item_id"]);
  }
  std::map<std::string, std::string> texts;
  for (const json& item : MustRead(*dir_ / "catalog.jsonl")) {
    texts[item["item_id"]] = item["text"];
  }
  int64_t examples = 0;
  for (const std::string& split : kSplits) {
    for (const json& ex : TaskLines("direct", split)) {
      const auto candidates =
          ex["segments"]["candidates"].get<std::vector<std::string>>();
      const auto ids = ex["candidate_item_ids"].get<std::vector<std::string>>();
      const auto labels = ex["labels"].get<std::vector<int>>();
      const int positive = ex["positive_index"];
      ASSERT_EQ(candidates.size(), 100u);
      ASSERT_EQ(ids.size(), 100u);
      ASSERT_EQ(labels.size(), 100u);
      EXPECT_EQ(std::count(labels.begin(), labels.end(), 1), 1);
      EXPECT_EQ(labels[positive], 1);
      EXPECT_EQ(ids[positive], ex["target_item_id"]);
      EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 100u);
      const std::set<std::string>& seen = touched[ex["user_id"]];
      for (size_t k = 0; k < ids.size(); ++k) {
        EXPECT_EQ(candidates[k], texts[ids[k]]);
        if (static_cast<int>(k) != positive) {
          EXPECT_EQ(seen.count(ids[k]), 0u) << ids[k] << " was interacted with";
        }
      }
      ++examples;
    }
  }
  EXPECT_GT(examples, 50);
}

// ---- The corpus. ----

TEST_F(WorldTest, CorpusHoldsOnlyTrainPeriodBehaviour) {
  const int64_t train_end = TrainEnd();
  std::set<std::string> train_segments, later_only;
  for (const auto& [user, list] : *behaviours_) {
    for (const Behaviour& b : list) {
      if (b.text.empty()) continue;
      (b.time_s < train_end ? train_segments : later_only).insert(b.text);
    }
  }
  for (const std::string& s : train_segments) later_only.erase(s);
  ASSERT_FALSE(later_only.empty());  // the check below can fail

  int64_t behaviour_docs = 0;
  for (const char* split : {"train.jsonl", "valid.jsonl"}) {
    for (const json& doc : MustRead(*dir_ / "corpus" / split)) {
      const std::string text = doc["text"];
      for (const std::string& s : later_only) {
        ASSERT_EQ(text.find(s), std::string::npos) << s << " in: " << text;
      }
      if (text.rfind("Shopper aged ", 0) != 0) continue;
      // A behaviour document: the profile, then train-period segments.
      ++behaviour_docs;
      ASSERT_EQ(text.back(), '.');
      const std::string body = text.substr(0, text.size() - 1);
      size_t start = body.find(". ") + 2;
      while (start < body.size()) {
        size_t end = body.find(". ", start);
        if (end == std::string::npos) end = body.size();
        const std::string segment = body.substr(start, end - start);
        ASSERT_TRUE(train_segments.count(segment)) << segment;
        start = end + 2;
      }
    }
  }
  EXPECT_GT(behaviour_docs, 100);
}

// ---- Text conventions. ----

TEST_F(WorldTest, TextSegmentsFollowTheConventions) {
  const std::regex item_re(
      R"(^[A-Z][^|]+ \| [A-Z][^>|]+ > [A-Z][^>|]+ > [a-z][^>|]+ \| )"
      R"((budget|mid-range|premium|luxury)$)");
  const std::regex profile_re(
      R"(^Shopper aged (18-24|25-34|35-44|45-54|55-64|65\+) from the )"
      R"([A-Z][a-z]+, member for [0-9]+ months?$)");
  for (int64_t i = 0; i < world_->num_items(); ++i) {
    const Item& item = world_->item(i);
    const std::string text = world_->ItemText(item);
    ASSERT_TRUE(std::regex_match(text, item_re)) << text;
    EXPECT_EQ(text.rfind(world_->ItemTitle(item) + " | ", 0), 0u);
  }
  for (int64_t u = 0; u < world_->num_users(); ++u) {
    const std::string text = world_->ProfileText(world_->user(u));
    ASSERT_TRUE(std::regex_match(text, profile_re)) << text;
  }
  Item item = world_->item(0);
  Event e;
  e.item = 0;
  e.type = EventType::kClick;
  EXPECT_EQ(world_->BehaviourText(e), "Clicked: " + world_->ItemTitle(item));
  e.type = EventType::kPurchase;
  EXPECT_EQ(world_->BehaviourText(e), "Purchased: " + world_->ItemTitle(item));
  e.type = EventType::kReview;
  e.rating = 4;
  EXPECT_EQ(world_->BehaviourText(e),
            "Reviewed: " + world_->ItemTitle(item) + ", 4 stars");
  e.type = EventType::kImpression;
  EXPECT_EQ(world_->BehaviourText(e), "");
  e.type = EventType::kSearch;
  e.item = -1;
  e.query = "red kite";
  EXPECT_EQ(world_->BehaviourText(e), "Searched: red kite");

  // Explanations and review-derived targets.
  for (const json& ex : TaskLines("explanation", "train")) {
    EXPECT_EQ(ex["target"].get<std::string>().rfind("I bought it because ", 0),
              0u);
  }
  for (const json& ex : TaskLines("rating", "train")) {
    EXPECT_GE(ex["target"].get<int>(), 1);
    EXPECT_LE(ex["target"].get<int>(), 5);
  }
  for (const json& ex : TaskLines("product_design", "train")) {
    EXPECT_EQ(ex["target"].get<std::string>().rfind("Category: ", 0), 0u);
  }

  // A purchase follows a click on the same item; the purchase examples'
  // history stops before that click, so its last segment does not name the
  // answer. (It may, rarely, when the shopper clicked the item twice in a
  // row.)
  int named = 0, total = 0;
  for (const json& ex : TaskLines("sequential", "train")) {
    const json& history = ex["segments"]["history"];
    ++total;
    if (!history.empty() &&
        history.back() == "Clicked: " + ex["target"].get<std::string>()) {
      ++named;
    }
  }
  ASSERT_GT(total, 20);
  EXPECT_LT(named, total / 20) << named << " of " << total;
}

// ---- Bad input. ----

TEST(WorldOutputTest, MissingParentIsNamedAndNothingIsLeft) {
  ScratchDir scratch("missing");
  const fs::path out = scratch.path() / "no" / "such" / "world";
  absl::Status status = GenerateWorld(TinyConfig(1), out.string(), {});
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(status.message().find(out.string()), std::string::npos) << status;
  EXPECT_FALSE(fs::exists(scratch.path() / "no"));
}

TEST(WorldOutputTest, ParentThatIsAFileIsRefused) {
  ScratchDir scratch("file_parent");
  std::ofstream(scratch.path() / "plain") << "x";
  const fs::path out = scratch.path() / "plain" / "world";
  absl::Status status = GenerateWorld(TinyConfig(1), out.string(), {});
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find(out.string()), std::string::npos) << status;
}

TEST(WorldOutputTest, NonEmptyDirectoryNeedsForceAndIsReplacedWhole) {
  ScratchDir scratch("force");
  const fs::path out = scratch.path() / "world";
  fs::create_directories(out);
  std::ofstream(out / "keep.txt") << "old";
  absl::Status refused = GenerateWorld(TinyConfig(1), out.string(), {});
  EXPECT_EQ(refused.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(refused.message().find("--force"), std::string::npos);
  EXPECT_TRUE(fs::exists(out / "keep.txt"));

  GenerateOptions force;
  force.force = true;
  ASSERT_TRUE(GenerateWorld(TinyConfig(1), out.string(), force).ok());
  EXPECT_FALSE(fs::exists(out / "keep.txt"));
  EXPECT_TRUE(fs::exists(out / "world.json"));
  // Only the world is left: no temporary or old siblings.
  int entries = 0;
  for (const auto& entry : fs::directory_iterator(scratch.path())) {
    (void)entry;
    ++entries;
  }
  EXPECT_EQ(entries, 1);
}

TEST(WorldOutputTest, BadConfigNamesTheField) {
  ScratchDir scratch("config");
  WorldConfig config = TinyConfig(1);
  config.items = 10;
  absl::Status status =
      GenerateWorld(config, (scratch.path() / "w").string(), {});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("items"), std::string::npos);
  EXPECT_FALSE(fs::exists(scratch.path() / "w"));
}

TEST(JsonlTest, CorruptLineIsNamedByFileAndLine) {
  ScratchDir scratch("jsonl");
  const fs::path path = scratch.path() / "bad.jsonl";
  std::ofstream(path) << "{\"a\": 1}\n\n{\"b\": \n";
  auto lines = ReadJsonl(path.string());
  ASSERT_FALSE(lines.ok());
  EXPECT_EQ(lines.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(lines.status().message().find(path.string() + ":3"),
            std::string::npos)
      << lines.status();

  auto missing = ReadJsonl((scratch.path() / "none.jsonl").string());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);

  const fs::path ctr = scratch.path() / "ctr.jsonl";
  std::ofstream(ctr) << "{\"p_click\": 0.5, \"label\": 1}\n{\"label\": 0}\n";
  auto auc = OracleAuc(ctr.string());
  ASSERT_FALSE(auc.ok());
  EXPECT_NE(auc.status().message().find(ctr.string() + ":2"), std::string::npos)
      << auc.status();
}

TEST(JsonlTest, WrittenStringsRoundTrip) {
  JsonObject object;
  object.Str("text", "quote \" slash \\ tab \t line\n bell \x07")
      .Int("n", -3)
      .Num("x", 0.1234567);
  const json parsed = json::parse(object.Build());
  EXPECT_EQ(parsed["text"], "quote \" slash \\ tab \t line\n bell \x07");
  EXPECT_EQ(parsed["n"], -3);
  EXPECT_EQ(object.Build().find("0.123457") != std::string::npos, true);
}

}  // namespace
}  // namespace optrec
