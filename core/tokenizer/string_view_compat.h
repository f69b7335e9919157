// Debian's Abseil is built with its own absl::string_view class rather than
// an alias of std::string_view, so the two do not convert implicitly. The
// tokenizer speaks std::string_view and converts at Abseil calls with these.
#ifndef OPTREC_CORE_TOKENIZER_STRING_VIEW_COMPAT_H_
#define OPTREC_CORE_TOKENIZER_STRING_VIEW_COMPAT_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace optrec {

inline absl::string_view AsAbsl(std::string_view text) {
  return absl::string_view(text.data(), text.size());
}

inline std::string_view AsStd(absl::string_view text) {
  return std::string_view(text.data(), text.size());
}

}  // namespace optrec

#endif  // OPTREC_CORE_TOKENIZER_STRING_VIEW_COMPAT_H_
