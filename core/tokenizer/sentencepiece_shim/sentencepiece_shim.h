// The interface between optrec and its SentencePiece shim library.
//
// Why a shim: Debian's libsentencepiece carries its own copy of
// protobuf-lite 3.14 and exports those symbols, while LibTorch loads the
// system libprotobuf 3.21. Linked into one program the two copies interpose
// on each other and the process aborts at start-up (or in the protobuf
// version check). So libsentencepiece is never linked into optrec binaries:
// the shim (built from sentencepiece_shim.cc as a loadable module linked to
// libsentencepiece and libsentencepiece_train) is opened at first use with
// dlopen(RTLD_LOCAL | RTLD_DEEPBIND), which keeps each library bound to its
// own protobuf. See core/tokenizer/sentencepiece_backend.h for the caller.
//
// A cost of RTLD_DEEPBIND: the shim and libsentencepiece see libstdc++'s own
// std::cerr rather than the program's (copy-relocated) one, which is never
// constructed, so the shim turns libsentencepiece's logging off.
//
// Both sides are built by the same compiler against the same libstdc++ in
// the same process, so standard-library types cross the boundary; only the
// entry point is extern "C". No Abseil header may be included by the shim:
// Debian's sentencepiece_processor.h declares its own absl::string_view.
#ifndef OPTREC_CORE_TOKENIZER_SENTENCEPIECE_SHIM_SENTENCEPIECE_SHIM_H_
#define OPTREC_CORE_TOKENIZER_SENTENCEPIECE_SHIM_SENTENCEPIECE_SHIM_H_

#include <string>
#include <string_view>
#include <vector>

namespace optrec {

// Bumped whenever SentencePieceShimApi changes.
inline constexpr int kSentencePieceShimVersion = 1;

// Bits of SentencePieceShimApi::piece_kind.
inline constexpr int kPieceControl = 1;
inline constexpr int kPieceByte = 2;
inline constexpr int kPieceUnknown = 4;

// Function table of the shim. `model` is an opaque processor made by
// create_model. Functions returning bool set `*error` on failure and never
// throw. Ids passed in must be in [0, piece_size). Const functions are
// thread-safe on a loaded model.
struct SentencePieceShimApi {
  int version;  // kSentencePieceShimVersion of the shim's build
  void* (*create_model)();
  void (*destroy_model)(void* model);
  bool (*load)(void* model, const std::string& path, std::string* error);
  bool (*encode)(const void* model, std::string_view text,
                 std::vector<int>* ids, std::string* error);
  bool (*decode)(const void* model, const std::vector<int>& ids,
                 std::string* text, std::string* error);
  int (*piece_size)(const void* model);
  const std::string& (*id_to_piece)(const void* model, int id);
  // The id of `piece`, or the unknown id when it is not a piece.
  int (*piece_to_id)(const void* model, std::string_view piece);
  // kPiece* bits of the piece `id`.
  int (*piece_kind)(const void* model, int id);
  // Writes bos, eos, pad, unk ids (-1 when disabled) to ids[0..3].
  void (*special_ids)(const void* model, int ids[4]);
  // Trains a model; `flags` is libsentencepiece_train's command-line form.
  bool (*train)(const std::string& flags, std::string* error);
};

}  // namespace optrec

// The shim's one exported symbol: its function table (static storage).
extern "C" const optrec::SentencePieceShimApi* OptrecSentencePieceShimApi();

#endif  // OPTREC_CORE_TOKENIZER_SENTENCEPIECE_SHIM_SENTENCEPIECE_SHIM_H_
