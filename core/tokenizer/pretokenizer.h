// The "pre_tokenizer" step of a tokenizer.json pipeline: cutting normalized
// text into the words the model tokenizes one at a time.
#ifndef OPTREC_CORE_TOKENIZER_PRETOKENIZER_H_
#define OPTREC_CORE_TOKENIZER_PRETOKENIZER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tokenizer/json_util.h"
#include "nlohmann/json.hpp"

namespace optrec {

// One piece of text on its way to the model.
struct PreToken {
  std::string text;
  // True when the piece begins at the very start of the input text (not
  // after an added token); Metaspace's prepend_scheme "first" needs it.
  bool at_start = false;
};

// Cuts (and may rewrite) pieces. Immutable; thread-safe.
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `*pieces` by their subdivisions, in order. Never produces empty
  // pieces.
  virtual void PreTokenize(std::vector<PreToken>* pieces) const = 0;
};

// Builds the pre-tokenizer that `config` (found at `at`) describes; nullptr
// for JSON null. Supported types: Sequence, ByteLevel, Split, Metaspace,
// Whitespace, WhitespaceSplit, Digits, Punctuation. Other types are
// Unimplemented naming the type; malformed members (a regex that cannot be
// translated, an unknown behavior) are InvalidArgument naming the field.
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(
    const nlohmann::json& config, const JsonPath& at);

// Reads Metaspace's prepend scheme from `config`: "prepend_scheme" ("always",
// "first" or "never"), or else the older boolean "add_prefix_space" (true is
// "always", false "never"; absent is "always"). Shared with the Metaspace
// decoder. InvalidArgument naming the field for any other value.
absl::StatusOr<std::string> ParsePrependScheme(const nlohmann::json& config,
                                               const JsonPath& at);

}  // namespace optrec

#endif  // OPTREC_CORE_TOKENIZER_PRETOKENIZER_H_
