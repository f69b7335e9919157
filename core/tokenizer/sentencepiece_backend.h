// Access to libsentencepiece through the SentencePiece shim module (see
// sentencepiece_shim/sentencepiece_shim.h for why it is a separate module).
//
// The shim is opened on first use, from, in order: the path in the
// environment variable OPTREC_SENTENCEPIECE_SHIM; the build-time path
// OPTREC_SENTENCEPIECE_SHIM_PATH (a compile definition set by the build);
// "liboptrec_sentencepiece_shim.so" on the dynamic loader's search path. It
// stays loaded for the life of the process.
#ifndef OPTREC_CORE_TOKENIZER_SENTENCEPIECE_BACKEND_H_
#define OPTREC_CORE_TOKENIZER_SENTENCEPIECE_BACKEND_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace optrec {

struct SentencePieceShimApi;

// A loaded SentencePiece model. Immutable after Load; the const methods are
// thread-safe.
class SentencePieceModel {
 public:
  // Loads the model file at `path`. FailedPrecondition when the shim cannot
  // be opened (the message says where it looked); InvalidArgument naming the
  // file when libsentencepiece cannot parse it.
  static absl::StatusOr<std::unique_ptr<SentencePieceModel>> Load(
      const std::string& path);
  ~SentencePieceModel();
  SentencePieceModel(const SentencePieceModel&) = delete;
  SentencePieceModel& operator=(const SentencePieceModel&) = delete;

  // Encodes / decodes with the model's own rules (dummy prefix, byte
  // fallback; control pieces are dropped when decoding). Internal error with
  // libsentencepiece's message on failure.
  absl::Status Encode(std::string_view text, std::vector<int>* ids) const;
  absl::Status Decode(const std::vector<int>& ids, std::string* text) const;

  // Vocabulary. Ids must be in [0, piece_size()).
  int piece_size() const;
  const std::string& IdToPiece(int id) const;
  // The id of `piece`, or unk_id() when it is not a piece.
  int PieceToId(std::string_view piece) const;
  bool IsControl(int id) const;
  bool IsByte(int id) const;
  bool IsUnknown(int id) const;

  // Special ids; -1 when the model disables one.
  int bos_id() const { return special_[0]; }
  int eos_id() const { return special_[1]; }
  int pad_id() const { return special_[2]; }
  int unk_id() const { return special_[3]; }

 private:
  SentencePieceModel(const SentencePieceShimApi* api, void* model)
      : api_(api), model_(model) {}

  const SentencePieceShimApi* api_;  // static storage in the shim
  void* model_;                      // owned; freed by api_->destroy_model
  int special_[4] = {-1, -1, -1, -1};
};

// Trains a model with libsentencepiece_train. `flags` is the trainer's
// command-line form, e.g. "--input=corpus.txt --model_prefix=/tmp/m
// --vocab_size=100". Blocks until done. FailedPrecondition when the shim
// cannot be opened; Internal with the trainer's message when training fails.
// Tests use it to build tiny models of their own.
absl::Status TrainSentencePieceModel(const std::string& flags);

}  // namespace optrec

#endif  // OPTREC_CORE_TOKENIZER_SENTENCEPIECE_BACKEND_H_
