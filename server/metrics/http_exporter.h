// Serves the metrics text to Prometheus over plain HTTP: GET /metrics on a
// TCP port of its own. gRPC serves only its own HTTP/2 protocol and no
// HTTP server library is among the project's dependencies, so this is a
// minimal HTTP/1.1 responder written here: one request per connection,
// GET /metrics (200, text format 0.0.4) or 404, requests read with a
// timeout so a stalled client cannot hold it.
#ifndef OPTREC_SERVER_METRICS_HTTP_EXPORTER_H_
#define OPTREC_SERVER_METRICS_HTTP_EXPORTER_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace optrec {

class MetricsHttpServer {
 public:
  // Listens on host:port (port 0 picks a free one) and answers from a
  // thread of its own, calling `body` for every scrape. Errors name the
  // address.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address, std::function<std::string()> body);
  // Stops listening and joins the thread.
  ~MetricsHttpServer();

  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;
  void Serve();
  void Answer(int fd);

  std::function<std::string()> body_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};  // written to stop the thread
  int port_ = 0;
  std::thread thread_;
};

}  // namespace optrec

#endif  // OPTREC_SERVER_METRICS_HTTP_EXPORTER_H_
