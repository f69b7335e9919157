// Text <-> token ids for the models optrec serves.
//
// Two formats are read: Hugging Face tokenizer.json (BPE models, with the
// normalizers, pre-tokenizers, post-processors and decoders in
// normalizer.h, pretokenizer.h, decoder.h) and SentencePiece tokenizer.model
// files. No Debian package reads tokenizer.json from C++, so that pipeline is
// written here; SentencePiece models go through libsentencepiece.
//
// Example:
//   ASSIGN_OR_RETURN(auto tokenizer, LoadTokenizerFromDir(model_dir));
//   ASSIGN_OR_RETURN(std::vector<int32_t> ids,
//                    tokenizer->Encode("Hello", /*add_special=*/true));
#ifndef OPTREC_CORE_TOKENIZER_TOKENIZER_H_
#define OPTREC_CORE_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace optrec {

// Ids of the tokens with a fixed role. -1 = the tokenizer has none.
struct SpecialTokens {
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t pad_id = -1;
  int32_t unk_id = -1;
};

// A loaded tokenizer. Immutable after load; every method is const and
// thread-safe, so one instance is shared (std::shared_ptr<const Tokenizer>)
// by all request threads.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text to ids. `text` must be valid UTF-8 (InvalidArgument naming the byte
  // offset otherwise). With `add_special`, applies the file's post-processor
  // template (tokenizer.json) or prepends BOS (SentencePiece, when the model
  // has one); without it, returns the raw pieces only, like Hugging Face's
  // add_special_tokens=false. Added special tokens written literally in the
  // text are matched as those tokens in both cases, as Hugging Face does.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(
      std::string_view text, bool add_special) const = 0;

  // Ids to text, always valid UTF-8 (bytes that do not form UTF-8 become
  // U+FFFD). InvalidArgument naming the id when one is out of range or has
  // no token. `skip_special` drops special tokens (IsSpecial).
  virtual absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                             bool skip_special) const = 0;

  // The bytes one token contributes to decoded output when it is not the
  // first token (so a word-initial token keeps its leading space). Byte
  // tokens give their raw byte, so the result may be a fragment of a UTF-8
  // character: use it for byte-level stop-sequence matching, and DecodeStream
  // for text shown to users. InvalidArgument naming the id for a bad id.
  virtual absl::StatusOr<std::string> TokenText(int32_t id) const = 0;

  // The id of a vocabulary or added token spelled exactly `token` (in the
  // model's own spelling, e.g. "Ġthe" or "▁the"), or nullopt.
  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;

  // One past the largest valid id.
  virtual int32_t vocab_size() const = 0;
  virtual const SpecialTokens& special() const = 0;
  // True for control tokens (BOS, EOS, PAD, chat markers...): added tokens
  // flagged "special" in tokenizer.json, control pieces in SentencePiece.
  virtual bool IsSpecial(int32_t id) const = 0;
};

// Turns ids arriving one at a time (streaming generation) into text pieces
// that are each valid UTF-8 and concatenate to what Decode gives for all the
// ids. A piece is held back while the ids so far end inside a multi-byte
// character. Not thread-safe: one instance per generation stream.
class DecodeStream {
 public:
  // `tokenizer` must not be null. `skip_special` as in Tokenizer::Decode.
  DecodeStream(std::shared_ptr<const Tokenizer> tokenizer, bool skip_special);

  // Adds one id; returns the text that became complete (possibly empty).
  // InvalidArgument for a bad id, which is then not added.
  absl::StatusOr<std::string> Push(int32_t id);

  // Returns whatever text is still held back (an incomplete character comes
  // out as U+FFFD) and resets the stream.
  absl::StatusOr<std::string> Finish();

 private:
  std::shared_ptr<const Tokenizer> tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  // Ids before prefix_offset_ are settled. ids_[prefix_offset_,
  // read_offset_) are decoded again with each new id, so that spaces and
  // bytes that depend on neighbours come out right; their text up to
  // read_offset_ has been returned already.
  size_t prefix_offset_ = 0;
  size_t read_offset_ = 0;
};

// Loads the tokenizer of a Hugging Face model directory: tokenizer.json if
// present, else tokenizer.model (SentencePiece). Special ids the tokenizer
// file does not give are taken from tokenizer_config.json (bos_token,
// eos_token, pad_token, unk_token, as strings or {"content": ...}) and then
// config.json (bos_token_id, eos_token_id, pad_token_id; for a list of eos
// ids the first is used). NotFound naming the directory when neither
// tokenizer file exists; InvalidArgument / Unimplemented naming the file and
// field when a file is malformed or uses an unsupported component. Logs one
// INFO line on success.
absl::StatusOr<std::shared_ptr<const Tokenizer>> LoadTokenizerFromDir(
    const std::string& dir);

// Loads one bare file: *.json as tokenizer.json, otherwise as a
// SentencePiece model. Special ids come from the file alone. Errors as for
// LoadTokenizerFromDir, naming the file.
absl::StatusOr<std::shared_ptr<const Tokenizer>> LoadTokenizerFile(
    const std::string& path);

}  // namespace optrec

#endif  // OPTREC_CORE_TOKENIZER_TOKENIZER_H_
