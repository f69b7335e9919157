// optrec serve: runs the gRPC service until SIGTERM or SIGINT, then shuts
// down gracefully (server/rpc/server.h).
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/cli/args.h"
#include "core/util/files.h"
#include "core/util/log.h"
#include "core/util/status_macros.h"
#include "server/cli/commands.h"
#include "server/rpc/server.h"

namespace optrec {
namespace {

int g_signal_pipe[2] = {-1, -1};

// Async-signal-safe: only write(2).
void OnSignal(int signal) {
  const unsigned char byte = static_cast<unsigned char>(signal);
  (void)!write(g_signal_pipe[1], &byte, 1);
}

Args ServeArgs() {
  const ServeOptions d;
  auto num = [](auto v) { return absl::StrCat(v); };
  return Args(
      "serve",
      "Serves task modules over gRPC (Recommender, Tasks, health checking, "
      "reflection) until SIGTERM or SIGINT. --config names a JSON file of "
      "the same settings (docs/serving.md); flags override it.",
      {
          {"config", "JSON configuration file"},
          {"model", "the frozen backbone (model_dir)"},
          {"module", "a module file to load at start", true, true},
          {"index", "a retrieval index folder to load (optrec index build)",
           true, true},
          {"listen", "host:port", true, false, d.listen},
          {"device", "auto, cpu, cuda or cuda:N", true, false, d.device},
          {"dtype", "auto, f32, bf16 or f16", true, false, d.dtype},
          {"max-batch-rows", "rows per forward pass", true, false,
           num(d.scheduler.max_batch_rows)},
          {"max-queue-delay-us", "longest wait for a fuller batch", true, false,
           num(d.scheduler.max_queue_delay_us)},
          {"max-queued-rows", "queue bound (RESOURCE_EXHAUSTED beyond)", true,
           false, num(d.scheduler.max_queued_rows)},
          {"help", "print this help", false},
      });
}

absl::StatusOr<ServeOptions> OptionsFrom(const Args& args) {
  ServeOptions o;
  if (args.Has("config")) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(args.Get("config")));
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded()) {
      return absl::InvalidArgumentError(
          absl::StrCat(args.Get("config"), ": not valid JSON"));
    }
    RETURN_IF_ERROR(ApplyServeConfig(j, &o));
  }
  if (args.Has("model")) o.model_dir = args.Get("model");
  if (args.Has("module")) o.modules = args.GetAll("module");
  if (args.Has("index")) o.indexes = args.GetAll("index");
  if (args.Has("listen") || o.listen.empty()) o.listen = args.Get("listen");
  if (args.Has("device")) o.device = args.Get("device");
  if (args.Has("dtype")) o.dtype = args.Get("dtype");
  if (args.Has("max-batch-rows")) {
    ASSIGN_OR_RETURN(o.scheduler.max_batch_rows, args.GetInt("max-batch-rows"));
  }
  if (args.Has("max-queue-delay-us")) {
    ASSIGN_OR_RETURN(o.scheduler.max_queue_delay_us,
                     args.GetInt("max-queue-delay-us"));
  }
  if (args.Has("max-queued-rows")) {
    ASSIGN_OR_RETURN(o.scheduler.max_queued_rows,
                     args.GetInt("max-queued-rows"));
  }
  return o;
}

}  // namespace

int RunServe(int argc, char** argv) {
  Args args = ServeArgs();
  if (int code = ParseOrExit(args, argc, argv, 2); code >= 0) return code;
  absl::StatusOr<ServeOptions> options = OptionsFrom(args);
  if (!options.ok()) return UsageError(std::string(options.status().message()));
  if (absl::Status valid = ValidateServeOptions(*options); !valid.ok()) {
    return UsageError(std::string(valid.message()));
  }
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(*options);
  if (!server.ok()) return Fail(server.status());
  // SIGTERM and SIGINT may arrive on any thread (LibTorch and OpenBLAS
  // start theirs before main), so a handler writes the signal to a pipe
  // and this thread, reading it, shuts the server down.
  if (pipe(g_signal_pipe) != 0) {
    return Fail(absl::InternalError("cannot create the signal pipe"));
  }
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  std::printf("optrec serving on port %d\n", (*server)->port());
  std::fflush(stdout);
  std::thread waiter([&] {
    unsigned char received = 0;
    while (read(g_signal_pipe[0], &received, 1) < 0 && errno == EINTR) {
    }
    LOG_INFO << "received " << (received == SIGTERM ? "SIGTERM" : "SIGINT");
    (*server)->Shutdown();
  });
  (*server)->Wait();
  waiter.join();
  return 0;
}

}  // namespace optrec
