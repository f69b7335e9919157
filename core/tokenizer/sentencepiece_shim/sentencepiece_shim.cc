// The SentencePiece shim: the only code that includes libsentencepiece's
// headers. Built as a loadable module; see sentencepiece_shim.h. Includes no
// Abseil header.
#include "core/tokenizer/sentencepiece_shim/sentencepiece_shim.h"

#include <exception>

#include "sentencepiece_processor.h"
#include "sentencepiece_trainer.h"

// Exported by libsentencepiece but declared only in its uninstalled
// common.h: the minimum severity it logs (0 info ... 3 fatal).
namespace sentencepiece {
namespace logging {
void SetMinLogLevel(int v);
}  // namespace logging
}  // namespace sentencepiece

namespace optrec {
namespace {

using sentencepiece::SentencePieceProcessor;

const SentencePieceProcessor& Model(const void* model) {
  return *static_cast<const SentencePieceProcessor*>(model);
}

// Runs `call` (returning a sentencepiece status), turning a failed status or
// an exception (libsentencepiece reports some internal checks by throwing)
// into false and a message.
template <typename Call>
bool Guard(Call call, std::string* error) {
  try {
    const sentencepiece::util::Status status = call();
    if (!status.ok()) *error = status.ToString();
    return status.ok();
  } catch (const std::exception& e) {
    *error = e.what();
  } catch (...) {
    *error = "unknown exception in libsentencepiece";
  }
  return false;
}

void* CreateModel() { return new SentencePieceProcessor(); }

void DestroyModel(void* model) {
  delete static_cast<SentencePieceProcessor*>(model);
}

bool Load(void* model, const std::string& path, std::string* error) {
  auto* processor = static_cast<SentencePieceProcessor*>(model);
  return Guard([&] { return processor->Load(path); }, error);
}

bool Encode(const void* model, std::string_view text, std::vector<int>* ids,
            std::string* error) {
  return Guard([&] { return Model(model).Encode(text, ids); }, error);
}

bool Decode(const void* model, const std::vector<int>& ids, std::string* text,
            std::string* error) {
  return Guard([&] { return Model(model).Decode(ids, text); }, error);
}

int PieceSize(const void* model) { return Model(model).GetPieceSize(); }

const std::string& IdToPiece(const void* model, int id) {
  return Model(model).IdToPiece(id);
}

int PieceToId(const void* model, std::string_view piece) {
  return Model(model).PieceToId(piece);
}

int PieceKind(const void* model, int id) {
  const SentencePieceProcessor& processor = Model(model);
  return (processor.IsControl(id) ? kPieceControl : 0) |
         (processor.IsByte(id) ? kPieceByte : 0) |
         (processor.IsUnknown(id) ? kPieceUnknown : 0);
}

void SpecialIds(const void* model, int ids[4]) {
  const SentencePieceProcessor& processor = Model(model);
  ids[0] = processor.bos_id();
  ids[1] = processor.eos_id();
  ids[2] = processor.pad_id();
  ids[3] = processor.unk_id();
}

bool Train(const std::string& flags, std::string* error) {
  return Guard(
      [&] { return sentencepiece::SentencePieceTrainer::Train(flags); }, error);
}

const SentencePieceShimApi kApi = {
    kSentencePieceShimVersion,
    &CreateModel,
    &DestroyModel,
    &Load,
    &Encode,
    &Decode,
    &PieceSize,
    &IdToPiece,
    &PieceToId,
    &PieceKind,
    &SpecialIds,
    &Train,
};

}  // namespace
}  // namespace optrec

extern "C" const optrec::SentencePieceShimApi* OptrecSentencePieceShimApi() {
  // libsentencepiece logs to std::cerr. Opened with RTLD_DEEPBIND, it binds
  // to libstdc++'s own std::cerr, which stays unconstructed when the program
  // holds a copy-relocated std::cerr (most do), so writing to it crashes.
  // Logging below fatal is therefore switched off; failures still come back
  // as statuses with their messages.
  sentencepiece::logging::SetMinLogLevel(3);
  return &optrec::kApi;
}
