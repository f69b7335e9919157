// The in-memory segment-state cache: a byte-bounded LRU split into shards,
// each with its own lock, so concurrent requests rarely contend. Also the
// round-trip error of the compact storage dtypes.
//
// Shapes: N tokens of one segment, D model width.
#ifndef OPTREC_CACHE_SHARDED_LRU_CACHE_H_
#define OPTREC_CACHE_SHARDED_LRU_CACHE_H_

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "cache/segment_key.h"
#include "cache/state_cache.h"

namespace optrec {

// Max |x - y| / max |x| over the elements of `states`, where y is `states`
// converted to `storage` and back: the relative error a cache storing in
// `storage` adds. 0 for an empty or all-zero tensor. For values in the
// normal range the bound is 2^-8 for bfloat16 (8 significant bits, round to
// nearest even), 2^-11 for float16 and 0 for float32.
double MaxRoundTripError(const torch::Tensor& states,
                         torch::ScalarType storage);

// A SegmentStateCache in process memory. Keys go to shards by hash; each
// shard holds at most capacity_bytes / num_shards bytes (EntryBytes) and
// evicts its least recently used entries (Lookup, GetOrEncode hits and
// stores count as use) until a new entry fits, so the whole cache never
// holds more than capacity_bytes. Entries are held as contiguous CPU copies
// in the storage dtype. Thread-safe.
class ShardedLruCache : public SegmentStateCache {
 public:
  struct Options {
    // Bound on the bytes charged for all entries together (EntryBytes);
    // must be at least num_shards.
    int64_t capacity_bytes = int64_t{1} << 30;
    // Independent LRU shards, each with its own lock and an equal share of
    // capacity_bytes; 1 to 4096. One shard gives a strict global LRU order.
    int num_shards = 16;
    // How entries are held: kBFloat16 (default; half the memory of float32,
    // relative error up to 2^-8), kFloat16 (2^-11, but values beyond 65504
    // overflow) or kFloat32 (exact).
    torch::ScalarType storage_dtype = torch::kBFloat16;
    // The dtype of the tensors Lookup and GetOrEncode return; a floating
    // dtype.
    torch::ScalarType compute_dtype = torch::kFloat32;
  };

  // A fixed charge per entry, on top of its data and key strings, for its
  // bookkeeping (list node, map slot, tensor and storage objects). An
  // estimate of the allocator's real use, not a measurement.
  static constexpr int64_t kEntryOverheadBytes = 256;

  // What an entry of `key` with `numel` elements held as `storage` is
  // charged: numel * element size + 2 * (fingerprint and content hash
  // lengths: the key is held twice) + kEntryOverheadBytes.
  static int64_t EntryBytes(const SegmentKey& key, int64_t numel,
                            torch::ScalarType storage);

  // InvalidArgument naming the field and its value for bad options.
  static absl::StatusOr<std::unique_ptr<ShardedLruCache>> Create(
      const Options& options);

  ~ShardedLruCache() override;
  ShardedLruCache(const ShardedLruCache&) = delete;
  ShardedLruCache& operator=(const ShardedLruCache&) = delete;

  torch::Tensor Lookup(const SegmentKey& key) override;
  bool Insert(const SegmentKey& key, const torch::Tensor& states) override;
  absl::StatusOr<std::vector<torch::Tensor>> GetOrEncode(
      const std::vector<SegmentKey>& keys, const EncodeFn& encode) override;
  // Summed shard by shard: consistent within a shard, not across shards
  // while other threads write.
  CacheStats stats() const override;

  // Every entry held now, shard by shard, each shard from least to most
  // recently used (so inserting them in order into another cache keeps
  // their recency). The tensors [N, D] are the held ones, in the storage
  // dtype, shared with the cache: read them, never modify them in place.
  // Counts no hits and changes no recency. For saving (state_file.h).
  std::vector<std::pair<SegmentKey, torch::Tensor>> Snapshot() const;

  const Options& options() const { return options_; }

 private:
  struct Shard;   // defined in the .cc
  struct Flight;  // one in-flight encode of one key
  struct Lead;    // a key this call encodes

  explicit ShardedLruCache(const Options& options);

  Shard& ShardFor(const SegmentKey& key) const;
  // A contiguous CPU copy of `states` in the storage dtype.
  torch::Tensor ToStorage(const torch::Tensor& states) const;
  // A new tensor in the compute dtype.
  torch::Tensor ToCompute(const torch::Tensor& stored) const;
  // Runs `encode` for `leads`, stores the results (also into `stored_out`
  // at the leads' indices) and ends their flights. Never throws; on error
  // every lead's flight ends with that error.
  absl::Status EncodeAndPublish(const std::vector<SegmentKey>& keys,
                                const EncodeFn& encode,
                                std::vector<Lead>& leads,
                                std::vector<torch::Tensor>& stored_out);
  // Removes `lead` from its shard's in-flight keys (storing `stored` first
  // when defined, in the same critical section) and ends its flight.
  void Publish(const SegmentKey& key, Lead& lead, const absl::Status& status,
               const torch::Tensor& stored);

  const Options options_;
  const int64_t shard_budget_bytes_;  // capacity_bytes / num_shards
  std::unique_ptr<Shard[]> shards_;   // num_shards of them
};

}  // namespace optrec

#endif  // OPTREC_CACHE_SHARDED_LRU_CACHE_H_
