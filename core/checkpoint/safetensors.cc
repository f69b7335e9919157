// Hand-written safetensors reader and writer: no Debian package offers one
// for C++. The header is parsed with nlohmann-json and every field is checked
// before use, since checkpoint files come from outside.
#include "core/checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/log.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace optrec {
namespace {

// Tensor bytes are little-endian in the file and are aliased without
// byte swapping, so only little-endian hosts are supported.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; big-endian hosts would "
              "need byte swapping");

// Debian's absl is built with its own string_view type, which StrCat does not
// accept from std::string_view directly.
absl::string_view Sv(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

constexpr char kMetadataKey[] = "__metadata__";

// Headers larger than this are rejected before parsing; real headers are a
// few MB at most, and the reference implementation uses the same bound.
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;

constexpr size_t kPrefixBytes = 8;

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
  torch::ScalarType torch_type;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kF64, "F64", 8, torch::kDouble},
    {DType::kF32, "F32", 4, torch::kFloat},
    {DType::kF16, "F16", 2, torch::kHalf},
    {DType::kBF16, "BF16", 2, torch::kBFloat16},
    {DType::kI64, "I64", 8, torch::kLong},
    {DType::kI32, "I32", 4, torch::kInt},
    {DType::kI16, "I16", 2, torch::kShort},
    {DType::kI8, "I8", 1, torch::kChar},
    {DType::kU8, "U8", 1, torch::kByte},
    {DType::kBool, "BOOL", 1, torch::kBool},
};

const DTypeInfo& Info(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  return kDTypes[0];  // Unreachable: kDTypes lists every enumerator.
}

bool IsFloat(DType dtype) {
  return dtype == DType::kF64 || dtype == DType::kF32 || dtype == DType::kF16 ||
         dtype == DType::kBF16;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Closes a file descriptor when it goes out of scope.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  // Closes now and reports the error close() returned, if any.
  int CloseNow() {
    int rc = close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

absl::Status ErrnoStatus(int error, const std::string& what) {
  return absl::ErrnoToStatus(error, what);
}

// Reads one tensor entry of the header into `view` (all but `data`), with
// `begin`/`end` its offsets. Errors name `path` and the tensor.
absl::Status ParseEntry(const std::string& path, const std::string& name,
                        const nlohmann::json& entry, uint64_t data_size,
                        TensorView* view, uint64_t* begin, uint64_t* end) {
  const std::string where = absl::StrCat(path, ": tensor '", name, "'");
  if (!entry.is_object()) {
    return absl::DataLossError(
        absl::StrCat(where, ": header entry is not a JSON object"));
  }
  auto dtype_it = entry.find("dtype");
  auto shape_it = entry.find("shape");
  auto offsets_it = entry.find("data_offsets");
  if (dtype_it == entry.end() || shape_it == entry.end() ||
      offsets_it == entry.end()) {
    return absl::DataLossError(
        absl::StrCat(where,
                     ": header entry needs \"dtype\", \"shape\" and "
                     "\"data_offsets\""));
  }

  // dtype.
  if (!dtype_it->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": dtype is not a string"));
  }
  const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
  absl::StatusOr<DType> dtype = DTypeFromName(dtype_name);
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": unknown dtype '", dtype_name, "'"));
  }
  view->dtype = *dtype;

  // shape, with the byte count it implies checked for overflow.
  if (!shape_it->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": shape is not a list"));
  }
  uint64_t expected_bytes = DTypeSize(view->dtype);
  for (const nlohmann::json& dim : *shape_it) {
    if (!dim.is_number_unsigned() ||
        dim.get<uint64_t>() >
            static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": shape ", shape_it->dump(),
                       " has an entry that is not a non-negative integer"));
    }
    const uint64_t size = dim.get<uint64_t>();
    if (__builtin_mul_overflow(expected_bytes, size, &expected_bytes)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": shape ", shape_it->dump(), " overflows 64-bit sizes"));
    }
    view->shape.push_back(static_cast<int64_t>(size));
  }

  // data_offsets.
  if (!offsets_it->is_array() || offsets_it->size() != 2 ||
      !(*offsets_it)[0].is_number_unsigned() ||
      !(*offsets_it)[1].is_number_unsigned()) {
    return absl::DataLossError(
        absl::StrCat(where, ": data_offsets ", offsets_it->dump(),
                     " is not a pair of non-negative integers"));
  }
  *begin = (*offsets_it)[0].get<uint64_t>();
  *end = (*offsets_it)[1].get<uint64_t>();
  if (*begin > *end) {
    return absl::DataLossError(absl::StrCat(where, ": data_offsets [", *begin,
                                            ", ", *end, "] run backwards"));
  }
  if (*end > data_size) {
    return absl::DataLossError(
        absl::StrCat(where, ": data_offsets [", *begin, ", ", *end,
                     "] run past the end of the data (", data_size, " bytes)"));
  }
  if (*end - *begin != expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": shape ", ShapeString(view->shape), " of ", dtype_name,
        " needs ", expected_bytes, " bytes but data_offsets [", *begin, ", ",
        *end, "] hold ", *end - *begin));
  }
  view->name = name;
  view->nbytes = static_cast<size_t>(expected_bytes);
  return absl::OkStatus();
}

// Writes all of `bytes` to `fd`, retrying short writes and EINTR.
absl::Status WriteAll(int fd, const void* bytes, size_t size,
                      const std::string& path) {
  const char* p = static_cast<const char*>(bytes);
  while (size > 0) {
    ssize_t n = write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat(path, ": write failed"));
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Writes the finished file image (header then tensors) to the open temporary
// file `fd` and fsyncs it.
absl::Status WriteBody(int fd, const std::string& temp_path,
                       const std::string& header,
                       const std::vector<torch::Tensor>& ordered) {
  RETURN_IF_ERROR(WriteAll(fd, header.data(), header.size(), temp_path));
  for (const torch::Tensor& t : ordered) {
    const size_t nbytes = t.numel() * t.element_size();
    if (nbytes == 0) continue;
    RETURN_IF_ERROR(WriteAll(fd, t.data_ptr(), nbytes, temp_path));
  }
  if (fsync(fd) != 0) {
    return ErrnoStatus(errno, absl::StrCat(temp_path, ": fsync failed"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DType> DTypeFromName(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.name) return info.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown safetensors dtype '", Sv(name), "'"));
}

std::string_view DTypeName(DType dtype) { return Info(dtype).name; }

size_t DTypeSize(DType dtype) { return Info(dtype).size; }

torch::ScalarType DTypeToTorch(DType dtype) { return Info(dtype).torch_type; }

absl::StatusOr<DType> DTypeFromTorch(torch::ScalarType type) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.torch_type == type) return info.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "torch dtype ", c10::toString(type), " has no safetensors dtype"));
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) munmap(mapping_, mapping_bytes_);
}

absl::StatusOr<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return ErrnoStatus(errno, absl::StrCat(path, ": cannot open"));
  }
  FdCloser closer(fd);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < kPrefixBytes) {
    return absl::DataLossError(
        absl::StrCat(path, ": file is ", file_size,
                     " bytes, shorter than the 8-byte header size"));
  }

  // The constructor is private, so make_shared cannot be used.
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile(path));
  // Private and writable: a stray write copies the page instead of faulting,
  // and never reaches the file. MAP_NORESERVE keeps the kernel from charging
  // the whole file against the commit limit for copies that never happen.
  void* mapping = mmap(nullptr, file_size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  if (mapping == MAP_FAILED) {
    return ErrnoStatus(errno, absl::StrCat(path, ": mmap failed"));
  }
  file->mapping_ = mapping;
  file->mapping_bytes_ = file_size;
  const uint8_t* bytes = static_cast<const uint8_t*>(mapping);

  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes, sizeof(header_size));
  if (header_size > file_size - kPrefixBytes) {
    return absl::DataLossError(absl::StrCat(path, ": header size ", header_size,
                                            " runs past the end of the ",
                                            file_size, "-byte file"));
  }
  if (header_size > kMaxHeaderBytes) {
    return absl::DataLossError(absl::StrCat(path, ": header size ", header_size,
                                            " exceeds the ", kMaxHeaderBytes,
                                            "-byte limit"));
  }
  std::string_view header(reinterpret_cast<const char*>(bytes + kPrefixBytes),
                          header_size);
  const uint8_t* data = bytes + kPrefixBytes + header_size;
  const uint64_t data_size = file_size - kPrefixBytes - header_size;
  RETURN_IF_ERROR(file->ParseHeader(header, data, data_size));
  return std::shared_ptr<const SafetensorsFile>(std::move(file));
}

absl::Status SafetensorsFile::ParseHeader(std::string_view header,
                                          const uint8_t* data,
                                          uint64_t data_size) {
  nlohmann::json root = nlohmann::json::parse(header.begin(), header.end(),
                                              /*cb=*/nullptr,
                                              /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::DataLossError(
        absl::StrCat(path_, ": header is not valid JSON"));
  }
  if (!root.is_object()) {
    return absl::DataLossError(
        absl::StrCat(path_, ": header is not a JSON object"));
  }

  // (begin, end, name) of every non-empty tensor, for the overlap check.
  std::vector<std::tuple<uint64_t, uint64_t, std::string>> ranges;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == kMetadataKey) {
      if (!it.value().is_object()) {
        return absl::DataLossError(
            absl::StrCat(path_, ": __metadata__ is not a JSON object"));
      }
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) {
          return absl::DataLossError(
              absl::StrCat(path_, ": __metadata__ value of '", m.key(),
                           "' is not a string"));
        }
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    TensorView view;
    uint64_t begin = 0;
    uint64_t end = 0;
    RETURN_IF_ERROR(ParseEntry(path_, it.key(), it.value(), data_size, &view,
                               &begin, &end));
    view.data = data + begin;
    if (end > begin) ranges.emplace_back(begin, end, it.key());
    tensors_.emplace(it.key(), std::move(view));
  }

  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    const auto& [prev_begin, prev_end, prev_name] = ranges[i - 1];
    const auto& [begin, end, name] = ranges[i];
    if (begin < prev_end) {
      return absl::DataLossError(
          absl::StrCat(path_, ": tensor '", name, "' at [", begin, ", ", end,
                       ") overlaps tensor '", prev_name, "' at [", prev_begin,
                       ", ", prev_end, ")"));
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, view] : tensors_) out.push_back(name);
  return out;
}

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<torch::Tensor> ToTorch(
    const std::shared_ptr<const SafetensorsFile>& file, const TensorView& view,
    torch::ScalarType dtype) {
  const std::string where = absl::StrCat(file ? file->path() : "(no file)",
                                         ": tensor '", view.name, "'");
  absl::StatusOr<DType> wanted = DTypeFromTorch(dtype);
  if (!wanted.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", wanted.status().message()));
  }
  const bool same = *wanted == view.dtype;
  if (!same && !(IsFloat(*wanted) && IsFloat(view.dtype))) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": cannot convert ", Sv(DTypeName(view.dtype)),
                     " to ", Sv(DTypeName(*wanted))));
  }
  if (view.dtype == DType::kBool) {
    // Torch assumes bool bytes are 0 or 1; anything else is undefined.
    for (size_t i = 0; i < view.nbytes; ++i) {
      if (view.data[i] > 1) {
        return absl::DataLossError(absl::StrCat(where, ": BOOL byte ", i,
                                                " is ", int{view.data[i]},
                                                ", not 0 or 1"));
      }
    }
  }

  const torch::ScalarType stored = DTypeToTorch(view.dtype);
  const auto stored_options = torch::TensorOptions().dtype(stored);
  // from_blob takes a mutable pointer; the mapping is private and writable,
  // so this cannot fault, and callers are told not to write.
  void* raw = const_cast<uint8_t*>(view.data);
  const bool aligned =
      reinterpret_cast<uintptr_t>(view.data) % DTypeSize(view.dtype) == 0;
  try {
    if (same && aligned && file != nullptr) {
      std::shared_ptr<const SafetensorsFile> keep_alive = file;
      return torch::from_blob(
          raw, view.shape, [keep_alive](void*) {}, stored_options);
    }
    torch::Tensor copy = torch::empty(view.shape, stored_options);
    if (view.nbytes > 0) std::memcpy(copy.data_ptr(), view.data, view.nbytes);
    if (same) return copy;
    return copy.to(dtype);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat(where, ": torch failed: ", e.what_without_backtrace()));
  }
}

absl::Status WriteSafetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata) {
  // Validate everything and build the header before touching the disk.
  std::map<std::string, torch::Tensor> sorted;
  for (const auto& [name, tensor] : tensors) {
    const std::string where = absl::StrCat(path, ": tensor '", name, "'");
    if (name.empty() || name == kMetadataKey) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": name is empty or reserved"));
    }
    if (!tensor.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": tensor is undefined"));
    }
    absl::StatusOr<DType> dtype = DTypeFromTorch(tensor.scalar_type());
    if (!dtype.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", dtype.status().message()));
    }
    torch::Tensor cpu;
    try {
      cpu = tensor.detach().to(torch::kCPU).contiguous();
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat(
          where, ": cannot copy to CPU: ", e.what_without_backtrace()));
    }
    if (!sorted.emplace(name, std::move(cpu)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": name appears twice"));
    }
  }

  nlohmann::json root = nlohmann::json::object();
  if (!metadata.empty()) root[kMetadataKey] = metadata;
  std::vector<torch::Tensor> ordered;
  ordered.reserve(sorted.size());
  uint64_t offset = 0;
  for (const auto& [name, tensor] : sorted) {
    const DType dtype = *DTypeFromTorch(tensor.scalar_type());
    const uint64_t nbytes = tensor.numel() * tensor.element_size();
    root[name] = {
        {"dtype", std::string(DTypeName(dtype))},
        {"shape", tensor.sizes().vec()},
        {"data_offsets", nlohmann::json::array({offset, offset + nbytes})}};
    offset += nbytes;
    ordered.push_back(tensor);
  }
  std::string json;
  try {
    json = root.dump();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": tensor names and metadata must be UTF-8: ", e.what()));
  }
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string header(kPrefixBytes, '\0');
  const uint64_t json_size = json.size();
  std::memcpy(header.data(), &json_size, sizeof(json_size));
  header += json;

  // Write to a temporary file beside `path`, then rename it into place.
  std::string temp_path = path + ".tmp.XXXXXX";
  int fd = mkstemp(temp_path.data());
  if (fd < 0) {
    return ErrnoStatus(errno,
                       absl::StrCat(path, ": cannot create temporary file"));
  }
  FdCloser closer(fd);
  absl::Status status = WriteBody(fd, temp_path, header, ordered);
  if (status.ok() && fchmod(fd, 0644) != 0) {
    status = ErrnoStatus(errno, absl::StrCat(temp_path, ": fchmod failed"));
  }
  if (closer.CloseNow() != 0 && status.ok()) {
    status = ErrnoStatus(errno, absl::StrCat(temp_path, ": close failed"));
  }
  if (status.ok() && rename(temp_path.c_str(), path.c_str()) != 0) {
    status = ErrnoStatus(errno, absl::StrCat(path, ": cannot rename ",
                                             temp_path, " into place"));
  }
  if (!status.ok()) {
    unlink(temp_path.c_str());
    return status;
  }

  // Make the rename itself durable. The file is already in place, so a
  // failure here is only logged.
  const std::string dir = DirName(path);
  int dir_fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    if (fsync(dir_fd) != 0) {
      LOG_WARNING << dir
                  << ": fsync of directory failed: " << std::strerror(errno);
    }
    close(dir_fd);
  }
  return absl::OkStatus();
}

}  // namespace optrec
