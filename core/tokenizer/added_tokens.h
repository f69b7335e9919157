// Finding added tokens (special or not) written literally in input text.
#ifndef OPTREC_CORE_TOKENIZER_ADDED_TOKENS_H_
#define OPTREC_CORE_TOKENIZER_ADDED_TOKENS_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace optrec {

// One entry of tokenizer.json's "added_tokens" (or a SentencePiece control
// piece). The flags follow the reference library: `single_word` matches only
// when no word character touches either end; `lstrip` / `rstrip` make the
// match swallow the whitespace on its left / right; `normalized` tokens are
// matched in normalized text, the others in the raw input.
struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// A part of an input text: an added token, or text between added tokens.
struct TextSegment {
  size_t begin = 0;  // byte range in the text that was split
  size_t end = 0;
  int32_t added_id = -1;  // the added token's id; -1 for plain text
};

// Matches a fixed set of added tokens. Immutable after construction; Split
// is thread-safe.
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // Tokens with empty content are ignored.
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens);

  // Cuts `text` into segments covering it in order: at the leftmost position
  // where any token matches, the longest one is taken (then its flags
  // applied), and the search resumes after it. Plain-text segments are never
  // empty; whitespace swallowed by lstrip/rstrip belongs to no segment.
  std::vector<TextSegment> Split(std::string_view text) const;

  bool empty() const { return tokens_.empty(); }

 private:
  std::vector<AddedToken> tokens_;
  // Indices into tokens_ by first byte of content, longest content first.
  std::array<std::vector<int>, 256> by_first_byte_;
};

}  // namespace optrec

#endif  // OPTREC_CORE_TOKENIZER_ADDED_TOKENS_H_
