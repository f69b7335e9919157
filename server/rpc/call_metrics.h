// What every RPC handler records of a call: its rpc, task and version
// labels, status code and latency (optrec_rpc_* in server/metrics).
#ifndef OPTREC_SERVER_RPC_CALL_METRICS_H_
#define OPTREC_SERVER_RPC_CALL_METRICS_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/metrics/metrics.h"

namespace optrec {

// One call's labels and start, recorded in the metrics when it ends.
struct CallMetrics {
  Metrics* metrics = nullptr;  // may be null (no metrics)
  const char* rpc = "";
  std::string task, version;
  absl::Time start = absl::Now();

  // Records the call's end and passes its status on.
  grpc::Status Done(grpc::Status status) const {
    if (metrics != nullptr) {
      metrics->ObserveCall(
          rpc, task, version,
          absl::StatusCodeToString(
              static_cast<absl::StatusCode>(status.error_code())),
          absl::ToDoubleSeconds(absl::Now() - start));
    }
    return status;
  }
};

// Ends a unary call at once with `status`.
inline grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                           const CallMetrics& call,
                                           const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(call.Done(status));
  return reactor;
}

}  // namespace optrec

#endif  // OPTREC_SERVER_RPC_CALL_METRICS_H_
