#include "core/tokenizer/added_tokens.h"

#include <algorithm>

#include "core/tokenizer/utf8.h"
#include "re2/re2.h"

namespace optrec {
namespace {

// True when `c` is a letter or number (a word character for single_word).
bool IsWordChar(std::string_view text, size_t pos) {
  static const RE2* const kWord = new RE2("[\\p{L}\\p{N}_]");
  const size_t length = utf8::CharLength(text, pos);
  return RE2::FullMatch(re2::StringPiece(text.data() + pos, length), *kWord);
}

// Start of the character that ends at `end` (end > 0).
size_t PreviousCharStart(std::string_view text, size_t end) {
  size_t pos = end - 1;
  while (pos > 0 && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80 &&
         end - pos < 4) {
    --pos;
  }
  return pos;
}

bool IsSpaceAt(std::string_view text, size_t pos, size_t* length) {
  return utf8::IsWhiteSpace(utf8::DecodeChar(text, pos, length));
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) {
  for (AddedToken& token : tokens) {
    if (!token.content.empty()) tokens_.push_back(std::move(token));
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const auto first = static_cast<unsigned char>(tokens_[i].content[0]);
    by_first_byte_[first].push_back(static_cast<int>(i));
  }
  for (std::vector<int>& bucket : by_first_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(), [&](int a, int b) {
      return tokens_[a].content.size() > tokens_[b].content.size();
    });
  }
}

std::vector<TextSegment> AddedTokenMatcher::Split(std::string_view text) const {
  std::vector<TextSegment> segments;
  size_t text_start = 0;  // start of the pending plain-text segment
  size_t pos = 0;
  while (pos < text.size()) {
    const auto& bucket = by_first_byte_[static_cast<unsigned char>(text[pos])];
    const AddedToken* found = nullptr;
    for (int index : bucket) {
      const std::string& content = tokens_[index].content;
      if (text.compare(pos, content.size(), content) == 0) {
        found = &tokens_[index];
        break;
      }
    }
    if (found == nullptr) {
      ++pos;
      continue;
    }
    size_t begin = pos;
    size_t end = pos + found->content.size();
    if (found->single_word) {
      const bool word_before =
          begin > 0 && IsWordChar(text, PreviousCharStart(text, begin));
      const bool word_after = end < text.size() && IsWordChar(text, end);
      if (word_before || word_after) {
        // The match is discarded but its text is not searched again.
        pos = end;
        continue;
      }
    }
    if (found->lstrip) {
      while (begin > text_start) {
        const size_t prev = PreviousCharStart(text, begin);
        size_t length = 0;
        if (!IsSpaceAt(text, prev, &length)) break;
        begin = prev;
      }
    }
    if (found->rstrip) {
      size_t length = 0;
      while (end < text.size() && IsSpaceAt(text, end, &length)) {
        end += length;
      }
    }
    if (begin > text_start) segments.push_back({text_start, begin, -1});
    segments.push_back({begin, end, found->id});
    text_start = end;
    pos = end;
  }
  if (text_start < text.size()) {
    segments.push_back({text_start, text.size(), -1});
  }
  return segments;
}

}  // namespace optrec
