#include "server/experiments/exposure_log.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "core/util/files.h"
#include "core/util/log.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

constexpr char kSuffix[] = ".jsonl";

struct LogFile {
  int64_t sequence = 0;
  std::string path;
};

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (!dir.empty() && dir.back() == '/') return dir + name;
  return absl::StrCat(dir, "/", name);
}

std::string FileName(const std::string& prefix, int64_t sequence) {
  return absl::StrCat(prefix, "-", absl::Dec(sequence, absl::kZeroPad6),
                      kSuffix);
}

// The sequence of a file named "<prefix>-<digits>.jsonl"; -1 for any other
// name.
int64_t SequenceOf(const std::string& name, const std::string& prefix) {
  const std::string head = prefix + "-";
  if (!absl::StartsWith(name, head) || !absl::EndsWith(name, kSuffix)) {
    return -1;
  }
  const size_t suffix_size = sizeof(kSuffix) - 1;
  if (name.size() <= head.size() + suffix_size) return -1;
  const std::string digits =
      name.substr(head.size(), name.size() - head.size() - suffix_size);
  if (!std::all_of(digits.begin(), digits.end(),
                   [](char c) { return c >= '0' && c <= '9'; })) {
    return -1;
  }
  int64_t sequence = 0;
  if (!absl::SimpleAtoi(digits, &sequence)) return -1;
  return sequence;
}

// The log files of `prefix` in `dir`, in sequence order.
absl::StatusOr<std::vector<LogFile>> ListLogFiles(const std::string& dir,
                                                  const std::string& prefix) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    const int error = errno;
    if (error == ENOENT) {
      return absl::NotFoundError(absl::StrCat(dir, ": no such folder"));
    }
    if (error == ENOTDIR) {
      return absl::FailedPreconditionError(absl::StrCat(dir, ": not a folder"));
    }
    return absl::ErrnoToStatus(error, absl::StrCat(dir, ": cannot list"));
  }
  std::vector<LogFile> files;
  errno = 0;
  while (const dirent* entry = ::readdir(d)) {
    const int64_t sequence = SequenceOf(entry->d_name, prefix);
    if (sequence >= 0) {
      files.push_back({sequence, JoinPath(dir, entry->d_name)});
    }
    errno = 0;
  }
  const int error = errno;
  ::closedir(d);
  if (error != 0) {
    return absl::ErrnoToStatus(error, absl::StrCat(dir, ": cannot list"));
  }
  std::sort(files.begin(), files.end(), [](const LogFile& a, const LogFile& b) {
    return a.sequence < b.sequence;
  });
  return files;
}

// fsync(fd) through `fsync_fn` (null: ::fsync), tried again while a signal
// interrupts it. 0, or -1 with errno set.
int FsyncRetrying(const std::function<int(int)>& fsync_fn, int fd) {
  int result;
  do {
    result = fsync_fn ? fsync_fn(fd) : ::fsync(fd);
  } while (result != 0 && errno == EINTR);
  return result;
}

absl::Status ValidateOptions(const DurableLog::Options& o) {
  if (o.dir.empty()) return absl::InvalidArgumentError("dir is empty");
  if (o.file_prefix.empty() || o.file_prefix.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "file_prefix \"", o.file_prefix, "\" must be non-empty without '/'"));
  }
  if (o.flush_records < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("flush_records ", o.flush_records, " must be >= 1"));
  }
  if (o.flush_interval_us < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "flush_interval_us ", o.flush_interval_us, " must be >= 1"));
  }
  if (o.max_file_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_file_bytes ", o.max_file_bytes, " must be >= 1"));
  }
  if (o.max_pending_records < o.flush_records) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_pending_records ", o.max_pending_records,
                     " must be >= flush_records ", o.flush_records));
  }
  return absl::OkStatus();
}

}  // namespace

DurableLog::DurableLog(Options options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<DurableLog>> DurableLog::Open(Options options) {
  RETURN_IF_ERROR(ValidateOptions(options));
  RETURN_IF_ERROR(MakeDirs(options.dir));
  ASSIGN_OR_RETURN(std::vector<LogFile> existing,
                   ListLogFiles(options.dir, options.file_prefix));

  // The first file is started here, so that a folder the log cannot write
  // fails Open rather than the first batch.
  std::unique_ptr<DurableLog> log(new DurableLog(std::move(options)));
  log->next_sequence_ = existing.empty() ? 1 : existing.back().sequence + 1;
  WriteDelta delta;
  std::string buffer;
  RETURN_IF_ERROR(log->StartFile(buffer, delta));
  RETURN_IF_ERROR(log->WriteBuffer(buffer, delta));
  RETURN_IF_ERROR(log->SyncFile(delta));
  {
    absl::MutexLock lock(&log->mu_);
    log->stats_.bytes_written = delta.bytes;
    log->stats_.files_started = delta.files;
    log->stats_.flushes = delta.flushes;
  }

  log->writer_ = std::thread(&DurableLog::WriterLoop, log.get());
  LOG_INFO << "experiment log open: " << log->path_ << " (" << existing.size()
           << " earlier files)";
  return log;
}

DurableLog::~DurableLog() {
  bool closed_before = false;
  {
    absl::MutexLock lock(&close_mu_);
    closed_before = closed_;
  }
  const absl::Status status = Close();
  if (!closed_before && !status.ok()) {
    LOG_ERROR << "experiment log closed with an error: " << status;
  }
}

absl::Status DurableLog::Append(std::string line) {
  if (line.empty()) return absl::InvalidArgumentError("empty record");
  const size_t newline = line.find('\n');
  if (newline != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "record of ", line.size(), " bytes has a newline at byte ", newline));
  }

  absl::MutexLock lock(&mu_);
  if (!status_.ok()) return status_;
  if (closing_) {
    return absl::FailedPreconditionError(
        absl::StrCat("experiment log in ", options_.dir, " is closed"));
  }
  if (appended_ - durable_ >= options_.max_pending_records) {
    ++stats_.appends_full;
    if (!options_.wait_when_full) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "experiment log in ", options_.dir, " has ",
          options_.max_pending_records,
          " records pending (max_pending_records); record not logged"));
    }
    mu_.Await(absl::Condition(this, &DurableLog::HasRoomOrStopped));
    if (!status_.ok()) return status_;
    if (closing_) {
      return absl::FailedPreconditionError(
          absl::StrCat("experiment log in ", options_.dir, " is closed"));
    }
  }
  queue_.push_back(std::move(line));
  ++appended_;
  ++stats_.records_appended;
  return absl::OkStatus();
}

absl::Status DurableLog::Flush() {
  absl::MutexLock lock(&mu_);
  if (!status_.ok()) return status_;
  const int64_t target = appended_;
  if (durable_ >= target) return absl::OkStatus();
  flush_target_ = std::max(flush_target_, target);
  auto done = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return durable_ >= target || !status_.ok();
  };
  mu_.Await(absl::Condition(&done));
  return status_;
}

absl::Status DurableLog::Close() {
  absl::MutexLock close_lock(&close_mu_);
  if (!closed_) {
    closed_ = true;
    {
      absl::MutexLock lock(&mu_);
      closing_ = true;
    }
    if (writer_.joinable()) {
      writer_.join();
      const Stats s = stats();
      LOG_INFO << "experiment log closed: " << options_.dir << "/"
               << options_.file_prefix << "-*" << kSuffix << ", "
               << s.records_written << " records in " << s.files_started
               << " files";
    } else if (fd_ >= 0) {
      // Open failed before the writer started; the file is not ours to
      // finish.
      ::close(fd_);
      fd_ = -1;
    }
  }
  return status();
}

absl::Status DurableLog::status() const {
  absl::MutexLock lock(&mu_);
  return status_;
}

DurableLog::Stats DurableLog::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

bool DurableLog::WriterHasWork() const {
  if (!status_.ok() || closing_) return true;
  const int64_t waiting = static_cast<int64_t>(queue_.size());
  return waiting >= options_.flush_records ||
         (waiting > 0 && flush_target_ > durable_);
}

bool DurableLog::HasRoomOrStopped() const {
  return !status_.ok() || closing_ ||
         appended_ - durable_ < options_.max_pending_records;
}

void DurableLog::WriterLoop() {
  const absl::Duration interval =
      absl::Microseconds(options_.flush_interval_us);
  std::vector<std::string> batch;
  while (true) {
    batch.clear();
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(this, &DurableLog::WriterHasWork),
                           interval);
      if (!status_.ok()) break;
      if (queue_.empty()) {
        if (closing_) break;
        continue;
      }
      batch.swap(queue_);
    }

    WriteDelta delta;
    const absl::Status written = WriteBatch(batch, delta);
    absl::MutexLock lock(&mu_);
    stats_.bytes_written += delta.bytes;
    stats_.files_started += delta.files;
    stats_.flushes += delta.flushes;
    if (written.ok()) {
      durable_ += static_cast<int64_t>(batch.size());
      stats_.records_written += static_cast<int64_t>(batch.size());
      continue;
    }
    status_ = absl::DataLossError(
        absl::StrCat("experiment log: ", written.message(),
                     "; the log stopped and records not yet durable are lost"));
    queue_.clear();
    LOG_ERROR << status_;
    break;
  }

  // Finish the current file; after a failure it is only closed, since its
  // state on disk is unknown and nothing more is written.
  bool failed = false;
  {
    absl::MutexLock lock(&mu_);
    failed = !status_.ok();
  }
  if (failed) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    return;
  }
  WriteDelta delta;
  const absl::Status finished = FinishFile(delta);
  absl::MutexLock lock(&mu_);
  stats_.flushes += delta.flushes;
  if (!finished.ok()) {
    status_ = absl::DataLossError(
        absl::StrCat("experiment log: ", finished.message()));
    LOG_ERROR << status_;
  }
}

absl::Status DurableLog::WriteBatch(const std::vector<std::string>& batch,
                                    WriteDelta& delta) {
  std::string buffer;
  for (const std::string& record : batch) {
    const int64_t size = file_bytes_ + static_cast<int64_t>(buffer.size());
    if (file_records_ > 0 && size >= options_.max_file_bytes) {
      RETURN_IF_ERROR(WriteBuffer(buffer, delta));
      RETURN_IF_ERROR(FinishFile(delta));
      RETURN_IF_ERROR(StartFile(buffer, delta));
    }
    buffer.append(record);
    buffer.push_back('\n');
    ++file_records_;
  }
  RETURN_IF_ERROR(WriteBuffer(buffer, delta));
  return SyncFile(delta);
}

absl::Status DurableLog::StartFile(std::string& buffer, WriteDelta& delta) {
  path_ =
      JoinPath(options_.dir, FileName(options_.file_prefix, next_sequence_));
  // O_EXCL: a log never writes into a file that exists already.
  const int fd =
      ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(path_, ": cannot create"));
  }
  fd_ = fd;
  ++next_sequence_;
  file_bytes_ = 0;
  file_records_ = 0;
  file_dirty_ = false;
  ++delta.files;
  RETURN_IF_ERROR(SyncDir());

  if (!options_.file_header) return absl::OkStatus();
  const std::vector<std::string> header = options_.file_header();
  for (size_t i = 0; i < header.size(); ++i) {
    if (header[i].find('\n') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          path_, ": file_header line ", i + 1, " contains a newline"));
    }
    buffer.append(header[i]);
    buffer.push_back('\n');
  }
  return absl::OkStatus();
}

absl::Status DurableLog::WriteBuffer(std::string& buffer, WriteDelta& delta) {
  const char* data = buffer.data();
  size_t left = buffer.size();
  while (left > 0) {
    const ssize_t n = options_.write_fn ? options_.write_fn(fd_, data, left)
                                        : ::write(fd_, data, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat(path_, ": write failed"));
    }
    if (n == 0) {
      return absl::InternalError(
          absl::StrCat(path_, ": write failed: wrote 0 of ", left, " bytes"));
    }
    data += n;
    left -= static_cast<size_t>(n);
    file_bytes_ += n;
    delta.bytes += n;
    file_dirty_ = true;
  }
  buffer.clear();
  return absl::OkStatus();
}

absl::Status DurableLog::SyncFile(WriteDelta& delta) {
  if (!file_dirty_) return absl::OkStatus();
  if (FsyncRetrying(options_.fsync_fn, fd_) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(path_, ": fsync failed"));
  }
  file_dirty_ = false;
  ++delta.flushes;
  return absl::OkStatus();
}

absl::Status DurableLog::SyncDir() {
  const int fd =
      ::open(options_.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return absl::ErrnoToStatus(
        errno, absl::StrCat(options_.dir, ": cannot open the folder"));
  }
  const int result = FsyncRetrying(options_.fsync_fn, fd);
  const int error = errno;
  ::close(fd);
  if (result != 0) {
    return absl::ErrnoToStatus(
        error, absl::StrCat(options_.dir, ": fsync of the folder failed"));
  }
  return absl::OkStatus();
}

absl::Status DurableLog::FinishFile(WriteDelta& delta) {
  if (fd_ < 0) return absl::OkStatus();
  RETURN_IF_ERROR(SyncFile(delta));
  const int result = ::close(fd_);
  const int error = errno;
  fd_ = -1;
  // The data is fsynced already; an interrupted close has still released
  // the descriptor on Linux and loses nothing.
  if (result != 0 && error != EINTR) {
    return absl::ErrnoToStatus(error, absl::StrCat(path_, ": close failed"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ReadStats> ReadLog(
    const std::string& dir, const std::string& prefix,
    const std::function<absl::Status(const nlohmann::json&)>& fn) {
  ASSIGN_OR_RETURN(std::vector<LogFile> files, ListLogFiles(dir, prefix));
  ReadStats stats;
  for (const LogFile& file : files) {
    std::ifstream in(file.path, std::ios::binary);
    if (!in) {
      return absl::DataLossError(absl::StrCat(file.path, ": cannot open"));
    }
    ++stats.files;

    // A line that is not JSON is torn when it is the file's last line and
    // corrupt otherwise, which is known once the next line is read.
    int64_t bad_line = 0;
    int64_t line_number = 0;
    std::string line;
    while (std::getline(in, line)) {
      ++line_number;
      if (bad_line > 0) {
        ++stats.corrupt_lines;
        if (stats.corrupt_examples.size() < ReadStats::kMaxCorruptExamples) {
          stats.corrupt_examples.push_back(
              absl::StrCat(file.path, ":", bad_line));
        }
        bad_line = 0;
      }
      // getline stops at the end of the file without a newline only for a
      // last line that was cut short.
      if (in.eof()) {
        ++stats.torn_lines;
        break;
      }
      const nlohmann::json value =
          nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (value.is_discarded()) {
        bad_line = line_number;
        continue;
      }
      ++stats.records;
      RETURN_IF_ERROR(fn(value));
    }
    if (in.bad()) {
      return absl::DataLossError(absl::StrCat(file.path, ": read failed"));
    }
    if (bad_line > 0) ++stats.torn_lines;
  }
  return stats;
}

}  // namespace optrec
