#include "server/rpc/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cache/sharded_lru_cache.h"
#include "cache/state_file.h"
#include "core/util/json_fields.h"
#include "core/util/log.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

using Json = nlohmann::json;

absl::Status Unknown(const Json& j, const std::string& prefix,
                     const std::set<std::string>& known) {
  return CheckKnownFields(j, "config", prefix, known);
}

template <typename T>
absl::Status Read(const Json& j, const std::string& key,
                  const std::string& where, T* out) {
  return ReadJsonField(j, key, "config", where, out);
}

}  // namespace

absl::Status ApplyServeConfig(const Json& c, ServeOptions* o) {
  if (!c.is_object()) {
    return absl::InvalidArgumentError("config: must be a JSON object");
  }
  RETURN_IF_ERROR(
      Unknown(c, "",
              {"listen", "model_dir", "device", "dtype", "modules", "indexes",
               "batching", "generation", "limits", "late_interaction",
               "jobs_dir", "tuning_workers", "metrics_listen",
               "max_message_bytes", "shutdown_grace_ms", "experiments"}));
  RETURN_IF_ERROR(Read(c, "listen", "", &o->listen));
  RETURN_IF_ERROR(Read(c, "model_dir", "", &o->model_dir));
  RETURN_IF_ERROR(Read(c, "device", "", &o->device));
  RETURN_IF_ERROR(Read(c, "dtype", "", &o->dtype));
  RETURN_IF_ERROR(Read(c, "max_message_bytes", "", &o->max_message_bytes));
  RETURN_IF_ERROR(Read(c, "metrics_listen", "", &o->metrics_listen));
  RETURN_IF_ERROR(Read(c, "jobs_dir", "", &o->jobs_dir));
  RETURN_IF_ERROR(Read(c, "tuning_workers", "", &o->tuning_workers));
  RETURN_IF_ERROR(Read(c, "shutdown_grace_ms", "", &o->shutdown_grace_ms));
  for (const char* key : {"modules", "indexes"}) {
    if (!c.contains(key)) continue;
    std::vector<std::string>* out =
        std::string(key) == "modules" ? &o->modules : &o->indexes;
    if (!c[key].is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: field '", key, "' must be a list of paths"));
    }
    out->clear();
    for (const Json& m : c[key]) {
      if (!m.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat("config: field '", key, "' must hold paths"));
      }
      out->push_back(m.get<std::string>());
    }
  }
  if (c.contains("batching")) {
    const Json& b = c["batching"];
    if (!b.is_object()) {
      return absl::InvalidArgumentError("config: 'batching' must be an object");
    }
    RETURN_IF_ERROR(
        Unknown(b, "batching.",
                {"max_batch_rows", "max_batch_tokens", "max_queue_delay_us",
                 "max_queued_rows", "runner_threads"}));
    SchedulerOptions& s = o->scheduler;
    RETURN_IF_ERROR(Read(b, "max_batch_rows", "batching.", &s.max_batch_rows));
    RETURN_IF_ERROR(
        Read(b, "max_batch_tokens", "batching.", &s.max_batch_tokens));
    RETURN_IF_ERROR(
        Read(b, "max_queue_delay_us", "batching.", &s.max_queue_delay_us));
    RETURN_IF_ERROR(
        Read(b, "max_queued_rows", "batching.", &s.max_queued_rows));
    RETURN_IF_ERROR(Read(b, "runner_threads", "batching.", &s.runner_threads));
  }
  if (c.contains("late_interaction")) {
    const Json& l = c["late_interaction"];
    if (!l.is_object()) {
      return absl::InvalidArgumentError(
          "config: 'late_interaction' must be an object");
    }
    RETURN_IF_ERROR(Unknown(l, "late_interaction.",
                            {"cache_bytes", "storage", "state_files"}));
    ServeOptions::LateInteraction& li = o->late_interaction;
    RETURN_IF_ERROR(
        Read(l, "cache_bytes", "late_interaction.", &li.cache_bytes));
    RETURN_IF_ERROR(Read(l, "storage", "late_interaction.", &li.storage));
    if (l.contains("state_files")) {
      if (!l["state_files"].is_array()) {
        return absl::InvalidArgumentError(
            "config: 'late_interaction.state_files' must be a list");
      }
      li.state_files.clear();
      for (const Json& f : l["state_files"]) {
        if (!f.is_object()) {
          return absl::InvalidArgumentError(
              "config: 'late_interaction.state_files' must hold objects "
              "{\"path\", \"lower_layers\"}");
        }
        RETURN_IF_ERROR(Unknown(f, "late_interaction.state_files.",
                                {"path", "lower_layers"}));
        ServeOptions::LateInteraction::StateFile file;
        RETURN_IF_ERROR(
            Read(f, "path", "late_interaction.state_files.", &file.path));
        RETURN_IF_ERROR(Read(f, "lower_layers", "late_interaction.state_files.",
                             &file.lower_layers));
        li.state_files.push_back(std::move(file));
      }
    }
  }
  if (c.contains("experiments")) {
    const Json& x = c["experiments"];
    if (!x.is_object()) {
      return absl::InvalidArgumentError(
          "config: 'experiments' must be an object");
    }
    RETURN_IF_ERROR(
        Unknown(x, "experiments.",
                {"dir", "flush_records", "flush_interval_us", "max_file_bytes",
                 "recent_requests", "definitions"}));
    ExperimentOptions& e = o->experiments;
    RETURN_IF_ERROR(Read(x, "dir", "experiments.", &e.dir));
    RETURN_IF_ERROR(Read(x, "flush_records", "experiments.", &e.flush_records));
    RETURN_IF_ERROR(
        Read(x, "flush_interval_us", "experiments.", &e.flush_interval_us));
    RETURN_IF_ERROR(
        Read(x, "max_file_bytes", "experiments.", &e.max_file_bytes));
    RETURN_IF_ERROR(
        Read(x, "recent_requests", "experiments.", &e.recent_requests));
    if (x.contains("definitions")) {
      if (!x["definitions"].is_array()) {
        return absl::InvalidArgumentError(
            "config: 'experiments.definitions' must be a list");
      }
      e.definitions.clear();
      for (size_t i = 0; i < x["definitions"].size(); ++i) {
        absl::StatusOr<ExperimentDefinition> d = ExperimentFromJson(
            x["definitions"][i],
            absl::StrCat("config: experiments.definitions[", i, "]"));
        if (!d.ok()) return d.status();
        e.definitions.push_back(*std::move(d));
      }
    }
  }
  if (c.contains("generation")) {
    const Json& g = c["generation"];
    if (!g.is_object()) {
      return absl::InvalidArgumentError(
          "config: 'generation' must be an object");
    }
    RETURN_IF_ERROR(Unknown(g, "generation.", {"max_active", "max_queued"}));
    RETURN_IF_ERROR(
        Read(g, "max_active", "generation.", &o->generation.max_active));
    RETURN_IF_ERROR(
        Read(g, "max_queued", "generation.", &o->generation.max_queued));
  }
  if (c.contains("limits")) {
    const Json& l = c["limits"];
    if (!l.is_object()) {
      return absl::InvalidArgumentError("config: 'limits' must be an object");
    }
    RETURN_IF_ERROR(
        Unknown(l, "limits.", {"max_candidates", "max_retrieve_k"}));
    RETURN_IF_ERROR(
        Read(l, "max_candidates", "limits.", &o->limits.max_candidates));
    RETURN_IF_ERROR(
        Read(l, "max_retrieve_k", "limits.", &o->limits.max_retrieve_k));
  }
  return absl::OkStatus();
}

absl::Status ValidateServeOptions(const ServeOptions& o) {
  if (o.model_dir.empty()) {
    return absl::InvalidArgumentError("model_dir: required");
  }
  if (o.listen.empty()) return absl::InvalidArgumentError("listen: required");
  if (o.max_message_bytes < 1024 || o.max_message_bytes > (1ll << 31) - 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_message_bytes: ", o.max_message_bytes,
                     " is outside [1024, 2^31 - 1]"));
  }
  if (o.limits.max_candidates < 1 || o.limits.max_retrieve_k < 1) {
    return absl::InvalidArgumentError(
        "limits.max_candidates and limits.max_retrieve_k: must be >= 1");
  }
  if (o.shutdown_grace_ms < 0) {
    return absl::InvalidArgumentError(
        "shutdown_grace_ms: must not be negative");
  }
  absl::Status generation = ValidateGenerationLoopOptions(o.generation);
  if (!generation.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("generation.", generation.message()));
  }
  const ServeOptions::LateInteraction& li = o.late_interaction;
  if (li.cache_bytes < 0) {
    return absl::InvalidArgumentError(
        "late_interaction.cache_bytes: must not be negative");
  }
  if (li.storage != "bf16" && li.storage != "f16" && li.storage != "f32") {
    return absl::InvalidArgumentError(
        absl::StrCat("late_interaction.storage: must be bf16, f16 or f32, "
                     "not '",
                     li.storage, "'"));
  }
  RETURN_IF_ERROR(ValidateExperimentOptions(o.experiments));
  absl::Status batching = ValidateSchedulerOptions(o.scheduler);
  if (!batching.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("batching.", batching.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServeOptions& o) {
  RETURN_IF_ERROR(ValidateServeOptions(o));
  std::unique_ptr<Server> s(new Server());
  s->options_ = o;
  LoadOptions load;
  ASSIGN_OR_RETURN(load.device, ResolveDevice(o.device, o.dtype));
  ASSIGN_OR_RETURN(s->model_, TransformerLM::Load(o.model_dir, load));
  if (s->model_->tokenizer() == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model_dir: ", o.model_dir, " has no tokenizer; serving needs one"));
  }
  s->registry_ = std::make_unique<ModuleRegistry>(s->model_);
  for (const std::string& path : o.modules) {
    ASSIGN_OR_RETURN(ModuleVersion v, s->registry_->Load(path));
    (void)v;
  }
  for (const std::string& dir : o.indexes) {
    RETURN_IF_ERROR(s->indexes_.Load(dir, *s->registry_));
    LOG_INFO << "loaded retrieval index " << dir;
  }
  SchedulerOptions scheduling = o.scheduler;
  ASSIGN_OR_RETURN(scheduling.segment_cache, s->MakeSegmentCache());
  s->segment_cache_ = scheduling.segment_cache;
  s->scheduler_ = std::make_unique<BatchScheduler>(s->model_, scheduling);
  s->generation_ = std::make_unique<GenerationLoop>(s->model_, o.generation);
  s->RegisterMetrics();
  if (!o.experiments.dir.empty()) {
    // A retrieval version serves only with its index loaded.
    const IndexSet* indexes = &s->indexes_;
    auto can_serve = [indexes](const ModuleVersion& v) -> absl::Status {
      if (v.module->spec().kind != TaskKind::kRetrieve ||
          indexes->Find(v.task, v.version) != nullptr) {
        return absl::OkStatus();
      }
      return absl::FailedPreconditionError(
          absl::StrCat("task ", v.task, " version ", v.version,
                       " has no retrieval index loaded"));
    };
    ASSIGN_OR_RETURN(s->experimentation_,
                     Experimentation::Open(o.experiments, *s->registry_,
                                           &s->metrics_, nullptr, can_serve));
  }
  s->experiments_ = std::make_unique<ExperimentsService>(
      s->experimentation_.get(), &s->metrics_);
  s->recommender_ = std::make_unique<RecommenderService>(
      *s->registry_, *s->scheduler_, *s->generation_, s->indexes_, o.limits,
      &s->metrics_, s->experimentation_.get());
  s->tasks_ = std::make_unique<TasksService>(*s->registry_, &s->metrics_);
  if (!o.jobs_dir.empty()) {
    ASSIGN_OR_RETURN(s->jobs_,
                     LocalJobRunner::Open(o.jobs_dir, o.tuning_workers));
    s->tuning_ =
        std::make_unique<TuningService>(*s->jobs_, *s->registry_, o.model_dir);
  }
  if (!o.metrics_listen.empty()) {
    Server* raw = s.get();
    ASSIGN_OR_RETURN(s->metrics_http_,
                     MetricsHttpServer::Start(o.metrics_listen, [raw] {
                       return raw->metrics_.ExportText();
                     }));
    LOG_INFO << "metrics on port " << s->metrics_http_->port();
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(o.listen, grpc::InsecureServerCredentials(),
                           &s->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(o.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(o.max_message_bytes));
  builder.RegisterService(s->recommender_.get());
  builder.RegisterService(s->tasks_.get());
  builder.RegisterService(s->experiments_.get());
  if (s->tuning_ != nullptr) builder.RegisterService(s->tuning_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("listen: cannot listen on ", o.listen));
  }
  LOG_INFO << "serving on port " << s->port_ << " with "
           << s->registry_->List().size() << " tasks";
  return s;
}

absl::StatusOr<std::shared_ptr<SegmentStateCache>> Server::MakeSegmentCache() {
  const ServeOptions::LateInteraction& li = options_.late_interaction;
  if (li.cache_bytes == 0) return std::shared_ptr<SegmentStateCache>();
  ShardedLruCache::Options c;
  c.capacity_bytes = li.cache_bytes;
  // States come back in the dtype the model computes in.
  c.compute_dtype = model_->device().dtype;
  c.storage_dtype = li.storage == "bf16"  ? torch::kBFloat16
                    : li.storage == "f16" ? torch::kFloat16
                                          : torch::kFloat32;
  c.num_shards = static_cast<int>(
      std::min<int64_t>(c.num_shards, std::max<int64_t>(1, li.cache_bytes)));
  absl::StatusOr<std::unique_ptr<ShardedLruCache>> made =
      ShardedLruCache::Create(c);
  if (!made.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("late_interaction: ", made.status().message()));
  }
  std::shared_ptr<SegmentStateCache> cache = *std::move(made);
  for (const auto& file : li.state_files) {
    absl::StatusOr<LoadedStates> loaded = LoadStates(
        file.path, model_->fingerprint(), file.lower_layers, cache.get());
    if (!loaded.ok()) {
      LOG_WARNING << "segment states not loaded, starting without them: "
                  << loaded.status();
      continue;
    }
    LOG_INFO << "loaded " << loaded->inserted << " of " << loaded->entries
             << " segment states (L' = " << file.lower_layers << ") from "
             << file.path;
  }
  return cache;
}

void Server::RegisterMetrics() {
  if (segment_cache_ != nullptr) {
    SegmentStateCache* cache = segment_cache_.get();
    metrics_.CounterFunc("optrec_segment_cache_hits_total",
                         "segment states found in the cache",
                         [cache] { return cache->stats().hits; });
    metrics_.CounterFunc("optrec_segment_cache_misses_total",
                         "segment states not in the cache (then encoded)",
                         [cache] { return cache->stats().misses; });
    metrics_.CounterFunc("optrec_segment_cache_evictions_total",
                         "segment states evicted to make room",
                         [cache] { return cache->stats().evictions; });
    metrics_.Gauge("optrec_segment_cache_bytes",
                   "bytes held by the segment-state cache",
                   [cache] { return cache->stats().bytes; });
    metrics_.Gauge("optrec_segment_cache_entries",
                   "segments held by the segment-state cache",
                   [cache] { return cache->stats().entries; });
  }
  metrics_.Gauge("optrec_queued_rows", "Score and Embed rows waiting",
                 [this] { return scheduler_->queued_rows(); });
  metrics_.Gauge("optrec_generation_active", "sequences being decoded",
                 [this] { return generation_->active(); });
  metrics_.Gauge("optrec_generation_queued", "sequences waiting to decode",
                 [this] { return generation_->queued(); });
  metrics_.CounterFunc("optrec_batches_total", "forward passes of batches",
                       [this] { return scheduler_->counters().batches; });
  metrics_.CounterFunc("optrec_batch_tokens_total",
                       "positions run in batches, padding included",
                       [this] { return scheduler_->counters().tokens; });
  metrics_.CounterFunc("optrec_queue_refused_total",
                       "calls refused for a full queue",
                       [this] { return scheduler_->counters().refused; });
  metrics_.CounterFunc("optrec_queue_expired_total",
                       "calls dropped for their deadline while queued",
                       [this] { return scheduler_->counters().expired; });
  scheduler_->SetObserver(
      [this](const std::vector<std::pair<const PromptModule*, int64_t>>& rows,
             int64_t) {
        for (const auto& [module, n] : rows) {
          const nlohmann::json& info = module->info();
          const std::string version =
              info.contains("version") && info["version"].is_string()
                  ? info["version"].get<std::string>()
                  : "";
          metrics_.Add("optrec_batch_rows_total",
                       "rows run in batches, by task and version",
                       {{"task", module->spec().task}, {"version", version}},
                       static_cast<double>(n));
        }
      });
}

int Server::metrics_port() const {
  return metrics_http_ != nullptr ? metrics_http_->port() : 0;
}

Server::~Server() { Shutdown(); }

void Server::Shutdown() {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  LOG_INFO << "shutting down: finishing calls in flight (up to "
           << options_.shutdown_grace_ms << " ms)";
  if (auto* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(false);
  }
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(options_.shutdown_grace_ms));
  scheduler_->Shutdown();
  generation_->Shutdown();
  if (experimentation_ != nullptr) {
    absl::Status closed = experimentation_->Close();
    if (!closed.ok()) {
      LOG_ERROR << "experiment log not closed cleanly: " << closed;
    }
  }
  metrics_http_.reset();
  LOG_INFO << "shut down";
}

void Server::Wait() {
  if (server_ != nullptr) server_->Wait();
}

}  // namespace optrec
