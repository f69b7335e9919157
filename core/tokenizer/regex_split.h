// Splitting text with the regular expressions of Hugging Face tokenizer.json
// files, on RE2.
//
// The reference library compiles these patterns with Oniguruma, whose \s, \S,
// \d, \w are Unicode-aware and which supports lookaround; RE2's shorthand
// classes are ASCII-only and it has no lookaround. SplitPattern therefore
// translates a pattern before compiling it:
//   \s, \S      the Unicode White_Space set and its complement, outside and
//               inside character classes;
//   \d, \D      \p{Nd} and \P{Nd};
//   \w          [\p{L}\p{M}\p{Nd}\p{Pc}] (\W only outside a class);
//   (...)       made non-capturing; (?<name>...) made non-capturing too.
// The one lookaround found in practice, a top-level alternative written
// exactly `\s+(?!\S)` (GPT-2, Llama 3, Qwen), is emulated exactly; see
// SplitPattern::FindAll. Any other lookaround, atomic group, \b/\B, or a
// nested character class is rejected with InvalidArgument naming the pattern.
//
// RE2's default semantics (longest_match = false) are leftmost-first, like
// Perl and Oniguruma: of the matches starting at the leftmost position, the
// alternative written first wins.
#ifndef OPTREC_CORE_TOKENIZER_REGEX_SPLIT_H_
#define OPTREC_CORE_TOKENIZER_REGEX_SPLIT_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tokenizer/json_util.h"
#include "nlohmann/json.hpp"
#include "re2/re2.h"

namespace optrec {

// A byte range [begin, end) of a text.
using ByteRange = std::pair<size_t, size_t>;

// What happens to the matches of a split pattern (the reference library's
// SplitDelimiterBehavior).
enum class SplitBehavior {
  kRemoved,             // matches are dropped
  kIsolated,            // matches become pieces of their own
  kMergedWithPrevious,  // a match is appended to the piece before it
  kMergedWithNext,      // a match is prepended to the piece after it
  kContiguous,          // adjacent matches become one piece
};

// Parses "Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
// "Contiguous". InvalidArgument naming `name` otherwise.
absl::StatusOr<SplitBehavior> ParseSplitBehavior(std::string_view name);

// A compiled split pattern. Immutable; FindAll is thread-safe.
class SplitPattern {
 public:
  // Translates and compiles an Oniguruma-style regular expression (see the
  // file comment). InvalidArgument naming the pattern when it uses a
  // construct that cannot be translated or RE2 rejects the result.
  static absl::StatusOr<std::unique_ptr<SplitPattern>> FromRegex(
      std::string_view pattern);

  // A pattern matching `literal` exactly. InvalidArgument when it is empty.
  static absl::StatusOr<std::unique_ptr<SplitPattern>> FromLiteral(
      std::string_view literal);

  // The successive non-overlapping, non-empty matches in `text`, searched
  // left to right as the reference library does (each search starts where the
  // previous match ended). `text` should be valid UTF-8.
  std::vector<ByteRange> FindAll(std::string_view text) const;

  // The pattern as given, for messages.
  const std::string& source() const { return source_; }

 private:
  SplitPattern() = default;

  std::string source_;
  std::unique_ptr<RE2> regex_;
  // When the pattern had a `\s+(?!\S)` alternative, that alternative is
  // compiled as capture group 1 matching the whole whitespace run, and
  // `later_alternatives_` holds the alternatives written after it (null when
  // there are none).
  bool has_lookahead_run_ = false;
  std::unique_ptr<RE2> later_alternatives_;
};

// Cuts a text of `text_size` bytes into the byte ranges of its pieces, given
// the sorted, non-overlapping `matches` of a pattern in it. With `invert`
// the matches and the text between them swap roles. Empty pieces are never
// produced.
std::vector<ByteRange> SplitByMatches(size_t text_size,
                                      const std::vector<ByteRange>& matches,
                                      SplitBehavior behavior, bool invert);

// Compiles member "pattern" of `config` (at `at`), which tokenizer.json
// writes as {"String": literal} or {"Regex": pattern}. InvalidArgument naming
// the field when it is missing, malformed or cannot be compiled.
absl::StatusOr<std::unique_ptr<SplitPattern>> ParsePatternField(
    const nlohmann::json& config, const JsonPath& at);

}  // namespace optrec

#endif  // OPTREC_CORE_TOKENIZER_REGEX_SPLIT_H_
