// The name of one segment's cached hidden states: which model computed them,
// through how many lower layers, and over which token ids.
#ifndef OPTREC_CACHE_SEGMENT_KEY_H_
#define OPTREC_CACHE_SEGMENT_KEY_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace optrec {

// Identifies the states [N, D] that the lower `lower_layers` layers of the
// model `model_fingerprint` produce for one segment run alone. Two keys are
// equal exactly when all three fields are; states are reused only under an
// equal key. A plain value: copy it freely.
struct SegmentKey {
  std::string model_fingerprint;
  int64_t lower_layers = 0;
  // XXH3-128 of the segment's token ids (each an int32, little-endian), as
  // 32 lowercase hex digits (core/util/hash.h). Hashing ids rather than
  // text makes the key change when the tokenizer does.
  std::string content_hash;

  // The key of the segment tokenized as `ids` (empty ids are a valid,
  // empty segment).
  static SegmentKey Make(std::string model_fingerprint, int64_t lower_layers,
                         const std::vector<int32_t>& ids);

  // "<fingerprint>/L<lower_layers>/<content_hash>", for messages.
  std::string ToString() const;

  friend bool operator==(const SegmentKey& a, const SegmentKey& b) {
    return a.lower_layers == b.lower_layers &&
           a.content_hash == b.content_hash &&
           a.model_fingerprint == b.model_fingerprint;
  }
  friend bool operator!=(const SegmentKey& a, const SegmentKey& b) {
    return !(a == b);
  }
  template <typename H>
  friend H AbslHashValue(H h, const SegmentKey& key) {
    return H::combine(std::move(h), key.model_fingerprint, key.lower_layers,
                      key.content_hash);
  }
};

}  // namespace optrec

#endif  // OPTREC_CACHE_SEGMENT_KEY_H_
