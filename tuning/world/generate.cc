#include "tuning/world/generate.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/util/files.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"
#include "tuning/world/datasets.h"
#include "xxhash.h"

namespace optrec {
namespace {

namespace fs = std::filesystem;

constexpr int kFormatVersion = 1;
constexpr int64_t kUserChunk = 500;
constexpr int64_t kItemChunk = 20000;
constexpr size_t kFileBufferBytes = 1 << 20;

absl::Status IoError(const std::string& path, const std::string& what,
                     int err) {
  return absl::InternalError(
      absl::StrCat(path, ": cannot ", what, ": ", std::strerror(err)));
}

// One output file: buffered writes with a running XXH3-64 of the bytes.
class OutputFile {
 public:
  OutputFile(std::string path, FILE* file)
      : path_(std::move(path)), file_(file), state_(XXH3_createState()) {
    XXH3_64bits_reset(state_);
    std::setvbuf(file_, nullptr, _IOFBF, kFileBufferBytes);
  }
  ~OutputFile() {
    if (file_ != nullptr) std::fclose(file_);
    XXH3_freeState(state_);
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  absl::Status Append(const std::string& data) {
    if (data.empty()) return absl::OkStatus();
    if (std::fwrite(data.data(), 1, data.size(), file_) != data.size()) {
      return IoError(path_, "write", errno);
    }
    XXH3_64bits_update(state_, data.data(), data.size());
    bytes_ += data.size();
    lines_ += std::count(data.begin(), data.end(), '\n');
    return absl::OkStatus();
  }

  absl::Status Close() {
    FILE* file = file_;
    file_ = nullptr;
    if (std::fflush(file) != 0) {
      const int err = errno;
      std::fclose(file);
      return IoError(path_, "write", err);
    }
    if (std::fclose(file) != 0) return IoError(path_, "close", errno);
    return absl::OkStatus();
  }

  uint64_t bytes() const { return bytes_; }
  int64_t lines() const { return lines_; }
  std::string Hash() const {
    return absl::StrFormat("%016x", XXH3_64bits_digest(state_));
  }

 private:
  std::string path_;
  FILE* file_;
  XXH3_state_t* state_;
  uint64_t bytes_ = 0;
  int64_t lines_ = 0;
};

// Every file of one world, by path relative to the world's root.
class OutputSet {
 public:
  explicit OutputSet(fs::path root) : root_(std::move(root)) {}

  // Creates the file (and its folders); the pointer stays owned here.
  absl::StatusOr<OutputFile*> Open(const std::string& relative) {
    const fs::path path = root_ / relative;
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    if (ec) {
      return absl::InternalError(absl::StrCat(
          path.parent_path().string(), ": cannot create: ", ec.message()));
    }
    FILE* file = std::fopen(path.string().c_str(), "wb");
    if (file == nullptr) return IoError(path.string(), "create", errno);
    auto owned = std::make_unique<OutputFile>(path.string(), file);
    OutputFile* raw = owned.get();
    files_[relative] = std::move(owned);
    return raw;
  }

  absl::Status CloseAll() {
    for (auto& [name, file] : files_) RETURN_IF_ERROR(file->Close());
    return absl::OkStatus();
  }

  const std::map<std::string, std::unique_ptr<OutputFile>>& files() const {
    return files_;
  }

 private:
  fs::path root_;
  std::map<std::string, std::unique_ptr<OutputFile>> files_;
};

// The open files of a world being written.
struct WorldFiles {
  OutputFile* catalog = nullptr;
  OutputFile* users = nullptr;
  OutputFile* events = nullptr;
  OutputFile* reviews = nullptr;
  OutputFile* oracle_items = nullptr;
  OutputFile* oracle_users = nullptr;
  OutputFile* tasks[kNumTasks][kNumSplits] = {};
  OutputFile* corpus[2] = {};
};

absl::StatusOr<WorldFiles> OpenWorldFiles(OutputSet& set) {
  WorldFiles f;
  ASSIGN_OR_RETURN(f.catalog, set.Open("catalog.jsonl"));
  ASSIGN_OR_RETURN(f.users, set.Open("users.jsonl"));
  ASSIGN_OR_RETURN(f.events, set.Open("events.jsonl"));
  ASSIGN_OR_RETURN(f.reviews, set.Open("reviews.jsonl"));
  ASSIGN_OR_RETURN(f.oracle_items, set.Open("oracle/items.jsonl"));
  ASSIGN_OR_RETURN(f.oracle_users, set.Open("oracle/users.jsonl"));
  for (int t = 0; t < kNumTasks; ++t) {
    for (int s = 0; s < kNumSplits; ++s) {
      ASSIGN_OR_RETURN(
          f.tasks[t][s],
          set.Open(absl::StrCat("tasks/", TaskName(static_cast<Task>(t)), "/",
                                SplitName(static_cast<Split>(s)), ".jsonl")));
    }
  }
  ASSIGN_OR_RETURN(f.corpus[0], set.Open("corpus/train.jsonl"));
  ASSIGN_OR_RETURN(f.corpus[1], set.Open("corpus/valid.jsonl"));
  return f;
}

// Runs fn(0..n-1) on `threads` threads (the caller's included).
void ParallelFor(int64_t n, int threads,
                 const std::function<void(int64_t)>& fn) {
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    for (int64_t i = next++; i < n; i = next++) fn(i);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads && t < n; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& thread : pool) thread.join();
}

// Totals the manifest reports beyond line counts.
struct Totals {
  int64_t sessions = 0;
  int64_t impressions = 0;
  int64_t clicks = 0;
  int64_t purchases = 0;
  int64_t searches = 0;
  int64_t reviews = 0;
};

absl::Status WriteCatalog(const ShopWorld& world, const WorldFiles& files,
                          const GenerateOptions& options) {
  const int64_t n = world.num_items();
  for (int64_t begin = 0; begin < n; begin += kItemChunk) {
    const int64_t count = std::min(kItemChunk, n - begin);
    // Threads render disjoint slices; the slices are written in order.
    const int64_t slices = std::min<int64_t>(options.threads * 4, count);
    std::vector<ItemRecords> records(slices);
    ParallelFor(slices, options.threads, [&](int64_t s) {
      const int64_t from = begin + count * s / slices;
      const int64_t to = begin + count * (s + 1) / slices;
      for (int64_t i = from; i < to; ++i) RenderItem(world, i, &records[s]);
    });
    for (const ItemRecords& r : records) {
      RETURN_IF_ERROR(files.catalog->Append(r.catalog));
      RETURN_IF_ERROR(files.oracle_items->Append(r.oracle_items));
      RETURN_IF_ERROR(files.corpus[0]->Append(r.corpus[0]));
      RETURN_IF_ERROR(files.corpus[1]->Append(r.corpus[1]));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteUserRecords(const UserRecords& r, const WorldFiles& files,
                              Totals& totals) {
  RETURN_IF_ERROR(files.users->Append(r.users));
  RETURN_IF_ERROR(files.oracle_users->Append(r.oracle_users));
  RETURN_IF_ERROR(files.events->Append(r.events));
  RETURN_IF_ERROR(files.reviews->Append(r.reviews));
  for (int t = 0; t < kNumTasks; ++t) {
    for (int s = 0; s < kNumSplits; ++s) {
      RETURN_IF_ERROR(files.tasks[t][s]->Append(r.tasks[t][s]));
    }
  }
  RETURN_IF_ERROR(files.corpus[0]->Append(r.corpus[0]));
  RETURN_IF_ERROR(files.corpus[1]->Append(r.corpus[1]));
  totals.sessions += r.sessions;
  totals.impressions += r.impressions;
  totals.clicks += r.clicks;
  totals.purchases += r.purchases;
  totals.searches += r.searches;
  totals.reviews += r.review_count;
  return absl::OkStatus();
}

absl::Status WriteUsers(const ShopWorld& world, const WorldFiles& files,
                        const GenerateOptions& options, Totals& totals) {
  const int64_t n = world.num_users();
  const int64_t report_every = std::max<int64_t>(kUserChunk, n / 10);
  int64_t next_report = report_every;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t begin = 0; begin < n; begin += kUserChunk) {
    const int64_t count = std::min(kUserChunk, n - begin);
    std::vector<UserRecords> records(count);
    ParallelFor(count, options.threads,
                [&](int64_t k) { records[k] = RenderUser(world, begin + k); });
    for (const UserRecords& r : records) {
      RETURN_IF_ERROR(WriteUserRecords(r, files, totals));
    }
    const int64_t done = begin + count;
    if (options.progress && (done >= next_report || done == n)) {
      const double secs = std::chrono::duration<double>(
                              std::chrono::steady_clock::now() - start)
                              .count();
      options.progress(
          absl::StrFormat("users: %d / %d simulated (%.1f s)", done, n, secs));
      next_report += report_every;
    }
  }
  return absl::OkStatus();
}

double Round6(double x) { return std::round(x * 1e6) / 1e6; }

nlohmann::json Manifest(const ShopWorld& world, const WorldFiles& files,
                        const OutputSet& set, const Totals& totals) {
  const WorldConfig& config = world.config();
  nlohmann::json m;
  m["format_version"] = kFormatVersion;
  m["seed"] = config.seed;
  m["config"] = {{"items", config.items},
                 {"users", config.users},
                 {"days", config.days},
                 {"ctr_sample_rate", config.ctr_sample_rate},
                 {"direct_user_fraction", config.direct_user_fraction},
                 {"history_segments", kHistorySegments},
                 {"direct_candidates", kDirectCandidates}};
  m["time_cuts"] = {{"train_end_s", world.train_end_s()},
                    {"valid_end_s", world.valid_end_s()},
                    {"end_s", world.end_s()},
                    {"train_end_day", config.days * 0.75},
                    {"valid_end_day", config.days * 0.875}};
  nlohmann::json tasks;
  for (int t = 0; t < kNumTasks; ++t) {
    for (int s = 0; s < kNumSplits; ++s) {
      tasks[TaskName(static_cast<Task>(t))][SplitName(static_cast<Split>(s))] =
          files.tasks[t][s]->lines();
    }
  }
  m["counts"] = {
      {"items", world.num_items()},
      {"users", world.num_users()},
      {"sessions", totals.sessions},
      {"events", files.events->lines()},
      {"impressions", totals.impressions},
      {"clicks", totals.clicks},
      {"purchases", totals.purchases},
      {"searches", totals.searches},
      {"reviews", totals.reviews},
      {"impression_ctr",
       Round6(totals.impressions > 0
                  ? static_cast<double>(totals.clicks) / totals.impressions
                  : 0.0)},
      {"examples", tasks},
      {"corpus_documents",
       {{"train", files.corpus[0]->lines()},
        {"valid", files.corpus[1]->lines()}}},
      {"corpus_bytes",
       {{"train", files.corpus[0]->bytes()},
        {"valid", files.corpus[1]->bytes()}}}};
  nlohmann::json hashes;
  for (const auto& [name, file] : set.files()) {
    hashes[name] = {{"xxh3_64", file->Hash()},
                    {"bytes", file->bytes()},
                    {"lines", file->lines()}};
  }
  m["files"] = hashes;
  return m;
}

absl::Status WriteWorld(const ShopWorld& world, const fs::path& root,
                        const GenerateOptions& options) {
  OutputSet set(root);
  ASSIGN_OR_RETURN(WorldFiles files, OpenWorldFiles(set));
  RETURN_IF_ERROR(WriteCatalog(world, files, options));
  if (options.progress) {
    options.progress(
        absl::StrCat("catalog: ", world.num_items(), " items written"));
  }
  Totals totals;
  RETURN_IF_ERROR(WriteUsers(world, files, options, totals));
  RETURN_IF_ERROR(set.CloseAll());

  const std::string manifest =
      Manifest(world, files, set, totals).dump(2) + "\n";
  const std::string manifest_path = (root / "world.json").string();
  FILE* file = std::fopen(manifest_path.c_str(), "wb");
  if (file == nullptr) return IoError(manifest_path, "create", errno);
  OutputFile out(manifest_path, file);
  RETURN_IF_ERROR(out.Append(manifest));
  return out.Close();
}

}  // namespace

absl::Status GenerateWorld(const WorldConfig& config,
                           const std::string& out_dir,
                           const GenerateOptions& options) {
  if (options.threads < 1 || options.threads > 64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "generate options: threads must be in [1, 64], got ", options.threads));
  }
  RETURN_IF_ERROR(ValidateWorldConfig(config));
  // Written under a temporary name and renamed when complete: a failure or
  // a kill never leaves a directory that looks like a finished world.
  ASSIGN_OR_RETURN(StagedDirectory staged,
                   StagedDirectory::Create(out_dir, options.force));
  ASSIGN_OR_RETURN(ShopWorld world, ShopWorld::Build(config));
  if (options.progress) {
    options.progress(absl::StrCat("built the world: ", world.num_items(),
                                  " items, ", world.num_users(), " users"));
  }
  RETURN_IF_ERROR(WriteWorld(world, staged.path(), options));
  return staged.Commit();
}

}  // namespace optrec
