// The segment-state file: writing it, and reading it back whole and checked
// before anything reaches the cache.
#include "cache/state_file.h"

#include <xxhash.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "core/util/files.h"

namespace optrec {
namespace {

// Tensor bytes are written as the host holds them.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the segment-state file format assumes a little-endian host");

constexpr std::string_view kMagic = "OPTRSEG1";
constexpr int64_t kFormatVersion = 1;
constexpr size_t kHashChars = 32;

absl::StatusOr<torch::ScalarType> ParseDtype(const std::string& name) {
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kHalf;
  if (name == "float32") return torch::kFloat;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown storage dtype \"", name, "\""));
}

const char* DtypeName(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kHalf:
      return "float16";
    case torch::kFloat:
      return "float32";
    default:
      return nullptr;
  }
}

bool IsLowerHex(std::string_view text) {
  if (text.size() != kHashChars) return false;
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

void AppendU64(std::string& out, uint64_t value) {
  char bytes[8];
  std::memcpy(bytes, &value, 8);
  out.append(bytes, 8);
}

// Reads fixed-size fields from the front of a byte string; each read fails
// (false) rather than run past the end.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}

  size_t offset() const { return offset_; }
  size_t remaining() const { return bytes_.size() - offset_; }

  bool Bytes(size_t n, std::string_view* out) {
    if (n > remaining()) return false;
    *out = bytes_.substr(offset_, n);
    offset_ += n;
    return true;
  }
  // The bytes from `from` to `to` (offsets already read past).
  std::string_view Slice(size_t from, size_t to) const {
    return bytes_.substr(from, to - from);
  }
  bool U64(uint64_t* out) {
    std::string_view raw;
    if (!Bytes(8, &raw)) return false;
    std::memcpy(out, raw.data(), 8);
    return true;
  }
  bool I64(int64_t* out) {
    uint64_t raw = 0;
    if (!U64(&raw)) return false;
    *out = static_cast<int64_t>(raw);
    return true;
  }

 private:
  std::string_view bytes_;
  size_t offset_ = 0;
};

// An entry checked but not yet inserted.
struct CheckedEntry {
  std::string content_hash;
  int64_t rows = 0;       // N
  std::string_view data;  // N * D elements of the file's dtype
};

// The file's header fields.
struct Header {
  std::string model_fingerprint;
  int64_t lower_layers = 0;
  torch::ScalarType dtype = torch::kBFloat16;
  int64_t hidden_width = 0;
  int64_t entries = 0;
};

absl::Status DataLoss(const std::string& path, const std::string& what) {
  return absl::DataLossError(
      absl::StrCat(path, ": corrupt segment-state file: ", what));
}

// Reads and checks the magic, the header and its checksum.
absl::StatusOr<Header> ReadHeader(const std::string& path, Reader& reader) {
  std::string_view magic;
  if (!reader.Bytes(kMagic.size(), &magic) || magic != kMagic) {
    return DataLoss(path, "it does not start with \"OPTRSEG1\"");
  }
  uint64_t header_size = 0;
  std::string_view header_bytes;
  uint64_t checksum = 0;
  if (!reader.U64(&header_size) || !reader.Bytes(header_size, &header_bytes) ||
      !reader.U64(&checksum)) {
    return DataLoss(path, "the header is truncated");
  }
  if (XXH3_64bits(header_bytes.data(), header_bytes.size()) != checksum) {
    return DataLoss(path, "the header's checksum does not match");
  }
  const nlohmann::json json =
      nlohmann::json::parse(header_bytes.begin(), header_bytes.end(),
                            /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return DataLoss(path, "the header is not JSON");
  for (const char* field :
       {"format_version", "lower_layers", "hidden_width", "entries"}) {
    if (!json.contains(field) || !json[field].is_number_integer()) {
      return DataLoss(
          path, absl::StrCat("the header has no integer \"", field, "\""));
    }
  }
  for (const char* field : {"model_fingerprint", "storage_dtype"}) {
    if (!json.contains(field) || !json[field].is_string()) {
      return DataLoss(path,
                      absl::StrCat("the header has no string \"", field, "\""));
    }
  }
  const int64_t version = json["format_version"].get<int64_t>();
  if (version != kFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " has segment-state format version ", version,
                     "; this build reads version ", kFormatVersion));
  }
  Header header;
  header.model_fingerprint = json["model_fingerprint"].get<std::string>();
  header.lower_layers = json["lower_layers"].get<int64_t>();
  header.hidden_width = json["hidden_width"].get<int64_t>();
  header.entries = json["entries"].get<int64_t>();
  absl::StatusOr<torch::ScalarType> dtype =
      ParseDtype(json["storage_dtype"].get<std::string>());
  if (!dtype.ok()) return DataLoss(path, std::string(dtype.status().message()));
  header.dtype = *dtype;
  // Widths beyond 2^20 are no model's, and would let a crafted header
  // overflow the byte counts below.
  if (header.entries < 0 || header.hidden_width < 0 ||
      header.hidden_width > (int64_t{1} << 20) ||
      (header.entries > 0 && header.hidden_width == 0)) {
    return DataLoss(path,
                    absl::StrCat("the header has ", header.entries,
                                 " entries of width ", header.hidden_width));
  }
  return header;
}

// Reads and checks entry `index`.
absl::StatusOr<CheckedEntry> ReadEntry(const std::string& path,
                                       const Header& header, int64_t index,
                                       Reader& reader) {
  const std::string where =
      absl::StrCat("entry ", index, " of ", header.entries, ": ");
  const size_t start = reader.offset();
  CheckedEntry entry;
  std::string_view hash;
  int64_t width = 0;
  if (!reader.Bytes(kHashChars, &hash) || !reader.I64(&entry.rows) ||
      !reader.I64(&width)) {
    return DataLoss(path, where + "the file ends inside it (truncated)");
  }
  if (entry.rows < 0 || width != header.hidden_width) {
    return DataLoss(path,
                    absl::StrCat(where, "its shape [", entry.rows, ", ", width,
                                 "] does not fit width ", header.hidden_width));
  }
  const uint64_t row_bytes =
      static_cast<uint64_t>(width) * c10::elementSize(header.dtype);
  const uint64_t rows = static_cast<uint64_t>(entry.rows);
  if (rows > reader.remaining() / row_bytes ||
      !reader.Bytes(rows * row_bytes, &entry.data)) {
    return DataLoss(path, where + "the file ends inside it (truncated)");
  }
  const size_t end = reader.offset();
  uint64_t checksum = 0;
  if (!reader.U64(&checksum)) {
    return DataLoss(path, where + "the file ends inside it (truncated)");
  }
  const std::string_view covered = reader.Slice(start, end);
  if (XXH3_64bits(covered.data(), covered.size()) != checksum) {
    return DataLoss(path, where + "its checksum does not match");
  }
  if (!IsLowerHex(hash)) {
    return DataLoss(path, where + "its content hash is not 32 hex digits");
  }
  entry.content_hash = std::string(hash);
  return entry;
}

}  // namespace

absl::Status SaveStates(
    const std::string& path, const std::string& model_fingerprint,
    int64_t lower_layers,
    const std::vector<std::pair<SegmentKey, torch::Tensor>>& entries) {
  // The dtype and width of the first entry hold for all.
  torch::ScalarType dtype = torch::kFloat;
  int64_t width = 0;
  if (!entries.empty() && entries[0].second.defined()) {
    dtype = entries[0].second.scalar_type();
    if (entries[0].second.dim() == 2) width = entries[0].second.size(1);
  }
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& [key, states] = entries[i];
    const std::string where =
        absl::StrCat("entry ", i, " (", key.ToString(), ") cannot be saved: ");
    if (key.model_fingerprint != model_fingerprint ||
        key.lower_layers != lower_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "the file is for ", model_fingerprint,
                       " with lower_layers ", lower_layers));
    }
    if (!IsLowerHex(key.content_hash)) {
      return absl::InvalidArgumentError(
          where + "its content hash is not 32 lowercase hex digits");
    }
    if (!states.defined() || states.dim() != 2 || DtypeName(dtype) == nullptr ||
        states.scalar_type() != dtype || states.size(1) != width ||
        width <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "every entry must be [N, D] with one D > 0 and one dtype ",
          "of bfloat16, float16 or float32 (entry 0 sets them)"));
    }
  }

  nlohmann::json header_json = {
      {"format_version", kFormatVersion},
      {"model_fingerprint", model_fingerprint},
      {"lower_layers", lower_layers},
      {"storage_dtype", DtypeName(dtype)},
      {"hidden_width", width},
      {"entries", static_cast<int64_t>(entries.size())}};
  const std::string header = header_json.dump();

  std::string content(kMagic);
  AppendU64(content, header.size());
  content += header;
  AppendU64(content, XXH3_64bits(header.data(), header.size()));
  for (const auto& [key, states] : entries) {
    const torch::Tensor cpu = states.detach().to(torch::kCPU).contiguous();
    const size_t start = content.size();
    content += key.content_hash;
    AppendU64(content, static_cast<uint64_t>(cpu.size(0)));
    AppendU64(content, static_cast<uint64_t>(cpu.size(1)));
    content.append(static_cast<const char*>(cpu.data_ptr()), cpu.nbytes());
    AppendU64(content,
              XXH3_64bits(content.data() + start, content.size() - start));
  }
  return WriteFileAtomic(path, content);
}

absl::StatusOr<LoadedStates> LoadStates(const std::string& path,
                                        const std::string& expected_fingerprint,
                                        int64_t expected_lower_layers,
                                        SegmentStateCache* into) {
  if (into == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("no cache to load ", path, " into"));
  }
  absl::StatusOr<std::string> bytes = ReadFile(path);
  if (!bytes.ok()) return bytes.status();
  Reader reader(*bytes);
  absl::StatusOr<Header> header = ReadHeader(path, reader);
  if (!header.ok()) return header.status();
  if (header->model_fingerprint != expected_fingerprint ||
      header->lower_layers != expected_lower_layers) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, " holds states of model ", header->model_fingerprint,
        " after lower_layers ", header->lower_layers, "; expected model ",
        expected_fingerprint, " after lower_layers ", expected_lower_layers));
  }

  // Check every entry before inserting any.
  std::vector<CheckedEntry> checked;
  for (int64_t i = 0; i < header->entries; ++i) {
    absl::StatusOr<CheckedEntry> entry = ReadEntry(path, *header, i, reader);
    if (!entry.ok()) return entry.status();
    checked.push_back(*std::move(entry));
  }
  if (reader.remaining() != 0) {
    return DataLoss(
        path, absl::StrCat(reader.remaining(), " bytes follow the last entry"));
  }

  LoadedStates loaded;
  loaded.entries = header->entries;
  for (const CheckedEntry& entry : checked) {
    // Copied out of the file buffer: it need not be aligned for the dtype.
    torch::Tensor states = torch::empty({entry.rows, header->hidden_width},
                                        torch::dtype(header->dtype));
    if (!entry.data.empty()) {
      std::memcpy(states.data_ptr(), entry.data.data(), entry.data.size());
    }
    SegmentKey key{expected_fingerprint, expected_lower_layers,
                   entry.content_hash};
    if (into->Insert(key, states)) ++loaded.inserted;
  }
  return loaded;
}

}  // namespace optrec
