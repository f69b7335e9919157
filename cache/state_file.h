// Saving cached segment states to a file and loading them back, so a
// restarted server starts warm.
//
// File layout (integers little-endian, E entries, D hidden width):
//   "OPTRSEG1"        8 bytes
//   header length     u64
//   header            JSON: format_version (1), model_fingerprint,
//                     lower_layers, storage_dtype ("bfloat16", "float16" or
//                     "float32"), hidden_width (D), entries (E)
//   header checksum   u64, XXH3-64 of the header's bytes
//   E entries, each:
//     content hash    32 bytes, lowercase hex (SegmentKey::content_hash)
//     N, D            i64 each
//     states          N * D elements of storage_dtype, row-major
//     checksum        u64, XXH3-64 of the entry's bytes above
//   and nothing after the last entry.
#ifndef OPTREC_CACHE_STATE_FILE_H_
#define OPTREC_CACHE_STATE_FILE_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cache/segment_key.h"
#include "cache/state_cache.h"

namespace optrec {

// Writes `entries` (their states [N, D], e.g. ShardedLruCache::Snapshot())
// to `path`, replacing it atomically (core/util/files.h): on failure the old
// file, if any, is left as it was. Every key must be of `model_fingerprint`
// and `lower_layers`, and every tensor 2-D with the same width D > 0 and the
// same dtype (bfloat16, float16 or float32, written as it is); otherwise
// InvalidArgument naming the entry index. An empty `entries` writes a valid
// file with no entries. Builds the whole file in memory first. File system
// errors name the path (PermissionDenied, NotFound for a missing folder,
// Internal).
absl::Status SaveStates(
    const std::string& path, const std::string& model_fingerprint,
    int64_t lower_layers,
    const std::vector<std::pair<SegmentKey, torch::Tensor>>& entries);

// What LoadStates read.
struct LoadedStates {
  int64_t entries = 0;   // entries in the file
  int64_t inserted = 0;  // of them, those the cache accepted (Insert true)
};

// Reads the file SaveStates wrote at `path` and inserts its entries into
// `into`, in file order, under keys of `expected_fingerprint` and
// `expected_lower_layers`. The whole file is read and checked before
// anything is inserted, so on any error `into` is unchanged:
//   NotFound          no file at `path`;
//   FailedPrecondition  a file of another model fingerprint or lower-layer
//                     count (naming the file's and the expected values), or
//                     of a format version other than 1;
//   DataLoss          a corrupt or truncated file, naming the path and the
//                     header or the index of the first bad entry;
//   InvalidArgument   `into` is null.
// Entries the cache rejects (too large for it) are skipped, not errors; a
// smaller cache keeps the entries inserted last.
absl::StatusOr<LoadedStates> LoadStates(const std::string& path,
                                        const std::string& expected_fingerprint,
                                        int64_t expected_lower_layers,
                                        SegmentStateCache* into);

}  // namespace optrec

#endif  // OPTREC_CACHE_STATE_FILE_H_
