#include "server/jobs/job_runner.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/util/files.h"
#include "core/util/log.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr JobState kStates[] = {JobState::kQueued,    JobState::kRunning,
                                JobState::kSucceeded, JobState::kFailed,
                                JobState::kCancelled, JobState::kInterrupted};

// Scheduling niceness of the worker threads: traffic comes first.
constexpr int kWorkerNice = 10;
// Progress is written to disk at most this often (state changes always).
constexpr absl::Duration kPersistProgressEvery = absl::Seconds(5);

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

Json ProgressJson(const TuneProgress& p) {
  Json tasks = Json::array();
  for (size_t i = 0; i < p.tasks.size(); ++i) {
    tasks.push_back(
        {{"task", p.tasks[i]},
         {"loss", std::isfinite(p.losses[i]) ? Json(p.losses[i]) : Json()},
         {"validation", p.validation[i]}});
  }
  return {{"step", p.step},
          {"steps", p.steps},
          {"examples_seen", p.examples_seen},
          {"examples_per_second", p.examples_per_second},
          {"seconds", p.seconds},
          {"tasks", tasks}};
}

}  // namespace

const char* JobStateName(JobState state) {
  switch (state) {
    case JobState::kQueued:
      return "queued";
    case JobState::kRunning:
      return "running";
    case JobState::kSucceeded:
      return "succeeded";
    case JobState::kFailed:
      return "failed";
    case JobState::kCancelled:
      return "cancelled";
    case JobState::kInterrupted:
      return "interrupted";
  }
  return "?";
}

Json JobRecord::ToJson() const {
  return {{"id", id},
          {"state", JobStateName(state)},
          {"revision", revision},
          {"options", options},
          {"progress", progress},
          {"result", result},
          {"error", error},
          {"created_unix_ms", created_unix_ms},
          {"updated_unix_ms", updated_unix_ms}};
}

absl::StatusOr<JobRecord> JobRecord::FromJson(const Json& j) {
  JobRecord r;
  try {
    r.id = j.at("id").get<std::string>();
    const std::string state = j.at("state").get<std::string>();
    bool known = false;
    for (JobState s : kStates) {
      if (state == JobStateName(s)) {
        r.state = s;
        known = true;
      }
    }
    if (!known) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown job state '", state, "'"));
    }
    r.revision = j.at("revision").get<int64_t>();
    r.options = j.at("options");
    r.progress = j.at("progress");
    r.result = j.at("result");
    r.error = j.at("error").get<std::string>();
    r.created_unix_ms = j.at("created_unix_ms").get<int64_t>();
    r.updated_unix_ms = j.at("updated_unix_ms").get<int64_t>();
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a job record: ", e.what()));
  }
  return r;
}

Json TuneOptionsToJson(const TuneOptions& o) {
  Json tasks = Json::array();
  for (const TuneTaskOptions& t : o.tasks) {
    tasks.push_back({{"spec_path", t.spec_path},
                     {"method", t.method},
                     {"version", t.version},
                     {"loss_weight", t.loss_weight},
                     {"batch_examples", t.batch_examples}});
  }
  return {{"model_dir", o.model_dir},
          {"data_root", o.data_root},
          {"tasks", tasks},
          {"out_dir", o.out_dir},
          {"work_dir", o.work_dir},
          {"force", o.force},
          {"seed", o.seed},
          {"steps", o.steps},
          {"batch_examples", o.batch_examples},
          {"learning_rate", o.learning_rate},
          {"min_learning_rate", o.min_learning_rate},
          {"warmup_steps", o.warmup_steps},
          {"weight_decay", o.weight_decay},
          {"grad_clip_norm", o.grad_clip_norm},
          {"max_train_examples", o.max_train_examples},
          {"eval_every", o.eval_every},
          {"eval_examples", o.eval_examples},
          {"patience", o.patience},
          {"checkpoint_every", o.checkpoint_every},
          {"command_line", o.command_line}};
}

absl::StatusOr<TuneOptions> TuneOptionsFromJson(const Json& j) {
  TuneOptions o;
  try {
    o.model_dir = j.at("model_dir").get<std::string>();
    o.data_root = j.at("data_root").get<std::string>();
    for (const Json& t : j.at("tasks")) {
      TuneTaskOptions task;
      task.spec_path = t.at("spec_path").get<std::string>();
      task.method = t.at("method").get<std::string>();
      task.version = t.at("version").get<std::string>();
      task.loss_weight = t.at("loss_weight").get<double>();
      task.batch_examples = t.at("batch_examples").get<int64_t>();
      o.tasks.push_back(std::move(task));
    }
    o.out_dir = j.at("out_dir").get<std::string>();
    o.work_dir = j.at("work_dir").get<std::string>();
    o.force = j.at("force").get<bool>();
    o.seed = j.at("seed").get<uint64_t>();
    o.steps = j.at("steps").get<int64_t>();
    o.batch_examples = j.at("batch_examples").get<int64_t>();
    o.learning_rate = j.at("learning_rate").get<double>();
    o.min_learning_rate = j.at("min_learning_rate").get<double>();
    o.warmup_steps = j.at("warmup_steps").get<int64_t>();
    o.weight_decay = j.at("weight_decay").get<double>();
    o.grad_clip_norm = j.at("grad_clip_norm").get<double>();
    o.max_train_examples = j.at("max_train_examples").get<int64_t>();
    o.eval_every = j.at("eval_every").get<int64_t>();
    o.eval_examples = j.at("eval_examples").get<int64_t>();
    o.patience = j.at("patience").get<int64_t>();
    o.checkpoint_every = j.at("checkpoint_every").get<int64_t>();
    o.command_line = j.at("command_line").get<std::string>();
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("job options: ", e.what()));
  }
  return o;
}

absl::StatusOr<std::unique_ptr<LocalJobRunner>> LocalJobRunner::Open(
    const std::string& jobs_dir, int workers) {
  if (workers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("tuning workers must be at least 1, got ", workers));
  }
  RETURN_IF_ERROR(MakeDirs(jobs_dir));
  std::unique_ptr<LocalJobRunner> runner(new LocalJobRunner(jobs_dir));
  std::error_code ec;
  {
    absl::MutexLock lock(&runner->mu_);
    for (const auto& entry : fs::directory_iterator(jobs_dir, ec)) {
      const std::string path = entry.path().string();
      if (entry.path().extension() != ".json") continue;
      ASSIGN_OR_RETURN(std::string text, ReadFile(path));
      absl::StatusOr<JobRecord> record =
          JobRecord::FromJson(Json::parse(text, nullptr, false));
      if (!record.ok()) {
        return absl::DataLossError(
            absl::StrCat(path, ": ", record.status().message()));
      }
      if (!record->terminal()) {
        record->error = absl::StrCat("the server stopped while the job was ",
                                     JobStateName(record->state));
        record->state = JobState::kInterrupted;
        ++record->revision;
        record->updated_unix_ms = NowMs();
        runner->Persist(*record);
        LOG_WARNING << "tuning job " << record->id
                    << " was interrupted; Resume continues it";
      }
      runner->jobs_[record->id].record = *std::move(record);
    }
  }
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot read ", jobs_dir, ": ", ec.message()));
  }
  for (int i = 0; i < workers; ++i) {
    runner->workers_.emplace_back([raw = runner.get()] { raw->Worker(); });
  }
  return runner;
}

LocalJobRunner::~LocalJobRunner() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : workers_) t.join();
}

void LocalJobRunner::Persist(const JobRecord& record) {
  const std::string path = absl::StrCat(dir_, "/", record.id, ".json");
  absl::Status written = WriteFileAtomic(path, record.ToJson().dump(2) + "\n");
  if (!written.ok()) {
    LOG_WARNING << "cannot record tuning job " << record.id << ": "
                << written.message();
  }
}

void LocalJobRunner::Touch(Job& job) {
  ++job.record.revision;
  job.record.updated_unix_ms = NowMs();
}

absl::StatusOr<std::string> LocalJobRunner::Start(const TuneOptions& given) {
  RETURN_IF_ERROR(ValidateTuneOptions(given));
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the job runner is stopping");
  std::string id;
  for (int n = 0; id.empty() || jobs_.count(id) != 0; ++n) {
    id = absl::StrCat("job-", NowMs(), n > 0 ? absl::StrCat("-", n) : "");
  }
  TuneOptions o = given;
  o.cancelled = nullptr;
  o.on_progress = nullptr;
  // Its own work folder, so that Resume finds the checkpoints.
  if (o.work_dir.empty()) o.work_dir = absl::StrCat(dir_, "/", id, ".work");
  Job& job = jobs_[id];
  job.record.id = id;
  job.record.state = JobState::kQueued;
  job.record.options = TuneOptionsToJson(o);
  job.record.created_unix_ms = NowMs();
  Touch(job);
  Persist(job.record);
  queue_.push_back(id);
  LOG_INFO << "tuning job " << id << " queued";
  return id;
}

absl::StatusOr<JobRecord> LocalJobRunner::Get(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("no tuning job ", id));
  }
  return it->second.record;
}

std::vector<JobRecord> LocalJobRunner::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<JobRecord> out;
  for (const auto& [id, job] : jobs_) out.push_back(job.record);
  return out;
}

absl::Status LocalJobRunner::Cancel(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("no tuning job ", id));
  }
  Job& job = it->second;
  if (job.record.terminal()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tuning job ", id, " is ", JobStateName(job.record.state)));
  }
  job.cancel_requested = true;
  if (job.record.state == JobState::kQueued) {
    for (auto q = queue_.begin(); q != queue_.end(); ++q) {
      if (*q == id) {
        queue_.erase(q);
        break;
      }
    }
    job.record.state = JobState::kCancelled;
    job.record.error = "cancelled before it started";
    Touch(job);
    Persist(job.record);
  }
  return absl::OkStatus();
}

absl::Status LocalJobRunner::Resume(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("no tuning job ", id));
  }
  Job& job = it->second;
  const JobState s = job.record.state;
  if (s != JobState::kInterrupted && s != JobState::kFailed &&
      s != JobState::kCancelled) {
    return absl::FailedPreconditionError(
        absl::StrCat("tuning job ", id, " is ", JobStateName(s),
                     "; only interrupted, failed or cancelled jobs resume"));
  }
  job.cancel_requested = false;
  job.record.state = JobState::kQueued;
  job.record.error.clear();
  Touch(job);
  Persist(job.record);
  queue_.push_back(id);
  return absl::OkStatus();
}

absl::StatusOr<JobRecord> LocalJobRunner::WaitForChange(
    const std::string& id, int64_t after_revision, absl::Time deadline) const {
  absl::MutexLock lock(&mu_);
  if (jobs_.count(id) == 0) {
    return absl::NotFoundError(absl::StrCat("no tuning job ", id));
  }
  auto changed = [this, &id, after_revision]()
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                       return jobs_.at(id).record.revision > after_revision;
                     };
  mu_.AwaitWithDeadline(absl::Condition(&changed), deadline);
  return jobs_.at(id).record;
}

void LocalJobRunner::Worker() {
  // This thread runs below traffic. (LibTorch's intra-op threads are shared
  // with serving and keep their priority.)
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)),
              kWorkerNice);
  while (true) {
    std::string id;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !queue_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      id = queue_.front();
      queue_.pop_front();
    }
    RunJob(id);
  }
}

void LocalJobRunner::RunJob(const std::string& id) {
  absl::StatusOr<TuneOptions> options = absl::UnknownError("unset");
  {
    absl::MutexLock lock(&mu_);
    Job& job = jobs_.at(id);
    options = TuneOptionsFromJson(job.record.options);
    job.record.state = JobState::kRunning;
    Touch(job);
    Persist(job.record);
  }
  LOG_INFO << "tuning job " << id << " started";
  absl::StatusOr<TuneResult> result =
      options.ok() ? absl::StatusOr<TuneResult>(absl::UnknownError("not run"))
                   : absl::StatusOr<TuneResult>(options.status());
  if (options.ok()) {
    absl::Time last_persist = absl::InfinitePast();
    options->cancelled = [this, id] {
      absl::MutexLock lock(&mu_);
      return stopping_ || jobs_.at(id).cancel_requested;
    };
    options->on_progress = [this, id, &last_persist](const TuneProgress& p) {
      absl::MutexLock lock(&mu_);
      Job& job = jobs_.at(id);
      job.record.progress = ProgressJson(p);
      Touch(job);
      if (absl::Now() - last_persist >= kPersistProgressEvery) {
        Persist(job.record);
        last_persist = absl::Now();
      }
    };
    result = Tune(*options);
  }
  absl::MutexLock lock(&mu_);
  Job& job = jobs_.at(id);
  if (result.ok()) {
    job.record.state = JobState::kSucceeded;
    Json modules = Json::array();
    for (const TunedTask& t : result->tasks) {
      modules.push_back({{"task", t.task},
                         {"version", t.version},
                         {"method", t.method},
                         {"path", t.module_path},
                         {"best_step", t.best_step},
                         {"metrics", t.best_metrics}});
    }
    job.record.result = {{"modules", modules},
                         {"steps", result->steps},
                         {"seconds", result->seconds}};
  } else if (absl::IsCancelled(result.status())) {
    job.record.state =
        stopping_ ? JobState::kInterrupted : JobState::kCancelled;
    job.record.error = std::string(result.status().message());
  } else {
    job.record.state = JobState::kFailed;
    job.record.error = std::string(result.status().message());
  }
  Touch(job);
  Persist(job.record);
  LOG_INFO << "tuning job " << id << " " << JobStateName(job.record.state);
}

}  // namespace optrec
