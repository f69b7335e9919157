// Content hashes that name data in metadata and caches: XXH3-128 (xxHash's
// 128-bit XXH3 variant, from libxxhash) written as 32 lowercase hex digits,
// high 64 bits first.
#ifndef OPTREC_CORE_UTIL_HASH_H_
#define OPTREC_CORE_UTIL_HASH_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace optrec {

// The hash of `bytes`.
std::string Xxh3Hex128(std::string_view bytes);

// The hash of a whole file's bytes, read in blocks (files of any size).
// NotFound naming the path when it cannot be opened; Internal on a read
// error.
absl::StatusOr<std::string> FileXxh3Hex128(const std::string& path);

}  // namespace optrec

#endif  // OPTREC_CORE_UTIL_HASH_H_
