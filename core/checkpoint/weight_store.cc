#include "core/checkpoint/weight_store.h"

#include <sys/stat.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/log.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace optrec {
namespace {

// Debian's absl is built with its own string_view type, which StrCat does not
// accept from std::string_view directly.
absl::string_view Sv(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

// A shard must be a file directly inside the model directory.
bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat(path, ": read failed"));
  }
  return text.str();
}

// Reads the index's weight_map: tensor name -> shard file name.
absl::StatusOr<std::map<std::string, std::string>> ReadWeightMap(
    const std::string& index_path) {
  ASSIGN_OR_RETURN(std::string text, ReadWholeFile(index_path));
  nlohmann::json root = nlohmann::json::parse(text, /*cb=*/nullptr,
                                              /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::DataLossError(
        absl::StrCat(index_path, ": not a valid JSON object"));
  }
  auto map_it = root.find("weight_map");
  if (map_it == root.end() || !map_it->is_object()) {
    return absl::DataLossError(
        absl::StrCat(index_path,
                     ": \"weight_map\" is missing or not an "
                     "object"));
  }
  std::map<std::string, std::string> weight_map;
  for (auto it = map_it->begin(); it != map_it->end(); ++it) {
    if (!it.value().is_string() ||
        !IsPlainFileName(it.value().get_ref<const std::string&>())) {
      return absl::DataLossError(absl::StrCat(
          index_path, ": weight_map entry of tensor '", it.key(), "' is ",
          it.value().dump(), ", not a file name in the same directory"));
    }
    weight_map[it.key()] = it.value().get<std::string>();
  }
  return weight_map;
}

// Feeds a length-prefixed byte string to the hash, so that consecutive
// fields cannot run together.
void HashField(XXH3_state_t* state, const void* data, uint64_t size) {
  XXH3_128bits_update(state, &size, sizeof(size));
  if (size > 0) XXH3_128bits_update(state, data, size);
}

}  // namespace

absl::StatusOr<std::shared_ptr<const WeightStore>> WeightStore::OpenDir(
    const std::string& dir) {
  std::shared_ptr<WeightStore> store(new WeightStore(dir));
  const std::string single_path = JoinPath(dir, kSingleFile);
  const std::string index_path = JoinPath(dir, kIndexFile);

  if (IsRegularFile(single_path)) {
    ASSIGN_OR_RETURN(std::shared_ptr<const SafetensorsFile> file,
                     SafetensorsFile::Open(single_path));
    for (const std::string& name : file->names()) {
      store->entries_.emplace(name, Entry{file->Find(name), file});
    }
    LOG_INFO << "Opened " << store->entries_.size() << " tensors from "
             << single_path;
    return std::shared_ptr<const WeightStore>(std::move(store));
  }
  if (!IsRegularFile(index_path)) {
    return absl::NotFoundError(absl::StrCat(dir, ": neither ", kSingleFile,
                                            " nor ", kIndexFile, " found"));
  }

  ASSIGN_OR_RETURN(auto weight_map, ReadWeightMap(index_path));
  std::map<std::string, std::shared_ptr<const SafetensorsFile>> shards;
  for (const auto& [tensor, shard_name] : weight_map) {
    auto shard_it = shards.find(shard_name);
    if (shard_it == shards.end()) {
      const std::string shard_path = JoinPath(dir, shard_name);
      absl::StatusOr<std::shared_ptr<const SafetensorsFile>> shard =
          SafetensorsFile::Open(shard_path);
      if (absl::IsNotFound(shard.status())) {
        return absl::DataLossError(
            absl::StrCat(index_path, ": shard '", shard_name, "' of tensor '",
                         tensor, "' is missing (", shard_path, ")"));
      }
      if (!shard.ok()) return shard.status();
      shard_it = shards.emplace(shard_name, *std::move(shard)).first;
    }
    const std::shared_ptr<const SafetensorsFile>& file = shard_it->second;
    const TensorView* view = file->Find(tensor);
    if (view == nullptr) {
      return absl::DataLossError(absl::StrCat(index_path, ": tensor '", tensor,
                                              "' is not in its shard ",
                                              file->path()));
    }
    store->entries_.emplace(tensor, Entry{view, file});
  }
  LOG_INFO << "Opened " << store->entries_.size() << " tensors from "
           << shards.size() << " shards in " << dir;
  return std::shared_ptr<const WeightStore>(std::move(store));
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) out.push_back(name);
  return out;
}

const TensorView* WeightStore::Find(std::string_view name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : it->second.view;
}

absl::StatusOr<torch::Tensor> WeightStore::Get(
    std::string_view name, absl::Span<const int64_t> expected_shape,
    torch::ScalarType dtype) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return absl::NotFoundError(
        absl::StrCat(dir_, ": no tensor '", Sv(name), "'"));
  }
  const TensorView& view = *it->second.view;
  if (!std::equal(view.shape.begin(), view.shape.end(), expected_shape.begin(),
                  expected_shape.end())) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir_, ": tensor '", Sv(name), "' has shape [",
                     absl::StrJoin(view.shape, ", "), "], expected [",
                     absl::StrJoin(expected_shape, ", "), "]"));
  }
  return ToTorch(it->second.file, view, dtype);
}

std::string WeightStore::Fingerprint(std::string_view extra) const {
  std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> state(
      XXH3_createState(), &XXH3_freeState);
  XXH3_128bits_reset(state.get());
  HashField(state.get(), extra.data(), extra.size());
  for (const auto& [name, entry] : entries_) {
    const TensorView& view = *entry.view;
    const std::string_view dtype = DTypeName(view.dtype);
    HashField(state.get(), name.data(), name.size());
    HashField(state.get(), dtype.data(), dtype.size());
    HashField(state.get(), view.shape.data(),
              view.shape.size() * sizeof(int64_t));
    HashField(state.get(), view.data, view.nbytes);
  }
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH3_128bits_digest(state.get()));
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * sizeof(canonical.digest));
  for (unsigned char byte : canonical.digest) {
    hex.push_back(kHex[byte >> 4]);
    hex.push_back(kHex[byte & 15]);
  }
  return hex;
}

}  // namespace optrec
