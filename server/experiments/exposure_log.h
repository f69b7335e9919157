// The durable append-only log of the A/B experiments: exposures (which arm a
// unit was served) and feedback events (what the unit did next). The log
// knows nothing of its records: each one is a single line of JSON text,
// written with a newline after it.
//
// Files. A log writes into one folder, in files named
// "<prefix>-<sequence>.jsonl" with a zero-padded sequence of six digits or
// more ("exposures-000001.jsonl"). A log opened on a folder starts a new
// file numbered after the highest one already there, so a restart never
// appends into a file that a crash may have left with a torn last line.
// A file is replaced by the next one once it reaches max_file_bytes, and
// every file begins with the lines of the file_header hook, so that each
// file carries the experiment definitions its records refer to.
//
// Durability. Append queues a record and returns; a writer thread writes
// the queue in batches and fsyncs each batch. A record is durable once
// Flush (or Close) returns OK after it was appended; the flush_records and
// flush_interval_us options only bound how long a record waits without
// one. A crash loses at most the records that were not yet durable and can
// leave a torn last line in the file being written, which ReadLog skips.
//
// Example:
//   DurableLog::Options options;
//   options.dir = "/var/lib/optrec/experiments";
//   options.file_header = [&] {
//     return std::vector<std::string>{experiments_json.dump()};
//   };
//   ASSIGN_OR_RETURN(std::unique_ptr<DurableLog> log,
//                    DurableLog::Open(options));
//   RETURN_IF_ERROR(log->Append(exposure.dump()));
//   ...
//   RETURN_IF_ERROR(log->Close());
#ifndef OPTREC_SERVER_EXPERIMENTS_EXPOSURE_LOG_H_
#define OPTREC_SERVER_EXPERIMENTS_EXPOSURE_LOG_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace optrec {

// An append-only log of single-line JSON records in a folder of rotated
// files, written and fsynced in batches by a background thread.
//
// Thread-safe: Append, Flush, Close, stats and status may be called from
// any thread. One log object per (folder, prefix) at a time, in all
// processes together: two would take turns at the file names, and the
// first to find its next name taken fails (neither writes into the other's
// file).
class DurableLog {
 public:
  struct Options {
    // The folder of the files; created with its parents when missing.
    // Required.
    std::string dir;
    // The files are "<file_prefix>-<sequence>.jsonl". Not empty, no '/'.
    std::string file_prefix = "exposures";
    // The writer writes and fsyncs the pending records as soon as this many
    // are waiting (one batch). At least 1 and at most max_pending_records.
    int64_t flush_records = 512;
    // The writer also writes and fsyncs whatever is pending at least this
    // often, so a record waits no longer than this for the disk without a
    // Flush. Latency only: no result depends on it. At least 1.
    int64_t flush_interval_us = 200000;
    // A file that has reached this size (header included) receives no more
    // records: the next record starts a new file. A file passes this size
    // by at most its last record, and a new file is started only after the
    // current one holds a record. At least 1.
    int64_t max_file_bytes = int64_t{256} << 20;
    // Records appended and not yet durable (waiting or being written) that
    // the log holds in memory at most. At least flush_records.
    int64_t max_pending_records = int64_t{1} << 16;
    // What Append does when max_pending_records are pending: true, it waits
    // until the writer has made room (nothing is lost, the caller is slowed
    // to the disk's pace); false, it returns ResourceExhausted at once and
    // the record is not logged (the caller decides: count it, fail the
    // request).
    bool wait_when_full = true;
    // When set, called as each file is started (including the first, in
    // Open); the lines it returns are written first in that file. Each line
    // must be one JSON text without a newline. ReadLog hands these lines to
    // its callback like any record, so give them a field that tells them
    // apart. Called on the thread of Open for the first file and on the
    // writer thread for the others, never concurrently with itself; it must
    // not call Flush or Close of this log. Empty: files have no header.
    std::function<std::vector<std::string>()> file_header;
    // Test seams for the file system: when set, called instead of write(2)
    // and fsync(2) on the log's files and folder, with the same arguments
    // and results (-1 and errno on failure; a write may be short or fail
    // with EINTR). Tests use them to inject short writes and disk errors.
    // Empty: the system calls.
    std::function<ssize_t(int fd, const void* data, size_t size)> write_fn;
    std::function<int(int fd)> fsync_fn;
  };

  // Counters since Open. Records are Append's lines; header lines are
  // counted in bytes_written only.
  struct Stats {
    // Records accepted by Append.
    int64_t records_appended = 0;
    // Records written and fsynced: durable.
    int64_t records_written = 0;
    // Bytes written to the files, header lines and newlines included.
    int64_t bytes_written = 0;
    // Files created, the one started by Open included.
    int64_t files_started = 0;
    // Fsyncs of a log file: one per batch written, one per file finished
    // by rotation, and one for a header written by Open.
    int64_t flushes = 0;
    // Appends that found max_pending_records pending (they waited, or were
    // refused).
    int64_t appends_full = 0;
  };

  // Validates `options` (InvalidArgument naming the bad field and its
  // value), creates the folder, starts the first file (its header
  // written and fsynced) and the writer thread. Errors name the folder or
  // the file: from the OS (PermissionDenied, NotFound, ...) when the folder
  // cannot be made or listed or the file created; AlreadyExists when
  // another writer took the file name first; InvalidArgument for a header
  // line that contains a newline.
  static absl::StatusOr<std::unique_ptr<DurableLog>> Open(Options options);

  // Close()s the log. An error of that Close is logged when the log was
  // not closed before (a caller that called Close has seen it).
  ~DurableLog();
  DurableLog(const DurableLog&) = delete;
  DurableLog& operator=(const DurableLog&) = delete;

  // Queues one record, to be written after every record appended before it
  // (by any thread). OK means accepted, not durable: see Flush. Blocks only
  // when max_pending_records are pending and wait_when_full is set.
  // Errors: InvalidArgument for an empty line or one that contains '\n'
  // (the log stays usable); ResourceExhausted when full and
  // wait_when_full is false; FailedPrecondition once Close has begun; the
  // log's error (see status()) once it has failed.
  absl::Status Append(std::string line);

  // Blocks until every record appended before the call is written and
  // fsynced. OK: they are durable. Once the log has failed, returns its
  // error (see status()) even for records written before the failure.
  absl::Status Flush();

  // Writes and fsyncs every accepted record, closes the file and stops the
  // writer thread; Appends after it begins fail. Returns OK when every
  // accepted record is durable, otherwise the log's error. Blocks until the
  // writer has stopped. Later calls return the same result.
  absl::Status Close();

  // OK while every write has succeeded. After a failed write, fsync or
  // file creation, or a header line with a newline for a later file:
  // DataLoss naming the file and the cause; the log writes nothing more,
  // and records not durable by then are lost.
  absl::Status status() const;

  Stats stats() const;

 private:
  explicit DurableLog(Options options);

  // The writer thread: takes batches off queue_ until Close.
  void WriterLoop();
  // When the writer should stop waiting: a full batch, a Flush waiting,
  // Close, or a failure.
  bool WriterHasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // When an Append waiting for room may go on.
  bool HasRoomOrStopped() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // File work of the writer thread (and of Open before the thread starts);
  // they touch only the writer's fields below and `delta`.
  struct WriteDelta {
    int64_t bytes = 0;
    int64_t files = 0;
    int64_t flushes = 0;
  };
  absl::Status WriteBatch(const std::vector<std::string>& batch,
                          WriteDelta& delta);
  // Creates the file numbered next_sequence_ and puts its header into
  // `buffer`; fsyncs the folder so the new name survives a crash.
  absl::Status StartFile(std::string& buffer, WriteDelta& delta);
  // Writes `buffer` whole to the current file and clears it.
  absl::Status WriteBuffer(std::string& buffer, WriteDelta& delta);
  // Fsyncs the current file when something was written since the last
  // fsync.
  absl::Status SyncFile(WriteDelta& delta);
  // Fsyncs the folder, making a new file's name durable.
  absl::Status SyncDir();
  // Fsyncs and closes the current file, if one is open.
  absl::Status FinishFile(WriteDelta& delta);

  const Options options_;

  // Owned by the writer thread once it runs (by Open before): the current
  // file, its size, its record count and whether it has writes not yet
  // fsynced, and the next file's sequence.
  int fd_ = -1;
  std::string path_;
  int64_t file_bytes_ = 0;
  int64_t file_records_ = 0;
  bool file_dirty_ = false;
  int64_t next_sequence_ = 1;

  // Guards the queue of pending records, the counts that Flush and full
  // Appends wait on, the log's error, the closing flag and the stats.
  mutable absl::Mutex mu_;
  std::vector<std::string> queue_ ABSL_GUARDED_BY(mu_);
  // Records appended so far, and those of them that are durable; a record
  // is numbered by the value of appended_ after its Append.
  int64_t appended_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t durable_ ABSL_GUARDED_BY(mu_) = 0;
  // The highest record number a Flush waits for.
  int64_t flush_target_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  Stats stats_ ABSL_GUARDED_BY(mu_);

  // Serializes Close, so the writer thread is joined once; guards closed_.
  absl::Mutex close_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  bool closed_ ABSL_GUARDED_BY(close_mu_) = false;
  std::thread writer_;
};

// What ReadLog found.
struct ReadStats {
  int64_t files = 0;    // files read
  int64_t records = 0;  // lines handed to the callback, headers included
  // Last lines of a file cut short by a crash (no newline at the end, or
  // not JSON): skipped.
  int64_t torn_lines = 0;
  // Lines before a file's last one that are not JSON: skipped.
  int64_t corrupt_lines = 0;
  // "path:line" (1-based) of the first kMaxCorruptExamples corrupt lines.
  static constexpr int kMaxCorruptExamples = 8;
  std::vector<std::string> corrupt_examples;
};

// Reads every "<prefix>-<sequence>.jsonl" file of `dir` in sequence order
// (other files are ignored) and calls fn for each line, in order, headers
// included. Torn and corrupt lines are skipped and counted, never an error.
// Errors: NotFound naming `dir` when it is missing; FailedPrecondition when
// it is not a folder; DataLoss naming the file when one cannot be opened
// or read; fn's error, as it returned it, which stops the reading. Reading
// a log that is being written sees its records up to the current write; a
// line being written at that moment counts as torn. Blocks on file reads;
// safe to call from any thread.
absl::StatusOr<ReadStats> ReadLog(
    const std::string& dir, const std::string& prefix,
    const std::function<absl::Status(const nlohmann::json&)>& fn);

}  // namespace optrec

#endif  // OPTREC_SERVER_EXPERIMENTS_EXPOSURE_LOG_H_
