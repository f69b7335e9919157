// A tokenizer read from a SentencePiece model file (tokenizer.model), run by
// libsentencepiece.
#ifndef OPTREC_CORE_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_
#define OPTREC_CORE_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_

#include <memory>
#include <optional>
#include <string>

#include "core/tokenizer/added_tokens.h"
#include "core/tokenizer/sentencepiece_backend.h"
#include "core/tokenizer/tokenizer.h"

namespace optrec {

// Special ids are the model's own (bos_id, eos_id, pad_id, unk_id; -1 when
// the model disables one). Control pieces (<s>, </s>, ...) are the special
// tokens: written literally in text they are matched as those tokens, and
// the text between them is encoded by SentencePiece piece by piece, as
// Hugging Face's slow Llama tokenizer does. add_special prepends BOS only.
// Immutable after Load; thread-safe.
class SentencePieceTokenizer : public Tokenizer {
 public:
  // NotFound when `path` cannot be opened; InvalidArgument naming the file
  // when libsentencepiece cannot parse it; FailedPrecondition when the
  // SentencePiece shim module cannot be opened (sentencepiece_backend.h).
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> Load(
      const std::string& path);

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool add_special) const override;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special) const override;
  absl::StatusOr<std::string> TokenText(int32_t id) const override;
  std::optional<int32_t> TokenToId(std::string_view token) const override;
  int32_t vocab_size() const override;
  const SpecialTokens& special() const override { return special_; }
  bool IsSpecial(int32_t id) const override;

  // Replaces the special ids. Only for the loader, before the tokenizer is
  // shared.
  void set_special(const SpecialTokens& special) { special_ = special; }

 private:
  SentencePieceTokenizer() = default;
  absl::Status CheckId(int32_t id) const;
  // Decodes a run of non-control ids with libsentencepiece.
  absl::StatusOr<std::string> DecodeRun(const std::vector<int>& run) const;

  std::unique_ptr<SentencePieceModel> model_;
  AddedTokenMatcher control_matcher_;
  SpecialTokens special_;
};

}  // namespace optrec

#endif  // OPTREC_CORE_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_
