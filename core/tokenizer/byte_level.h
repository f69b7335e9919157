// The byte-to-character alphabet of byte-level BPE (GPT-2 and its
// descendants): every byte value maps to one printable Unicode character, so
// any byte string can be spelled with vocabulary characters.
#ifndef OPTREC_CORE_TOKENIZER_BYTE_LEVEL_H_
#define OPTREC_CORE_TOKENIZER_BYTE_LEVEL_H_

#include <string>
#include <string_view>

namespace optrec {
namespace byte_level {

// Appends the byte-level spelling of `bytes` (each byte becomes the UTF-8 of
// its character) to `*out`.
void Encode(std::string_view bytes, std::string* out);

// Appends the bytes that the byte-level spelling `text` stands for. Returns
// false, leaving `*out` unchanged, when `text` contains a character outside
// the alphabet.
bool Decode(std::string_view text, std::string* out);

}  // namespace byte_level
}  // namespace optrec

#endif  // OPTREC_CORE_TOKENIZER_BYTE_LEVEL_H_
