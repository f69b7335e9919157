// The "decoder" step of a tokenizer.json pipeline: turning token strings back
// into text.
#ifndef OPTREC_CORE_TOKENIZER_DECODER_H_
#define OPTREC_CORE_TOKENIZER_DECODER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tokenizer/json_util.h"
#include "nlohmann/json.hpp"

namespace optrec {

// How a decoder chain runs.
struct DecodeMode {
  // The tokens begin the decoded sequence, so steps that remove the space
  // the encoder put in front of the text (Metaspace, Strip) apply. False
  // when decoding one token as it reads in the middle of a sequence.
  bool sequence_start = true;
  // Byte tokens (byte-level characters, <0xXX> fallback tokens) become raw
  // bytes, which may be an incomplete UTF-8 sequence. When false, bytes that
  // do not form valid UTF-8 become U+FFFD, as the reference library does.
  bool raw_bytes = false;
};

// Rewrites a list of token strings. Immutable; thread-safe.
class Decoder {
 public:
  virtual ~Decoder() = default;
  // Rewrites `*tokens` in place (steps may merge tokens); the decoded text is
  // the concatenation of the result.
  virtual void DecodeChain(std::vector<std::string>* tokens,
                           const DecodeMode& mode) const = 0;
};

// Builds the decoder that `config` (found at `at`) describes; nullptr for
// JSON null. Supported types: Sequence, ByteLevel, Metaspace, Replace,
// ByteFallback, Fuse, Strip, WordPiece, BPEDecoder. Other types are
// Unimplemented naming the type; malformed members are InvalidArgument
// naming the field.
absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(
    const nlohmann::json& config, const JsonPath& at);

}  // namespace optrec

#endif  // OPTREC_CORE_TOKENIZER_DECODER_H_
