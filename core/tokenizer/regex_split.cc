#include "core/tokenizer/regex_split.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/tokenizer/string_view_compat.h"
#include "core/tokenizer/utf8.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

using nlohmann::json;

// Unicode White_Space as the body of an RE2 character class, and the body of
// its complement (every code point outside those ranges).
constexpr char kSpaceBody[] =
    "\\t-\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}"
    "\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
constexpr char kNonSpaceBody[] =
    "\\x00-\\x08\\x0E-\\x1F\\x21-\\x{84}\\x{86}-\\x{9F}\\x{A1}-\\x{167F}"
    "\\x{1681}-\\x{1FFF}\\x{200B}-\\x{2027}\\x{202A}-\\x{202E}"
    "\\x{2030}-\\x{205E}\\x{2060}-\\x{2FFF}\\x{3001}-\\x{10FFFF}";
constexpr char kWordBody[] = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";

// The lookahead alternative emulated by SplitPattern::FindAll.
constexpr char kLookaheadRun[] = "\\s+(?!\\S)";

absl::Status BadPattern(std::string_view pattern, std::string_view problem) {
  return absl::InvalidArgumentError(
      absl::StrCat("regex pattern '", AsAbsl(pattern), "': ", AsAbsl(problem)));
}

// Splits `pattern` at the '|' that are outside every group and class.
std::vector<std::string> SplitTopLevelAlternatives(std::string_view pattern) {
  std::vector<std::string> alternatives;
  std::string current;
  int depth = 0;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      current.push_back(c);
      current.push_back(pattern[++i]);
      continue;
    }
    if (in_class) {
      if (c == ']') in_class = false;
    } else if (c == '[') {
      in_class = true;
      current.push_back(c);
      // A ']' first in the class (after an optional '^') is a member.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') {
        current.push_back(pattern[++i]);
      }
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') {
        current.push_back(pattern[++i]);
      }
      continue;
    } else if (c == '(') {
      ++depth;
    } else if (c == ')') {
      --depth;
    } else if (c == '|' && depth == 0) {
      alternatives.push_back(std::move(current));
      current.clear();
      continue;
    }
    current.push_back(c);
  }
  alternatives.push_back(std::move(current));
  return alternatives;
}

// Rewrites one Oniguruma-style (sub)pattern into RE2 syntax as described in
// the header. Lookarounds are errors here: the supported one is removed by
// the caller before translation.
absl::StatusOr<std::string> Translate(std::string_view pattern,
                                      std::string_view whole) {
  std::string out;
  out.reserve(pattern.size() * 2);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\') {
      if (i + 1 >= pattern.size()) {
        return BadPattern(whole, "ends with a lone backslash");
      }
      const char e = pattern[++i];
      switch (e) {
        case 's':
          absl::StrAppend(&out, in_class ? "" : "[", kSpaceBody,
                          in_class ? "" : "]");
          break;
        case 'S':
          absl::StrAppend(&out, in_class ? "" : "[", kNonSpaceBody,
                          in_class ? "" : "]");
          break;
        case 'd':
          out.append("\\p{Nd}");
          break;
        case 'D':
          out.append("\\P{Nd}");
          break;
        case 'w':
          absl::StrAppend(&out, in_class ? "" : "[", kWordBody,
                          in_class ? "" : "]");
          break;
        case 'W':
          if (in_class) {
            return BadPattern(whole, "\\W inside a character class");
          }
          absl::StrAppend(&out, "[^", kWordBody, "]");
          break;
        case 'b':
        case 'B':
          return BadPattern(whole,
                            "word boundaries (\\b, \\B) are not supported");
        case 'h':
        case 'H':
        case 'R':
        case 'X':
        case 'K':
        case 'G':
          return BadPattern(whole, absl::StrCat("escape \\", std::string(1, e),
                                                " is not supported"));
        default:
          out.push_back('\\');
          out.push_back(e);
      }
      continue;
    }
    if (in_class) {
      if (c == '[') {
        if (i + 1 < pattern.size() && pattern[i + 1] == ':') {
          // A POSIX class such as [:alpha:] passes through.
          const size_t close = pattern.find(":]", i + 2);
          if (close == std::string_view::npos) {
            return BadPattern(whole, "unterminated [: :] class");
          }
          out.append(pattern.substr(i, close + 2 - i));
          i = close + 1;
          continue;
        }
        return BadPattern(whole, "nested character classes are not supported");
      }
      if (c == '&' && i + 1 < pattern.size() && pattern[i + 1] == '&') {
        return BadPattern(whole, "class intersection (&&) is not supported");
      }
      if (c == ']') in_class = false;
      out.push_back(c);
      continue;
    }
    if (c == '[') {
      in_class = true;
      out.push_back(c);
      // A ']' first in the class (after an optional '^') is a member.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') {
        out.push_back(pattern[++i]);
      }
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') {
        out.append("\\]");
        ++i;
      }
      continue;
    }
    if (c == '(') {
      const std::string_view rest = pattern.substr(i + 1);
      if (rest.substr(0, 2) == "?=" || rest.substr(0, 2) == "?!" ||
          rest.substr(0, 3) == "?<=" || rest.substr(0, 3) == "?<!") {
        return BadPattern(whole,
                          absl::StrCat("lookaround is not supported (only a "
                                       "top-level alternative written exactly ",
                                       kLookaheadRun, " is)"));
      }
      if (rest.substr(0, 2) == "?>") {
        return BadPattern(whole, "atomic groups (?>...) are not supported");
      }
      if (rest.substr(0, 2) == "?<" || rest.substr(0, 3) == "?P<") {
        const size_t close = rest.find('>');
        if (close == std::string_view::npos) {
          return BadPattern(whole, "unterminated group name");
        }
        out.append("(?:");
        i += 1 + close;
        continue;
      }
      if (rest.substr(0, 1) == "?") {
        out.push_back(c);  // (?:, (?i:, (?i) and the like pass through.
        continue;
      }
      out.append("(?:");
      continue;
    }
    out.push_back(c);
  }
  if (in_class) return BadPattern(whole, "unterminated character class");
  return out;
}

absl::StatusOr<std::unique_ptr<RE2>> Compile(const std::string& translated,
                                             std::string_view whole) {
  RE2::Options options;
  options.set_encoding(RE2::Options::EncodingUTF8);
  options.set_longest_match(false);  // leftmost-first, as Oniguruma
  options.set_log_errors(false);
  auto regex = std::make_unique<RE2>(translated, options);
  if (!regex->ok()) {
    return BadPattern(whole, absl::StrCat("RE2 rejects it: ", regex->error()));
  }
  return regex;
}

}  // namespace

absl::StatusOr<SplitBehavior> ParseSplitBehavior(std::string_view name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown split behavior '", AsAbsl(name), "'"));
}

absl::StatusOr<std::unique_ptr<SplitPattern>> SplitPattern::FromRegex(
    std::string_view pattern) {
  auto split = std::unique_ptr<SplitPattern>(new SplitPattern());
  split->source_ = std::string(pattern);
  if (pattern.empty()) return BadPattern(pattern, "empty pattern");

  // Translate alternative by alternative so the lookahead run can be swapped
  // for capture group 1.
  const std::vector<std::string> alternatives =
      SplitTopLevelAlternatives(pattern);
  std::vector<std::string> translated;
  std::vector<std::string> later;
  for (const std::string& alternative : alternatives) {
    if (alternative == kLookaheadRun && !split->has_lookahead_run_) {
      split->has_lookahead_run_ = true;
      translated.push_back(absl::StrCat("([", kSpaceBody, "]+)"));
      continue;
    }
    auto part = Translate(alternative, pattern);
    if (!part.ok()) return part.status();
    translated.push_back(*part);
    if (split->has_lookahead_run_) later.push_back(*part);
  }
  auto regex = Compile(absl::StrJoin(translated, "|"), pattern);
  if (!regex.ok()) return regex.status();
  split->regex_ = std::move(*regex);
  if (!later.empty()) {
    auto rest = Compile(absl::StrJoin(later, "|"), pattern);
    if (!rest.ok()) return rest.status();
    split->later_alternatives_ = std::move(*rest);
  }
  return split;
}

absl::StatusOr<std::unique_ptr<SplitPattern>> SplitPattern::FromLiteral(
    std::string_view literal) {
  if (literal.empty()) {
    return absl::InvalidArgumentError("split string pattern is empty");
  }
  auto split = std::unique_ptr<SplitPattern>(new SplitPattern());
  split->source_ = std::string(literal);
  auto regex = Compile(RE2::QuoteMeta(literal), literal);
  if (!regex.ok()) return regex.status();
  split->regex_ = std::move(*regex);
  return split;
}

std::vector<ByteRange> SplitPattern::FindAll(std::string_view text) const {
  std::vector<ByteRange> matches;
  re2::StringPiece input(text.data(), text.size());
  re2::StringPiece groups[2];
  const int group_count = has_lookahead_run_ ? 2 : 1;
  size_t pos = 0;
  while (pos < text.size()) {
    if (!regex_->Match(input, pos, text.size(), RE2::UNANCHORED, groups,
                       group_count)) {
      break;
    }
    size_t begin = groups[0].data() - text.data();
    size_t end = begin + groups[0].size();
    if (has_lookahead_run_ && groups[1].data() != nullptr &&
        end < text.size()) {
      // Group 1 took the whole whitespace run, so a non-space follows it.
      // Oniguruma's `\s+(?!\S)` backtracks one character: it matches the run
      // less its last character when that leaves at least one, and otherwise
      // fails here, letting the later alternatives try at the same position.
      size_t last = begin;
      size_t chars = 0;
      for (size_t p = begin; p < end; p += utf8::CharLength(text, p)) {
        last = p;
        ++chars;
      }
      if (chars >= 2) {
        end = last;
      } else {
        re2::StringPiece later;
        const bool later_matched =
            later_alternatives_ != nullptr &&
            later_alternatives_->Match(input, begin, text.size(),
                                       RE2::ANCHOR_START, &later, 1);
        if (!later_matched) {
          // No alternative matches at `begin` in the original pattern.
          pos = begin + utf8::CharLength(text, begin);
          continue;
        }
        end = begin + later.size();
      }
    }
    if (end == begin) {
      // Empty matches make no pieces; step over one character.
      pos = begin + utf8::CharLength(text, begin);
      continue;
    }
    matches.emplace_back(begin, end);
    pos = end;
  }
  return matches;
}

std::vector<ByteRange> SplitByMatches(size_t text_size,
                                      const std::vector<ByteRange>& matches,
                                      SplitBehavior behavior, bool invert) {
  // The text as alternating segments, each flagged as a match or not.
  struct Segment {
    ByteRange range;
    bool is_match;
  };
  std::vector<Segment> segments;
  size_t pos = 0;
  for (const ByteRange& match : matches) {
    if (match.first > pos) {
      segments.push_back({{pos, match.first}, invert});
    }
    segments.push_back({match, !invert});
    pos = match.second;
  }
  if (pos < text_size) segments.push_back({{pos, text_size}, invert});

  std::vector<ByteRange> pieces;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Segment& s : segments) {
        if (!s.is_match) pieces.push_back(s.range);
      }
      break;
    case SplitBehavior::kIsolated:
      for (const Segment& s : segments) pieces.push_back(s.range);
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Segment& s : segments) {
        if (s.is_match && !previous_match && !pieces.empty()) {
          pieces.back().second = s.range.second;
        } else {
          pieces.push_back(s.range);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool next_match = false;
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        if (it->is_match && !next_match && !pieces.empty()) {
          pieces.back().first = it->range.first;
        } else {
          pieces.push_back(it->range);
        }
        next_match = it->is_match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Segment& s : segments) {
        if (s.is_match && previous_match && !pieces.empty()) {
          pieces.back().second = s.range.second;
        } else {
          pieces.push_back(s.range);
        }
        previous_match = s.is_match;
      }
      break;
    }
  }
  return pieces;
}

absl::StatusOr<std::unique_ptr<SplitPattern>> ParsePatternField(
    const json& config, const JsonPath& at) {
  ASSIGN_OR_RETURN(const json* pattern, JsonObject(config, "pattern", at));
  const JsonPath pattern_at = at.Child("pattern");
  if (const json* literal = JsonMember(*pattern, "String")) {
    if (!literal->is_string()) {
      return pattern_at.Child("String").Invalid("must be a string");
    }
    auto compiled = SplitPattern::FromLiteral(literal->get<std::string>());
    if (!compiled.ok()) {
      return pattern_at.Child("String").Invalid(
          AsStd(compiled.status().message()));
    }
    return compiled;
  }
  if (const json* regex = JsonMember(*pattern, "Regex")) {
    if (!regex->is_string()) {
      return pattern_at.Child("Regex").Invalid("must be a string");
    }
    auto compiled = SplitPattern::FromRegex(regex->get<std::string>());
    if (!compiled.ok()) {
      return pattern_at.Child("Regex").Invalid(
          AsStd(compiled.status().message()));
    }
    return compiled;
  }
  return pattern_at.Invalid("must hold \"String\" or \"Regex\"");
}

}  // namespace optrec
