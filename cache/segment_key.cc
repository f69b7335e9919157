// SegmentKey: hashing token ids into a content hash.
#include "cache/segment_key.h"

#include "absl/strings/str_cat.h"
#include "core/util/hash.h"

namespace optrec {

SegmentKey SegmentKey::Make(std::string model_fingerprint, int64_t lower_layers,
                            const std::vector<int32_t>& ids) {
  // Each id as 4 little-endian bytes, whatever the host's byte order.
  std::string bytes(ids.size() * 4, '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint32_t id = static_cast<uint32_t>(ids[i]);
    for (int b = 0; b < 4; ++b) {
      bytes[4 * i + b] = static_cast<char>((id >> (8 * b)) & 0xff);
    }
  }
  SegmentKey key;
  key.model_fingerprint = std::move(model_fingerprint);
  key.lower_layers = lower_layers;
  key.content_hash = Xxh3Hex128(bytes);
  return key;
}

std::string SegmentKey::ToString() const {
  return absl::StrCat(model_fingerprint, "/L", lower_layers, "/", content_hash);
}

}  // namespace optrec
