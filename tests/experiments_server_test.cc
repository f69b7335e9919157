// A/B experiments in a running server: requests naming a unit are served
// by the unit's arm and logged as exposures, feedback reaches the log, the
// admin service defines and moves experiments, the state survives a
// restart, and concurrent traffic leaves every exposure in the log once.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "server/experiments/records.h"
#include "server/experiments/report.h"
#include "server/rpc/server.h"
#include "tests/testlib/tiny_models.h"
#include "tests/testlib/tuning_fixture.h"

namespace optrec {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

v1::ScoreRequest ScoreFor(const std::string& unit,
                          const std::string& version = "") {
  v1::ScoreRequest r;
  r.set_task("ctr");
  r.set_version(version);
  r.set_unit_id(unit);
  (*r.mutable_context())["profile"].set_text("Shopper aged 25-34");
  (*r.mutable_context())["history"].mutable_list()->add_items(
      "Clicked: Northpeak trail running shoes, red");
  for (int i = 0; i < 2; ++i) {
    v1::Candidate* c = r.add_candidates();
    c->set_id(absl::StrCat("item", i));
    (*c->mutable_fields())["candidate"].set_text(
        absl::StrCat("Velocia running socks, size ", i));
  }
  return r;
}

// The config's experiment: half of the units, v1 against v2.
ExperimentDefinition HalfAb() {
  ExperimentDefinition d;
  d.name = "ctr-ab";
  d.task = "ctr";
  d.traffic = 0.5;
  d.arms = {{"control", "v1", 1}, {"treatment", "v2", 1}};
  d.state = ExperimentState::kRunning;
  return d;
}

// Every record of the experiment log under `dir`, by type.
struct LogContents {
  std::vector<Exposure> exposures;
  std::vector<FeedbackEvent> events;
  std::vector<ExperimentDefinition> definitions;
  int64_t torn = 0;
};

LogContents ReadAll(const std::string& dir) {
  LogContents out;
  auto read = ReadLog(dir + "/log", kExperimentLogPrefix,
                      [&](const Json& j) -> absl::Status {
                        auto r = ParseLogRecord(j);
                        if (!r.ok()) return r.status();
                        if (r->exposure) out.exposures.push_back(*r->exposure);
                        if (r->event) out.events.push_back(*r->event);
                        if (r->experiment) {
                          out.definitions.push_back(*r->experiment);
                        }
                        return absl::OkStatus();
                      });
  EXPECT_TRUE(read.ok()) << read.status();
  if (read.ok()) out.torn = read->torn_lines;
  return out;
}

class ExperimentsServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    modules_ =
        new std::vector<std::string>{WriteRandomModule("score", "v1", 1),
                                     WriteRandomModule("score", "v2", 2)};
  }

  void SetUp() override {
    dir_ = MakeTempDir("experiments");
    options_.listen = "127.0.0.1:0";
    options_.model_dir = SharedTuningFixture().model;
    options_.modules = *modules_;
    options_.scheduler.max_queue_delay_us = 500;
    options_.experiments.dir = dir_;
    options_.experiments.definitions = {HalfAb()};
    options_.experiments.flush_interval_us = 1000;
    Start();
  }

  void Start() {
    auto s = Server::Start(options_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    auto channel =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                            grpc::InsecureChannelCredentials());
    recommender_ = v1::Recommender::NewStub(channel);
    admin_ = v1::Experiments::NewStub(channel);
  }

  v1::ScoreResponse Score(const v1::ScoreRequest& r) {
    grpc::ClientContext context;
    v1::ScoreResponse out;
    grpc::Status s = recommender_->Score(&context, r, &out);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return out;
  }

  // Units 0..n-1 that the config's experiment enrolls.
  std::vector<std::string> EnrolledUnits(int n) {
    std::vector<std::string> units;
    const ExperimentDefinition d =
        *server_->experimentation()->set().Get("ctr-ab");
    for (int i = 0; units.size() < static_cast<size_t>(n); ++i) {
      const std::string unit = absl::StrCat("user", i);
      if (Enrolled(d, "user", unit)) units.push_back(unit);
    }
    return units;
  }

  static std::vector<std::string>* modules_;
  std::string dir_;
  ServeOptions options_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<v1::Recommender::Stub> recommender_;
  std::unique_ptr<v1::Experiments::Stub> admin_;
};

std::vector<std::string>* ExperimentsServerTest::modules_ = nullptr;

TEST_F(ExperimentsServerTest, UnitIsServedByItsArmAndEveryExposureLogged) {
  const ExperimentDefinition d =
      *server_->experimentation()->set().Get("ctr-ab");
  EXPECT_EQ(d.layer_offset, 0);  // placed when the config defined it
  std::map<std::string, std::string> arm_of_request;
  int in_experiment = 0;
  for (int i = 0; i < 60; ++i) {
    const std::string unit = absl::StrCat("user", i);
    const v1::ScoreResponse r = Score(ScoreFor(unit));
    ASSERT_FALSE(r.request_id().empty());
    ASSERT_EQ(r.scores_size(), 2);
    if (!Enrolled(d, "user", unit)) {
      EXPECT_FALSE(r.has_experiment()) << unit;
      EXPECT_EQ(r.version(), "v1");  // the task's default
      continue;
    }
    ++in_experiment;
    const ExperimentArm& arm = d.arms[ArmOf(d, unit)];
    EXPECT_EQ(r.experiment().experiment(), "ctr-ab");
    EXPECT_EQ(r.experiment().arm(), arm.name) << unit;
    EXPECT_EQ(r.version(), arm.version) << unit;
    arm_of_request[r.request_id()] = arm.name;
  }
  EXPECT_GT(in_experiment, 15);
  EXPECT_LT(in_experiment, 45);
  server_->Shutdown();

  const LogContents log = ReadAll(dir_);
  ASSERT_EQ(log.exposures.size(), arm_of_request.size());
  for (const Exposure& e : log.exposures) {
    ASSERT_EQ(arm_of_request.count(e.request_id), 1u) << e.request_id;
    EXPECT_EQ(e.arm, arm_of_request[e.request_id]);
    EXPECT_EQ(e.task, "ctr");
    EXPECT_EQ(e.unit_type, "user");
  }
  ASSERT_FALSE(log.definitions.empty());
  EXPECT_EQ(log.definitions[0].name, "ctr-ab");
}

TEST_F(ExperimentsServerTest, ExplicitVersionOrNoUnitBypassesExperiments) {
  const std::string unit = EnrolledUnits(1)[0];
  v1::ScoreRequest pinned = ScoreFor(unit, "v2");
  pinned.set_request_id("my-request");
  const v1::ScoreResponse a = Score(pinned);
  EXPECT_FALSE(a.has_experiment());
  EXPECT_EQ(a.version(), "v2");
  EXPECT_EQ(a.request_id(), "my-request");
  const v1::ScoreResponse b = Score(ScoreFor(""));
  EXPECT_FALSE(b.has_experiment());
  EXPECT_EQ(b.version(), "v1");
  // Another unit type is not this experiment's.
  v1::ScoreRequest session = ScoreFor(unit);
  session.set_unit_type("session");
  EXPECT_FALSE(Score(session).has_experiment());
  server_->Shutdown();
  EXPECT_TRUE(ReadAll(dir_).exposures.empty());
}

TEST_F(ExperimentsServerTest, RecordEventsLogsRejectsAndCountsUnknownRequests) {
  const std::string unit = EnrolledUnits(1)[0];
  const v1::ScoreResponse served = Score(ScoreFor(unit));
  ASSERT_TRUE(served.has_experiment());

  v1::RecordEventsRequest request;
  auto add = [&](const std::string& request_id, const std::string& kind,
                 double value) {
    v1::Event* e = request.add_events();
    e->set_request_id(request_id);
    e->set_kind(kind);
    e->set_value(value);
    return e;
  };
  add(served.request_id(), "click", 0);              // 0: ok
  add("never-served", "purchase", 1);                // 1: unknown
  add(served.request_id(), "like", 1);               // 2: bad kind
  add(served.request_id(), "rating", std::nan(""));  // 3: NaN
  v1::Event* by_unit = add("", "rating", 4);         // 4: by unit
  by_unit->set_unit_id(unit);
  by_unit->set_experiment("ctr-ab");
  v1::Event* no_experiment = add("", "click", 1);  // 5: unknown exp
  no_experiment->set_unit_id(unit);
  no_experiment->set_experiment("nope");
  add("", "click", 1);  // 6: no key
  add(served.request_id(), "click", 1)->set_time_us(int64_t{1} << 62);  // 7

  grpc::ClientContext context;
  v1::RecordEventsResponse response;
  ASSERT_TRUE(recommender_->RecordEvents(&context, request, &response).ok());
  EXPECT_EQ(response.accepted(), 3);
  EXPECT_EQ(response.unknown_requests(), 1);
  std::map<int, std::string> rejected;
  for (const v1::RejectedEvent& r : response.rejected()) {
    rejected[r.index()] = r.error();
  }
  ASSERT_EQ(rejected.size(), 5u);
  EXPECT_THAT(rejected[7], HasSubstr("time_us"));
  EXPECT_THAT(rejected[2], HasSubstr("like"));
  EXPECT_THAT(rejected[3], HasSubstr("value"));
  EXPECT_THAT(rejected[5], HasSubstr("nope"));
  EXPECT_THAT(rejected[6], HasSubstr("request_id"));
  server_->Shutdown();

  const LogContents log = ReadAll(dir_);
  ASSERT_EQ(log.events.size(), 3u);
  EXPECT_EQ(log.events[0].kind, EventKind::kClick);
  EXPECT_EQ(log.events[0].value, 1);  // 0 means one click
  EXPECT_EQ(log.events[2].unit, unit);

  // The report joins the click and the rating to the unit's arm and counts
  // the purchase of a request nobody served.
  ReportOptions report;
  report.experiment = "ctr-ab";
  auto built = BuildExperimentReport({dir_ + "/log"}, report);
  ASSERT_TRUE(built.ok()) << built.status();
  EXPECT_EQ(built->unmatched_events, 1);
  const int arm = served.experiment().arm() == "control" ? 0 : 1;
  EXPECT_EQ(built->arms[arm].units, 1);
  EXPECT_EQ(built->arms[arm].events[0], 1);  // the click
  EXPECT_EQ(built->arms[arm].rating.count, 1);
}

TEST_F(ExperimentsServerTest, AdminServiceRunsAnExperimentsLifecycle) {
  // A second experiment of the task fits in the layer's other half.
  v1::Experiment define;
  define.set_name("ctr-ab2");
  define.set_task("ctr");
  define.set_traffic(0.25);
  define.set_layer_share(0.5);
  for (const char* version : {"v1", "v2"}) {
    v1::ExperimentArm* a = define.add_arms();
    a->set_name(absl::StrCat("arm-", version));
    a->set_version(version);
  }
  v1::Experiment stored;
  {
    grpc::ClientContext c;
    ASSERT_TRUE(admin_->DefineExperiment(&c, define, &stored).ok());
  }
  EXPECT_EQ(stored.layer_offset(), 5000);
  EXPECT_EQ(stored.state(), "draft");
  EXPECT_EQ(stored.unit_type(), "user");
  {  // No room for a third.
    grpc::ClientContext c;
    v1::Experiment third = define;
    third.set_name("ctr-ab3");
    v1::Experiment out;
    grpc::Status s = admin_->DefineExperiment(&c, third, &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  {  // An arm on a version the server lacks.
    grpc::ClientContext c;
    v1::Experiment bad = define;
    bad.set_name("ctr-bad");
    bad.mutable_arms(1)->set_version("v9");
    v1::Experiment out;
    grpc::Status s = admin_->DefineExperiment(&c, bad, &out);
    EXPECT_THAT(s.error_message(), HasSubstr("arms[1].version"));
  }
  auto change = [&](auto rpc, const std::string& name) {
    grpc::ClientContext c;
    v1::ExperimentRequest r;
    r.set_name(name);
    v1::Experiment out;
    grpc::Status s = ((*admin_).*rpc)(&c, r, &out);
    return std::make_pair(s, out);
  };
  using Stub = v1::Experiments::Stub;
  EXPECT_EQ(change(&Stub::StartExperiment, "ctr-ab2").second.state(),
            "running");

  // A unit of the second experiment's slot is served by it.
  const ExperimentDefinition d2 =
      *server_->experimentation()->set().Get("ctr-ab2");
  std::string unit;
  for (int i = 0; unit.empty(); ++i) {
    if (Enrolled(d2, "user", absl::StrCat("u", i))) unit = absl::StrCat("u", i);
  }
  EXPECT_EQ(Score(ScoreFor(unit)).experiment().experiment(), "ctr-ab2");

  // Paused and stopped experiments leave the unit to the default version.
  EXPECT_EQ(change(&Stub::PauseExperiment, "ctr-ab2").second.state(), "paused");
  EXPECT_FALSE(Score(ScoreFor(unit)).has_experiment());
  EXPECT_EQ(change(&Stub::StartExperiment, "ctr-ab2").second.state(),
            "running");
  EXPECT_EQ(change(&Stub::StopExperiment, "ctr-ab2").second.state(), "stopped");
  const v1::ScoreResponse after = Score(ScoreFor(unit));
  EXPECT_FALSE(after.has_experiment());
  EXPECT_EQ(after.version(), "v1");
  EXPECT_EQ(change(&Stub::StartExperiment, "ctr-ab2").first.error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(change(&Stub::StartExperiment, "missing").first.error_code(),
            grpc::StatusCode::NOT_FOUND);

  {  // Traffic grows within the reserved share only.
    grpc::ClientContext c;
    v1::SetTrafficRequest t;
    t.set_name("ctr-ab");
    t.set_traffic(0.9);
    v1::Experiment out;
    EXPECT_EQ(admin_->SetTraffic(&c, t, &out).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext c;
    v1::ListExperimentsResponse list;
    ASSERT_TRUE(admin_->ListExperiments(&c, {}, &list).ok());
    ASSERT_EQ(list.experiments_size(), 2);
    EXPECT_EQ(list.experiments(0).name(), "ctr-ab");
    EXPECT_EQ(list.experiments(1).state(), "stopped");
  }
  {
    grpc::ClientContext c;
    v1::ExperimentReportRequest r;
    r.set_name("ctr-ab2");
    v1::ExperimentReportResponse report;
    ASSERT_TRUE(admin_->GetReport(&c, r, &report).ok());
    EXPECT_THAT(report.text(), HasSubstr("experiment ctr-ab2"));
    EXPECT_THAT(report.lift_svg(), HasSubstr("<svg"));
    const Json j = Json::parse(report.report_json());
    int64_t exposures = 0;
    for (const Json& arm : j["arms"]) exposures += arm["exposures"].get<int>();
    EXPECT_EQ(exposures, 1);  // only the running experiment's request
  }

  // A restart keeps every definition and state; the config's definition
  // does not override the state file's.
  server_.reset();
  options_.experiments.definitions[0].traffic = 0.1;
  Start();
  auto restored = server_->experimentation()->set().List();
  ASSERT_EQ(restored.size(), 2u);
  EXPECT_EQ(restored[0].traffic, 0.5);
  EXPECT_EQ(restored[1].state, ExperimentState::kStopped);
  EXPECT_EQ(restored[1].layer_offset, 5000);
}

TEST_F(ExperimentsServerTest, OverlongKeysAreRefusedNamingTheField) {
  v1::ScoreRequest r = ScoreFor(std::string(300, 'u'));
  grpc::ClientContext context;
  v1::ScoreResponse out;
  grpc::Status s = recommender_->Score(&context, r, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("unit_id"));
}

TEST_F(ExperimentsServerTest, RetrievalArmsNeedTheirIndex) {
  // Two retrieval versions loaded, neither with an index: an experiment
  // between them could serve none of its requests.
  server_.reset();
  options_.modules.push_back(WriteRandomModule("retrieve", "r1", 3));
  options_.modules.push_back(WriteRandomModule("retrieve", "r2", 4));
  Start();
  v1::Experiment define;
  define.set_name("retrieval");
  define.set_task("next_click");
  define.set_layer("retrieval");
  for (const char* version : {"r1", "r2"}) {
    v1::ExperimentArm* a = define.add_arms();
    a->set_name(version);
    a->set_version(version);
  }
  grpc::ClientContext c;
  v1::Experiment out;
  grpc::Status s = admin_->DefineExperiment(&c, define, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("arms[0].version"));
  EXPECT_THAT(s.error_message(), HasSubstr("no retrieval index"));
}

TEST_F(ExperimentsServerTest, ConcurrentTrafficLogsEveryExposureAndEventOnce) {
  const std::vector<std::string> units = EnrolledUnits(40);
  std::vector<std::thread> threads;
  std::vector<std::vector<std::string>> ids(8);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 15; ++i) {
        const v1::ScoreResponse r = Score(ScoreFor(units[(t * 15 + i) % 40]));
        ids[t].push_back(r.request_id());
        v1::RecordEventsRequest events;
        v1::Event* e = events.add_events();
        e->set_request_id(r.request_id());
        e->set_kind("click");
        grpc::ClientContext c;
        v1::RecordEventsResponse out;
        EXPECT_TRUE(recommender_->RecordEvents(&c, events, &out).ok());
        EXPECT_EQ(out.unknown_requests(), 0);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  server_->Shutdown();
  std::multiset<std::string> sent;
  for (const auto& v : ids) sent.insert(v.begin(), v.end());
  ASSERT_EQ(sent.size(), 120u);
  const LogContents log = ReadAll(dir_);
  std::multiset<std::string> exposed, clicked;
  for (const Exposure& e : log.exposures) exposed.insert(e.request_id);
  for (const FeedbackEvent& e : log.events) clicked.insert(e.request_id);
  EXPECT_EQ(exposed, sent);
  EXPECT_EQ(clicked, sent);
  EXPECT_EQ(std::set<std::string>(sent.begin(), sent.end()).size(), 120u);
}

TEST(ExperimentsConfigTest, ReadsTheExperimentsBlockAndNamesBadFields) {
  ServeOptions o;
  const Json good = Json::parse(R"({
    "experiments": {
      "dir": "/tmp/x", "flush_records": 64, "flush_interval_us": 5000,
      "max_file_bytes": 1048576, "recent_requests": 10,
      "definitions": [{"name": "a", "task": "ctr", "traffic": 0.2,
                       "arms": [{"name": "c", "version": "v1"},
                                {"name": "t", "version": "v2",
                                 "weight": 3}],
                       "state": "running"}]}})");
  ASSERT_TRUE(ApplyServeConfig(good, &o).ok());
  EXPECT_EQ(o.experiments.dir, "/tmp/x");
  EXPECT_EQ(o.experiments.flush_records, 64);
  EXPECT_EQ(o.experiments.recent_requests, 10);
  ASSERT_EQ(o.experiments.definitions.size(), 1u);
  EXPECT_EQ(o.experiments.definitions[0].arms[1].weight, 3);
  EXPECT_EQ(o.experiments.definitions[0].state, ExperimentState::kRunning);

  ServeOptions bad;
  absl::Status unknown = ApplyServeConfig(
      Json::parse(R"({"experiments": {"directory": "x"}})"), &bad);
  EXPECT_THAT(std::string(unknown.message()),
              HasSubstr("experiments.directory"));
  absl::Status arm = ApplyServeConfig(
      Json::parse(R"({"experiments": {"definitions": [{"arms": [7]}]}})"),
      &bad);
  EXPECT_THAT(std::string(arm.message()),
              HasSubstr("experiments.definitions[0].arms[0]"));
  ServeOptions invalid;
  invalid.model_dir = "m";
  invalid.experiments.definitions = {HalfAb()};
  invalid.experiments.definitions[0].arms.pop_back();
  EXPECT_THAT(std::string(ValidateServeOptions(invalid).message()),
              HasSubstr("experiments.definitions[0].arms"));
}

}  // namespace
}  // namespace optrec
