#include "core/tokenizer/pretokenizer.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "core/tokenizer/byte_level.h"
#include "core/tokenizer/regex_split.h"
#include "core/tokenizer/string_view_compat.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

using nlohmann::json;

// GPT-2's fixed split pattern, used by ByteLevel with use_regex = true.
constexpr std::string_view kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
    "\\s+(?!\\S)|\\s+";

// Splits every piece with `pattern` and `behavior`.
void SplitPieces(const SplitPattern& pattern, SplitBehavior behavior,
                 bool invert, std::vector<PreToken>* pieces) {
  std::vector<PreToken> out;
  out.reserve(pieces->size());
  for (PreToken& piece : *pieces) {
    const std::vector<ByteRange> ranges = SplitByMatches(
        piece.text.size(), pattern.FindAll(piece.text), behavior, invert);
    for (const ByteRange& range : ranges) {
      out.push_back({piece.text.substr(range.first, range.second - range.first),
                     piece.at_start && range.first == 0});
    }
  }
  *pieces = std::move(out);
}

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(
      std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void PreTokenize(std::vector<PreToken>* pieces) const override {
    for (const auto& step : steps_) step->PreTokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

// Cuts with a pattern (Split, Whitespace, Digits, Punctuation, ...).
class PatternPreTokenizer : public PreTokenizer {
 public:
  PatternPreTokenizer(std::unique_ptr<SplitPattern> pattern,
                      SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void PreTokenize(std::vector<PreToken>* pieces) const override {
    SplitPieces(*pattern_, behavior_, invert_, pieces);
  }

 private:
  std::unique_ptr<SplitPattern> pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

// Optionally adds a leading space, optionally splits with the GPT-2 pattern,
// then spells each piece in the byte-level alphabet.
class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space,
                        std::unique_ptr<SplitPattern> pattern)
      : add_prefix_space_(add_prefix_space), pattern_(std::move(pattern)) {}
  void PreTokenize(std::vector<PreToken>* pieces) const override {
    if (add_prefix_space_) {
      for (PreToken& piece : *pieces) {
        if (piece.text[0] != ' ') piece.text.insert(0, " ");
      }
    }
    if (pattern_ != nullptr) {
      SplitPieces(*pattern_, SplitBehavior::kIsolated, /*invert=*/false,
                  pieces);
    }
    for (PreToken& piece : *pieces) {
      std::string spelled;
      byte_level::Encode(piece.text, &spelled);
      piece.text = std::move(spelled);
    }
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<SplitPattern> pattern_;  // null when use_regex is false
};

// Replaces spaces by a visible character, optionally puts one in front, and
// optionally splits before each of them.
class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, std::string scheme,
                        std::unique_ptr<SplitPattern> split)
      : replacement_(std::move(replacement)),
        scheme_(std::move(scheme)),
        split_(std::move(split)) {}
  void PreTokenize(std::vector<PreToken>* pieces) const override {
    for (PreToken& piece : *pieces) {
      absl::StrReplaceAll({{" ", replacement_}}, &piece.text);
      const bool prepend =
          scheme_ == "always" || (scheme_ == "first" && piece.at_start);
      if (prepend &&
          piece.text.compare(0, replacement_.size(), replacement_) != 0) {
        piece.text.insert(0, replacement_);
      }
    }
    if (split_ != nullptr) {
      SplitPieces(*split_, SplitBehavior::kMergedWithNext, /*invert=*/false,
                  pieces);
    }
  }

 private:
  std::string replacement_;
  std::string scheme_;                   // "always", "first" or "never"
  std::unique_ptr<SplitPattern> split_;  // null when split is false
};

absl::StatusOr<std::unique_ptr<PreTokenizer>> MakePattern(
    std::string_view regex, SplitBehavior behavior, bool invert,
    const JsonPath& at) {
  auto pattern = SplitPattern::FromRegex(regex);
  if (!pattern.ok()) return at.Invalid(AsStd(pattern.status().message()));
  return std::make_unique<PatternPreTokenizer>(std::move(*pattern), behavior,
                                               invert);
}

}  // namespace

absl::StatusOr<std::string> ParsePrependScheme(const json& config,
                                               const JsonPath& at) {
  if (JsonMember(config, "prepend_scheme") != nullptr) {
    ASSIGN_OR_RETURN(std::string scheme,
                     JsonString(config, "prepend_scheme", at));
    if (scheme != "always" && scheme != "first" && scheme != "never") {
      return at.Child("prepend_scheme")
          .Invalid(absl::StrCat("unknown scheme '", scheme,
                                "' (expected always, first or never)"));
    }
    return scheme;
  }
  ASSIGN_OR_RETURN(const bool add_prefix_space,
                   JsonBoolOr(config, "add_prefix_space", at, true));
  return std::string(add_prefix_space ? "always" : "never");
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(
    const json& config, const JsonPath& at) {
  if (config.is_null()) return nullptr;
  ASSIGN_OR_RETURN(const std::string type, JsonType(config, at));
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const json* list, JsonArray(config, "pretokenizers", at));
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(
          auto step,
          ParsePreTokenizer((*list)[i], at.Child("pretokenizers").Index(i)));
      if (step != nullptr) steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "ByteLevel") {
    ASSIGN_OR_RETURN(const bool add_prefix_space,
                     JsonBoolOr(config, "add_prefix_space", at, true));
    ASSIGN_OR_RETURN(const bool use_regex,
                     JsonBoolOr(config, "use_regex", at, true));
    std::unique_ptr<SplitPattern> pattern;
    if (use_regex) {
      auto compiled = SplitPattern::FromRegex(kGpt2Pattern);
      if (!compiled.ok()) return compiled.status();
      pattern = std::move(*compiled);
    }
    return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space,
                                                   std::move(pattern));
  }
  if (type == "Split") {
    ASSIGN_OR_RETURN(auto pattern, ParsePatternField(config, at));
    ASSIGN_OR_RETURN(const std::string behavior_name,
                     JsonString(config, "behavior", at));
    auto behavior = ParseSplitBehavior(behavior_name);
    if (!behavior.ok()) {
      return at.Child("behavior").Invalid(AsStd(behavior.status().message()));
    }
    ASSIGN_OR_RETURN(const bool invert,
                     JsonBoolOr(config, "invert", at, false));
    return std::make_unique<PatternPreTokenizer>(std::move(pattern), *behavior,
                                                 invert);
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(std::string replacement,
                     JsonString(config, "replacement", at));
    if (replacement.empty()) {
      return at.Child("replacement").Invalid("must not be empty");
    }
    ASSIGN_OR_RETURN(std::string scheme, ParsePrependScheme(config, at));
    ASSIGN_OR_RETURN(const bool split, JsonBoolOr(config, "split", at, true));
    std::unique_ptr<SplitPattern> split_pattern;
    if (split) {
      auto compiled = SplitPattern::FromLiteral(replacement);
      if (!compiled.ok()) return compiled.status();
      split_pattern = std::move(*compiled);
    }
    return std::make_unique<MetaspacePreTokenizer>(
        std::move(replacement), std::move(scheme), std::move(split_pattern));
  }
  if (type == "Whitespace") {
    // Keeps runs of word characters and runs of other non-space characters.
    return MakePattern("\\w+|[^\\w\\s]+", SplitBehavior::kRemoved,
                       /*invert=*/true, at);
  }
  if (type == "WhitespaceSplit") {
    return MakePattern("\\s+", SplitBehavior::kRemoved, /*invert=*/false, at);
  }
  if (type == "Digits") {
    ASSIGN_OR_RETURN(const bool individual,
                     JsonBoolOr(config, "individual_digits", at, false));
    return MakePattern(
        "\\p{N}",
        individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
        /*invert=*/false, at);
  }
  if (type == "Punctuation") {
    ASSIGN_OR_RETURN(const std::string behavior_name,
                     JsonStringOr(config, "behavior", at, "Isolated"));
    auto behavior = ParseSplitBehavior(behavior_name);
    if (!behavior.ok()) {
      return at.Child("behavior").Invalid(AsStd(behavior.status().message()));
    }
    // Unicode punctuation plus the ASCII symbols counted as punctuation.
    return MakePattern("[\\p{P}!-/:-@\\[-`{-~]", *behavior, /*invert=*/false,
                       at);
  }
  return at.Child("type").Unsupported(
      absl::StrCat("unknown or unsupported pre-tokenizer type '", type, "'"));
}

}  // namespace optrec
