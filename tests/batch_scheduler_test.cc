// The Score/Embed scheduler: mixed-task batches give each row what it gets
// alone; batches are cut by rows and tokens; deadlines, cancellation, the
// queue bound, batch failures and shutdown each end requests with their
// status while the scheduler keeps serving.
#include "server/scheduler/batch_scheduler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "cache/sharded_lru_cache.h"
#include "tests/testlib/tiny_models.h"
#include "tests/testlib/tuning_fixture.h"
#include "tuning/tune/task_batch.h"

namespace optrec {
namespace {

class FakeClock : public Clock {
 public:
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_) = absl::FromUnixSeconds(1000);
};

struct Fixture {
  std::shared_ptr<const TransformerLM> model = LoadFixtureModel();
  std::unique_ptr<TaskContext> ctr, next;  // a score and a retrieve task
  std::vector<Example> ctr_examples, next_examples;

  Fixture() {
    ctr = Context("score", TuningMethod::kOptionAdapter, 1, &ctr_examples);
    next = Context("retrieve", TuningMethod::kOption, 2, &next_examples);
  }

  std::unique_ptr<TaskContext> Context(const std::string& kind,
                                       TuningMethod method, uint64_t seed,
                                       std::vector<Example>* examples) {
    auto spec = ParseTaskSpec(TestSpec(kind), kind);
    EXPECT_TRUE(spec.ok());
    auto task = MakeTaskContext(*spec, *model, SharedTuningFixture().world);
    EXPECT_TRUE(task.ok()) << task.status();
    auto module =
        PromptModule::Create(*spec, method, *model, *(*task)->encoder, seed);
    EXPECT_TRUE(module.ok());
    // Away from the initial values (adapters start as no-ops).
    torch::manual_seed(seed);
    PromptModule::Named values;
    for (const auto& [name, t] : (*module)->NamedTensors()) {
      values.emplace_back(name, torch::randn(t.sizes()) * 0.2);
    }
    EXPECT_TRUE((*module)->CopyFrom(values).ok());
    (*task)->module = *module;
    TaskDataOptions options;
    options.limit = 24;
    auto data = LoadTaskData(
        (*task)->spec,
        SharedTuningFixture().world + "/" + (*task)->spec.data + "/train.jsonl",
        (*task)->catalog.get(), options);
    EXPECT_TRUE(data.ok()) << data.status();
    *examples = data->examples;
    return *std::move(task);
  }

  EncodedInput Input(const TaskContext& task, const Example& e) const {
    auto in = task.encoder->EncodeExample(e, 0);
    EXPECT_TRUE(in.ok()) << in.status();
    return *in;
  }

  BatchRequest Score(size_t first, size_t n) const {
    BatchRequest r;
    r.module = ctr->module;
    for (size_t i = first; i < first + n; ++i) {
      r.rows.push_back(Input(*ctr, ctr_examples[i]));
    }
    return r;
  }

  BatchRequest Embed(size_t first, size_t n, bool item) const {
    BatchRequest r;
    r.module = next->module;
    r.output = item ? RowOutput::kItemEmbedding : RowOutput::kUserEmbedding;
    for (size_t i = first; i < first + n; ++i) {
      r.rows.push_back(
          item ? *next->encoder->EncodeItem(next_examples[i].target_item)
               : Input(*next, next_examples[i]));
    }
    return r;
  }

  // The plain computation for one row, alone in its forward pass.
  std::vector<float> Alone(const BatchRequest& r, size_t row) const {
    torch::NoGradGuard no_grad;
    const bool item = r.output == RowOutput::kItemEmbedding;
    ForwardOptions options;
    options.logits = ForwardOptions::Logits::kNone;
    auto out = model->Forward({r.module->MakeRow(r.rows[row], item)}, nullptr,
                              options);
    EXPECT_TRUE(out.ok()) << out.status();
    torch::Tensor h = out->hidden[0][out->lengths[0] - 1].unsqueeze(0);
    torch::Tensor v = r.output == RowOutput::kOptionProbabilities
                          ? torch::softmax(r.module->OptionLogits(h), -1)
                          : r.module->Embed(h, item);
    v = v[0].contiguous();
    return std::vector<float>(v.data_ptr<float>(),
                              v.data_ptr<float>() + v.numel());
  }
};

// Submits and waits.
absl::StatusOr<BatchResult> RunToEnd(BatchScheduler& s, BatchRequest r) {
  std::promise<absl::StatusOr<BatchResult>> done;
  auto result = done.get_future();
  s.Submit(std::move(r), [&done](absl::StatusOr<BatchResult> v) {
    done.set_value(std::move(v));
  });
  return result.get();
}

// Submits without waiting; the future gets the result.
std::future<absl::StatusOr<BatchResult>> Start(BatchScheduler& s,
                                               BatchRequest r) {
  auto done = std::make_shared<std::promise<absl::StatusOr<BatchResult>>>();
  auto result = done->get_future();
  s.Submit(std::move(r), [done](absl::StatusOr<BatchResult> v) {
    done->set_value(std::move(v));
  });
  return result;
}

void ExpectMatches(const Fixture& f, const BatchRequest& r,
                   const absl::StatusOr<BatchResult>& got) {
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), r.rows.size());
  for (size_t i = 0; i < r.rows.size(); ++i) {
    const std::vector<float> want = f.Alone(r, i);
    ASSERT_EQ((*got)[i].size(), want.size());
    for (size_t k = 0; k < want.size(); ++k) {
      EXPECT_NEAR((*got)[i][k], want[k], 2e-5) << "row " << i << " value " << k;
    }
  }
}

SchedulerOptions WaitForFullBatches(int64_t rows) {
  SchedulerOptions o;
  o.max_batch_rows = rows;
  o.max_queue_delay_us = 60'000'000;  // batches run only when full
  return o;
}

TEST(BatchSchedulerTest, MixedTaskBatchesGiveEachRowWhatItGetsAlone) {
  Fixture f;
  BatchScheduler s(f.model, WaitForFullBatches(12));
  std::vector<BatchRequest> requests = {f.Score(0, 5), f.Embed(0, 3, false),
                                        f.Embed(0, 4, true)};
  std::vector<std::future<absl::StatusOr<BatchResult>>> results;
  for (const BatchRequest& r : requests) results.push_back(Start(s, r));
  for (size_t i = 0; i < requests.size(); ++i) {
    ExpectMatches(f, requests[i], results[i].get());
  }
  const auto c = s.counters();
  EXPECT_EQ(c.batches, 1);  // 5 + 3 + 4 rows filled one batch
  EXPECT_EQ(c.rows, 12);
}

TEST(BatchSchedulerTest, LargeRequestsSplitAcrossBatchesByRowsAndTokens) {
  Fixture f;
  SchedulerOptions o;
  o.max_batch_rows = 8;
  o.max_queue_delay_us = 0;
  BatchScheduler by_rows(f.model, o);
  const BatchRequest big = f.Score(0, 20);
  ExpectMatches(f, big, RunToEnd(by_rows, big));
  EXPECT_EQ(by_rows.counters().batches, 3);  // 8 + 8 + 4

  // A token budget of about two rows cuts batches of at most two.
  const int64_t longest = [&] {
    size_t n = 0;
    for (const EncodedInput& in : big.rows) n = std::max(n, in.ids.size());
    return static_cast<int64_t>(n) + f.ctr->spec.prompt_length;
  }();
  o.max_batch_tokens = 2 * longest;
  BatchScheduler by_tokens(f.model, o);
  ExpectMatches(f, big, RunToEnd(by_tokens, big));
  EXPECT_GE(by_tokens.counters().batches, 10);
  EXPECT_LE(by_tokens.counters().tokens,
            by_tokens.counters().batches * 2 * longest);
}

TEST(BatchSchedulerTest, ExpiredAndCancelledRequestsNeverRun) {
  Fixture f;
  auto clock = std::make_shared<FakeClock>();
  BatchScheduler s(f.model, WaitForFullBatches(8), clock);

  BatchRequest late = f.Score(0, 2);
  late.deadline = clock->Now() - absl::Seconds(1);
  EXPECT_EQ(RunToEnd(s, late).status().code(),
            absl::StatusCode::kDeadlineExceeded);

  BatchRequest expiring = f.Score(0, 3);
  expiring.deadline = clock->Now() + absl::Seconds(1);
  auto expired = Start(s, expiring);
  std::atomic<bool> cancel{false};
  BatchRequest cancelled = f.Score(3, 2);
  cancelled.cancelled = [&cancel] { return cancel.load(); };
  auto dropped = Start(s, cancelled);
  clock->Advance(absl::Seconds(2));
  cancel = true;
  // Eight fresh rows fill a batch; the two waiting requests are dropped.
  const BatchRequest fresh = f.Score(5, 8);
  ExpectMatches(f, fresh, RunToEnd(s, fresh));
  EXPECT_EQ(expired.get().status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(dropped.get().status().code(), absl::StatusCode::kCancelled);
  const auto c = s.counters();
  EXPECT_EQ(c.rows, 8);  // only the fresh rows ran
  EXPECT_EQ(c.expired, 2);
  EXPECT_EQ(c.cancelled, 1);
}

TEST(BatchSchedulerTest, FullQueueRefusesAndRecovers) {
  Fixture f;
  SchedulerOptions o = WaitForFullBatches(8);
  o.max_queued_rows = 8;
  BatchScheduler s(f.model, o);
  auto first = Start(s, f.Score(0, 5));       // waits for a full batch
  auto refused = RunToEnd(s, f.Score(5, 5));  // 10 > 8 queued rows
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(refused.status().message()),
              ::testing::HasSubstr("the queue is full"));
  const BatchRequest fill = f.Score(5, 3);  // 5 + 3 = 8: the batch runs
  ExpectMatches(f, fill, RunToEnd(s, fill));
  EXPECT_TRUE(first.get().ok());
  EXPECT_EQ(s.queued_rows(), 0);
  EXPECT_EQ(s.counters().refused, 1);
}

TEST(BatchSchedulerTest, ABatchFailureFailsOnlyItsRequests) {
  Fixture f;
  // A module built for another backbone width breaks the forward pass.
  const std::string dir = MakeTempDir("narrow");
  RandomModelSpec narrow = FixtureModelSpec(3);
  narrow.hidden = 16;
  ASSERT_TRUE(WriteRandomModel(dir, narrow).ok());
  std::filesystem::copy_file(SharedTuningFixture().model + "/tokenizer.model",
                             dir + "/tokenizer.model");
  auto other = TransformerLM::Load(dir);
  ASSERT_TRUE(other.ok());
  auto spec = ParseTaskSpec(TestSpec("score"), "score");
  auto task = MakeTaskContext(*spec, **other, SharedTuningFixture().world);
  ASSERT_TRUE(task.ok());
  auto wrong = PromptModule::Create(*spec, TuningMethod::kOption, **other,
                                    *(*task)->encoder, 1);
  ASSERT_TRUE(wrong.ok());

  BatchScheduler s(f.model, WaitForFullBatches(4));
  BatchRequest bad = f.Score(0, 2);
  bad.module = *wrong;
  auto failed = Start(s, bad);
  auto neighbour = Start(s, f.Score(2, 2));  // shares the failing batch
  EXPECT_EQ(failed.get().status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(neighbour.get().status().code(), absl::StatusCode::kInternal);
  // The next batch is served.
  const BatchRequest next = f.Score(4, 4);
  ExpectMatches(f, next, RunToEnd(s, next));
  EXPECT_EQ(s.counters().failed, 2);
}

TEST(BatchSchedulerTest, BadRequestsAndShutdownGetTheirStatus) {
  Fixture f;
  BatchScheduler s(f.model, WaitForFullBatches(4));
  BatchRequest empty;
  empty.module = f.ctr->module;
  EXPECT_EQ(RunToEnd(s, empty).status().code(),
            absl::StatusCode::kInvalidArgument);
  BatchRequest wrong_kind = f.Score(0, 1);
  wrong_kind.output = RowOutput::kUserEmbedding;
  EXPECT_THAT(std::string(RunToEnd(s, wrong_kind).status().message()),
              ::testing::HasSubstr("cannot give embeddings"));

  auto queued = Start(s, f.Score(0, 2));  // not a full batch yet
  s.Shutdown();
  EXPECT_EQ(RunToEnd(s, f.Score(0, 1)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_TRUE(queued.get().ok());  // queued work still finishes
}

TEST(BatchSchedulerTest, ConcurrentClientsGetTheirOwnResults) {
  Fixture f;
  SchedulerOptions o;
  o.max_batch_rows = 16;
  o.max_queue_delay_us = 1000;
  o.runner_threads = 2;
  BatchScheduler s(f.model, o);
  std::vector<BatchRequest> requests;
  for (size_t i = 0; i < 12; ++i) {
    requests.push_back(i % 3 == 0   ? f.Score(i, 1 + i % 4)
                       : i % 3 == 1 ? f.Embed(i, 1 + i % 3, false)
                                    : f.Embed(i, 2, true));
  }
  std::vector<absl::StatusOr<BatchResult>> got(requests.size(),
                                               absl::UnknownError("unset"));
  std::vector<std::thread> clients;
  for (size_t i = 0; i < requests.size(); ++i) {
    clients.emplace_back([&, i] { got[i] = RunToEnd(s, requests[i]); });
  }
  for (std::thread& t : clients) t.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    ExpectMatches(f, requests[i], got[i]);
  }
  EXPECT_LT(s.counters().batches, static_cast<int64_t>(requests.size()));
}

}  // namespace
}  // namespace optrec

namespace optrec {
namespace {

// A late-interaction click task (L' = 1 of the fixture's 2 layers) next to
// the plain one: the same computation as the tuning job's, batched with
// plain rows, its segments cached across requests.
TEST(LateSchedulerTest, LateRowsScoreAsInTuningAndShareTheSegmentCache) {
  Fixture f;
  nlohmann::json json = TestSpec("score");
  json["templates"].erase(1);  // its special token cannot be segmented
  json["lower_layers"] = 1;
  auto spec = ParseTaskSpec(json, "late");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto task = MakeTaskContext(*spec, *f.model, SharedTuningFixture().world);
  ASSERT_TRUE(task.ok()) << task.status();
  auto module = PromptModule::Create(*spec, TuningMethod::kOptionAdapter,
                                     *f.model, *(*task)->encoder, 7);
  ASSERT_TRUE(module.ok());
  torch::manual_seed(7);
  PromptModule::Named values;
  for (const auto& [name, t] : (*module)->NamedTensors()) {
    values.emplace_back(name, torch::randn(t.sizes()) * 0.2);
  }
  ASSERT_TRUE((*module)->CopyFrom(values).ok());
  (*task)->module = *module;

  BatchRequest late;
  late.module = *module;
  BatchPart part;
  part.task = task->get();
  part.module = module->get();
  for (size_t i = 0; i < 6; ++i) {
    auto in = (*task)->encoder->EncodeExample(f.ctr_examples[i], 0);
    ASSERT_TRUE(in.ok()) << in.status();
    ASSERT_FALSE(in->segments.empty());
    late.rows.push_back(*in);
    PreparedExample p;
    p.input = *in;
    p.label = f.ctr_examples[i].label;
    part.examples.push_back(p);
  }
  // The tuning job's computation (its own bf16 segment cache).
  auto tuned = RunMixedBatch(*f.model, {part});
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  torch::Tensor want = torch::softmax((*tuned)[0].logits.detach(), -1);

  ShardedLruCache::Options cache_options;
  auto cache = ShardedLruCache::Create(cache_options);
  ASSERT_TRUE(cache.ok());
  std::shared_ptr<SegmentStateCache> shared = *std::move(cache);
  SchedulerOptions o = WaitForFullBatches(9);
  o.segment_cache = shared;
  BatchScheduler s(f.model, o);
  // One batch: 3 plain rows and the 6 late ones.
  const BatchRequest plain = f.Score(0, 3);
  auto plain_done = Start(s, plain);
  auto late_done = Start(s, late);
  ExpectMatches(f, plain, plain_done.get());
  absl::StatusOr<BatchResult> got = late_done.get();
  ASSERT_TRUE(got.ok()) << got.status();
  for (size_t i = 0; i < late.rows.size(); ++i) {
    for (int64_t k = 0; k < want.size(1); ++k) {
      EXPECT_NEAR((*got)[i][k], want[i][k].item<float>(), 2e-5) << i;
    }
  }
  const CacheStats first = shared->stats();
  EXPECT_GT(first.inserts, 0);

  // The same request again: every segment is a hit, the result the same.
  BatchScheduler again(f.model, [&] {
    SchedulerOptions a;
    a.segment_cache = shared;
    a.max_queue_delay_us = 0;
    return a;
  }());
  absl::StatusOr<BatchResult> second = RunToEnd(again, late);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(*second, *got);
  EXPECT_EQ(shared->stats().inserts, first.inserts);
  EXPECT_GT(shared->stats().hits, first.hits);

  // Plain token ids for a late module are refused at Submit.
  BatchRequest wrong = f.Score(0, 1);
  wrong.module = *module;
  absl::StatusOr<BatchResult> refused = RunToEnd(again, wrong);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.status().message()),
              ::testing::HasSubstr("late interaction"));
}

}  // namespace
}  // namespace optrec
