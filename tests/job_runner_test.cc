// Tuning jobs run by the server: they finish with their modules, report
// progress, can be cancelled and resumed to the same result, and survive a
// restart as interrupted jobs that resume.
#include "server/jobs/job_runner.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/checkpoint/safetensors.h"
#include "tests/testlib/tiny_models.h"
#include "tests/testlib/tuning_fixture.h"

namespace optrec {
namespace {

TuneOptions SmallJob(const std::string& out, int64_t steps) {
  TuneOptions o;
  o.model_dir = SharedTuningFixture().model;
  o.data_root = SharedTuningFixture().world;
  TuneTaskOptions t;
  t.spec_path = WriteSpec(TestSpec("score"), "score");
  o.tasks = {t};
  o.out_dir = out;
  o.steps = steps;
  o.warmup_steps = 2;
  o.batch_examples = 4;
  o.eval_every = 10;
  o.eval_examples = 16;
  o.checkpoint_every = 5;
  o.max_train_examples = 200;
  return o;
}

JobRecord WaitUntilDone(JobRunner& runner, const std::string& id) {
  JobRecord r = *runner.Get(id);
  while (!r.terminal()) {
    r = *runner.WaitForChange(id, r.revision, absl::Now() + absl::Seconds(60));
  }
  return r;
}

std::map<std::string, torch::Tensor> Tensors(const std::string& path) {
  std::map<std::string, torch::Tensor> out;
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  for (const std::string& name : (*file)->names()) {
    out[name] = ToTorch(*file, *(*file)->Find(name), torch::kFloat32)->clone();
  }
  return out;
}

TEST(JobRunnerTest, AJobFinishesWithItsModuleAndReportsProgress) {
  const std::string dir = MakeTempDir("jobs");
  auto runner = LocalJobRunner::Open(dir + "/jobs", 1);
  ASSERT_TRUE(runner.ok()) << runner.status();
  auto id = (*runner)->Start(SmallJob(dir + "/out", 20));
  ASSERT_TRUE(id.ok()) << id.status();
  JobRecord r = *(*runner)->Get(*id);
  bool saw_progress = false;
  while (!r.terminal()) {
    r = *(*runner)->WaitForChange(*id, r.revision,
                                  absl::Now() + absl::Seconds(60));
    saw_progress |= r.progress.contains("step") && r.progress["step"] > 0;
  }
  ASSERT_EQ(r.state, JobState::kSucceeded) << r.error;
  EXPECT_TRUE(saw_progress);
  EXPECT_EQ(r.progress["steps"], 20);
  ASSERT_EQ(r.result["modules"].size(), 1u);
  EXPECT_TRUE(std::filesystem::exists(
      r.result["modules"][0]["path"].get<std::string>()));
  // The record is on disk too.
  EXPECT_TRUE(std::filesystem::exists(dir + "/jobs/" + *id + ".json"));
  EXPECT_EQ((*runner)->Cancel(*id).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*runner)->Get("job-none").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(JobRunnerTest, CancelledThenResumedEndsAsAnUninterruptedJob) {
  const std::string dir = MakeTempDir("jobs");
  auto runner = LocalJobRunner::Open(dir + "/jobs", 1);
  ASSERT_TRUE(runner.ok());
  auto straight = (*runner)->Start(SmallJob(dir + "/straight", 60));
  ASSERT_EQ(WaitUntilDone(**runner, *straight).state, JobState::kSucceeded);

  auto id = (*runner)->Start(SmallJob(dir + "/cut", 60));
  ASSERT_TRUE(id.ok());
  // Cancel once it has checkpointed.
  JobRecord r = *(*runner)->Get(*id);
  while (!(r.progress.contains("step") && r.progress["step"] >= 12)) {
    r = *(*runner)->WaitForChange(*id, r.revision,
                                  absl::Now() + absl::Seconds(60));
    ASSERT_FALSE(r.terminal()) << JobStateName(r.state) << " " << r.error;
  }
  ASSERT_TRUE((*runner)->Cancel(*id).ok());
  r = WaitUntilDone(**runner, *id);
  ASSERT_EQ(r.state, JobState::kCancelled) << r.error;
  EXPECT_THAT(r.error, ::testing::HasSubstr("lets it resume"));
  ASSERT_TRUE((*runner)->Resume(*id).ok());
  r = WaitUntilDone(**runner, *id);
  ASSERT_EQ(r.state, JobState::kSucceeded) << r.error;

  const auto a = Tensors(dir + "/straight/ctr.v1.safetensors");
  const auto b = Tensors(dir + "/cut/ctr.v1.safetensors");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    EXPECT_TRUE(torch::equal(t, b.at(name))) << name;
  }
}

TEST(JobRunnerTest, ARestartMarksUnfinishedJobsInterruptedAndTheyResume) {
  const std::string dir = MakeTempDir("jobs");
  std::string running, queued;
  {
    auto runner = LocalJobRunner::Open(dir + "/jobs", 1);
    ASSERT_TRUE(runner.ok());
    running = *(*runner)->Start(SmallJob(dir + "/a", 400));
    queued = *(*runner)->Start(SmallJob(dir + "/b", 10));
    JobRecord r = *(*runner)->Get(running);
    while (r.state != JobState::kRunning) {
      r = *(*runner)->WaitForChange(running, r.revision,
                                    absl::Now() + absl::Seconds(60));
    }
  }  // the runner stops: the running job checkpoints, the queued one waits
  auto restarted = LocalJobRunner::Open(dir + "/jobs", 1);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_EQ((*restarted)->Get(running)->state, JobState::kInterrupted);
  EXPECT_EQ((*restarted)->Get(queued)->state, JobState::kInterrupted);
  ASSERT_TRUE((*restarted)->Resume(queued).ok());
  EXPECT_EQ(WaitUntilDone(**restarted, queued).state, JobState::kSucceeded);
  EXPECT_EQ((*restarted)->Resume(queued).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace optrec
