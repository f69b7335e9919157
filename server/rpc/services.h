// The gRPC services of proto/optrec/v1/optrec.proto over a module registry
// and a batch scheduler: Recommender (Score, Embed) renders each request's
// fields with the task module's templates and queues the rows on the
// scheduler; Tasks (admin) loads, promotes and unloads module versions.
// Both use gRPC's callback API: no thread waits for a batch.
//
// Status codes: NOT_FOUND for an unknown task, version or template;
// INVALID_ARGUMENT naming the field for a bad request (no or too many
// candidates, a missing template field, text that is not UTF-8, a task of
// the wrong kind for the RPC); RESOURCE_EXHAUSTED when the scheduler's
// queue is full; DEADLINE_EXCEEDED / CANCELLED when the call ended before
// its rows ran; INTERNAL when a batch failed.
#ifndef OPTREC_SERVER_RPC_SERVICES_H_
#define OPTREC_SERVER_RPC_SERVICES_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "optrec/v1/optrec.grpc.pb.h"
#include "server/generation/generation_loop.h"
#include "server/index/item_index.h"
#include "server/metrics/metrics.h"
#include "server/registry/module_registry.h"
#include "server/rpc/experimentation.h"
#include "server/scheduler/batch_scheduler.h"

namespace optrec {

struct RequestLimits {
  // Most candidates one Score request may carry.
  int64_t max_candidates = 1000;
  // Most items one Retrieve request may ask for.
  int64_t max_retrieve_k = 1000;
};

// The retrieval indexes a server holds, by (task, module version).
// Thread-safe.
class IndexSet {
 public:
  // Loads the index folder `dir` for the module version it was built by,
  // which `registry` must hold (ItemIndex::Load checks the file's hash).
  // Replaces an index of the same version. Errors name the folder.
  absl::Status Load(const std::string& dir, const ModuleRegistry& registry);
  // The index of (task, version), or null.
  std::shared_ptr<const ItemIndex> Find(const std::string& task,
                                        const std::string& version) const;

 private:
  mutable absl::Mutex mu_;  // guards indexes_
  std::map<std::pair<std::string, std::string>,
           std::shared_ptr<const ItemIndex>>
      indexes_ ABSL_GUARDED_BY(mu_);
};

// The gRPC status carrying `status`'s code and message (absl and gRPC share
// the canonical code numbers).
grpc::Status ToGrpcStatus(const absl::Status& status);

class RecommenderService final : public v1::Recommender::CallbackService {
 public:
  // Borrows the registry, scheduler and indexes, which must outlive the
  // service.
  // `metrics` may be null (no metrics recorded); `experimentation` may be
  // null (no experiments: requests are served by the version they name or
  // the default, RecordEvents is FAILED_PRECONDITION).
  RecommenderService(const ModuleRegistry& registry, BatchScheduler& scheduler,
                     GenerationLoop& generation, const IndexSet& indexes,
                     RequestLimits limits, Metrics* metrics,
                     Experimentation* experimentation = nullptr);

  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context,
                                  const v1::ScoreRequest* request,
                                  v1::ScoreResponse* response) override;
  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* context,
                                  const v1::EmbedRequest* request,
                                  v1::EmbedResponse* response) override;
  grpc::ServerUnaryReactor* Retrieve(grpc::CallbackServerContext* context,
                                     const v1::RetrieveRequest* request,
                                     v1::RetrieveResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context,
      const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* RecordEvents(
      grpc::CallbackServerContext* context,
      const v1::RecordEventsRequest* request,
      v1::RecordEventsResponse* response) override;

 private:
  const ModuleRegistry& registry_;
  BatchScheduler& scheduler_;
  GenerationLoop& generation_;
  const IndexSet& indexes_;
  const RequestLimits limits_;
  Metrics* const metrics_;
  Experimentation* const experimentation_;
};

class TasksService final : public v1::Tasks::CallbackService {
 public:
  // `metrics` may be null.
  TasksService(ModuleRegistry& registry, Metrics* metrics);

  grpc::ServerUnaryReactor* ListTasks(grpc::CallbackServerContext* context,
                                      const v1::ListTasksRequest* request,
                                      v1::ListTasksResponse* response) override;
  grpc::ServerUnaryReactor* LoadModule(
      grpc::CallbackServerContext* context,
      const v1::LoadModuleRequest* request,
      v1::LoadModuleResponse* response) override;
  grpc::ServerUnaryReactor* SetDefault(
      grpc::CallbackServerContext* context,
      const v1::SetDefaultRequest* request,
      v1::SetDefaultResponse* response) override;
  grpc::ServerUnaryReactor* UnloadModule(
      grpc::CallbackServerContext* context,
      const v1::UnloadModuleRequest* request,
      v1::UnloadModuleResponse* response) override;

 private:
  ModuleRegistry& registry_;
  Metrics* const metrics_;
};

}  // namespace optrec

#endif  // OPTREC_SERVER_RPC_SERVICES_H_
