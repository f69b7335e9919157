#include "core/util/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace optrec {
namespace {

namespace fs = std::filesystem;

absl::Status ErrnoStatus(int err, const std::string& what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  if (err == EACCES || err == EPERM || err == EROFS) {
    return absl::PermissionDeniedError(message);
  }
  if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(message);
  return absl::InternalError(message);
}

}  // namespace

absl::Status WriteFileAtomic(const std::string& path,
                             const std::string& content) {
  const std::string tmp = absl::StrCat(path, ".tmp-", getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("cannot create ", tmp));
  size_t written = 0;
  while (written < content.size()) {
    const ssize_t n =
        ::write(fd, content.data() + written, content.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return ErrnoStatus(err, absl::StrCat("cannot write ", tmp));
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoStatus(err, absl::StrCat("cannot flush ", tmp));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoStatus(err, absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("cannot read ", path));
  return buffer.str();
}

absl::Status MakeDirs(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return ErrnoStatus(ec.value(), absl::StrCat("cannot create ", dir));
  return absl::OkStatus();
}

absl::StatusOr<StagedDirectory> StagedDirectory::Create(
    const std::string& final_dir, bool replace) {
  if (final_dir.empty()) {
    return absl::InvalidArgumentError("the output directory path is empty");
  }
  fs::path target = fs::path(final_dir).lexically_normal();
  if (!target.has_filename()) target = target.parent_path();  // "a/b/"
  const std::string name = target.string();
  const fs::path parent =
      target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) {
    return absl::NotFoundError(
        absl::StrCat("cannot write ", name, ": the parent directory ",
                     parent.string(), " does not exist or is not a directory"));
  }
  if (fs::exists(target, ec)) {
    if (!fs::is_directory(target, ec)) {
      return absl::FailedPreconditionError(
          absl::StrCat(name, " exists and is not a directory"));
    }
    const bool empty = fs::is_empty(target, ec);
    if (ec) return ErrnoStatus(ec.value(), absl::StrCat("cannot read ", name));
    if (!empty && !replace) {
      return absl::AlreadyExistsError(absl::StrCat(
          name, " exists and is not empty (pass --force to replace it)"));
    }
  }
  std::string staging = absl::StrCat(name, ".tmp-", getpid());
  fs::remove_all(staging, ec);
  if (::mkdir(staging.c_str(), 0755) != 0) {
    return ErrnoStatus(errno, absl::StrCat("cannot write ", name,
                                           ": cannot create ", staging));
  }
  return StagedDirectory(name, std::move(staging), replace);
}

StagedDirectory::StagedDirectory(StagedDirectory&& other) noexcept
    : final_(std::move(other.final_)),
      staging_(std::move(other.staging_)),
      replace_(other.replace_),
      done_(other.done_) {
  other.done_ = true;
}

StagedDirectory::~StagedDirectory() {
  if (done_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

absl::Status StagedDirectory::Commit() {
  std::error_code ec;
  std::string aside;
  // rename(2) replaces an empty directory by itself; a full one is moved
  // aside first.
  if (fs::exists(final_, ec) && !fs::is_empty(final_, ec)) {
    // Checked again: something may have appeared there since Create.
    if (!replace_) {
      return absl::AlreadyExistsError(absl::StrCat(
          final_,
          " appeared while it was being written; it was left as it is"));
    }
    aside = absl::StrCat(final_, ".old-", getpid());
    fs::remove_all(aside, ec);
    if (::rename(final_.c_str(), aside.c_str()) != 0) {
      return ErrnoStatus(errno, absl::StrCat("cannot move ", final_, " aside"));
    }
  }
  if (::rename(staging_.c_str(), final_.c_str()) != 0) {
    const int err = errno;
    std::string restored;
    if (!aside.empty() && ::rename(aside.c_str(), final_.c_str()) != 0) {
      restored = absl::StrCat("; the previous contents are in ", aside);
    }
    return ErrnoStatus(err, absl::StrCat("cannot rename ", staging_, " to ",
                                         final_, restored));
  }
  done_ = true;
  if (!aside.empty()) fs::remove_all(aside, ec);
  return absl::OkStatus();
}

}  // namespace optrec
