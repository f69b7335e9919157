// UTF-8 helpers shared by the tokenizer implementations. All functions are
// pure and thread-safe.
#ifndef OPTREC_CORE_TOKENIZER_UTF8_H_
#define OPTREC_CORE_TOKENIZER_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace optrec {
namespace utf8 {

// U+FFFD, written in place of bytes that do not form valid UTF-8.
inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

// Length in bytes of the valid UTF-8 sequence starting at text[pos], or 0
// when the bytes there are not a complete, valid sequence (bad lead byte,
// bad continuation, overlong form, surrogate, above U+10FFFF, or cut short by
// the end of text). Requires pos < text.size().
size_t ValidSequenceLength(std::string_view text, size_t pos);

// Length of the character starting at text[pos] for splitting purposes: the
// valid sequence length, or 1 for a byte that does not start one. Always >= 1
// when pos < text.size().
size_t CharLength(std::string_view text, size_t pos);

// Decodes the character at text[pos]; returns U+FFFD for invalid bytes.
// Writes its length (as CharLength) to *length.
char32_t DecodeChar(std::string_view text, size_t pos, size_t* length);

// Appends the UTF-8 encoding of `c` (which must be <= U+10FFFF).
void AppendChar(char32_t c, std::string* out);

// Returns the byte offset of the first invalid sequence, or text.size() when
// the whole text is valid UTF-8.
size_t FirstInvalidOffset(std::string_view text);

// OK when `text` is valid UTF-8; otherwise InvalidArgument naming the byte
// offset of the first invalid sequence (what every Encode requires).
absl::Status CheckEncodable(std::string_view text);

// Returns `bytes` with invalid sequences replaced by U+FFFD, one per maximal
// subpart (Unicode's recommended substitution, which Hugging Face's lossy
// decoding also follows).
std::string MakeValid(std::string_view bytes);

// Number of bytes at the end of `bytes` that form the start of a UTF-8
// sequence still missing its continuation bytes (0 to 3).
size_t IncompleteTailLength(std::string_view bytes);

// True for the Unicode White_Space characters: U+0009..U+000D, U+0020,
// U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F,
// U+3000.
bool IsWhiteSpace(char32_t c);

}  // namespace utf8
}  // namespace optrec

#endif  // OPTREC_CORE_TOKENIZER_UTF8_H_
