// The experiments' durable log: concurrent appends all land once and in
// order, files rotate with their header, a restart starts a new file, torn
// and corrupt lines are skipped and counted, and write failures are
// reported instead of lost. Durability is checked through Flush and Close
// only, never through timing.
#include "server/experiments/exposure_log.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace optrec {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;

// A new, empty folder for the running test.
std::string FreshDir() {
  const std::string name =
      ::testing::UnitTest::GetInstance()->current_test_info()->name();
  const std::string dir = absl::StrCat(::testing::TempDir(), "exposure_log_",
                                       name, "_", ::getpid());
  std::filesystem::remove_all(dir);
  return dir;
}

DurableLog::Options LogOptions(const std::string& dir) {
  DurableLog::Options options;
  options.dir = dir;
  return options;
}

std::unique_ptr<DurableLog> OpenLog(DurableLog::Options options) {
  auto log = DurableLog::Open(std::move(options));
  EXPECT_TRUE(log.ok()) << log.status();
  return log.ok() ? std::move(*log) : nullptr;
}

std::string Record(int id) {
  return nlohmann::json{{"id", id}, {"arm", id % 2 ? "b" : "a"}}.dump();
}

struct ReadResult {
  std::vector<nlohmann::json> records;
  ReadStats stats;
};

ReadResult ReadAll(const std::string& dir,
                   const std::string& prefix = "exposures") {
  ReadResult result;
  auto stats = ReadLog(dir, prefix, [&](const nlohmann::json& record) {
    result.records.push_back(record);
    return absl::OkStatus();
  });
  EXPECT_TRUE(stats.ok()) << stats.status();
  if (stats.ok()) result.stats = *stats;
  return result;
}

// The "id" fields of the records that have one (headers have none).
std::vector<int> Ids(const std::vector<nlohmann::json>& records) {
  std::vector<int> ids;
  for (const nlohmann::json& r : records) {
    if (r.contains("id")) ids.push_back(r["id"].get<int>());
  }
  return ids;
}

std::vector<int> Range(int begin, int end) {
  std::vector<int> ids;
  for (int i = begin; i < end; ++i) ids.push_back(i);
  return ids;
}

// The log's file names in `dir`, sorted.
std::vector<std::string> FileNames(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string Contents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void SetContents(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

void AppendText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::app);
  out << text;
}

// Waits until `done` holds; fails the test after a minute. The waits in
// these tests are for conditions that the log must reach, so the deadline
// only turns a hang into a failure.
template <typename Fn>
void WaitUntil(Fn done) {
  const absl::Time deadline = absl::Now() + absl::Minutes(1);
  while (!done()) {
    ASSERT_LT(absl::Now(), deadline) << "condition never reached";
    absl::SleepFor(absl::Milliseconds(1));
  }
}

// Writes with the system call until `hold` is set, then blocks until
// `release` is notified: the writer thread stays inside a write.
struct HeldWriter {
  std::atomic<bool> hold{false};
  absl::Notification release;

  std::function<ssize_t(int, const void*, size_t)> Fn() {
    return [this](int fd, const void* data, size_t size) -> ssize_t {
      if (hold.load()) release.WaitForNotification();
      return ::write(fd, data, size);
    };
  }
};

TEST(DurableLogTest, ConcurrentAppendsAreReadBackOnceInPerThreadOrder) {
  const std::string dir = FreshDir();
  DurableLog::Options options = LogOptions(dir);
  options.flush_records = 64;
  options.max_file_bytes = 64 << 10;
  std::unique_ptr<DurableLog> log = OpenLog(options);
  ASSERT_NE(log, nullptr);

  constexpr int kThreads = 16;
  constexpr int kPerThread = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&log, t] {
      for (int n = 0; n < kPerThread; ++n) {
        const absl::Status s =
            log->Append(nlohmann::json{{"t", t}, {"n", n}}.dump());
        ASSERT_TRUE(s.ok()) << s;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  ASSERT_TRUE(log->Close().ok());

  const ReadResult read = ReadAll(dir);
  EXPECT_EQ(read.stats.torn_lines, 0);
  EXPECT_EQ(read.stats.corrupt_lines, 0);
  ASSERT_THAT(read.records, SizeIs(kThreads * kPerThread));
  std::set<std::pair<int, int>> seen;
  std::vector<int> next(kThreads, 0);
  for (const nlohmann::json& r : read.records) {
    const int t = r["t"].get<int>();
    const int n = r["n"].get<int>();
    EXPECT_TRUE(seen.insert({t, n}).second) << "duplicate " << r.dump();
    EXPECT_EQ(n, next[t]) << "thread " << t << " out of order";
    next[t] = n + 1;
  }
  EXPECT_THAT(seen, SizeIs(kThreads * kPerThread));
  EXPECT_GT(read.stats.files, 1);

  const DurableLog::Stats stats = log->stats();
  EXPECT_EQ(stats.records_appended, kThreads * kPerThread);
  EXPECT_EQ(stats.records_written, kThreads * kPerThread);
  EXPECT_EQ(stats.files_started, read.stats.files);
}

TEST(DurableLogTest, RotatedFilesEachStartWithTheHeader) {
  const std::string dir = FreshDir();
  const std::vector<std::string> header = {
      R"({"header":"experiments","experiments":[{"name":"rerank"}]})",
      R"({"header":"arms","arms":["a","b"]})"};
  int header_calls = 0;
  DurableLog::Options options = LogOptions(dir);
  options.max_file_bytes = 300;
  options.file_header = [&] {
    ++header_calls;
    return header;
  };
  std::unique_ptr<DurableLog> log = OpenLog(options);
  ASSERT_NE(log, nullptr);

  // Rotation both between batches (a Flush after each record) and inside
  // one batch (the rest, written by Close).
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(log->Append(Record(i)).ok());
    ASSERT_TRUE(log->Flush().ok());
  }
  for (int i = 20; i < 60; ++i) ASSERT_TRUE(log->Append(Record(i)).ok());
  ASSERT_TRUE(log->Close().ok());

  const std::vector<std::string> names = FileNames(dir);
  ASSERT_GT(names.size(), 4u);
  EXPECT_EQ(names.front(), "exposures-000001.jsonl");
  int64_t total_bytes = 0;
  for (const std::string& name : names) {
    const std::string content = Contents(dir + "/" + name);
    total_bytes += static_cast<int64_t>(content.size());
    const std::vector<std::string> lines =
        absl::StrSplit(content, '\n', absl::SkipEmpty());
    ASSERT_GT(lines.size(), 2u) << name;
    EXPECT_EQ(lines[0], header[0]) << name;
    EXPECT_EQ(lines[1], header[1]) << name;
    // A file passes max_file_bytes by at most its last record.
    const int64_t before_last =
        static_cast<int64_t>(content.size() - lines.back().size() - 1);
    EXPECT_LT(before_last, options.max_file_bytes) << name;
  }
  EXPECT_EQ(header_calls, static_cast<int>(names.size()));

  const ReadResult read = ReadAll(dir);
  EXPECT_EQ(Ids(read.records), Range(0, 60));
  EXPECT_EQ(read.records.size(), 60 + 2 * names.size());
  const DurableLog::Stats stats = log->stats();
  EXPECT_EQ(stats.files_started, static_cast<int64_t>(names.size()));
  EXPECT_EQ(stats.bytes_written, total_bytes);
  EXPECT_EQ(stats.records_written, 60);
  EXPECT_GE(stats.flushes, 20);
}

TEST(DurableLogTest, ReopenStartsTheNextFileAndLeavesOldOnesUntouched) {
  const std::string dir = FreshDir();
  std::unique_ptr<DurableLog> first = OpenLog(LogOptions(dir));
  ASSERT_NE(first, nullptr);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(first->Append(Record(i)).ok());
  ASSERT_TRUE(first->Close().ok());
  ASSERT_THAT(FileNames(dir), ElementsAre("exposures-000001.jsonl"));
  const std::string old_content = Contents(dir + "/exposures-000001.jsonl");

  std::unique_ptr<DurableLog> second = OpenLog(LogOptions(dir));
  ASSERT_NE(second, nullptr);
  for (int i = 3; i < 6; ++i) ASSERT_TRUE(second->Append(Record(i)).ok());
  ASSERT_TRUE(second->Close().ok());

  EXPECT_THAT(FileNames(dir),
              ElementsAre("exposures-000001.jsonl", "exposures-000002.jsonl"));
  EXPECT_EQ(Contents(dir + "/exposures-000001.jsonl"), old_content);
  EXPECT_EQ(Ids(ReadAll(dir).records), Range(0, 6));
}

TEST(DurableLogTest, SequenceContinuesAfterTheHighestFile) {
  const std::string dir = FreshDir();
  std::filesystem::create_directories(dir);
  SetContents(dir + "/exposures-000041.jsonl", Record(0) + "\n");
  SetContents(dir + "/exposures-000007.jsonl", "");
  std::unique_ptr<DurableLog> log = OpenLog(LogOptions(dir));
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(Record(1)).ok());
  ASSERT_TRUE(log->Close().ok());
  EXPECT_EQ(Contents(dir + "/exposures-000042.jsonl"), Record(1) + "\n");
  EXPECT_EQ(Ids(ReadAll(dir).records), Range(0, 2));
}

TEST(DurableLogTest, PartialLastLineAfterACrashIsSkippedAsTorn) {
  const std::string dir = FreshDir();
  std::unique_ptr<DurableLog> log = OpenLog(LogOptions(dir));
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(log->Append(Record(i)).ok());
  ASSERT_TRUE(log->Close().ok());
  // A crash in the middle of writing a sixth record.
  AppendText(dir + "/exposures-000001.jsonl", R"({"id":5,"ar)");

  ReadResult read = ReadAll(dir);
  EXPECT_EQ(Ids(read.records), Range(0, 5));
  EXPECT_EQ(read.stats.torn_lines, 1);
  EXPECT_EQ(read.stats.corrupt_lines, 0);

  // The restarted log writes a new file: the torn line stays the last line
  // of its file instead of running into new records.
  log = OpenLog(LogOptions(dir));
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(Record(6)).ok());
  ASSERT_TRUE(log->Close().ok());
  read = ReadAll(dir);
  EXPECT_EQ(Ids(read.records), (std::vector<int>{0, 1, 2, 3, 4, 6}));
  EXPECT_EQ(read.stats.torn_lines, 1);
  EXPECT_EQ(read.stats.corrupt_lines, 0);
}

TEST(DurableLogTest, FileCutInItsLastLineIsReadUpToThatLine) {
  const std::string dir = FreshDir();
  std::unique_ptr<DurableLog> log = OpenLog(LogOptions(dir));
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(log->Append(Record(i)).ok());
  ASSERT_TRUE(log->Close().ok());
  const std::string path = dir + "/exposures-000001.jsonl";
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 4);

  const ReadResult read = ReadAll(dir);
  EXPECT_EQ(Ids(read.records), Range(0, 4));
  EXPECT_EQ(read.stats.torn_lines, 1);
  EXPECT_EQ(read.stats.corrupt_lines, 0);
}

TEST(DurableLogTest, LastLineThatIsNotJsonIsTorn) {
  const std::string dir = FreshDir();
  std::filesystem::create_directories(dir);
  SetContents(
      dir + "/exposures-000001.jsonl",
      Record(0) + "\n" + Record(1) + "\n" + std::string(6, '\0') + "\n");
  const ReadResult read = ReadAll(dir);
  EXPECT_EQ(Ids(read.records), Range(0, 2));
  EXPECT_EQ(read.stats.torn_lines, 1);
  EXPECT_EQ(read.stats.corrupt_lines, 0);
}

TEST(DurableLogTest, CorruptMiddleLineIsSkippedAndItsPlaceRecorded) {
  const std::string dir = FreshDir();
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/exposures-000001.jsonl";
  SetContents(path, Record(0) + "\n" + Record(1) + "\n{\"id\":2,\"arm\n" +
                        Record(3) + "\n" + Record(4) + "\n");

  const ReadResult read = ReadAll(dir);
  EXPECT_EQ(Ids(read.records), (std::vector<int>{0, 1, 3, 4}));
  EXPECT_EQ(read.stats.corrupt_lines, 1);
  EXPECT_EQ(read.stats.torn_lines, 0);
  EXPECT_THAT(read.stats.corrupt_examples, ElementsAre(path + ":3"));
}

TEST(DurableLogTest, CorruptExamplesKeepOnlyTheFirstFew) {
  const std::string dir = FreshDir();
  std::filesystem::create_directories(dir);
  std::string content;
  for (int i = 0; i < 20; ++i) content += "garbage\n" + Record(i) + "\n";
  SetContents(dir + "/exposures-000001.jsonl", content);

  const ReadResult read = ReadAll(dir);
  EXPECT_EQ(Ids(read.records), Range(0, 20));
  EXPECT_EQ(read.stats.corrupt_lines, 20);
  EXPECT_THAT(read.stats.corrupt_examples,
              SizeIs(ReadStats::kMaxCorruptExamples));
  EXPECT_EQ(read.stats.corrupt_examples[1], dir + "/exposures-000001.jsonl:3");
}

TEST(DurableLogTest, ReadLogOfAMissingFolderIsNotFoundNamingIt) {
  const std::string dir = FreshDir();
  auto read = ReadLog(dir, "exposures",
                      [](const nlohmann::json&) { return absl::OkStatus(); });
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(read.status().message(), HasSubstr(dir));
}

TEST(DurableLogTest, ReadLogStopsAtTheCallbacksError) {
  const std::string dir = FreshDir();
  std::unique_ptr<DurableLog> log = OpenLog(LogOptions(dir));
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(log->Append(Record(i)).ok());
  ASSERT_TRUE(log->Close().ok());

  int calls = 0;
  auto read = ReadLog(dir, "exposures", [&](const nlohmann::json& r) {
    ++calls;
    return r["id"] == 1 ? absl::AbortedError("enough") : absl::OkStatus();
  });
  EXPECT_EQ(read.status(), absl::AbortedError("enough"));
  EXPECT_EQ(calls, 2);
}

TEST(DurableLogTest, LogsWithOtherPrefixesShareAFolderWithoutMixing) {
  const std::string dir = FreshDir();
  DurableLog::Options events_options = LogOptions(dir);
  events_options.file_prefix = "events";
  std::unique_ptr<DurableLog> exposures = OpenLog(LogOptions(dir));
  std::unique_ptr<DurableLog> events = OpenLog(events_options);
  ASSERT_NE(exposures, nullptr);
  ASSERT_NE(events, nullptr);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(exposures->Append(Record(i)).ok());
    ASSERT_TRUE(events->Append(Record(100 + i)).ok());
  }
  ASSERT_TRUE(exposures->Close().ok());
  ASSERT_TRUE(events->Close().ok());
  // Names that only look like log files are not read.
  SetContents(dir + "/exposures-old.jsonl", Record(7) + "\n");
  SetContents(dir + "/exposures-000009.jsonl.tmp", Record(8) + "\n");
  SetContents(dir + "/exposures-.jsonl", Record(9) + "\n");

  EXPECT_EQ(Ids(ReadAll(dir, "exposures").records), Range(0, 3));
  EXPECT_EQ(Ids(ReadAll(dir, "events").records), Range(100, 103));
}

TEST(DurableLogTest, AppendRejectsEmptyAndMultiLineRecords) {
  const std::string dir = FreshDir();
  std::unique_ptr<DurableLog> log = OpenLog(LogOptions(dir));
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(log->Append("{\"id\":0,\n\"arm\":\"a\"}").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(log->Append("{}\n").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(log->Append("").code(), absl::StatusCode::kInvalidArgument);

  // The log stays usable.
  ASSERT_TRUE(log->Append(Record(1)).ok());
  ASSERT_TRUE(log->Close().ok());
  EXPECT_EQ(Ids(ReadAll(dir).records), Range(1, 2));
  EXPECT_EQ(log->stats().records_appended, 1);
}

TEST(DurableLogTest, FlushMakesAppendedRecordsDurableBeforeClose) {
  const std::string dir = FreshDir();
  DurableLog::Options options = LogOptions(dir);
  // Neither the batch size nor the interval is reached: only Flush writes.
  options.flush_interval_us = int64_t{3600} * 1000 * 1000;
  std::unique_ptr<DurableLog> log = OpenLog(options);
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(log->Append(Record(i)).ok());
  EXPECT_THAT(ReadAll(dir).records, SizeIs(0));
  EXPECT_EQ(log->stats().records_written, 0);

  ASSERT_TRUE(log->Flush().ok());
  EXPECT_EQ(Ids(ReadAll(dir).records), Range(0, 3));
  EXPECT_EQ(log->stats().records_written, 3);
  EXPECT_EQ(log->stats().records_appended, 3);

  ASSERT_TRUE(log->Append(Record(3)).ok());
  ASSERT_TRUE(log->Flush().ok());
  EXPECT_EQ(Ids(ReadAll(dir).records), Range(0, 4));
  ASSERT_TRUE(log->Close().ok());
}

TEST(DurableLogTest, AFullBatchIsWrittenWithoutAFlush) {
  const std::string dir = FreshDir();
  DurableLog::Options options = LogOptions(dir);
  options.flush_records = 4;
  options.flush_interval_us = int64_t{3600} * 1000 * 1000;
  std::unique_ptr<DurableLog> log = OpenLog(options);
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(log->Append(Record(i)).ok());
  WaitUntil([&] { return log->stats().records_written == 4; });
  EXPECT_EQ(Ids(ReadAll(dir).records), Range(0, 4));
  ASSERT_TRUE(log->Close().ok());
}

TEST(DurableLogTest, ShortWritesAndInterruptedCallsLoseNothing) {
  const std::string dir = FreshDir();
  std::atomic<int> write_calls{0};
  std::atomic<int> fsync_calls{0};
  DurableLog::Options options = LogOptions(dir);
  options.flush_records = 8;
  options.file_header = [] {
    return std::vector<std::string>{R"({"header":"experiments"})"};
  };
  options.write_fn = [&](int fd, const void* data, size_t size) -> ssize_t {
    if (++write_calls % 3 == 0) {
      errno = EINTR;
      return -1;
    }
    return ::write(fd, data, std::min<size_t>(size, 7));
  };
  options.fsync_fn = [&](int fd) {
    if (++fsync_calls % 2 == 1) {
      errno = EINTR;
      return -1;
    }
    return ::fsync(fd);
  };
  std::unique_ptr<DurableLog> log = OpenLog(options);
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(log->Append(Record(i)).ok());
  ASSERT_TRUE(log->Flush().ok());
  ASSERT_TRUE(log->Close().ok());

  const ReadResult read = ReadAll(dir);
  EXPECT_EQ(Ids(read.records), Range(0, 100));
  EXPECT_EQ(read.stats.torn_lines, 0);
  EXPECT_EQ(read.stats.corrupt_lines, 0);
  EXPECT_GT(write_calls.load(), 300);
}

TEST(DurableLogTest, WriteFailureIsReportedByFlushAppendAndClose) {
  const std::string dir = FreshDir();
  std::atomic<bool> disk_full{false};
  DurableLog::Options options = LogOptions(dir);
  options.write_fn = [&](int fd, const void* data, size_t size) -> ssize_t {
    if (disk_full.load()) {
      errno = ENOSPC;
      return -1;
    }
    return ::write(fd, data, size);
  };
  std::unique_ptr<DurableLog> log = OpenLog(options);
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(Record(0)).ok());
  ASSERT_TRUE(log->Flush().ok());

  disk_full = true;
  ASSERT_TRUE(log->Append(Record(1)).ok());
  const absl::Status flushed = log->Flush();
  EXPECT_EQ(flushed.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(flushed.message(), HasSubstr("exposures-000001.jsonl"));
  EXPECT_THAT(flushed.message(), HasSubstr("write failed"));
  EXPECT_EQ(log->Append(Record(2)), flushed);
  EXPECT_EQ(log->Flush(), flushed);
  EXPECT_EQ(log->status(), flushed);
  EXPECT_EQ(log->Close(), flushed);
  EXPECT_EQ(log->stats().records_written, 1);
  EXPECT_EQ(Ids(ReadAll(dir).records), Range(0, 1));
}

TEST(DurableLogTest, FsyncFailureIsReported) {
  const std::string dir = FreshDir();
  std::atomic<bool> failing{false};
  DurableLog::Options options = LogOptions(dir);
  options.fsync_fn = [&](int fd) {
    if (failing.load()) {
      errno = EIO;
      return -1;
    }
    return ::fsync(fd);
  };
  std::unique_ptr<DurableLog> log = OpenLog(options);
  ASSERT_NE(log, nullptr);
  failing = true;
  ASSERT_TRUE(log->Append(Record(0)).ok());
  const absl::Status flushed = log->Flush();
  EXPECT_EQ(flushed.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(flushed.message(), HasSubstr("exposures-000001.jsonl"));
  EXPECT_THAT(flushed.message(), HasSubstr("fsync failed"));
  EXPECT_EQ(log->Close(), flushed);
  EXPECT_EQ(log->stats().records_written, 0);
}

TEST(DurableLogTest, RotationOntoATakenNameIsReportedAndTheFileKept) {
  const std::string dir = FreshDir();
  DurableLog::Options options = LogOptions(dir);
  options.max_file_bytes = 1;
  std::unique_ptr<DurableLog> log = OpenLog(options);
  ASSERT_NE(log, nullptr);
  // Another writer takes the next name after this log has opened.
  const std::string taken = dir + "/exposures-000002.jsonl";
  SetContents(taken, Record(99) + "\n");

  ASSERT_TRUE(log->Append(Record(0)).ok());
  ASSERT_TRUE(log->Flush().ok());
  ASSERT_TRUE(log->Append(Record(1)).ok());
  const absl::Status flushed = log->Flush();
  EXPECT_EQ(flushed.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(flushed.message(), HasSubstr(taken));
  EXPECT_EQ(log->Close(), flushed);
  EXPECT_EQ(Contents(taken), Record(99) + "\n");
}

TEST(DurableLogTest, FullQueueRefusesAppendsWhenNotWaiting) {
  const std::string dir = FreshDir();
  HeldWriter writer;
  DurableLog::Options options = LogOptions(dir);
  options.flush_records = 4;
  options.max_pending_records = 4;
  options.wait_when_full = false;
  options.write_fn = writer.Fn();
  std::unique_ptr<DurableLog> log = OpenLog(options);
  ASSERT_NE(log, nullptr);

  writer.hold = true;
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(log->Append(Record(i)).ok());
  EXPECT_EQ(log->Append(Record(4)).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(log->stats().appends_full, 1);

  writer.release.Notify();
  ASSERT_TRUE(log->Flush().ok());
  ASSERT_TRUE(log->Append(Record(5)).ok());
  ASSERT_TRUE(log->Close().ok());
  EXPECT_EQ(Ids(ReadAll(dir).records), (std::vector<int>{0, 1, 2, 3, 5}));
  EXPECT_EQ(log->stats().records_appended, 5);
}

TEST(DurableLogTest, FullQueueMakesAppendWaitForTheWriter) {
  const std::string dir = FreshDir();
  HeldWriter writer;
  DurableLog::Options options = LogOptions(dir);
  options.flush_records = 2;
  options.max_pending_records = 2;
  options.write_fn = writer.Fn();
  std::unique_ptr<DurableLog> log = OpenLog(options);
  ASSERT_NE(log, nullptr);

  writer.hold = true;
  std::atomic<bool> appended{false};
  std::thread producer([&] {
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(log->Append(Record(i)).ok());
    appended = true;
  });
  WaitUntil([&] { return log->stats().appends_full == 1; });
  // The writer is held inside its write, so no room can have been made.
  EXPECT_FALSE(appended.load());

  writer.release.Notify();
  producer.join();
  EXPECT_TRUE(appended.load());
  ASSERT_TRUE(log->Close().ok());
  EXPECT_EQ(Ids(ReadAll(dir).records), Range(0, 3));
}

TEST(DurableLogTest, AppendAfterCloseFailsAndCloseRepeats) {
  const std::string dir = FreshDir();
  std::unique_ptr<DurableLog> log = OpenLog(LogOptions(dir));
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(Record(0)).ok());
  ASSERT_TRUE(log->Close().ok());
  EXPECT_EQ(log->Append(Record(1)).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(log->Flush().ok());
  EXPECT_TRUE(log->Close().ok());
  EXPECT_EQ(Ids(ReadAll(dir).records), Range(0, 1));
}

TEST(DurableLogTest, DestructorWritesEverythingAppended) {
  const std::string dir = FreshDir();
  {
    std::unique_ptr<DurableLog> log = OpenLog(LogOptions(dir));
    ASSERT_NE(log, nullptr);
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(log->Append(Record(i)).ok());
  }
  EXPECT_EQ(Ids(ReadAll(dir).records), Range(0, 10));
}

TEST(DurableLogTest, OpenRejectsBadOptionsNamingTheField) {
  const std::string dir = FreshDir();
  auto open_with = [&](auto change) {
    DurableLog::Options options = LogOptions(dir);
    change(options);
    return DurableLog::Open(options).status();
  };
  const struct {
    std::function<void(DurableLog::Options&)> change;
    std::string field;
  } cases[] = {
      {[](auto& o) { o.dir = ""; }, "dir"},
      {[](auto& o) { o.file_prefix = ""; }, "file_prefix"},
      {[](auto& o) { o.file_prefix = "a/b"; }, "file_prefix"},
      {[](auto& o) { o.flush_records = 0; }, "flush_records 0"},
      {[](auto& o) { o.flush_interval_us = -1; }, "flush_interval_us -1"},
      {[](auto& o) { o.max_file_bytes = 0; }, "max_file_bytes 0"},
      {[](auto& o) { o.max_pending_records = 10; }, "max_pending_records 10"},
  };
  for (const auto& c : cases) {
    const absl::Status status = open_with(c.change);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(status.message(), HasSubstr(c.field));
  }
}

TEST(DurableLogTest, HeaderLineWithANewlineFailsOpen) {
  const std::string dir = FreshDir();
  DurableLog::Options options = LogOptions(dir);
  options.file_header = [] {
    return std::vector<std::string>{"{\"a\":1}", "{\"b\":\n2}"};
  };
  const absl::Status status = DurableLog::Open(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("file_header line 2"));
}

}  // namespace
}  // namespace optrec
