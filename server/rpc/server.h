// One optrec server process: the frozen backbone, the module registry, the
// batch scheduler and the gRPC services (with standard health checking and
// server reflection) on one listening address.
#ifndef OPTREC_SERVER_RPC_SERVER_H_
#define OPTREC_SERVER_RPC_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/runtime/device.h"
#include "server/jobs/job_runner.h"
#include "server/metrics/http_exporter.h"
#include "server/metrics/metrics.h"
#include "server/registry/module_registry.h"
#include "server/rpc/services.h"
#include "server/rpc/tuning_service.h"
#include "server/scheduler/batch_scheduler.h"

namespace optrec {

struct ServeOptions {
  // host:port to listen on; port 0 picks a free one (see Server::port).
  std::string listen = "127.0.0.1:50051";
  // The frozen backbone (a Hugging Face model directory with a tokenizer).
  std::string model_dir;
  // "auto", "cpu", "cuda", "cuda:N" and "auto", "f32", "bf16", "f16".
  std::string device = "auto";
  std::string dtype = "auto";
  // Module files loaded at start, each as the version its metadata records;
  // the first version of each task becomes its default.
  std::vector<std::string> modules;
  // Retrieval index folders (optrec index build), each for the module
  // version recorded in it, which `modules` must load.
  std::vector<std::string> indexes;
  SchedulerOptions scheduler;
  // The segment-state cache of late-interaction modules.
  struct LateInteraction {
    // Bound on the cached states' bytes; 0 = no cache (each batch encodes
    // its segments).
    int64_t cache_bytes = int64_t{1} << 30;
    // "bf16", "f16" or "f32": how states are kept.
    std::string storage = "bf16";
    // State files (optrec cache warm) loaded at start, each with the split
    // it holds. A missing, corrupt or foreign file is skipped with a
    // warning: the server starts colder, never serves from it.
    struct StateFile {
      std::string path;
      int64_t lower_layers = 0;
    };
    std::vector<StateFile> state_files;
  } late_interaction;
  GenerationLoopOptions generation;
  RequestLimits limits;
  // Tuning jobs' records and checkpoints; "" = no Tuning service.
  std::string jobs_dir;
  // Jobs run at once (each on a worker thread below traffic's priority).
  int tuning_workers = 1;
  // A/B experiments between module versions; experiments.dir "" = none.
  ExperimentOptions experiments;
  // host:port of the Prometheus endpoint (GET /metrics); "" = none.
  std::string metrics_listen;
  // Largest request or response message, in bytes.
  int64_t max_message_bytes = 16 << 20;
  // How long a graceful shutdown waits for calls in flight, in ms.
  int64_t shutdown_grace_ms = 10000;
};

// Reads a JSON configuration object: every ServeOptions field under its
// name ("listen", "model_dir", "device", "dtype", "modules", "indexes",
// "metrics_listen", "jobs_dir", "tuning_workers",
// "max_message_bytes", "shutdown_grace_ms"), the scheduler's
// under "batching" ("max_batch_rows", "max_batch_tokens",
// "max_queue_delay_us", "max_queued_rows", "runner_threads"), the
// generation loop's under "generation" ("max_active", "max_queued") and the
// request limits under "limits" ("max_candidates", "max_retrieve_k"), and
// the segment-state cache under "late_interaction" ("cache_bytes",
// "storage", "state_files": [{"path", "lower_layers"}]), and the A/B
// experiments under "experiments" ("dir", "flush_records",
// "flush_interval_us", "max_file_bytes", "recent_requests", "definitions":
// [experiment objects as ExperimentToJson writes them]). Fields left out
// keep the values in `options`. InvalidArgument naming the field for unknown
// fields and values of the wrong type.
absl::Status ApplyServeConfig(const nlohmann::json& config,
                              ServeOptions* options);

// InvalidArgument naming the field for options that cannot serve.
absl::Status ValidateServeOptions(const ServeOptions& options);

class Server {
 public:
  // Loads the model and modules and starts listening. Errors name the
  // model, module or address that failed; nothing is left listening.
  static absl::StatusOr<std::unique_ptr<Server>> Start(
      const ServeOptions& options);
  ~Server();

  // The port actually bound, and the metrics endpoint's (0 = none).
  int port() const { return port_; }
  int metrics_port() const;
  const Metrics& metrics() const { return metrics_; }
  ModuleRegistry& registry() { return *registry_; }
  // Null when the server runs no experiments.
  Experimentation* experimentation() { return experimentation_.get(); }
  const BatchScheduler& scheduler() const { return *scheduler_; }

  // Stops accepting calls, lets those in flight finish for up to the grace
  // period (then cancels them), stops the scheduler and the generator from
  // taking new work (rows already queued still run) and closes the
  // experiment log (every exposure and event made durable). Idempotent.
  void Shutdown();
  // Blocks until Shutdown has completed.
  void Wait();

 private:
  Server() = default;
  void RegisterMetrics();

  ServeOptions options_;
  Metrics metrics_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;
  std::shared_ptr<const TransformerLM> model_;
  std::unique_ptr<ModuleRegistry> registry_;
  // The segment-state cache from options_.late_interaction (null for
  // cache_bytes 0), with its state files loaded.
  absl::StatusOr<std::shared_ptr<SegmentStateCache>> MakeSegmentCache();
  std::shared_ptr<SegmentStateCache> segment_cache_;
  std::unique_ptr<BatchScheduler> scheduler_;
  std::unique_ptr<GenerationLoop> generation_;
  IndexSet indexes_;
  std::unique_ptr<Experimentation> experimentation_;
  std::unique_ptr<ExperimentsService> experiments_;
  std::unique_ptr<RecommenderService> recommender_;
  std::unique_ptr<TasksService> tasks_;
  std::unique_ptr<LocalJobRunner> jobs_;
  std::unique_ptr<TuningService> tuning_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace optrec

#endif  // OPTREC_SERVER_RPC_SERVER_H_
