// A server's A/B experiments: which module version serves a request (its
// unit's arm), the exposure and event log, and the Experiments admin
// service over them.
#ifndef OPTREC_SERVER_RPC_EXPERIMENTATION_H_
#define OPTREC_SERVER_RPC_EXPERIMENTATION_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "optrec/v1/optrec.grpc.pb.h"
#include "server/experiments/experiment_set.h"
#include "server/experiments/exposure_log.h"
#include "server/experiments/records.h"
#include "server/metrics/metrics.h"
#include "server/registry/module_registry.h"

namespace optrec {

struct ExperimentOptions {
  // Holds the state file ("state.json": definitions and states across
  // restarts) and the log ("log/experiments-NNNNNN.jsonl"); "" = no
  // experiments (requests never take part; RecordEvents and the
  // Experiments service answer FAILED_PRECONDITION).
  std::string dir;
  // Experiments defined at start, in order (ExperimentSet::Open: the state
  // file's definitions win over these for names it holds).
  std::vector<ExperimentDefinition> definitions;
  // The log's batching (DurableLog::Options): records per fsynced batch,
  // the longest a record waits for one, and the size that starts a new
  // file.
  int64_t flush_records = 512;
  int64_t flush_interval_us = 200000;
  int64_t max_file_bytes = int64_t{256} << 20;
  // How many request ids served under an experiment RecordEvents
  // remembers to tell unknown ones; >= 0 (0 = every event's request is
  // reported unknown).
  int64_t recent_requests = int64_t{1} << 20;
};

// InvalidArgument naming the field.
absl::Status ValidateExperimentOptions(const ExperimentOptions& options);

// Thread-safe.
class Experimentation {
 public:
  // Opens the experiment set and the log under options.dir (which must
  // not be ""), checking each arm's version against `registry`. The
  // registry and `metrics` (may be null) must outlive this object.
  // `clock_us` gives the time of exposures (microseconds since the Unix
  // epoch); null = the system clock.
  // `can_serve` says whether a loaded version can serve its task's
  // requests beyond being loaded (a retrieval version needs its index);
  // null = every loaded version can. Arms are checked with it when
  // defined (indexes are never removed once loaded).
  static absl::StatusOr<std::unique_ptr<Experimentation>> Open(
      const ExperimentOptions& options, const ModuleRegistry& registry,
      Metrics* metrics, std::function<int64_t()> clock_us = nullptr,
      std::function<absl::Status(const ModuleVersion&)> can_serve = nullptr);
  ~Experimentation();

  // The module serving a request and, when an experiment picked it, the
  // arm. An explicit `version` bypasses experiments. An arm whose version
  // the registry no longer holds falls back to the task's default (counted
  // in optrec_experiment_fallbacks_total; no exposure).
  struct Routed {
    ModuleVersion module;
    std::optional<ExperimentAssignment> arm;
  };
  absl::StatusOr<Routed> Route(const std::string& task,
                               const std::string& version,
                               const std::string& unit_type,
                               const std::string& unit_id) const;

  // Logs that `routed` served request `request_id` for the unit (only when
  // an arm did). Never blocks on the disk: when the log is failing or its
  // queue is full the exposure is lost, counted in
  // optrec_experiment_log_errors_total and warned about once; the response
  // is still served.
  void RecordExposure(const Routed& routed, const std::string& request_id,
                      const std::string& unit_type, const std::string& unit_id);

  // Logs feedback. Each event is checked (ValidateEvent; keys of at most
  // kMaxKeyBytes; a unit-keyed event must name a defined experiment; a
  // time from 0, meaning now, to a day ahead of this server's clock);
  // refused ones come back with their index and reason and are not logged,
  // so the caller can send them again: also those the log could not take
  // (a full queue, a failing disk).
  struct EventsResult {
    int64_t accepted = 0;
    std::vector<std::pair<int, std::string>> rejected;
    int64_t unknown_requests = 0;
  };
  absl::StatusOr<EventsResult> RecordEvents(std::vector<FeedbackEvent> events);

  // Makes everything logged so far durable.
  absl::Status Flush() { return log_->Flush(); }
  // Flushes and closes the log; later records fail. Idempotent.
  absl::Status Close();

  ExperimentSet& set() { return *set_; }
  const std::string& log_dir() const { return log_dir_; }
  int64_t NowUs() const { return clock_us_(); }

 private:
  Experimentation() = default;
  // Remembers a request id served under an experiment.
  void Remember(const std::string& request_id);
  // Counts a record the log refused, warning the first time.
  void LogRefused(const absl::Status& status, const std::string& experiment);

  const ModuleRegistry* registry_ = nullptr;
  std::function<absl::Status(const ModuleVersion&)> can_serve_;
  std::atomic<bool> warned_ = false;
  Metrics* metrics_ = nullptr;
  std::function<int64_t()> clock_us_;
  std::string log_dir_;
  std::unique_ptr<ExperimentSet> set_;
  std::unique_ptr<DurableLog> log_;
  int64_t recent_capacity_ = 0;
  mutable absl::Mutex recent_mu_;  // guards recent_ and recent_order_
  std::unordered_set<std::string> recent_ ABSL_GUARDED_BY(recent_mu_);
  std::deque<std::string> recent_order_ ABSL_GUARDED_BY(recent_mu_);
};

// The longest request id, unit id or unit type a request or event may
// carry, in bytes.
inline constexpr size_t kMaxKeyBytes = 256;

// InvalidArgument naming the field for a key longer than kMaxKeyBytes.
absl::Status ValidateRequestKeys(const std::string& request_id,
                                 const std::string& unit_type,
                                 const std::string& unit_id);

// A request id for a request that came without one: 32 random hex digits.
std::string NewRequestId();

// FAILED_PRECONDITION for an experiment call to a server that runs none.
grpc::Status NoExperimentsStatus();

// The Experiments admin service. `experimentation` may be null (the
// server runs none): every call is FAILED_PRECONDITION then.
class ExperimentsService final : public v1::Experiments::CallbackService {
 public:
  ExperimentsService(Experimentation* experimentation, Metrics* metrics);

  grpc::ServerUnaryReactor* DefineExperiment(
      grpc::CallbackServerContext* context, const v1::Experiment* request,
      v1::Experiment* response) override;
  grpc::ServerUnaryReactor* StartExperiment(
      grpc::CallbackServerContext* context,
      const v1::ExperimentRequest* request, v1::Experiment* response) override;
  grpc::ServerUnaryReactor* PauseExperiment(
      grpc::CallbackServerContext* context,
      const v1::ExperimentRequest* request, v1::Experiment* response) override;
  grpc::ServerUnaryReactor* StopExperiment(grpc::CallbackServerContext* context,
                                           const v1::ExperimentRequest* request,
                                           v1::Experiment* response) override;
  grpc::ServerUnaryReactor* SetTraffic(grpc::CallbackServerContext* context,
                                       const v1::SetTrafficRequest* request,
                                       v1::Experiment* response) override;
  grpc::ServerUnaryReactor* ListExperiments(
      grpc::CallbackServerContext* context,
      const v1::ListExperimentsRequest* request,
      v1::ListExperimentsResponse* response) override;
  grpc::ServerUnaryReactor* GetReport(
      grpc::CallbackServerContext* context,
      const v1::ExperimentReportRequest* request,
      v1::ExperimentReportResponse* response) override;

 private:
  grpc::ServerUnaryReactor* ChangeState(grpc::CallbackServerContext* context,
                                        const char* rpc,
                                        const std::string& name,
                                        ExperimentState state,
                                        v1::Experiment* response);

  Experimentation* const experimentation_;
  Metrics* const metrics_;
};

// The definition as its message, and back (empty strings take the
// definition's defaults).
void ExperimentToProto(const ExperimentDefinition& definition,
                       v1::Experiment* out);
ExperimentDefinition ExperimentFromProto(const v1::Experiment& message);

}  // namespace optrec

#endif  // OPTREC_SERVER_RPC_EXPERIMENTATION_H_
