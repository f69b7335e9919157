#include "server/rpc/experimentation.h"

#include <chrono>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/util/files.h"
#include "core/util/log.h"
#include "core/util/status_macros.h"
#include "server/experiments/report.h"
#include "server/rpc/call_metrics.h"
#include "server/rpc/services.h"

namespace optrec {
namespace {

constexpr int64_t kDayUs = int64_t{86400} * 1000000;

int64_t SystemNowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

absl::Status ValidateExperimentOptions(const ExperimentOptions& o) {
  if (o.flush_records < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "experiments.flush_records: ", o.flush_records, " is below 1"));
  }
  if (o.flush_interval_us < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "experiments.flush_interval_us: ", o.flush_interval_us, " is below 1"));
  }
  if (o.max_file_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "experiments.max_file_bytes: ", o.max_file_bytes, " is below 1"));
  }
  if (o.recent_requests < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "experiments.recent_requests: ", o.recent_requests, " is negative"));
  }
  for (size_t i = 0; i < o.definitions.size(); ++i) {
    absl::Status valid = ValidateExperiment(o.definitions[i]);
    if (!valid.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("experiments.definitions[", i, "].", valid.message()));
    }
  }
  if (!o.definitions.empty() && o.dir.empty()) {
    return absl::InvalidArgumentError(
        "experiments.dir: required when experiments are defined (the "
        "exposure log lives there)");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Experimentation>> Experimentation::Open(
    const ExperimentOptions& options, const ModuleRegistry& registry,
    Metrics* metrics, std::function<int64_t()> clock_us,
    std::function<absl::Status(const ModuleVersion&)> can_serve) {
  RETURN_IF_ERROR(ValidateExperimentOptions(options));
  if (options.dir.empty()) {
    return absl::InvalidArgumentError("experiments.dir: required");
  }
  std::unique_ptr<Experimentation> e(new Experimentation());
  e->registry_ = &registry;
  e->metrics_ = metrics;
  e->clock_us_ = clock_us ? std::move(clock_us) : SystemNowUs;
  e->recent_capacity_ = options.recent_requests;
  e->can_serve_ = std::move(can_serve);
  e->log_dir_ = options.dir + "/log";

  ExperimentSet::Options set;
  set.state_path = options.dir + "/state.json";
  Experimentation* raw = e.get();
  set.check_version = [raw](const std::string& task,
                            const std::string& version) -> absl::Status {
    ASSIGN_OR_RETURN(ModuleVersion v, raw->registry_->Resolve(task, version));
    return raw->can_serve_ ? raw->can_serve_(v) : absl::OkStatus();
  };
  RETURN_IF_ERROR(MakeDirs(options.dir));
  ASSIGN_OR_RETURN(e->set_,
                   ExperimentSet::Open(std::move(set), options.definitions));

  DurableLog::Options log;
  log.dir = e->log_dir_;
  log.file_prefix = kExperimentLogPrefix;
  log.flush_records = options.flush_records;
  log.max_pending_records =
      std::max<int64_t>(log.max_pending_records, options.flush_records);
  log.flush_interval_us = options.flush_interval_us;
  log.max_file_bytes = options.max_file_bytes;
  // Serving never waits for the disk: a full queue refuses the record,
  // which is counted (exposures) or handed back (events).
  log.wait_when_full = false;
  // Every file starts with the definitions its records refer to.
  log.file_header = [raw] {
    std::vector<std::string> lines;
    for (const ExperimentDefinition& d : raw->set_->List()) {
      lines.push_back(ExperimentRecord(d, raw->clock_us_()));
    }
    return lines;
  };
  ASSIGN_OR_RETURN(e->log_, DurableLog::Open(std::move(log)));
  e->set_->set_on_change([raw](const ExperimentDefinition& d) {
    absl::Status logged = raw->log_->Append(ExperimentRecord(d, raw->NowUs()));
    if (!logged.ok()) {
      LOG_WARNING << "experiment " << d.name
                  << ": change not logged: " << logged;
    }
  });
  LOG_INFO << "experiments: " << e->set_->List().size() << " defined, log in "
           << e->log_dir_;
  return e;
}

Experimentation::~Experimentation() { Close().IgnoreError(); }

absl::Status Experimentation::Close() {
  if (log_ == nullptr) return absl::OkStatus();
  return log_->Close();
}

absl::StatusOr<Experimentation::Routed> Experimentation::Route(
    const std::string& task, const std::string& version,
    const std::string& unit_type, const std::string& unit_id) const {
  Routed r;
  if (version.empty() && !unit_id.empty()) {
    r.arm = set_->Assign(task, unit_type.empty() ? kDefaultUnitType : unit_type,
                         unit_id);
  }
  if (r.arm.has_value()) {
    absl::StatusOr<ModuleVersion> arm =
        registry_->Resolve(task, r.arm->version);
    if (arm.ok()) {
      r.module = *std::move(arm);
      return r;
    }
    if (metrics_ != nullptr) {
      metrics_->Add("optrec_experiment_fallbacks_total",
                    "requests an experiment arm could not serve (its version "
                    "is no longer loaded), served by the default version",
                    {{"experiment", r.arm->experiment}, {"arm", r.arm->arm}});
    }
    r.arm.reset();
  }
  ASSIGN_OR_RETURN(r.module, registry_->Resolve(task, version));
  return r;
}

void Experimentation::Remember(const std::string& request_id) {
  if (recent_capacity_ == 0) return;
  absl::MutexLock lock(&recent_mu_);
  if (!recent_.insert(request_id).second) return;
  recent_order_.push_back(request_id);
  while (static_cast<int64_t>(recent_order_.size()) > recent_capacity_) {
    recent_.erase(recent_order_.front());
    recent_order_.pop_front();
  }
}

void Experimentation::RecordExposure(const Routed& routed,
                                     const std::string& request_id,
                                     const std::string& unit_type,
                                     const std::string& unit_id) {
  if (!routed.arm.has_value()) return;
  Exposure x;
  x.time_us = NowUs();
  x.request_id = request_id;
  x.task = routed.module.task;
  x.experiment = routed.arm->experiment;
  x.arm = routed.arm->arm;
  x.version = routed.arm->version;
  x.unit_type = unit_type.empty() ? kDefaultUnitType : unit_type;
  x.unit = unit_id;
  Remember(request_id);
  absl::Status logged = log_->Append(ExposureRecord(x));
  if (!logged.ok()) {
    LogRefused(logged, x.experiment);
    return;
  }
  if (metrics_ != nullptr) {
    metrics_->Add("optrec_experiment_exposures_total",
                  "requests served by an experiment arm and logged",
                  {{"experiment", x.experiment}, {"arm", x.arm}});
  }
}

void Experimentation::LogRefused(const absl::Status& status,
                                 const std::string& experiment) {
  if (!warned_.exchange(true)) {
    LOG_WARNING << "experiment log refused a record (counted in "
                   "optrec_experiment_log_errors_total; warned once): "
                << status;
  }
  if (metrics_ != nullptr) {
    metrics_->Add("optrec_experiment_log_errors_total",
                  "exposures and events the experiment log refused",
                  {{"experiment", experiment}});
  }
}

absl::StatusOr<Experimentation::EventsResult> Experimentation::RecordEvents(
    std::vector<FeedbackEvent> events) {
  EventsResult result;
  for (size_t i = 0; i < events.size(); ++i) {
    FeedbackEvent& e = events[i];
    const int64_t now = NowUs();
    if (e.time_us == 0) e.time_us = now;
    if (e.unit_type.empty()) e.unit_type = kDefaultUnitType;
    absl::Status valid = ValidateEvent(e);
    if (valid.ok()) {
      valid = ValidateRequestKeys(e.request_id, e.unit_type, e.unit);
    }
    if (valid.ok() && (e.time_us < 0 || e.time_us > now + kDayUs)) {
      valid = absl::InvalidArgumentError(absl::StrCat(
          "time_us: ", e.time_us,
          " is before 1970 or more than a day ahead of the server's clock"));
    }
    if (valid.ok() && e.request_id.empty()) {
      valid = set_->Get(e.experiment).status();
    }
    if (valid.ok()) {
      valid = log_->Append(EventRecord(e));
      if (!valid.ok()) LogRefused(valid, e.experiment);
    }
    if (!valid.ok()) {
      result.rejected.push_back(
          {static_cast<int>(i), std::string(valid.message())});
      continue;
    }
    ++result.accepted;
    if (!e.request_id.empty()) {
      absl::MutexLock lock(&recent_mu_);
      if (recent_.count(e.request_id) == 0) ++result.unknown_requests;
    }
    if (metrics_ != nullptr) {
      metrics_->Add("optrec_experiment_events_total",
                    "feedback events logged, by kind",
                    {{"kind", EventKindName(e.kind)}});
    }
  }
  if (metrics_ != nullptr && result.unknown_requests > 0) {
    metrics_->Add("optrec_experiment_events_unknown_request_total",
                  "events naming a request this server has not served "
                  "recently under an experiment",
                  {}, static_cast<double>(result.unknown_requests));
  }
  return result;
}

absl::Status ValidateRequestKeys(const std::string& request_id,
                                 const std::string& unit_type,
                                 const std::string& unit_id) {
  for (const auto& [field, value] : {std::make_pair("request_id", &request_id),
                                     std::make_pair("unit_type", &unit_type),
                                     std::make_pair("unit_id", &unit_id)}) {
    if (value->size() > kMaxKeyBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": ", value->size(), " bytes; at most ",
                       kMaxKeyBytes, " are allowed"));
    }
  }
  return absl::OkStatus();
}

std::string NewRequestId() {
  thread_local absl::BitGen gen;
  return absl::StrFormat("%016x%016x", absl::Uniform<uint64_t>(gen),
                         absl::Uniform<uint64_t>(gen));
}

void ExperimentToProto(const ExperimentDefinition& d, v1::Experiment* out) {
  out->set_name(d.name);
  out->set_task(d.task);
  out->set_unit_type(d.unit_type);
  out->set_layer(d.layer);
  out->set_salt(d.salt);
  out->set_traffic(d.traffic);
  out->set_layer_share(d.layer_share);
  if (d.layer_offset >= 0) out->set_layer_offset(d.layer_offset);
  for (const ExperimentArm& a : d.arms) {
    v1::ExperimentArm* arm = out->add_arms();
    arm->set_name(a.name);
    arm->set_version(a.version);
    arm->set_weight(a.weight);
  }
  out->set_state(ExperimentStateName(d.state));
}

ExperimentDefinition ExperimentFromProto(const v1::Experiment& m) {
  ExperimentDefinition d;
  d.name = m.name();
  d.task = m.task();
  if (!m.unit_type().empty()) d.unit_type = m.unit_type();
  if (!m.layer().empty()) d.layer = m.layer();
  d.salt = m.salt();
  d.traffic = m.traffic() == 0 ? 1 : m.traffic();
  d.layer_share = m.layer_share();
  d.layer_offset = m.has_layer_offset() ? m.layer_offset() : -1;
  for (const v1::ExperimentArm& a : m.arms()) {
    d.arms.push_back({a.name(), a.version(), a.weight() == 0 ? 1 : a.weight()});
  }
  return d;
}

// ---- The admin service. ----

grpc::Status NoExperimentsStatus() {
  return grpc::Status(
      grpc::StatusCode::FAILED_PRECONDITION,
      "this server runs no experiments (set experiments.dir in its config)");
}

ExperimentsService::ExperimentsService(Experimentation* experimentation,
                                       Metrics* metrics)
    : experimentation_(experimentation), metrics_(metrics) {}

grpc::ServerUnaryReactor* ExperimentsService::DefineExperiment(
    grpc::CallbackServerContext* context, const v1::Experiment* request,
    v1::Experiment* response) {
  const CallMetrics call{metrics_, "DefineExperiment", "", ""};
  if (experimentation_ == nullptr) {
    return FinishNow(context, call, NoExperimentsStatus());
  }
  ExperimentDefinition d = ExperimentFromProto(*request);
  if (!request->state().empty()) {
    absl::StatusOr<ExperimentState> state =
        ParseExperimentState(request->state());
    if (!state.ok()) {
      return FinishNow(context, call, ToGrpcStatus(state.status()));
    }
    d.state = *state;
  }
  absl::StatusOr<ExperimentDefinition> stored =
      experimentation_->set().Define(std::move(d));
  if (stored.ok()) ExperimentToProto(*stored, response);
  return FinishNow(context, call, ToGrpcStatus(stored.status()));
}

grpc::ServerUnaryReactor* ExperimentsService::ChangeState(
    grpc::CallbackServerContext* context, const char* rpc,
    const std::string& name, ExperimentState state, v1::Experiment* response) {
  const CallMetrics call{metrics_, rpc, "", ""};
  if (experimentation_ == nullptr) {
    return FinishNow(context, call, NoExperimentsStatus());
  }
  absl::StatusOr<ExperimentDefinition> d =
      experimentation_->set().SetState(name, state);
  if (d.ok()) ExperimentToProto(*d, response);
  return FinishNow(context, call, ToGrpcStatus(d.status()));
}

grpc::ServerUnaryReactor* ExperimentsService::StartExperiment(
    grpc::CallbackServerContext* context, const v1::ExperimentRequest* request,
    v1::Experiment* response) {
  return ChangeState(context, "StartExperiment", request->name(),
                     ExperimentState::kRunning, response);
}

grpc::ServerUnaryReactor* ExperimentsService::PauseExperiment(
    grpc::CallbackServerContext* context, const v1::ExperimentRequest* request,
    v1::Experiment* response) {
  return ChangeState(context, "PauseExperiment", request->name(),
                     ExperimentState::kPaused, response);
}

grpc::ServerUnaryReactor* ExperimentsService::StopExperiment(
    grpc::CallbackServerContext* context, const v1::ExperimentRequest* request,
    v1::Experiment* response) {
  return ChangeState(context, "StopExperiment", request->name(),
                     ExperimentState::kStopped, response);
}

grpc::ServerUnaryReactor* ExperimentsService::SetTraffic(
    grpc::CallbackServerContext* context, const v1::SetTrafficRequest* request,
    v1::Experiment* response) {
  const CallMetrics call{metrics_, "SetTraffic", "", ""};
  if (experimentation_ == nullptr) {
    return FinishNow(context, call, NoExperimentsStatus());
  }
  absl::StatusOr<ExperimentDefinition> d =
      experimentation_->set().SetTraffic(request->name(), request->traffic());
  if (d.ok()) ExperimentToProto(*d, response);
  return FinishNow(context, call, ToGrpcStatus(d.status()));
}

grpc::ServerUnaryReactor* ExperimentsService::ListExperiments(
    grpc::CallbackServerContext* context, const v1::ListExperimentsRequest*,
    v1::ListExperimentsResponse* response) {
  const CallMetrics call{metrics_, "ListExperiments", "", ""};
  if (experimentation_ == nullptr) {
    return FinishNow(context, call, NoExperimentsStatus());
  }
  for (const ExperimentDefinition& d : experimentation_->set().List()) {
    ExperimentToProto(d, response->add_experiments());
  }
  return FinishNow(context, call, grpc::Status::OK);
}

// Reads the whole log on the gRPC thread: a report is an operator's call,
// not traffic.
grpc::ServerUnaryReactor* ExperimentsService::GetReport(
    grpc::CallbackServerContext* context,
    const v1::ExperimentReportRequest* request,
    v1::ExperimentReportResponse* response) {
  const CallMetrics call{metrics_, "GetReport", "", ""};
  if (experimentation_ == nullptr) {
    return FinishNow(context, call, NoExperimentsStatus());
  }
  absl::Status flushed = experimentation_->Flush();
  if (!flushed.ok()) {
    return FinishNow(context, call, ToGrpcStatus(flushed));
  }
  ReportOptions options;
  options.experiment = request->name();
  if (request->confidence() != 0) options.confidence = request->confidence();
  absl::StatusOr<ExperimentReport> report =
      BuildExperimentReport({experimentation_->log_dir()}, options);
  if (report.ok()) {
    response->set_report_json(report->ToJson().dump());
    response->set_text(report->ToText());
    response->set_lift_svg(report->LiftSvg());
  }
  return FinishNow(context, call, ToGrpcStatus(report.status()));
}

}  // namespace optrec
