// The gRPC service in process: Score and Embed against the modules'
// own computation, every admin RPC, health checking, errors naming the
// field, overload, hot swaps under load, and many concurrent clients.
#include "server/rpc/server.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "cache/segment_key.h"
#include "cache/state_file.h"
#include "server/index/item_index.h"
#include "tests/testlib/tiny_models.h"
#include "tests/testlib/tuning_fixture.h"
#include "tuning/tune/task_batch.h"

namespace optrec {
namespace {

using ::testing::HasSubstr;

v1::Field Text(const std::string& s) {
  v1::Field f;
  f.set_text(s);
  return f;
}

v1::Field List(const std::vector<std::string>& items) {
  v1::Field f;
  for (const std::string& s : items) f.mutable_list()->add_items(s);
  return f;
}

v1::ScoreRequest ScoreRequestFor(int candidates,
                                 const std::string& task = "ctr") {
  v1::ScoreRequest r;
  r.set_task(task);
  (*r.mutable_context())["profile"] = Text("Shopper aged 25-34 from the North");
  (*r.mutable_context())["history"] =
      List({"Clicked: Northpeak trail running shoes, red", "Searched: socks"});
  for (int i = 0; i < candidates; ++i) {
    v1::Candidate* c = r.add_candidates();
    c->set_id(absl::StrCat("item", i));
    (*c->mutable_fields())["candidate"] =
        Text(absl::StrCat("Velocia running socks, size ", i,
                          " | Sports & Outdoors > Running | budget"));
  }
  return r;
}

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServeOptions o;
    o.listen = "127.0.0.1:0";
    o.model_dir = SharedTuningFixture().model;
    o.modules = {WriteRandomModule("score", "v1", 1),
                 WriteRandomModule("retrieve", "r1", 2),
                 WriteRandomModule("generate", "g1", 3)};
    // The retrieval module's index over the fixture world's catalog.
    IndexBuildOptions index;
    index.module_path = o.modules[1];
    index.catalog_path = SharedTuningFixture().world + "/catalog.jsonl";
    index.out_dir = MakeTempDir("index") + "/r1";
    ASSERT_TRUE(ItemIndex::Build(*LoadFixtureModel(), index).ok());
    o.indexes = {index.out_dir};
    o.scheduler.max_queue_delay_us = 500;
    o.limits.max_candidates = 50;
    o.metrics_listen = "127.0.0.1:0";
    Start(o);
  }
  void Start(const ServeOptions& o) {
    auto s = Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    recommender_ = v1::Recommender::NewStub(channel_);
    tasks_ = v1::Tasks::NewStub(channel_);
  }
  grpc::Status Score(const v1::ScoreRequest& r, v1::ScoreResponse* out) {
    grpc::ClientContext context;
    return recommender_->Score(&context, r, out);
  }

  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Recommender::Stub> recommender_;
  std::unique_ptr<v1::Tasks::Stub> tasks_;
};

// What the module computes for one candidate alone.
std::vector<float> Direct(Server& server, const v1::ScoreRequest& r, int i) {
  auto v = server.registry().Resolve(r.task(), r.version());
  EXPECT_TRUE(v.ok());
  const TaskSpec& spec = v->module->spec();
  InputEncoder encoder(spec, *server.registry().model().tokenizer(), nullptr);
  Example e;
  for (const auto& [k, f] : r.context()) {
    e.fields[k].is_list = f.has_list();
    e.fields[k].text = f.text();
    for (const auto& x : f.list().items()) e.fields[k].list.push_back(x);
  }
  e.fields["candidate"].text = r.candidates(i).fields().at("candidate").text();
  auto in = encoder.EncodeWith(spec.templates[0], e);
  EXPECT_TRUE(in.ok());
  torch::NoGradGuard no_grad;
  ForwardOptions options;
  options.logits = ForwardOptions::Logits::kNone;
  auto out = server.registry().model().Forward({v->module->MakeRow(*in, false)},
                                               nullptr, options);
  torch::Tensor h = out->hidden[0][out->lengths[0] - 1].unsqueeze(0);
  torch::Tensor p = torch::softmax(v->module->OptionLogits(h), -1)[0];
  return {p[0].item<float>(), p[1].item<float>()};
}

TEST_F(ServerTest, ScoreReturnsEachCandidatesOptionProbabilities) {
  const v1::ScoreRequest r = ScoreRequestFor(5);
  v1::ScoreResponse out;
  grpc::Status s = Score(r, &out);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(out.task(), "ctr");
  EXPECT_EQ(out.version(), "v1");
  ASSERT_EQ(out.scores_size(), 5);
  EXPECT_EQ(out.option_labels_size(), 2);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(out.scores(i).id(), absl::StrCat("item", i));
    const std::vector<float> want = Direct(*server_, r, i);
    EXPECT_NEAR(out.scores(i).probabilities(0), want[0], 1e-5);
    EXPECT_NEAR(out.scores(i).probabilities(1), want[1], 1e-5);
    EXPECT_FLOAT_EQ(out.scores(i).score(), out.scores(i).probabilities(1));
  }
}

// GET `path` from 127.0.0.1:`port` over plain HTTP; the whole response.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address = {};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) !=
      0) {
    close(fd);
    return "connect failed";
  }
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n";
  (void)!write(fd, request.data(), request.size());
  std::string response;
  char buffer[4096];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, n);
  close(fd);
  return response;
}

TEST_F(ServerTest, MetricsCountCallsBatchesAndErrorsPerTask) {
  v1::ScoreResponse out;
  ASSERT_TRUE(Score(ScoreRequestFor(3), &out).ok());
  ASSERT_FALSE(Score(ScoreRequestFor(0), &out).ok());
  ASSERT_GT(server_->metrics_port(), 0);
  const std::string page = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_THAT(page, HasSubstr("HTTP/1.1 200 OK"));
  EXPECT_THAT(page, HasSubstr("text/plain; version=0.0.4"));
  EXPECT_THAT(page, HasSubstr("optrec_rpc_requests_total{rpc=\"Score\",task="
                              "\"ctr\",version=\"v1\"} 2"));
  EXPECT_THAT(page, HasSubstr("code=\"INVALID_ARGUMENT\"} 1"));
  EXPECT_THAT(
      page,
      HasSubstr("optrec_batch_rows_total{task=\"ctr\",version=\"v1\"} 3"));
  EXPECT_THAT(page, HasSubstr("optrec_queued_rows 0"));
  EXPECT_THAT(page, HasSubstr("optrec_rpc_duration_seconds_bucket"));
  EXPECT_THAT(HttpGet(server_->metrics_port(), "/other"),
              HasSubstr("404 Not Found"));
}

TEST_F(ServerTest, EmbedGivesUnitVectorsFromEitherTower) {
  for (auto tower : {v1::EmbedRequest::USER, v1::EmbedRequest::ITEM}) {
    v1::EmbedRequest r;
    r.set_task("next_click");
    r.set_tower(tower);
    (*r.mutable_fields())["profile"] = Text("Shopper aged 25-34");
    (*r.mutable_fields())["history"] = List({"Clicked: a lamp"});
    (*r.mutable_fields())["text"] = Text("Lumiere desk lamp | Home | budget");
    grpc::ClientContext context;
    v1::EmbedResponse out;
    grpc::Status s = recommender_->Embed(&context, r, &out);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(out.version(), "r1");
    ASSERT_EQ(out.embedding_size(), 8);
    double norm = 0;
    for (float x : out.embedding()) norm += x * x;
    EXPECT_NEAR(norm, 1.0, 1e-5);
  }
}

TEST_F(ServerTest, RetrieveReturnsTheTopItemsOfTheVersionsIndex) {
  v1::RetrieveRequest r;
  r.set_task("next_click");
  r.set_k(5);
  (*r.mutable_context())["profile"] = Text("Shopper aged 25-34");
  (*r.mutable_context())["history"] = List({"Clicked: a lamp"});
  grpc::ClientContext context;
  v1::RetrieveResponse out;
  grpc::Status s = recommender_->Retrieve(&context, r, &out);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(out.version(), "r1");
  ASSERT_EQ(out.items_size(), 5);
  for (int i = 1; i < 5; ++i) {
    EXPECT_GE(out.items(i - 1).score(), out.items(i).score());
  }
  // Excluding the best item moves the second up.
  r.add_exclude(out.items(0).id());
  grpc::ClientContext again;
  v1::RetrieveResponse without;
  ASSERT_TRUE(recommender_->Retrieve(&again, r, &without).ok());
  EXPECT_EQ(without.items(0).id(), out.items(1).id());

  r.set_k(0);
  grpc::ClientContext zero;
  EXPECT_EQ(recommender_->Retrieve(&zero, r, &without).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // A version with no index loaded.
  v1::LoadModuleRequest load;
  load.set_path(WriteRandomModule("retrieve", "r2", 5));
  grpc::ClientContext load_context;
  v1::LoadModuleResponse loaded;
  ASSERT_TRUE(tasks_->LoadModule(&load_context, load, &loaded).ok());
  r.set_k(3);
  r.set_version("r2");
  grpc::ClientContext missing;
  grpc::Status no_index = recommender_->Retrieve(&missing, r, &without);
  EXPECT_EQ(no_index.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(no_index.error_message(), HasSubstr("no retrieval index"));
}

TEST_F(ServerTest, GenerateStreamsWhatTheModuleDecodes) {
  v1::GenerateRequest r;
  r.set_task("explanation");
  r.set_max_tokens(12);
  (*r.mutable_context())["history"] = List({"Clicked: a lamp"});
  (*r.mutable_context())["candidate"] = Text("Lumiere desk lamp");
  grpc::ClientContext context;
  auto reader = recommender_->Generate(&context, r);
  v1::GenerateResponse m;
  std::string text, finish, version;
  int tokens = 0, messages = 0;
  while (reader->Read(&m)) {
    ++messages;
    if (!m.version().empty()) version = m.version();
    text += m.text();
    if (!m.finish_reason().empty()) {
      finish = m.finish_reason();
      tokens = m.tokens();
    }
  }
  grpc::Status s = reader->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(version, "g1");
  EXPECT_GT(messages, 1);
  EXPECT_GT(tokens, 0);
  EXPECT_FALSE(finish.empty());

  // The same decoding done directly with the module.
  auto v = server_->registry().Resolve("explanation");
  ASSERT_TRUE(v.ok());
  InputEncoder encoder(v->module->spec(),
                       *server_->registry().model().tokenizer(), nullptr);
  Example e;
  e.fields["history"].is_list = true;
  e.fields["history"].list = {"Clicked: a lamp"};
  e.fields["candidate"].text = "Lumiere desk lamp";
  auto in = encoder.EncodeWith(v->module->spec().templates[0], e);
  ASSERT_TRUE(in.ok());
  RowInput row = v->module->MakeRow(*in, false);
  GenerationRequest direct;
  direct.prompt_ids = row.ids;
  direct.soft_prompt = row.prompt;
  direct.adapter = row.adapter;
  direct.params.max_tokens = 12;
  auto model = LoadFixtureModel();
  auto out = Generate(model, {direct});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(text, (*out)[0].text);

  // Wrong kind and bad sampling settings are refused.
  r.set_task("ctr");
  grpc::ClientContext wrong;
  auto refused = recommender_->Generate(&wrong, r);
  while (refused->Read(&m)) {
  }
  EXPECT_EQ(refused->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  r.set_task("explanation");
  r.set_top_p(3);
  grpc::ClientContext bad;
  auto bad_reader = recommender_->Generate(&bad, r);
  while (bad_reader->Read(&m)) {
  }
  EXPECT_EQ(bad_reader->Finish().error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServerTest, BadRequestsNameTheFieldAndTheServerStaysUp) {
  v1::ScoreResponse out;
  auto expect = [&](const v1::ScoreRequest& r, grpc::StatusCode code,
                    const std::string& text) {
    grpc::Status s = Score(r, &out);
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(text));
  };
  expect(ScoreRequestFor(0), grpc::StatusCode::INVALID_ARGUMENT,
         "candidates: 0 given");
  expect(ScoreRequestFor(51), grpc::StatusCode::INVALID_ARGUMENT,
         "between 1 and 50");
  expect(ScoreRequestFor(1, "nope"), grpc::StatusCode::NOT_FOUND,
         "no task nope");
  v1::ScoreRequest r = ScoreRequestFor(1);
  r.set_version("v9");
  expect(r, grpc::StatusCode::NOT_FOUND, "has no version v9");
  expect(ScoreRequestFor(1, "next_click"), grpc::StatusCode::INVALID_ARGUMENT,
         "is a retrieve task; Score serves score tasks");
  r = ScoreRequestFor(1);
  r.mutable_context()->erase("history");
  expect(r, grpc::StatusCode::INVALID_ARGUMENT, "{history}, which is missing");
  r = ScoreRequestFor(1);
  r.set_template_("nope");
  expect(r, grpc::StatusCode::NOT_FOUND, "template:");
  // Still serving.
  ASSERT_TRUE(Score(ScoreRequestFor(2), &out).ok());
}

// grpc.health.v1.Health/Check with an empty request (the whole server),
// as raw bytes: the response is field 1 (status) = SERVING (1), which is
// the two bytes 0x08 0x01 on the wire, or NOT_SERVING (2): 0x08 0x02.
std::string HealthCheck(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  grpc::ByteBuffer request, response;
  grpc::Slice empty("");
  request = grpc::ByteBuffer(&empty, 1);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", {}, &request,
                 &response, [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = s;
                   done = true;
                   cv.notify_one();
                 });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!status.ok()) return "error: " + status.error_message();
  std::vector<grpc::Slice> slices;
  response.Dump(&slices);
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return bytes;
}

TEST_F(ServerTest, HealthCheckingAndAdminRpcs) {
  EXPECT_EQ(HealthCheck(channel_), std::string("\x08\x01", 2));
  grpc::ClientContext list_context;
  v1::ListTasksResponse listed;
  ASSERT_TRUE(tasks_->ListTasks(&list_context, {}, &listed).ok());
  ASSERT_EQ(listed.tasks_size(), 3);
  EXPECT_EQ(listed.tasks(0).task(), "ctr");
  EXPECT_EQ(listed.tasks(0).default_version(), "v1");

  // Load v2 as the default; Score now says v2.
  v1::LoadModuleRequest load;
  load.set_path(WriteRandomModule("score", "v2", 9));
  load.set_make_default(true);
  grpc::ClientContext load_context;
  v1::LoadModuleResponse loaded;
  ASSERT_TRUE(tasks_->LoadModule(&load_context, load, &loaded).ok());
  EXPECT_TRUE(loaded.is_default());
  v1::ScoreResponse out;
  ASSERT_TRUE(Score(ScoreRequestFor(1), &out).ok());
  EXPECT_EQ(out.version(), "v2");

  // The same version again is refused; a bad file leaves things as they were.
  grpc::ClientContext again;
  EXPECT_EQ(tasks_->LoadModule(&again, load, &loaded).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  v1::LoadModuleRequest bad;
  bad.set_path(SharedTuningFixture().model + "/model.safetensors");
  grpc::ClientContext bad_context;
  EXPECT_EQ(tasks_->LoadModule(&bad_context, bad, &loaded).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  v1::SetDefaultRequest promote;
  promote.set_task("ctr");
  promote.set_version("v1");
  grpc::ClientContext promote_context;
  v1::SetDefaultResponse promoted;
  ASSERT_TRUE(tasks_->SetDefault(&promote_context, promote, &promoted).ok());
  v1::UnloadModuleRequest unload;
  unload.set_task("ctr");
  unload.set_version("v2");
  grpc::ClientContext unload_context;
  v1::UnloadModuleResponse unloaded;
  ASSERT_TRUE(tasks_->UnloadModule(&unload_context, unload, &unloaded).ok());
  ASSERT_TRUE(Score(ScoreRequestFor(1), &out).ok());
  EXPECT_EQ(out.version(), "v1");
}

TEST_F(ServerTest, HotSwapUnderLoadFailsNoRequest) {
  std::atomic<bool> done{false};
  std::atomic<int> failures{0}, calls{0};
  std::set<std::string> seen;
  absl::Mutex mu;
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&] {
      auto stub = v1::Recommender::NewStub(channel_);
      while (!done.load()) {
        grpc::ClientContext context;
        v1::ScoreResponse out;
        grpc::Status s = stub->Score(&context, ScoreRequestFor(3), &out);
        if (!s.ok()) ++failures;
        ++calls;
        absl::MutexLock lock(&mu);
        seen.insert(out.version());
      }
    });
  }
  for (int i = 2; i <= 4; ++i) {
    v1::LoadModuleRequest load;
    load.set_path(WriteRandomModule("score", absl::StrCat("v", i), 20 + i));
    load.set_make_default(true);
    grpc::ClientContext context;
    v1::LoadModuleResponse loaded;
    ASSERT_TRUE(tasks_->LoadModule(&context, load, &loaded).ok());
    // Let calls overlap and follow every swap however slow the machine:
    // four calls that start after the load completed (4 in flight + 4).
    for (const int before = calls.load(); calls.load() < before + 8;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  done = true;
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(calls.load(), 4);
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(seen.count("v4")) << "the last default never served";
}

TEST_F(ServerTest, ConcurrentClientsGetWhatOneAtATimeGets) {
  std::vector<v1::ScoreRequest> requests;
  for (int i = 1; i <= 8; ++i) requests.push_back(ScoreRequestFor(i));
  std::vector<v1::ScoreResponse> alone(requests.size()),
      together(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(Score(requests[i], &alone[i]).ok());
  }
  std::vector<std::thread> clients;
  for (size_t i = 0; i < requests.size(); ++i) {
    clients.emplace_back([&, i] {
      auto stub = v1::Recommender::NewStub(channel_);
      grpc::ClientContext context;
      EXPECT_TRUE(stub->Score(&context, requests[i], &together[i]).ok());
    });
  }
  for (std::thread& t : clients) t.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(together[i].scores_size(), alone[i].scores_size());
    for (int c = 0; c < alone[i].scores_size(); ++c) {
      EXPECT_NEAR(together[i].scores(c).score(), alone[i].scores(c).score(),
                  2e-5);
    }
  }
}

class OverloadTest : public ServerTest {
 protected:
  void SetUp() override {
    ServeOptions o;
    o.listen = "127.0.0.1:0";
    o.model_dir = SharedTuningFixture().model;
    o.modules = {WriteRandomModule("score", "v1", 1)};
    o.scheduler.max_batch_rows = 4;
    o.scheduler.max_queued_rows = 4;
    o.scheduler.max_queue_delay_us = 60'000'000;  // only full batches run
    Start(o);
  }
};

TEST_F(OverloadTest, PastTheQueueBoundCallsAreRefusedThenServedAgain) {
  // Three rows wait for a full batch.
  v1::ScoreResponse first;
  grpc::ClientContext first_context;
  grpc::Status first_status;
  std::atomic<bool> first_done{false};
  const v1::ScoreRequest first_request = ScoreRequestFor(3);
  recommender_->async()->Score(&first_context, &first_request, &first,
                               [&](grpc::Status s) {
                                 first_status = s;
                                 first_done = true;
                               });
  while (server_->scheduler().queued_rows() < 3) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  v1::ScoreResponse out;
  grpc::Status refused = Score(ScoreRequestFor(3), &out);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // One more row fills the batch: both are served, and so is the next.
  ASSERT_TRUE(Score(ScoreRequestFor(1), &out).ok());
  while (!first_done.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_TRUE(first_status.ok()) << first_status.error_message();
  EXPECT_EQ(first.scores_size(), 3);
}

class TuningServiceTest : public ServerTest {
 protected:
  void SetUp() override {
    ServeOptions o;
    o.listen = "127.0.0.1:0";
    o.model_dir = SharedTuningFixture().model;
    o.modules = {WriteRandomModule("score", "v1", 1)};
    o.jobs_dir = MakeTempDir("jobs");
    Start(o);
    tuning_ = v1::Tuning::NewStub(channel_);
  }
  std::unique_ptr<v1::Tuning::Stub> tuning_;
};

TEST_F(TuningServiceTest, AJobRunsIsWatchedAndItsModuleRegistered) {
  v1::StartJobRequest start;
  start.set_data_root(SharedTuningFixture().world);
  v1::TuneTask* task = start.add_tasks();
  task->set_spec_path(WriteSpec(TestSpec("score"), "score"));
  task->set_version("tuned");
  start.set_out_dir(MakeTempDir("out"));
  start.set_steps(20);
  start.set_warmup_steps(2);
  start.set_batch(4);
  start.set_eval_every(10);
  start.set_eval_examples(16);
  start.set_max_train_examples(200);
  grpc::ClientContext start_context;
  v1::JobInfo job;
  ASSERT_TRUE(tuning_->StartJob(&start_context, start, &job).ok());
  // A free worker may have taken it already.
  EXPECT_THAT(job.state(), ::testing::AnyOf("queued", "running"));

  grpc::ClientContext watch_context;
  v1::JobRequest which;
  which.set_id(job.id());
  auto watch = tuning_->WatchJob(&watch_context, which);
  v1::JobInfo update;
  std::string last_state;
  int updates = 0;
  while (watch->Read(&update)) {
    ++updates;
    last_state = update.state();
  }
  ASSERT_TRUE(watch->Finish().ok());
  EXPECT_EQ(last_state, "succeeded");
  EXPECT_GT(updates, 2);

  grpc::ClientContext again;
  v1::JobInfo cancelled;
  EXPECT_EQ(tuning_->CancelJob(&again, which, &cancelled).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  v1::RegisterModulesRequest register_request;
  register_request.set_id(job.id());
  register_request.set_make_default(true);
  grpc::ClientContext register_context;
  v1::RegisterModulesResponse registered;
  ASSERT_TRUE(
      tuning_->RegisterModules(&register_context, register_request, &registered)
          .ok());
  ASSERT_EQ(registered.modules_size(), 1);
  EXPECT_EQ(registered.modules(0).version(), "tuned");
  v1::ScoreResponse out;
  ASSERT_TRUE(Score(ScoreRequestFor(2), &out).ok());
  EXPECT_EQ(out.version(), "tuned");

  grpc::ClientContext list_context;
  v1::ListJobsResponse listed;
  ASSERT_TRUE(tuning_->ListJobs(&list_context, {}, &listed).ok());
  ASSERT_EQ(listed.jobs_size(), 1);
  v1::JobRequest missing;
  missing.set_id("job-none");
  grpc::ClientContext get_context;
  EXPECT_EQ(tuning_->GetJob(&get_context, missing, &job).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

// A click module tuned for late interaction (L' = 1 of the fixture's 2
// layers) under the task name ctr_late; returns its path.
std::string WriteLateModule() {
  auto model = LoadFixtureModel();
  nlohmann::json json = TestSpec("score");
  json["task"] = "ctr_late";
  json["templates"].erase(1);  // its special token cannot be segmented
  json["lower_layers"] = 1;
  auto spec = ParseTaskSpec(json, "late");
  EXPECT_TRUE(spec.ok()) << spec.status();
  auto task = MakeTaskContext(*spec, *model, SharedTuningFixture().world);
  auto module = PromptModule::Create(*spec, TuningMethod::kOptionAdapter,
                                     *model, *(*task)->encoder, 4);
  EXPECT_TRUE(module.ok()) << module.status();
  torch::manual_seed(4);
  PromptModule::Named values;
  for (const auto& [name, t] : (*module)->NamedTensors()) {
    values.emplace_back(name, torch::randn(t.sizes()) * 0.2);
  }
  EXPECT_TRUE((*module)->CopyFrom(values).ok());
  (*module)->info()["version"] = "l1";
  const std::string path = MakeTempDir("late") + "/ctr_late.l1.safetensors";
  EXPECT_TRUE((*module)->Save(path).ok());
  return path;
}

TEST(LateServerTest, ScoreRunsTheUpperLayersOverCachedSegments) {
  auto model = LoadFixtureModel();
  const v1::ScoreRequest r = ScoreRequestFor(4, "ctr_late");
  const Tokenizer& tok = *model->tokenizer();
  const std::string module_path = WriteLateModule();
  auto module = PromptModule::Load(module_path, *model);
  ASSERT_TRUE(module.ok()) << module.status();
  InputEncoder encoder((*module)->spec(), tok, nullptr);
  auto example = [&r](int i) {
    Example e;
    e.fields["profile"].text = r.context().at("profile").text();
    e.fields["history"].is_list = true;
    for (const auto& x : r.context().at("history").list().items()) {
      e.fields["history"].list.push_back(x);
    }
    e.fields["candidate"].text =
        r.candidates(i).fields().at("candidate").text();
    return e;
  };
  // The candidates' segments (template part 2, "Shown: {candidate}"), as a
  // request renders them, encoded ahead into a state file; and a file of
  // another split, to be skipped.
  std::vector<std::vector<int32_t>> candidates;
  for (int i = 0; i < r.candidates_size(); ++i) {
    auto in = encoder.EncodeWith((*module)->spec().templates[0], example(i));
    ASSERT_TRUE(in.ok()) << in.status();
    for (size_t k = 0; k < in->segments.size(); ++k) {
      if (in->segment_part[k] == 2) candidates.push_back(in->segments[k]);
    }
  }
  ASSERT_EQ(candidates.size(), 4u);
  auto states = model->EncodeSegments(candidates, 1);
  ASSERT_TRUE(states.ok()) << states.status();
  std::vector<std::pair<SegmentKey, torch::Tensor>> entries;
  for (size_t i = 0; i < candidates.size(); ++i) {
    entries.emplace_back(
        SegmentKey::Make(model->fingerprint(), 1, candidates[i]),
        (*states)[i].to(torch::kBFloat16));
  }
  const std::string dir = MakeTempDir("late-states");
  ASSERT_TRUE(
      SaveStates(dir + "/items.states", model->fingerprint(), 1, entries).ok());

  ServeOptions o;
  o.listen = "127.0.0.1:0";
  o.model_dir = SharedTuningFixture().model;
  o.modules = {module_path};
  o.scheduler.max_queue_delay_us = 0;
  o.late_interaction.state_files = {{dir + "/items.states", 1},
                                    {dir + "/items.states", 2},  // foreign
                                    {dir + "/missing.states", 1}};
  o.metrics_listen = "127.0.0.1:0";
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*server)->port()),
                          grpc::InsecureChannelCredentials());
  auto stub = v1::Recommender::NewStub(channel);
  v1::ScoreResponse out;
  grpc::ClientContext context;
  grpc::Status status = stub->Score(&context, r, &out);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(out.scores_size(), 4);
  EXPECT_EQ(out.version(), "l1");

  // By hand: every segment through the lower layer, rounded as the cache
  // keeps it, then the module's joint pass.
  auto v = (*server)->registry().Resolve("ctr_late");
  ASSERT_TRUE(v.ok());
  const PromptModule& m = *v->module;
  for (int i = 0; i < 4; ++i) {
    auto in = encoder.EncodeWith(m.spec().templates[0], example(i));
    ASSERT_TRUE(in.ok()) << in.status();
    auto lower = model->EncodeSegments(in->segments, 1);
    ASSERT_TRUE(lower.ok());
    std::vector<torch::Tensor> rounded;
    for (const torch::Tensor& t : *lower) {
      rounded.push_back(t.to(torch::kBFloat16).to(torch::kFloat32));
    }
    torch::NoGradGuard no_grad;
    auto joint = model->ForwardJoint({m.MakeJointRow(*in, rounded)}, 1);
    ASSERT_TRUE(joint.ok()) << joint.status();
    torch::Tensor h = joint->hidden[0][joint->lengths[0] - 1].unsqueeze(0);
    torch::Tensor p = torch::softmax(m.OptionLogits(h), -1)[0];
    EXPECT_NEAR(out.scores(i).probabilities(1), p[1].item<float>(), 2e-5)
        << "candidate " << i;
  }
  // The four candidates came from the state file; the profile, the two
  // behaviours and the closing words were encoded, once each, though every
  // candidate row holds them.
  const std::string page = HttpGet((*server)->metrics_port(), "/metrics");
  EXPECT_THAT(page, HasSubstr("optrec_segment_cache_hits_total 4\n"));
  EXPECT_THAT(page, HasSubstr("optrec_segment_cache_misses_total 4\n"));
  EXPECT_THAT(page, HasSubstr("optrec_segment_cache_entries 8\n"));
}

TEST(ServerConfigTest, ConfigFieldsAreCheckedByName) {
  ServeOptions o;
  EXPECT_TRUE(ApplyServeConfig({{"listen", "0.0.0.0:1"},
                                {"batching", {{"max_batch_rows", 8}}},
                                {"limits", {{"max_candidates", 10}}}},
                               &o)
                  .ok());
  EXPECT_EQ(o.listen, "0.0.0.0:1");
  EXPECT_EQ(o.scheduler.max_batch_rows, 8);
  EXPECT_THAT(
      std::string(
          ApplyServeConfig({{"batching", {{"max_rows", 8}}}}, &o).message()),
      HasSubstr("unknown field 'batching.max_rows'"));
  EXPECT_THAT(std::string(ApplyServeConfig({{"listen", 5}}, &o).message()),
              HasSubstr("'listen' has the wrong type"));
  o.model_dir = "m";
  o.scheduler.max_queued_rows = 1;
  EXPECT_THAT(std::string(ValidateServeOptions(o).message()),
              HasSubstr("batching.max_queued_rows"));
}

TEST(ServerConfigTest, EveryDocumentedFieldIsAccepted) {
  ServeOptions o;
  const nlohmann::json config = {
      {"listen", "127.0.0.1:0"},
      {"model_dir", "m"},
      {"device", "cpu"},
      {"dtype", "f32"},
      {"modules", {"a.safetensors"}},
      {"indexes", {"idx"}},
      {"batching", {{"max_batch_rows", 8}, {"runner_threads", 2}}},
      {"generation", {{"max_active", 4}, {"max_queued", 9}}},
      {"limits", {{"max_candidates", 10}, {"max_retrieve_k", 5}}},
      {"late_interaction",
       {{"cache_bytes", 1 << 20},
        {"storage", "f16"},
        {"state_files", {{{"path", "s.states"}, {"lower_layers", 6}}}}}},
      {"jobs_dir", "jobs"},
      {"tuning_workers", 2},
      {"metrics_listen", "127.0.0.1:0"},
      {"max_message_bytes", 1 << 20},
      {"shutdown_grace_ms", 500}};
  absl::Status applied = ApplyServeConfig(config, &o);
  ASSERT_TRUE(applied.ok()) << applied;
  EXPECT_EQ(o.indexes, std::vector<std::string>{"idx"});
  EXPECT_EQ(o.generation.max_active, 4);
  EXPECT_EQ(o.jobs_dir, "jobs");
  EXPECT_EQ(o.tuning_workers, 2);
  EXPECT_EQ(o.metrics_listen, "127.0.0.1:0");
  EXPECT_EQ(o.late_interaction.cache_bytes, 1 << 20);
  EXPECT_EQ(o.late_interaction.storage, "f16");
  ASSERT_EQ(o.late_interaction.state_files.size(), 1u);
  EXPECT_EQ(o.late_interaction.state_files[0].lower_layers, 6);
  EXPECT_TRUE(ValidateServeOptions(o).ok()) << ValidateServeOptions(o);
  o.late_interaction.storage = "int8";
  EXPECT_THAT(std::string(ValidateServeOptions(o).message()),
              HasSubstr("late_interaction.storage"));
}

}  // namespace
}  // namespace optrec
