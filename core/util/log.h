// Minimal lifecycle logging to stderr. optrec logs start-up, loads, reloads,
// shutdown and degraded states; nothing per request (traffic goes to metrics).
// Thread-safe: each message is written with one call.
#ifndef OPTREC_CORE_UTIL_LOG_H_
#define OPTREC_CORE_UTIL_LOG_H_

#include <sstream>
#include <string>

namespace optrec {

enum class LogLevel { kInfo = 0, kWarning = 1, kError = 2 };

// Messages below this level are dropped. Default kInfo; the environment
// variable OPTREC_LOG_LEVEL (info, warning, error) overrides it at start.
void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();

namespace internal_log {

// Collects one message and writes it, with level, time and source location,
// when destroyed.
class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  const char* file_;
  int line_;
  std::ostringstream stream_;
};

}  // namespace internal_log
}  // namespace optrec

#define OPTREC_LOG(level)                                                   \
  if (::optrec::LogLevel::level < ::optrec::MinLogLevel()) {                \
  } else                                                                    \
    ::optrec::internal_log::LogMessage(::optrec::LogLevel::level, __FILE__, \
                                       __LINE__)                            \
        .stream()

#define LOG_INFO OPTREC_LOG(kInfo)
#define LOG_WARNING OPTREC_LOG(kWarning)
#define LOG_ERROR OPTREC_LOG(kError)

#endif  // OPTREC_CORE_UTIL_LOG_H_
