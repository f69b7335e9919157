// Continuous batching: sequences that join while others decode, of
// different tasks' modules, produce exactly what each produces alone;
// cancellation, deadlines and the queue bound end sequences with their
// status while the others go on.
#include "server/generation/generation_loop.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <future>

#include "absl/strings/str_cat.h"
#include "tests/testlib/tuning_fixture.h"
#include "tuning/tune/task_batch.h"

namespace optrec {
namespace {

struct Outcome {
  absl::Status status;
  FinishReason finish = FinishReason::kLength;
  int64_t tokens = 0;
  std::string text;
};

struct Fixture {
  std::shared_ptr<const TransformerLM> model = LoadFixtureModel();
  std::shared_ptr<PromptModule> module;  // a generate task's, with adapters

  Fixture() {
    auto spec = ParseTaskSpec(TestSpec("generate"), "generate");
    auto task = MakeTaskContext(*spec, *model, SharedTuningFixture().world);
    module = *PromptModule::Create(*spec, TuningMethod::kOptionAdapter, *model,
                                   *(*task)->encoder, 3);
    torch::manual_seed(3);
    PromptModule::Named values;
    for (const auto& [name, t] : module->NamedTensors()) {
      values.emplace_back(name, torch::randn(t.sizes()) * 0.2);
    }
    EXPECT_TRUE(module->CopyFrom(values).ok());
  }

  GenerationRequest Request(const std::string& text, int64_t max_tokens,
                            bool with_module, uint64_t seed = 0) const {
    GenerationRequest r;
    auto ids = model->tokenizer()->Encode(text, true);
    EXPECT_TRUE(ids.ok());
    r.prompt_ids = *ids;
    if (with_module) {
      r.soft_prompt = module->user().prompt;
      r.adapter = module->user().adapter;
    }
    r.params.max_tokens = max_tokens;
    r.params.temperature = seed == 0 ? 0.0 : 0.9;
    r.params.seed = seed;
    r.params.stop_ids = {-5};  // never: every sequence runs to max_tokens
    return r;
  }

  // The same request decoded alone.
  std::string Alone(const GenerationRequest& r) const {
    auto out = Generate(model, {r});
    EXPECT_TRUE(out.ok()) << out.status();
    return (*out)[0].text;
  }
};

std::future<Outcome> Start(GenerationLoop& loop, GenerationJob job,
                           absl::Status* refused = nullptr) {
  auto outcome = std::make_shared<Outcome>();
  auto done = std::make_shared<std::promise<Outcome>>();
  auto result = done->get_future();
  job.on_text = [outcome](const std::string& t) { outcome->text += t; };
  job.on_done = [outcome, done](absl::Status s, FinishReason f, int64_t n) {
    outcome->status = s;
    outcome->finish = f;
    outcome->tokens = n;
    done->set_value(*outcome);
  };
  absl::Status queued = loop.Submit(std::move(job));
  if (refused != nullptr) *refused = queued;
  if (!queued.ok()) {
    Outcome o;
    o.status = queued;
    done->set_value(o);
  }
  return result;
}

GenerationJob Job(GenerationRequest r) {
  GenerationJob j;
  j.request = std::move(r);
  return j;
}

TEST(GenerationLoopTest, JoiningSequencesDecodeAsTheyWouldAlone) {
  Fixture f;
  GenerationLoop loop(f.model, {});
  const std::vector<GenerationRequest> requests = {
      f.Request("Clicked: trail running shoes", 24, true),
      f.Request("Shopper aged 25-34", 6, false),
      f.Request("Purchased: a desk lamp. Reason:", 12, true, 7),
      f.Request("Searched: socks", 3, false, 11)};
  std::vector<std::future<Outcome>> running;
  for (const GenerationRequest& r : requests) {
    running.push_back(Start(loop, Job(r)));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // stagger
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    Outcome o = running[i].get();
    ASSERT_TRUE(o.status.ok()) << o.status;
    EXPECT_EQ(o.finish, FinishReason::kLength);
    EXPECT_EQ(o.tokens, requests[i].params.max_tokens);
    EXPECT_EQ(o.text, f.Alone(requests[i])) << "request " << i;
  }
  EXPECT_EQ(loop.active(), 0);
}

// A clock one second later at every reading: deadlines pass after a known
// number of the loop's checks, however fast decoding is.
class TickingClock : public Clock {
 public:
  absl::Time Now() const override {
    return absl::FromUnixSeconds(1000 + ticks_.fetch_add(1));
  }

 private:
  mutable std::atomic<int64_t> ticks_{0};
};

TEST(GenerationLoopTest, CancelledAndExpiredSequencesLeaveTheBatch) {
  Fixture f;
  auto clock = std::make_shared<TickingClock>();
  GenerationLoop loop(f.model, {}, clock);
  // Cancelled at its third check, long before its 200 tokens.
  auto polls = std::make_shared<std::atomic<int>>(0);
  GenerationJob cancelled = Job(f.Request("Clicked: a lamp", 200, true));
  cancelled.cancelled = [polls] { return ++*polls >= 3; };
  auto c = Start(loop, std::move(cancelled));
  // Expires after a few dozen clock readings.
  GenerationJob expiring = Job(f.Request("Clicked: a desk", 200, false));
  expiring.deadline = clock->Now() + absl::Seconds(30);
  auto e = Start(loop, std::move(expiring));
  const GenerationRequest normal = f.Request("Searched: socks", 8, false);
  auto n = Start(loop, Job(normal));
  Outcome co = c.get(), eo = e.get();
  EXPECT_EQ(co.status.code(), absl::StatusCode::kCancelled);
  EXPECT_LT(co.tokens, 200);
  EXPECT_EQ(eo.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(eo.tokens, 200);
  Outcome o = n.get();
  ASSERT_TRUE(o.status.ok()) << o.status;
  EXPECT_EQ(o.text, f.Alone(normal));
}

TEST(GenerationLoopTest, FullQueueAndBadRequestsAreRefused) {
  Fixture f;
  GenerationLoopOptions options;
  options.max_active = 1;
  options.max_queued = 1;
  GenerationLoop loop(f.model, options);
  auto first = Start(loop, Job(f.Request("Clicked: a lamp", 200, false)));
  while (loop.active() == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  auto second = Start(loop, Job(f.Request("Clicked: a desk", 4, false)));
  absl::Status refused;
  Start(loop, Job(f.Request("Clicked: a pen", 4, false)), &refused);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(first.get().status.ok());
  EXPECT_TRUE(second.get().status.ok());

  GenerationRequest too_long = f.Request("Clicked: a lamp", 100000, false);
  EXPECT_THAT(std::string(loop.Submit(Job(too_long)).message()),
              ::testing::HasSubstr("must fit the model's"));
  GenerationRequest bad = f.Request("Clicked: a lamp", 4, false);
  bad.params.top_p = 2;
  EXPECT_EQ(loop.Submit(Job(bad)).code(), absl::StatusCode::kInvalidArgument);
  loop.Shutdown();
  EXPECT_EQ(loop.Submit(Job(f.Request("x", 2, false))).code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace optrec
