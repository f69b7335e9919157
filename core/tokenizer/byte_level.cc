#include "core/tokenizer/byte_level.h"

#include <array>
#include <cstdint>

#include "core/tokenizer/utf8.h"

namespace optrec {
namespace byte_level {
namespace {

// The alphabet: printable Latin-1 bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF)
// stand for themselves; the remaining 68 bytes, in increasing order, take
// the code points from U+0100 upward.
struct Alphabet {
  std::array<std::string, 256> spelling;  // byte -> UTF-8 of its character
  std::array<int16_t, 324> byte_of;       // code point -> byte, or -1

  Alphabet() {
    byte_of.fill(-1);
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const char32_t c = printable ? static_cast<char32_t>(b) : next++;
      utf8::AppendChar(c, &spelling[b]);
      byte_of[c] = static_cast<int16_t>(b);
    }
  }
};

const Alphabet& GetAlphabet() {
  static const Alphabet* const kAlphabet = new Alphabet();
  return *kAlphabet;
}

}  // namespace

void Encode(std::string_view bytes, std::string* out) {
  const Alphabet& alphabet = GetAlphabet();
  for (const char byte : bytes) {
    out->append(alphabet.spelling[static_cast<unsigned char>(byte)]);
  }
}

bool Decode(std::string_view text, std::string* out) {
  const Alphabet& alphabet = GetAlphabet();
  std::string bytes;
  bytes.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    size_t length = 0;
    const char32_t c = utf8::DecodeChar(text, pos, &length);
    if (c >= alphabet.byte_of.size() || alphabet.byte_of[c] < 0) return false;
    bytes.push_back(static_cast<char>(alphabet.byte_of[c]));
    pos += length;
  }
  out->append(bytes);
  return true;
}

}  // namespace byte_level
}  // namespace optrec
