// Files and directories that appear whole or not at all.
#ifndef OPTREC_CORE_UTIL_FILES_H_
#define OPTREC_CORE_UTIL_FILES_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace optrec {

// Writes `content` to a temporary file beside `path` ("<path>.tmp-<pid>": one
// writer per path at a time), flushes it to disk and
// renames it over `path`. On failure no file at `path` is created or changed
// and the temporary file is removed. Errors name the path: PermissionDenied
// or NotFound (a missing folder) from the OS, Internal otherwise.
absl::Status WriteFileAtomic(const std::string& path,
                             const std::string& content);

// Reads a whole file. NotFound naming the path when it cannot be opened.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Creates `dir` and its parents when missing. Errors name the path.
absl::Status MakeDirs(const std::string& dir);

// A directory built under a temporary name beside its final path and moved
// into place by Commit(). Destroyed uncommitted (an error on the way, a
// thrown exception), it removes the temporary directory, so a reader never
// sees a half-written result at the final path. A process killed while
// building leaves only "<final>.tmp-<pid>", which no reader mistakes for the
// result. Not thread-safe.
class StagedDirectory {
 public:
  // Creates "<final_dir>.tmp-<pid>". Errors name the path: InvalidArgument
  // for an empty path; NotFound when the parent folder is missing (or is
  // not a folder); FailedPrecondition when final_dir is a file;
  // AlreadyExists when it is a non-empty folder and `replace` is false;
  // PermissionDenied / Internal when the staging folder cannot be made.
  static absl::StatusOr<StagedDirectory> Create(const std::string& final_dir,
                                                bool replace);
  StagedDirectory(StagedDirectory&& other) noexcept;
  StagedDirectory& operator=(StagedDirectory&&) = delete;
  StagedDirectory(const StagedDirectory&) = delete;
  ~StagedDirectory();

  // Where to write the contents until Commit().
  const std::string& path() const { return staging_; }
  const std::string& final_path() const { return final_; }

  // Moves the staged directory to the final path. With `replace`, what was
  // there is renamed aside first and removed after; without it, a non-empty
  // directory that appeared there since Create is an AlreadyExists error
  // and the result stays staged (and is removed with this object). Other
  // failures name the paths; the old directory is put back, or the message
  // says where it is.
  absl::Status Commit();

 private:
  StagedDirectory(std::string final_dir, std::string staging, bool replace)
      : final_(std::move(final_dir)),
        staging_(std::move(staging)),
        replace_(replace) {}

  std::string final_;
  std::string staging_;
  bool replace_ = false;  // Commit may replace a non-empty final_
  bool done_ = false;     // committed or moved from
};

}  // namespace optrec

#endif  // OPTREC_CORE_UTIL_FILES_H_
