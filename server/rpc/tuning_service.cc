#include "server/rpc/tuning_service.h"

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/rpc/services.h"

namespace optrec {
namespace {

grpc::ServerUnaryReactor* Reply(grpc::CallbackServerContext* context,
                                const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

void Fill(const JobRecord& r, v1::JobInfo* out) {
  out->set_id(r.id);
  out->set_state(JobStateName(r.state));
  out->set_error(r.error);
  out->set_revision(r.revision);
  out->set_options_json(r.options.dump());
  out->set_progress_json(r.progress.dump());
  out->set_result_json(r.result.dump());
}

// Sends the job's record now and at every change until it ends, from a
// thread of its own (waiting on the runner must not hold a gRPC thread).
class WatchStream : public grpc::ServerWriteReactor<v1::JobInfo> {
 public:
  WatchStream(JobRunner& runner, std::string id,
              std::shared_ptr<std::atomic<int>> watchers)
      : runner_(runner), id_(std::move(id)) {
    ++*watchers;
    std::thread([this, watchers] {
      Run();
      --*watchers;  // `this` is gone by now; the counter is shared
    }).detach();
  }
  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) gone_ = true;
  }
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    gone_ = true;
  }
  void OnDone() override { delete this; }

 private:
  void Run() {
    int64_t seen = -1;
    absl::Status status;
    while (true) {
      absl::StatusOr<JobRecord> r = runner_.WaitForChange(
          id_, seen, absl::Now() + absl::Milliseconds(500));
      if (!r.ok()) {
        status = r.status();
        break;
      }
      {
        absl::MutexLock lock(&mu_);
        auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return !writing_ || gone_;
        };
        mu_.Await(absl::Condition(&idle));
        if (gone_) {
          status = absl::CancelledError("the client went away");
          break;
        }
        if (r->revision > seen) {
          seen = r->revision;
          Fill(*r, &message_);
          writing_ = true;
          StartWrite(&message_);
        }
      }
      if (r->terminal()) break;
    }
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !writing_ || gone_;
    };
    mu_.Await(absl::Condition(&idle));
    Finish(ToGrpcStatus(status));  // `this` may be deleted from here on
  }

  JobRunner& runner_;
  const std::string id_;
  absl::Mutex mu_;  // guards the write state
  v1::JobInfo message_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool gone_ ABSL_GUARDED_BY(mu_) = false;
};

class FailedWatch : public grpc::ServerWriteReactor<v1::JobInfo> {
 public:
  explicit FailedWatch(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

TuningService::TuningService(JobRunner& runner, ModuleRegistry& registry,
                             std::string model_dir)
    : runner_(runner), registry_(registry), model_dir_(std::move(model_dir)) {}

TuningService::~TuningService() {
  while (watchers_->load() > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

grpc::ServerUnaryReactor* TuningService::StartJob(
    grpc::CallbackServerContext* context, const v1::StartJobRequest* request,
    v1::JobInfo* response) {
  TuneOptions o;
  o.model_dir = model_dir_;
  o.data_root = request->data_root();
  o.out_dir = request->out_dir();
  for (const v1::TuneTask& t : request->tasks()) {
    TuneTaskOptions task;
    task.spec_path = t.spec_path();
    task.method = t.method();
    if (!t.version().empty()) task.version = t.version();
    if (t.loss_weight() != 0) task.loss_weight = t.loss_weight();
    task.batch_examples = t.batch();
    if (!task.method.empty() && !ParseTuningMethod(task.method).ok()) {
      return Reply(context, ParseTuningMethod(task.method).status());
    }
    o.tasks.push_back(std::move(task));
  }
  auto set = [](auto value, auto* field) {
    if (value != 0) *field = value;
  };
  set(request->steps(), &o.steps);
  set(request->batch(), &o.batch_examples);
  set(request->learning_rate(), &o.learning_rate);
  set(request->min_learning_rate(), &o.min_learning_rate);
  set(request->warmup_steps(), &o.warmup_steps);
  set(request->weight_decay(), &o.weight_decay);
  set(request->grad_clip_norm(), &o.grad_clip_norm);
  set(request->seed(), &o.seed);
  set(request->eval_every(), &o.eval_every);
  set(request->eval_examples(), &o.eval_examples);
  set(request->patience(), &o.patience);
  set(request->max_train_examples(), &o.max_train_examples);
  set(request->checkpoint_every(), &o.checkpoint_every);
  o.command_line = "Tuning.StartJob";
  absl::StatusOr<std::string> id = runner_.Start(o);
  if (!id.ok()) return Reply(context, id.status());
  absl::StatusOr<JobRecord> r = runner_.Get(*id);
  if (r.ok()) Fill(*r, response);
  return Reply(context, r.status());
}

grpc::ServerUnaryReactor* TuningService::GetJob(
    grpc::CallbackServerContext* context, const v1::JobRequest* request,
    v1::JobInfo* response) {
  absl::StatusOr<JobRecord> r = runner_.Get(request->id());
  if (r.ok()) Fill(*r, response);
  return Reply(context, r.status());
}

grpc::ServerWriteReactor<v1::JobInfo>* TuningService::WatchJob(
    grpc::CallbackServerContext*, const v1::JobRequest* request) {
  absl::StatusOr<JobRecord> r = runner_.Get(request->id());
  if (!r.ok()) return new FailedWatch(ToGrpcStatus(r.status()));
  return new WatchStream(runner_, request->id(), watchers_);
}

grpc::ServerUnaryReactor* TuningService::CancelJob(
    grpc::CallbackServerContext* context, const v1::JobRequest* request,
    v1::JobInfo* response) {
  absl::Status cancelled = runner_.Cancel(request->id());
  if (!cancelled.ok()) return Reply(context, cancelled);
  absl::StatusOr<JobRecord> r = runner_.Get(request->id());
  if (r.ok()) Fill(*r, response);
  return Reply(context, r.status());
}

grpc::ServerUnaryReactor* TuningService::ResumeJob(
    grpc::CallbackServerContext* context, const v1::JobRequest* request,
    v1::JobInfo* response) {
  absl::Status resumed = runner_.Resume(request->id());
  if (!resumed.ok()) return Reply(context, resumed);
  absl::StatusOr<JobRecord> r = runner_.Get(request->id());
  if (r.ok()) Fill(*r, response);
  return Reply(context, r.status());
}

grpc::ServerUnaryReactor* TuningService::ListJobs(
    grpc::CallbackServerContext* context, const v1::ListJobsRequest*,
    v1::ListJobsResponse* response) {
  for (const JobRecord& r : runner_.List()) Fill(r, response->add_jobs());
  return Reply(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* TuningService::RegisterModules(
    grpc::CallbackServerContext* context,
    const v1::RegisterModulesRequest* request,
    v1::RegisterModulesResponse* response) {
  absl::StatusOr<JobRecord> r = runner_.Get(request->id());
  if (!r.ok()) return Reply(context, r.status());
  if (r->state != JobState::kSucceeded) {
    return Reply(context, absl::FailedPreconditionError(absl::StrCat(
                              "tuning job ", r->id, " is ",
                              JobStateName(r->state), ", not succeeded")));
  }
  for (const nlohmann::json& m : r->result["modules"]) {
    absl::StatusOr<ModuleVersion> v =
        registry_.Load(m["path"].get<std::string>());
    if (!v.ok()) return Reply(context, v.status());
    if (request->make_default()) {
      absl::Status promoted = registry_.SetDefault(v->task, v->version);
      if (!promoted.ok()) return Reply(context, promoted);
    }
    v1::LoadModuleResponse* loaded = response->add_modules();
    loaded->set_task(v->task);
    loaded->set_version(v->version);
    loaded->set_is_default(registry_.Resolve(v->task)->version == v->version);
  }
  return Reply(context, absl::OkStatus());
}

}  // namespace optrec
