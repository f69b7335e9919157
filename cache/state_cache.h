// The interface of a segment-state cache: the hidden states [N, D] of text
// segments after the lower layers of the frozen LM, reused across requests
// and tasks. Backends implement it (sharded_lru_cache.h is the in-memory
// one); callers depend only on this interface.
//
// Shapes: N tokens of one segment, D model width.
#ifndef OPTREC_CACHE_STATE_CACHE_H_
#define OPTREC_CACHE_STATE_CACHE_H_

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "cache/segment_key.h"

namespace optrec {

// Counters of a cache since it was made; a snapshot, not live values.
struct CacheStats {
  int64_t hits = 0;            // keys found (Lookup and GetOrEncode)
  int64_t misses = 0;          // keys not found (Lookup and GetOrEncode)
  int64_t evictions = 0;       // entries dropped to make room
  int64_t inserts = 0;         // entries stored (Insert and encoded misses)
  int64_t rejected = 0;        // entries not stored: larger than their budget
  int64_t entries = 0;         // entries held now
  int64_t bytes = 0;           // bytes charged for the entries held now
  int64_t capacity_bytes = 0;  // the bound on `bytes`
  // Misses that joined another thread's encode of the same key instead of
  // encoding it again (counted in `misses` too).
  int64_t encodes_waited = 0;
};

// Computes the states of the keys at `missing_indices` (indices into the
// `keys` given to GetOrEncode, ascending, each key once). On success returns
// exactly one tensor [N, D] per index, in the same order. May be called on
// any thread that calls GetOrEncode; must not call GetOrEncode for the same
// keys (it would wait on itself).
using EncodeFn = std::function<absl::StatusOr<std::vector<torch::Tensor>>(
    const std::vector<size_t>& missing_indices)>;

// Thread-safe: every method may be called from any thread.
class SegmentStateCache {
 public:
  virtual ~SegmentStateCache() = default;

  // The cached states of `key` as a new CPU tensor [N, D] in the compute
  // dtype the cache was made with (the caller owns it), or an undefined
  // tensor on a miss. Counts a hit or a miss.
  virtual torch::Tensor Lookup(const SegmentKey& key) = 0;

  // Stores a copy of `states` [N, D] (any device, any floating dtype;
  // converted to the storage dtype) under `key`, replacing what was there
  // and evicting other entries as needed. Returns false, and stores
  // nothing, when `states` is undefined, not 2-D or not floating point, or
  // when the entry alone is larger than the budget it may use (counted as
  // rejected; nothing is evicted for it). Never fails otherwise.
  virtual bool Insert(const SegmentKey& key, const torch::Tensor& states) = 0;

  // The states of every key, in the order of `keys` (each a new CPU tensor
  // [N, D] in the compute dtype; a key may appear more than once). Hits come
  // from the cache. The other keys, less those another call is encoding,
  // are computed by one call of `encode` (not made when there are none; an
  // empty `encode` is then allowed, else InvalidArgument), stored (unless
  // too large, as in Insert) and returned as the cache will return them
  // later (after the storage dtype's rounding), so a result does not depend
  // on whether it was a hit.
  //
  // Single flight: a missing key that another thread is already encoding is
  // not encoded again; this call blocks until that thread's encode ends and
  // takes its result. One encode call succeeds or fails for all its keys:
  // when it returns an error (or throws: Internal), or returns the wrong
  // number of tensors or a tensor that is not 2-D floating point
  // (InvalidArgument naming the key), none of its keys is stored, this call
  // and every call waiting on those keys get that error, and a later call
  // encodes them again. Blocks for the encode calls it makes or waits on.
  virtual absl::StatusOr<std::vector<torch::Tensor>> GetOrEncode(
      const std::vector<SegmentKey>& keys, const EncodeFn& encode) = 0;

  virtual CacheStats stats() const = 0;
};

}  // namespace optrec

#endif  // OPTREC_CACHE_STATE_CACHE_H_
