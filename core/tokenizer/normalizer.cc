#include "core/tokenizer/normalizer.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "core/tokenizer/regex_split.h"
#include "core/tokenizer/utf8.h"
#include "core/util/status_macros.h"
#include "re2/re2.h"

#ifdef OPTREC_HAVE_ICU
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>
#endif

namespace optrec {
namespace {

using nlohmann::json;

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  absl::Status Normalize(std::string* text) const override {
    for (const auto& step : steps_) RETURN_IF_ERROR(step->Normalize(text));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

// Prepends a fixed string to non-empty text.
class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  absl::Status Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prefix_);
    return absl::OkStatus();
  }

 private:
  std::string prefix_;
};

// Replaces every occurrence of a literal string.
class ReplaceStringNormalizer : public Normalizer {
 public:
  ReplaceStringNormalizer(std::string from, std::string to)
      : from_(std::move(from)), to_(std::move(to)) {}
  absl::Status Normalize(std::string* text) const override {
    absl::StrReplaceAll({{from_, to_}}, text);
    return absl::OkStatus();
  }

 private:
  std::string from_;
  std::string to_;
};

// Replaces every match of a regular expression with a literal string.
class ReplaceRegexNormalizer : public Normalizer {
 public:
  ReplaceRegexNormalizer(std::unique_ptr<SplitPattern> pattern, std::string to)
      : pattern_(std::move(pattern)), to_(std::move(to)) {}
  absl::Status Normalize(std::string* text) const override {
    const std::vector<ByteRange> matches = pattern_->FindAll(*text);
    if (matches.empty()) return absl::OkStatus();
    std::string out;
    size_t pos = 0;
    for (const ByteRange& match : matches) {
      out.append(*text, pos, match.first - pos);
      out.append(to_);
      pos = match.second;
    }
    out.append(*text, pos, std::string::npos);
    *text = std::move(out);
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<SplitPattern> pattern_;
  std::string to_;
};

// Removes whitespace from either end.
class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  absl::Status Normalize(std::string* text) const override {
    size_t begin = 0;
    size_t end = text->size();
    size_t length = 0;
    if (left_) {
      while (begin < end &&
             utf8::IsWhiteSpace(utf8::DecodeChar(*text, begin, &length))) {
        begin += length;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t prev = end - 1;
        while (prev > begin &&
               (static_cast<unsigned char>((*text)[prev]) & 0xC0) == 0x80) {
          --prev;
        }
        if (!utf8::IsWhiteSpace(utf8::DecodeChar(*text, prev, &length))) {
          break;
        }
        end = prev;
      }
    }
    *text = text->substr(begin, end - begin);
    return absl::OkStatus();
  }

 private:
  bool left_;
  bool right_;
};

#ifdef OPTREC_HAVE_ICU
// Unicode normalization forms and full lowercasing, by ICU.
class IcuNormalizer : public Normalizer {
 public:
  // `form` is null for Lowercase.
  IcuNormalizer(std::string name, const icu::Normalizer2* form)
      : name_(std::move(name)), form_(form) {}
  absl::Status Normalize(std::string* text) const override {
    icu::UnicodeString input = icu::UnicodeString::fromUTF8(*text);
    icu::UnicodeString output;
    if (form_ == nullptr) {
      output = input.toLower(icu::Locale::getRoot());
    } else {
      UErrorCode error = U_ZERO_ERROR;
      output = form_->normalize(input, error);
      if (U_FAILURE(error)) {
        return absl::InternalError(
            absl::StrCat(name_, " normalization failed: ", u_errorName(error)));
      }
    }
    text->clear();
    output.toUTF8String(*text);
    return absl::OkStatus();
  }

 private:
  std::string name_;
  const icu::Normalizer2* form_;  // owned by ICU
};
#endif  // OPTREC_HAVE_ICU

absl::StatusOr<std::unique_ptr<Normalizer>> MakeUnicodeNormalizer(
    const std::string& type, const JsonPath& at) {
#ifdef OPTREC_HAVE_ICU
  if (type == "Lowercase") {
    return std::make_unique<IcuNormalizer>(type, nullptr);
  }
  UErrorCode error = U_ZERO_ERROR;
  const icu::Normalizer2* form = nullptr;
  if (type == "NFC") form = icu::Normalizer2::getNFCInstance(error);
  if (type == "NFD") form = icu::Normalizer2::getNFDInstance(error);
  if (type == "NFKC") form = icu::Normalizer2::getNFKCInstance(error);
  if (type == "NFKD") form = icu::Normalizer2::getNFKDInstance(error);
  if (U_FAILURE(error) || form == nullptr) {
    return at.Unsupported(
        absl::StrCat("normalizer '", type, "': ICU has no instance"));
  }
  return std::make_unique<IcuNormalizer>(type, form);
#else
  // Unicode normalization needs the composition tables of a Unicode library;
  // this build has none linked (ICU is used when OPTREC_HAVE_ICU is defined).
  // Skipping the step would silently change token ids, so refuse the file.
  return at.Unsupported(absl::StrCat(
      "normalizer '", type,
      "' needs Unicode normalization, which this build lacks (built "
      "without ICU)"));
#endif
}

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(
    const json& config, const JsonPath& at) {
  if (config.is_null()) return nullptr;
  ASSIGN_OR_RETURN(const std::string type, JsonType(config, at));
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const json* list, JsonArray(config, "normalizers", at));
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(
          auto step,
          ParseNormalizer((*list)[i], at.Child("normalizers").Index(i)));
      if (step != nullptr) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (type == "Prepend") {
    ASSIGN_OR_RETURN(std::string prefix, JsonString(config, "prepend", at));
    return std::make_unique<PrependNormalizer>(std::move(prefix));
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(std::string content, JsonString(config, "content", at));
    const json* pattern = JsonMember(config, "pattern");
    if (pattern != nullptr && pattern->is_object() &&
        JsonMember(*pattern, "String") != nullptr &&
        (*pattern)["String"].is_string()) {
      std::string from = (*pattern)["String"].get<std::string>();
      if (from.empty()) {
        return at.Child("pattern").Child("String").Invalid("is empty");
      }
      return std::make_unique<ReplaceStringNormalizer>(std::move(from),
                                                       std::move(content));
    }
    ASSIGN_OR_RETURN(auto regex, ParsePatternField(config, at));
    return std::make_unique<ReplaceRegexNormalizer>(std::move(regex),
                                                    std::move(content));
  }
  if (type == "Strip") {
    ASSIGN_OR_RETURN(const bool left,
                     JsonBoolOr(config, "strip_left", at, true));
    ASSIGN_OR_RETURN(const bool right,
                     JsonBoolOr(config, "strip_right", at, true));
    return std::make_unique<StripNormalizer>(left, right);
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD" ||
      type == "Lowercase") {
    return MakeUnicodeNormalizer(type, at);
  }
  return at.Child("type").Unsupported(
      absl::StrCat("unknown or unsupported normalizer type '", type, "'"));
}

}  // namespace optrec
