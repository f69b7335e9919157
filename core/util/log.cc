#include "core/util/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace optrec {
namespace {

LogLevel LevelFromEnv() {
  const char* env = std::getenv("OPTREC_LOG_LEVEL");
  if (env == nullptr) return LogLevel::kInfo;
  if (std::strcmp(env, "warning") == 0) return LogLevel::kWarning;
  if (std::strcmp(env, "error") == 0) return LogLevel::kError;
  return LogLevel::kInfo;
}

std::atomic<int>& MinLevelStorage() {
  static std::atomic<int> level{static_cast<int>(LevelFromEnv())};
  return level;
}

}  // namespace

void SetMinLogLevel(LogLevel level) {
  MinLevelStorage().store(static_cast<int>(level));
}

LogLevel MinLogLevel() {
  return static_cast<LogLevel>(MinLevelStorage().load());
}

namespace internal_log {

LogMessage::LogMessage(LogLevel level, const char* file, int line)
    : level_(level), file_(file), line_(line) {}

LogMessage::~LogMessage() {
  static const char kLetters[] = {'I', 'W', 'E'};
  auto now = std::chrono::system_clock::now();
  std::time_t secs = std::chrono::system_clock::to_time_t(now);
  std::tm tm_utc;
  gmtime_r(&secs, &tm_utc);
  char when[32];
  std::strftime(when, sizeof(when), "%m%d %H:%M:%S", &tm_utc);
  const char* base = std::strrchr(file_, '/');
  base = base ? base + 1 : file_;
  std::string line = std::string(1, kLetters[static_cast<int>(level_)]) + when +
                     " " + base + ":" + std::to_string(line_) + "] " +
                     stream_.str() + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace internal_log
}  // namespace optrec
