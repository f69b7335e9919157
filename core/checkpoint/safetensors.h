// Reading and writing Hugging Face safetensors files.
//
// The format: an 8-byte little-endian unsigned header size N, then N bytes of
// UTF-8 JSON mapping each tensor name to {"dtype", "shape", "data_offsets"}
// (plus an optional "__metadata__" object of string values), then the tensor
// bytes. Offsets are relative to the first byte after the header.
//
// Written by hand because no Debian package reads or writes safetensors from
// C++; the file is untrusted input, so every number in the header is checked
// before it is used.
#ifndef OPTREC_CORE_CHECKPOINT_SAFETENSORS_H_
#define OPTREC_CORE_CHECKPOINT_SAFETENSORS_H_

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace optrec {

// Element types optrec reads and writes. Names follow the safetensors header.
enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// Parses a header dtype name ("F32", "BF16", ...). InvalidArgument naming the
// text when it is not one of the DType names (names are case-sensitive).
absl::StatusOr<DType> DTypeFromName(std::string_view name);

// The header name of `dtype` ("F32", ...). Never empty.
std::string_view DTypeName(DType dtype);

// Bytes per element of `dtype` (1 for kBool).
size_t DTypeSize(DType dtype);

// The torch scalar type holding `dtype` unchanged (kF16 -> kHalf, kU8 ->
// kByte, kBool -> kBool, ...).
torch::ScalarType DTypeToTorch(DType dtype);

// The DType storing `type`. InvalidArgument naming the type for torch types
// safetensors files written by optrec cannot hold (complex, quantized, ...).
absl::StatusOr<DType> DTypeFromTorch(torch::ScalarType type);

// One tensor of an open file. `data` points into the file's mapping and stays
// valid as long as the SafetensorsFile that produced the view is alive.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // Row-major, outermost first; {} for a scalar.
  const uint8_t* data = nullptr;
  size_t nbytes = 0;  // Always numel() * DTypeSize(dtype).

  // Product of `shape` (1 for a scalar, 0 when any dimension is 0).
  int64_t numel() const;
};

// A memory-mapped, validated safetensors file.
//
// Immutable after Open: every method is const and safe to call from many
// threads at once. The mapping is private and writable, so a stray write
// through a view or an aliasing tensor copies the page instead of faulting;
// such writes never reach the disk but are seen by every other user of this
// object, so treat all data as read-only. The mapping is released when the
// last shared_ptr (including those held by tensors from ToTorch) goes away.
class SafetensorsFile {
 public:
  // Maps and validates the file at `path`. Checks: the 8-byte size prefix is
  // present and the header fits in the file; the header is a JSON object whose
  // entries are well formed; every dtype is known; every shape is a list of
  // non-negative integers whose product times the dtype size equals
  // end - begin; begin <= end <= data size; and no two non-empty tensors share
  // a byte. Gaps between tensors and trailing bytes are allowed.
  //
  // Errors, each naming `path` and, where one is at fault, the tensor:
  //   NotFound: no file at `path`.
  //   DataLoss: the file is shorter than 8 bytes, the header size runs past
  //     the end of the file (or above 100 MiB), the header is not valid JSON
  //     or not an object, an entry or "__metadata__" is malformed, offsets run
  //     past the data, or two tensors overlap.
  //   InvalidArgument: unknown dtype, shape malformed or not matching the
  //     entry's byte count.
  //   Internal / PermissionDenied: the OS refused to open or map the file.
  static absl::StatusOr<std::shared_ptr<const SafetensorsFile>> Open(
      const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // The path given to Open.
  const std::string& path() const { return path_; }

  // Names of all tensors, sorted (byte-wise). "__metadata__" is not a tensor.
  std::vector<std::string> names() const;

  // The tensor called `name`, or nullptr when the file has none. The pointer
  // lives as long as this object.
  const TensorView* Find(std::string_view name) const;

  // The "__metadata__" strings; empty when the header has none.
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }

 private:
  explicit SafetensorsFile(std::string path) : path_(std::move(path)) {}

  // Parses and checks the header JSON; fills tensors_ and metadata_.
  absl::Status ParseHeader(std::string_view header, const uint8_t* data,
                           uint64_t data_size);

  std::string path_;
  void* mapping_ = nullptr;  // Whole file, from mmap; nullptr when unmapped.
  size_t mapping_bytes_ = 0;
  std::map<std::string, TensorView, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Makes a CPU tensor of type `dtype` holding the values of `view`, which must
// come from `file`.
//
// When `dtype` is the stored type and the data is aligned to the element
// size, the tensor aliases the mapping without copying and keeps `file` alive
// until the tensor's storage is freed; do not write to it. Otherwise the
// values are copied into fresh memory, converting between the floating types
// (F16, BF16, F32, F64) when `dtype` differs.
//
// InvalidArgument naming the tensor when the conversion is not supported
// (any integer or bool type to a different type, a float type to an integer
// type, or a `dtype` no DType stores). DataLoss naming the tensor when a BOOL
// tensor holds a byte other than 0 or 1.
absl::StatusOr<torch::Tensor> ToTorch(
    const std::shared_ptr<const SafetensorsFile>& file, const TensorView& view,
    torch::ScalarType dtype);

// Writes `tensors` and `metadata` to a safetensors file at `path`.
//
// Tensors may live on any device and be non-contiguous; they are copied to
// contiguous CPU memory first. Their data is laid out in sorted name order,
// back to back; the header is padded with spaces to a multiple of 8 bytes so
// the data starts 8-byte aligned. The write is atomic: the bytes go to a
// temporary file in the same directory, which is fsynced and then renamed
// over `path`; on any failure the temporary file is removed and no file at
// `path` is created or changed. Blocks until the data is on disk.
//
// InvalidArgument (naming the tensor) for an empty, duplicate or
// "__metadata__" name, an undefined tensor, or a dtype DTypeFromTorch rejects.
// Internal or the matching errno-derived code, naming `path`, when the OS
// refuses a step.
absl::Status WriteSafetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata = {});

}  // namespace optrec

#endif  // OPTREC_CORE_CHECKPOINT_SAFETENSORS_H_
