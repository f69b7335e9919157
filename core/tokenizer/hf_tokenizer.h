// A tokenizer read from a Hugging Face tokenizer.json file (BPE model).
#ifndef OPTREC_CORE_TOKENIZER_HF_TOKENIZER_H_
#define OPTREC_CORE_TOKENIZER_HF_TOKENIZER_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "core/tokenizer/added_tokens.h"
#include "core/tokenizer/bpe_model.h"
#include "core/tokenizer/decoder.h"
#include "core/tokenizer/normalizer.h"
#include "core/tokenizer/pretokenizer.h"
#include "core/tokenizer/tokenizer.h"

namespace optrec {

// Encodes as the reference library does: added tokens are split out first
// (those with normalized=false in the raw text, the others after
// normalization), then normalizer, pre-tokenizer, BPE model, and, with
// add_special, the post-processor. Immutable after Load; thread-safe.
class HfTokenizer : public Tokenizer {
 public:
  // Parses the tokenizer.json file at `path`. NotFound when it cannot be
  // opened; InvalidArgument naming the file and field when it is not valid
  // JSON or a member is malformed (including a merge naming a token missing
  // from the vocabulary); Unimplemented naming the field for a model,
  // normalizer, pre-tokenizer, post-processor or decoder type not supported
  // here. Special ids: unk from the model, bos (and eos) from the leading
  // (trailing) special token of a TemplateProcessing or RobertaProcessing
  // post-processor, pad from "padding".
  static absl::StatusOr<std::unique_ptr<HfTokenizer>> Load(
      const std::string& path);

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool add_special) const override;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special) const override;
  absl::StatusOr<std::string> TokenText(int32_t id) const override;
  std::optional<int32_t> TokenToId(std::string_view token) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  const SpecialTokens& special() const override { return special_; }
  bool IsSpecial(int32_t id) const override;

  // Replaces the special ids. Only for the loader, before the tokenizer is
  // shared.
  void set_special(const SpecialTokens& special) { special_ = special; }

 private:
  // One step of a post-processor template: the input ids ($A) or fixed ids.
  struct TemplateItem {
    bool is_input = false;
    std::vector<int32_t> ids;
  };

  HfTokenizer() = default;
  absl::Status ParseAddedTokens(const nlohmann::json& root, const JsonPath& at);
  absl::Status ParsePostProcessor(const nlohmann::json& config,
                                  const JsonPath& at);
  // The token string of `id`, or InvalidArgument naming it.
  absl::StatusOr<const std::string*> TokenOf(int32_t id) const;
  // Normalizes, pre-tokenizes and tokenizes a text with no added tokens.
  absl::Status EncodePlain(std::string_view text, bool at_start,
                           std::vector<int32_t>* ids) const;

  std::string path_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<Normalizer> normalizer_;       // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer_;  // may be null
  std::unique_ptr<Decoder> decoder_;             // may be null
  // Post-processor steps in order; each rewrites the id list by its
  // template. Empty when there is none or it adds nothing.
  std::vector<std::vector<TemplateItem>> post_templates_;

  absl::flat_hash_map<int32_t, AddedToken> added_by_id_;
  absl::flat_hash_map<std::string, int32_t> added_by_content_;
  AddedTokenMatcher raw_matcher_;         // added tokens with normalized=false
  AddedTokenMatcher normalized_matcher_;  // normalized=true, normalized form
  int32_t vocab_size_ = 0;
  SpecialTokens special_;
};

}  // namespace optrec

#endif  // OPTREC_CORE_TOKENIZER_HF_TOKENIZER_H_
