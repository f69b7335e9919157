#include "core/util/hash.h"

#include <xxhash.h>

#include <cstdio>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace optrec {
namespace {

std::string Hex(XXH128_hash_t h) {
  return absl::StrFormat("%016x%016x", h.high64, h.low64);
}

struct StateDeleter {
  void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
};
struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};

}  // namespace

std::string Xxh3Hex128(std::string_view bytes) {
  return Hex(XXH3_128bits(bytes.data(), bytes.size()));
}

absl::StatusOr<std::string> FileXxh3Hex128(const std::string& path) {
  std::unique_ptr<FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (file == nullptr) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path));
  }
  std::unique_ptr<XXH3_state_t, StateDeleter> state(XXH3_createState());
  XXH3_128bits_reset(state.get());
  std::vector<char> block(1 << 20);
  size_t n = 0;
  while ((n = std::fread(block.data(), 1, block.size(), file.get())) > 0) {
    XXH3_128bits_update(state.get(), block.data(), n);
  }
  if (std::ferror(file.get())) {
    return absl::InternalError(absl::StrCat("cannot read ", path));
  }
  return Hex(XXH3_128bits_digest(state.get()));
}

}  // namespace optrec
