#include "core/tokenizer/decoder.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/tokenizer/byte_level.h"
#include "core/tokenizer/pretokenizer.h"
#include "core/tokenizer/regex_split.h"
#include "core/tokenizer/utf8.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

using nlohmann::json;

// Parses a byte-fallback token "<0xXX>" (two upper- or lowercase hex digits).
bool ParseByteToken(const std::string& token, char* byte) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') {
    return false;
  }
  int value = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = token[i];
    int digit = 0;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else {
      return false;
    }
    value = value * 16 + digit;
  }
  *byte = static_cast<char>(value);
  return true;
}

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  void DecodeChain(std::vector<std::string>* tokens,
                   const DecodeMode& mode) const override {
    for (const auto& step : steps_) step->DecodeChain(tokens, mode);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

// Maps byte-level characters back to bytes and joins everything into one
// string. A token with a character outside the alphabet (an added token
// such as "<|im start|>" with a real space) keeps its own bytes.
class ByteLevelDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens,
                   const DecodeMode& mode) const override {
    std::string bytes;
    for (const std::string& token : *tokens) {
      if (!byte_level::Decode(token, &bytes)) bytes.append(token);
    }
    tokens->assign(1,
                   mode.raw_bytes ? std::move(bytes) : utf8::MakeValid(bytes));
  }
};

// Replaces the replacement character with a space, dropping it from the
// first token of a sequence when the encoder prepends one.
class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  void DecodeChain(std::vector<std::string>* tokens,
                   const DecodeMode& mode) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      const bool drop = i == 0 && strip_first_ && mode.sequence_start;
      absl::StrReplaceAll({{replacement_, drop ? "" : " "}}, &(*tokens)[i]);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

// Replaces each match of a pattern in every token.
class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(std::unique_ptr<SplitPattern> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void DecodeChain(std::vector<std::string>* tokens,
                   const DecodeMode& mode) const override {
    for (std::string& token : *tokens) {
      const std::vector<ByteRange> matches = pattern_->FindAll(token);
      if (matches.empty()) continue;
      std::string out;
      size_t pos = 0;
      for (const ByteRange& match : matches) {
        out.append(token, pos, match.first - pos);
        out.append(content_);
        pos = match.second;
      }
      out.append(token, pos, std::string::npos);
      token = std::move(out);
    }
  }

 private:
  std::unique_ptr<SplitPattern> pattern_;
  std::string content_;
};

// Turns runs of <0xXX> tokens into the text their bytes spell; a run that is
// not valid UTF-8 becomes one U+FFFD per byte (unless raw bytes are asked).
class ByteFallbackDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens,
                   const DecodeMode& mode) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string run;
    size_t run_tokens = 0;
    const auto flush = [&]() {
      if (run_tokens == 0) return;
      if (mode.raw_bytes || utf8::FirstInvalidOffset(run) == run.size()) {
        out.push_back(std::move(run));
      } else {
        for (size_t i = 0; i < run_tokens; ++i) {
          out.emplace_back(utf8::kReplacementChar);
        }
      }
      run.clear();
      run_tokens = 0;
    };
    for (std::string& token : *tokens) {
      char byte = 0;
      if (ParseByteToken(token, &byte)) {
        run.push_back(byte);
        ++run_tokens;
        continue;
      }
      flush();
      out.push_back(std::move(token));
    }
    flush();
    *tokens = std::move(out);
  }
};

// Joins all tokens into one.
class FuseDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens,
                   const DecodeMode& mode) const override {
    std::string joined = absl::StrJoin(*tokens, "");
    tokens->assign(1, std::move(joined));
  }
};

// Removes up to `start` leading and `stop` trailing copies of a character
// from each token. In the middle of a sequence it does nothing: its use is
// removing the space the encoder put in front of the text.
class StripDecoder : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void DecodeChain(std::vector<std::string>* tokens,
                   const DecodeMode& mode) const override {
    if (!mode.sequence_start) return;
    for (std::string& token : *tokens) {
      size_t begin = 0;
      for (size_t i = 0;
           i < start_ && token.compare(begin, content_.size(), content_) == 0;
           ++i) {
        begin += content_.size();
      }
      size_t end = token.size();
      for (size_t i = 0;
           i < stop_ && end >= begin + content_.size() &&
           token.compare(end - content_.size(), content_.size(), content_) == 0;
           ++i) {
        end -= content_.size();
      }
      token = token.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;
  size_t start_;
  size_t stop_;
};

// WordPiece: continuation pieces lose their prefix, others get a space.
class WordPieceDecoder : public Decoder {
 public:
  WordPieceDecoder(std::string prefix, bool cleanup)
      : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  void DecodeChain(std::vector<std::string>* tokens,
                   const DecodeMode& mode) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& token = (*tokens)[i];
      if (i > 0 || !mode.sequence_start) {
        if (token.compare(0, prefix_.size(), prefix_) == 0) {
          token.erase(0, prefix_.size());
        } else {
          token.insert(0, " ");
        }
      }
      if (cleanup_) {
        absl::StrReplaceAll({{" .", "."},
                             {" ?", "?"},
                             {" !", "!"},
                             {" ,", ","},
                             {" ' ", "'"},
                             {" n't", "n't"},
                             {" 'm", "'m"},
                             {" do not", " don't"},
                             {" 's", "'s"},
                             {" 've", "'ve"},
                             {" 're", "'re"}},
                            &token);
      }
    }
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

// BPE with an end-of-word suffix: the suffix becomes a space (nothing on the
// last token).
class BpeSuffixDecoder : public Decoder {
 public:
  explicit BpeSuffixDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void DecodeChain(std::vector<std::string>* tokens,
                   const DecodeMode& mode) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      const bool last = i + 1 == tokens->size();
      absl::StrReplaceAll({{suffix_, last ? "" : " "}}, &(*tokens)[i]);
    }
  }

 private:
  std::string suffix_;
};

absl::StatusOr<size_t> NonNegative(const json& config, std::string_view key,
                                   const JsonPath& at) {
  ASSIGN_OR_RETURN(const int64_t value, JsonInt(config, key, at));
  if (value < 0) return at.Child(key).Invalid("must not be negative");
  return static_cast<size_t>(value);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const json& config,
                                                      const JsonPath& at) {
  if (config.is_null()) return nullptr;
  ASSIGN_OR_RETURN(const std::string type, JsonType(config, at));
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const json* list, JsonArray(config, "decoders", at));
    std::vector<std::unique_ptr<Decoder>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(auto step,
                       ParseDecoder((*list)[i], at.Child("decoders").Index(i)));
      if (step != nullptr) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(std::string replacement,
                     JsonString(config, "replacement", at));
    if (replacement.empty()) {
      return at.Child("replacement").Invalid("must not be empty");
    }
    ASSIGN_OR_RETURN(const std::string scheme, ParsePrependScheme(config, at));
    return std::make_unique<MetaspaceDecoder>(std::move(replacement),
                                              scheme != "never");
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(auto pattern, ParsePatternField(config, at));
    ASSIGN_OR_RETURN(std::string content, JsonString(config, "content", at));
    return std::make_unique<ReplaceDecoder>(std::move(pattern),
                                            std::move(content));
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    ASSIGN_OR_RETURN(std::string content, JsonString(config, "content", at));
    if (content.empty()) return at.Child("content").Invalid("is empty");
    ASSIGN_OR_RETURN(const size_t start, NonNegative(config, "start", at));
    ASSIGN_OR_RETURN(const size_t stop, NonNegative(config, "stop", at));
    return std::make_unique<StripDecoder>(std::move(content), start, stop);
  }
  if (type == "WordPiece") {
    ASSIGN_OR_RETURN(std::string prefix,
                     JsonStringOr(config, "prefix", at, "##"));
    ASSIGN_OR_RETURN(const bool cleanup,
                     JsonBoolOr(config, "cleanup", at, true));
    return std::make_unique<WordPieceDecoder>(std::move(prefix), cleanup);
  }
  if (type == "BPEDecoder") {
    ASSIGN_OR_RETURN(std::string suffix,
                     JsonStringOr(config, "suffix", at, "</w>"));
    return std::make_unique<BpeSuffixDecoder>(std::move(suffix));
  }
  return at.Child("type").Unsupported(
      absl::StrCat("unknown or unsupported decoder type '", type, "'"));
}

}  // namespace optrec
