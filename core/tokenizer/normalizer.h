// The "normalizer" step of a tokenizer.json pipeline.
#ifndef OPTREC_CORE_TOKENIZER_NORMALIZER_H_
#define OPTREC_CORE_TOKENIZER_NORMALIZER_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tokenizer/json_util.h"
#include "nlohmann/json.hpp"

namespace optrec {

// Rewrites text before pre-tokenization. Immutable; thread-safe.
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites `*text` (valid UTF-8) in place; the result is valid UTF-8.
  virtual absl::Status Normalize(std::string* text) const = 0;
};

// Builds the normalizer that `config` (found at `at`) describes; nullptr for
// JSON null. Supported types: Sequence, Prepend, Replace (String or Regex
// pattern), Strip, and, when optrec is built with ICU (OPTREC_HAVE_ICU),
// NFC, NFD, NFKC, NFKD and Lowercase. Other types, and the Unicode ones
// without ICU, are Unimplemented naming the type and field; malformed
// members are InvalidArgument naming the field.
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(
    const nlohmann::json& config, const JsonPath& at);

}  // namespace optrec

#endif  // OPTREC_CORE_TOKENIZER_NORMALIZER_H_
