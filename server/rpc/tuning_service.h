// The Tuning admin service: tuning jobs over the served backbone, run by a
// JobRunner (server/jobs/job_runner.h), watched as they go, and their
// modules registered as new versions when they succeed.
#ifndef OPTREC_SERVER_RPC_TUNING_SERVICE_H_
#define OPTREC_SERVER_RPC_TUNING_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>

#include "optrec/v1/optrec.grpc.pb.h"
#include "server/jobs/job_runner.h"
#include "server/registry/module_registry.h"

namespace optrec {

class TuningService final : public v1::Tuning::CallbackService {
 public:
  // Borrows the runner and registry. Jobs train on `model_dir`, the
  // backbone the server serves.
  TuningService(JobRunner& runner, ModuleRegistry& registry,
                std::string model_dir);
  // Waits for the WatchJob streams' threads to end (gRPC's shutdown
  // cancels the streams first).
  ~TuningService() override;

  grpc::ServerUnaryReactor* StartJob(grpc::CallbackServerContext* context,
                                     const v1::StartJobRequest* request,
                                     v1::JobInfo* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const v1::JobRequest* request,
                                   v1::JobInfo* response) override;
  grpc::ServerWriteReactor<v1::JobInfo>* WatchJob(
      grpc::CallbackServerContext* context,
      const v1::JobRequest* request) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const v1::JobRequest* request,
                                      v1::JobInfo* response) override;
  grpc::ServerUnaryReactor* ResumeJob(grpc::CallbackServerContext* context,
                                      const v1::JobRequest* request,
                                      v1::JobInfo* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* RegisterModules(
      grpc::CallbackServerContext* context,
      const v1::RegisterModulesRequest* request,
      v1::RegisterModulesResponse* response) override;

 private:
  JobRunner& runner_;
  ModuleRegistry& registry_;
  const std::string model_dir_;
  // WatchJob threads still running; they may outlive their stream but not
  // the service (they use the runner).
  std::shared_ptr<std::atomic<int>> watchers_ =
      std::make_shared<std::atomic<int>>(0);
};

}  // namespace optrec

#endif  // OPTREC_SERVER_RPC_TUNING_SERVICE_H_
