// Writes a whole shop world to a directory: the catalog, users, events and
// reviews, the hidden oracle files, the task data sets and the pretraining
// corpus, and a manifest (world.json) with counts and file hashes. The
// layout and formats are described in docs/world.md.
#ifndef OPTREC_TUNING_WORLD_GENERATE_H_
#define OPTREC_TUNING_WORLD_GENERATE_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "tuning/world/world.h"

namespace optrec {

// How to write; none of these change the bytes written.
struct GenerateOptions {
  // Replace `out_dir` when it exists and is not empty (otherwise that is an
  // AlreadyExists error).
  bool force = false;
  // Worker threads rendering users and items, in [1, 64]. The output is the
  // same for every value.
  int threads = 2;
  // Called with one-line progress messages (lifecycle and every ~10% of
  // users); null = silent. Called from the calling thread only.
  std::function<void(const std::string&)> progress;
};

// Builds the world of `config` and writes it to `out_dir`. The files are
// written to a sibling "<out_dir>.tmp-<pid>" and renamed to `out_dir` only
// when all of them are complete, so `out_dir` is either absent, its old
// contents, or the whole new world; on failure the temporary directory is
// removed. Errors: InvalidArgument for a bad config or options (naming the
// field), NotFound when the parent of `out_dir` does not exist,
// AlreadyExists for a non-empty `out_dir` without `force`,
// FailedPrecondition when `out_dir` is a file, and an I/O error naming the
// path that could not be written. Blocks until done.
absl::Status GenerateWorld(const WorldConfig& config,
                           const std::string& out_dir,
                           const GenerateOptions& options);

}  // namespace optrec

#endif  // OPTREC_TUNING_WORLD_GENERATE_H_
