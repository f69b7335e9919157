#include "server/metrics/http_exporter.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace optrec {
namespace {

absl::Status Errno(const std::string& what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
}

void WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the client went away
    done += static_cast<size_t>(n);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& address, std::function<std::string()> body) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics_listen: '", address, "' is not host:port"));
  }
  const std::string host = address.substr(0, colon);
  addrinfo hints = {};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.empty() ? nullptr : host.c_str(),
                  std::to_string(port).c_str(), &hints, &found) != 0 ||
      found == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics_listen: cannot resolve '", host, "'"));
  }
  std::unique_ptr<MetricsHttpServer> s(new MetricsHttpServer());
  s->body_ = std::move(body);
  s->listen_fd_ = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int yes = 1;
  setsockopt(s->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  const bool bound =
      s->listen_fd_ >= 0 &&
      bind(s->listen_fd_, found->ai_addr, found->ai_addrlen) == 0 &&
      listen(s->listen_fd_, 16) == 0;
  freeaddrinfo(found);
  if (!bound) return Errno(absl::StrCat("metrics_listen: ", address));
  sockaddr_in bound_address = {};
  socklen_t length = sizeof(bound_address);
  getsockname(s->listen_fd_, reinterpret_cast<sockaddr*>(&bound_address),
              &length);
  s->port_ = ntohs(bound_address.sin_port);
  if (pipe2(s->wake_, O_CLOEXEC) != 0) return Errno("metrics: pipe");
  s->thread_ = std::thread([raw = s.get()] { raw->Serve(); });
  return s;
}

MetricsHttpServer::~MetricsHttpServer() {
  if (wake_[1] >= 0) {
    const char stop = 1;
    (void)!write(wake_[1], &stop, 1);
  }
  if (thread_.joinable()) thread_.join();
  for (int fd : {listen_fd_, wake_[0], wake_[1]}) {
    if (fd >= 0) close(fd);
  }
}

void MetricsHttpServer::Serve() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    const int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    Answer(client);
    close(client);
  }
}

void MetricsHttpServer::Answer(int fd) {
  timeval timeout = {2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  // The request line and headers, up to the blank line (8 KiB at most).
  std::string request;
  char buffer[1024];
  while (request.find("\r\n\r\n") == std::string::npos &&
         request.size() < 8192) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    request.append(buffer, static_cast<size_t>(n));
  }
  const bool metrics = request.rfind("GET /metrics ", 0) == 0 ||
                       request.rfind("GET /metrics?", 0) == 0;
  const std::string body = metrics ? body_() : "not found\n";
  WriteAll(fd, absl::StrCat(metrics ? "HTTP/1.1 200 OK\r\n"
                                    : "HTTP/1.1 404 Not Found\r\n",
                            "Content-Type: ",
                            metrics ? "text/plain; version=0.0.4; charset=utf-8"
                                    : "text/plain",
                            "\r\nContent-Length: ", body.size(),
                            "\r\nConnection: close\r\n\r\n", body));
}

}  // namespace optrec
