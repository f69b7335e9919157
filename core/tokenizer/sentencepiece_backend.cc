#include "core/tokenizer/sentencepiece_backend.h"

#include <dlfcn.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/tokenizer/sentencepiece_shim/sentencepiece_shim.h"
#include "core/util/log.h"

namespace optrec {
namespace {

constexpr char kShimName[] = "liboptrec_sentencepiece_shim.so";

// The shim's function table, or the reason it could not be opened.
struct Shim {
  const SentencePieceShimApi* api = nullptr;
  std::string error;
};

Shim OpenShim() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("OPTREC_SENTENCEPIECE_SHIM")) {
    candidates.push_back(env);
  }
#ifdef OPTREC_SENTENCEPIECE_SHIM_PATH
  candidates.push_back(OPTREC_SENTENCEPIECE_SHIM_PATH);
#endif
  candidates.push_back(kShimName);

  Shim shim;
  std::vector<std::string> failures;
  for (const std::string& candidate : candidates) {
    // RTLD_LOCAL keeps the shim's libsentencepiece (and its protobuf copy)
    // out of the global symbol scope; RTLD_DEEPBIND makes it bind to its own
    // symbols before the process's libprotobuf. The handle is never closed.
    void* handle =
        dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (handle == nullptr) {
      const char* reason = dlerror();
      failures.push_back(reason != nullptr ? reason : candidate);
      continue;
    }
    using Entry = const SentencePieceShimApi* (*)();
    auto entry =
        reinterpret_cast<Entry>(dlsym(handle, "OptrecSentencePieceShimApi"));
    if (entry == nullptr) {
      failures.push_back(
          absl::StrCat(candidate, ": no OptrecSentencePieceShimApi symbol"));
      continue;
    }
    const SentencePieceShimApi* api = entry();
    if (api == nullptr || api->version != kSentencePieceShimVersion) {
      failures.push_back(absl::StrCat(
          candidate, ": shim version ", api == nullptr ? -1 : api->version,
          ", expected ", kSentencePieceShimVersion));
      continue;
    }
    LOG_INFO << "SentencePiece shim loaded from " << candidate;
    shim.api = api;
    return shim;
  }
  shim.error = absl::StrCat(
      "SentencePiece support is unavailable: cannot open the shim module (",
      absl::StrJoin(failures, "; "), ")");
  return shim;
}

// Opens the shim once per process (thread-safe static initialization).
const Shim& GetShim() {
  static const Shim* const kShim = new Shim(OpenShim());
  return *kShim;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SentencePieceModel>> SentencePieceModel::Load(
    const std::string& path) {
  const Shim& shim = GetShim();
  if (shim.api == nullptr) return absl::FailedPreconditionError(shim.error);
  auto model = std::unique_ptr<SentencePieceModel>(
      new SentencePieceModel(shim.api, shim.api->create_model()));
  std::string error;
  if (!shim.api->load(model->model_, path, &error)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a SentencePiece model: ", error));
  }
  shim.api->special_ids(model->model_, model->special_);
  return model;
}

SentencePieceModel::~SentencePieceModel() { api_->destroy_model(model_); }

absl::Status SentencePieceModel::Encode(std::string_view text,
                                        std::vector<int>* ids) const {
  std::string error;
  if (!api_->encode(model_, text, ids, &error)) {
    return absl::InternalError(
        absl::StrCat("SentencePiece encoding failed: ", error));
  }
  return absl::OkStatus();
}

absl::Status SentencePieceModel::Decode(const std::vector<int>& ids,
                                        std::string* text) const {
  std::string error;
  if (!api_->decode(model_, ids, text, &error)) {
    return absl::InternalError(
        absl::StrCat("SentencePiece decoding failed: ", error));
  }
  return absl::OkStatus();
}

int SentencePieceModel::piece_size() const { return api_->piece_size(model_); }

const std::string& SentencePieceModel::IdToPiece(int id) const {
  return api_->id_to_piece(model_, id);
}

int SentencePieceModel::PieceToId(std::string_view piece) const {
  return api_->piece_to_id(model_, piece);
}

bool SentencePieceModel::IsControl(int id) const {
  return (api_->piece_kind(model_, id) & kPieceControl) != 0;
}

bool SentencePieceModel::IsByte(int id) const {
  return (api_->piece_kind(model_, id) & kPieceByte) != 0;
}

bool SentencePieceModel::IsUnknown(int id) const {
  return (api_->piece_kind(model_, id) & kPieceUnknown) != 0;
}

absl::Status TrainSentencePieceModel(const std::string& flags) {
  const Shim& shim = GetShim();
  if (shim.api == nullptr) return absl::FailedPreconditionError(shim.error);
  std::string error;
  if (!shim.api->train(flags, &error)) {
    return absl::InternalError(
        absl::StrCat("SentencePiece training failed: ", error));
  }
  return absl::OkStatus();
}

}  // namespace optrec
