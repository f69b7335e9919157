// Where tuning jobs run for the Tuning admin service. JobRunner is the
// seam: today's implementation, LocalJobRunner, runs jobs on worker
// threads of the serving process at a lower scheduling priority than
// traffic; a runner that hands jobs to a cluster would implement the same
// interface.
//
// Jobs are durable: each job's record (its options, state, progress and
// result) is a JSON file in the jobs folder, rewritten atomically on every
// state change. A runner starting on a folder marks the jobs that were
// queued or running when the previous process ended as interrupted;
// Resume queues an interrupted, failed or cancelled job again, and the job
// continues from its last checkpoint (tuning/tune/tuner.h).
#ifndef OPTREC_SERVER_JOBS_JOB_RUNNER_H_
#define OPTREC_SERVER_JOBS_JOB_RUNNER_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tuning/tune/tuner.h"

namespace optrec {

enum class JobState {
  kQueued,
  kRunning,
  kSucceeded,
  kFailed,
  kCancelled,
  kInterrupted,  // the process ended while it was queued or running
};
// "queued", "running", "succeeded", "failed", "cancelled", "interrupted".
const char* JobStateName(JobState state);

struct JobRecord {
  std::string id;
  JobState state = JobState::kQueued;
  // Bumped on every change, so that watchers see each one.
  int64_t revision = 0;
  nlohmann::json options;   // TuneOptionsToJson of the job's options
  nlohmann::json progress;  // the latest TuneProgress, as JSON
  // When succeeded: {"modules": [{"task", "version", "path", "metrics"}]}.
  nlohmann::json result;
  std::string error;  // when failed, cancelled or interrupted
  int64_t created_unix_ms = 0;
  int64_t updated_unix_ms = 0;

  nlohmann::json ToJson() const;
  static absl::StatusOr<JobRecord> FromJson(const nlohmann::json& j);
  bool terminal() const {
    return state != JobState::kQueued && state != JobState::kRunning;
  }
};

class JobRunner {
 public:
  virtual ~JobRunner() = default;
  // Queues a job; returns its id. InvalidArgument for options that cannot
  // run (ValidateTuneOptions).
  virtual absl::StatusOr<std::string> Start(const TuneOptions& options) = 0;
  // NotFound naming the id.
  virtual absl::StatusOr<JobRecord> Get(const std::string& id) const = 0;
  virtual std::vector<JobRecord> List() const = 0;
  // Cancels a queued or running job (a running one stops at its next step
  // and keeps its checkpoint). FailedPrecondition for a finished job.
  virtual absl::Status Cancel(const std::string& id) = 0;
  // Queues an interrupted, failed or cancelled job again.
  virtual absl::Status Resume(const std::string& id) = 0;
  // The job's record once its revision passes `after_revision`, or as it is
  // at `deadline`. NotFound naming the id.
  virtual absl::StatusOr<JobRecord> WaitForChange(
      const std::string& id, int64_t after_revision,
      absl::Time deadline) const = 0;
};

// Thread-safe.
class LocalJobRunner : public JobRunner {
 public:
  // Reads the jobs in `jobs_dir` (created when missing), marking queued or
  // running ones interrupted, and starts `workers` threads. Errors name the
  // folder or the record file.
  static absl::StatusOr<std::unique_ptr<LocalJobRunner>> Open(
      const std::string& jobs_dir, int workers);
  // Cancels running jobs (they checkpoint) and joins the workers; queued
  // jobs stay queued on disk and are interrupted for the next process.
  ~LocalJobRunner() override;

  absl::StatusOr<std::string> Start(const TuneOptions& options) override;
  absl::StatusOr<JobRecord> Get(const std::string& id) const override;
  std::vector<JobRecord> List() const override;
  absl::Status Cancel(const std::string& id) override;
  absl::Status Resume(const std::string& id) override;
  absl::StatusOr<JobRecord> WaitForChange(const std::string& id,
                                          int64_t after_revision,
                                          absl::Time deadline) const override;

 private:
  struct Job {
    JobRecord record;
    bool cancel_requested = false;
  };

  LocalJobRunner(std::string jobs_dir) : dir_(std::move(jobs_dir)) {}
  void Worker();
  void RunJob(const std::string& id);
  // Writes the record to disk (the lock held); a failed write is logged.
  void Persist(const JobRecord& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Touch(Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string dir_;
  mutable absl::Mutex mu_;  // guards jobs_, queue_, stopping_, next_id_
  std::map<std::string, Job> jobs_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

// The options of a job as JSON and back (every field of TuneOptions but the
// hooks). FromJson: InvalidArgument naming the field.
nlohmann::json TuneOptionsToJson(const TuneOptions& o);
absl::StatusOr<TuneOptions> TuneOptionsFromJson(const nlohmann::json& j);

}  // namespace optrec

#endif  // OPTREC_SERVER_JOBS_JOB_RUNNER_H_
