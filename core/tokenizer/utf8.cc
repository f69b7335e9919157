#include "core/tokenizer/utf8.h"

#include "absl/strings/str_cat.h"

namespace optrec {
namespace utf8 {

size_t ValidSequenceLength(std::string_view text, size_t pos) {
  const auto byte = [&](size_t i) {
    return static_cast<unsigned char>(text[pos + i]);
  };
  const size_t left = text.size() - pos;
  const unsigned char b0 = byte(0);
  if (b0 < 0x80) return 1;
  size_t length = 0;
  char32_t min_value = 0;
  char32_t value = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    length = 2;
    min_value = 0x80;
    value = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    length = 3;
    min_value = 0x800;
    value = b0 & 0x0F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    length = 4;
    min_value = 0x10000;
    value = b0 & 0x07;
  } else {
    return 0;
  }
  if (left < length) return 0;
  for (size_t i = 1; i < length; ++i) {
    const unsigned char b = byte(i);
    if ((b & 0xC0) != 0x80) return 0;
    value = (value << 6) | (b & 0x3F);
  }
  if (value < min_value || value > 0x10FFFF) return 0;
  if (value >= 0xD800 && value <= 0xDFFF) return 0;
  return length;
}

size_t CharLength(std::string_view text, size_t pos) {
  const size_t length = ValidSequenceLength(text, pos);
  return length == 0 ? 1 : length;
}

char32_t DecodeChar(std::string_view text, size_t pos, size_t* length) {
  const size_t valid = ValidSequenceLength(text, pos);
  if (valid == 0) {
    *length = 1;
    return 0xFFFD;
  }
  *length = valid;
  const auto b = [&](size_t i) {
    return static_cast<char32_t>(static_cast<unsigned char>(text[pos + i]));
  };
  switch (valid) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) |
             ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

void AppendChar(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

size_t FirstInvalidOffset(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t length = ValidSequenceLength(text, pos);
    if (length == 0) return pos;
    pos += length;
  }
  return text.size();
}

absl::Status CheckEncodable(std::string_view text) {
  const size_t invalid = FirstInvalidOffset(text);
  if (invalid == text.size()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("text to encode is not valid UTF-8 (byte ", invalid, ")"));
}

namespace {

// Length of the longest prefix at text[pos] that could still begin a valid
// sequence (the "maximal subpart" of Unicode's substitution rule), at least 1.
size_t MaximalSubpartLength(std::string_view text, size_t pos) {
  const unsigned char b0 = static_cast<unsigned char>(text[pos]);
  size_t needed = 0;
  unsigned char low = 0x80;
  unsigned char high = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    needed = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    needed = 3;
    if (b0 == 0xE0) low = 0xA0;
    if (b0 == 0xED) high = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    needed = 4;
    if (b0 == 0xF0) low = 0x90;
    if (b0 == 0xF4) high = 0x8F;
  } else {
    return 1;
  }
  size_t length = 1;
  while (length < needed && pos + length < text.size()) {
    const unsigned char b = static_cast<unsigned char>(text[pos + length]);
    if (b < low || b > high) break;
    low = 0x80;
    high = 0xBF;
    ++length;
  }
  return length;
}

}  // namespace

std::string MakeValid(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const size_t length = ValidSequenceLength(bytes, pos);
    if (length == 0) {
      out.append(kReplacementChar);
      pos += MaximalSubpartLength(bytes, pos);
    } else {
      out.append(bytes.substr(pos, length));
      pos += length;
    }
  }
  return out;
}

size_t IncompleteTailLength(std::string_view bytes) {
  // Walk back over at most three continuation bytes to the lead byte.
  const size_t n = bytes.size();
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    const unsigned char b = static_cast<unsigned char>(bytes[n - back]);
    if ((b & 0xC0) == 0x80) continue;
    size_t needed = 0;
    if (b >= 0xC2 && b <= 0xDF) needed = 2;
    if (b >= 0xE0 && b <= 0xEF) needed = 3;
    if (b >= 0xF0 && b <= 0xF4) needed = 4;
    return needed > back ? back : 0;
  }
  return 0;
}

bool IsWhiteSpace(char32_t c) {
  if (c >= 0x09 && c <= 0x0D) return true;
  if (c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680) return true;
  if (c >= 0x2000 && c <= 0x200A) return true;
  return c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

}  // namespace utf8
}  // namespace optrec
