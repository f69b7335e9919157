// ShardedLruCache: shards, byte-bounded LRU eviction and single-flight
// encoding of misses.
//
// Lock order: a shard's mutex and a flight's mutex are never held together,
// and a call that leads (encodes) keys ends all its flights before it waits
// on any other call's flight, so waits cannot form a cycle.
#include "cache/sharded_lru_cache.h"

#include <exception>
#include <functional>
#include <iterator>
#include <list>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "core/util/status_macros.h"
#include "core/util/torch_errors.h"

namespace optrec {
namespace {

constexpr int kMaxShards = 4096;

bool IsStorageDtype(torch::ScalarType dtype) {
  return dtype == torch::kBFloat16 || dtype == torch::kHalf ||
         dtype == torch::kFloat;
}

// InvalidArgument naming `key` when `states` cannot be held.
absl::Status CheckStates(const SegmentKey& key, const torch::Tensor& states) {
  if (!states.defined()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the states of ", key.ToString(), " are undefined"));
  }
  if (states.dim() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("the states of ", key.ToString(), " must be [N, D], got [",
                     absl::StrJoin(states.sizes(), ", "), "]"));
  }
  if (!states.is_floating_point()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the states of ", key.ToString(), " must be floating point, got ",
        c10::toString(states.scalar_type())));
  }
  return absl::OkStatus();
}

// What a shard has counted since the cache was made.
struct Counters {
  int64_t hits = 0;
  int64_t misses = 0;
  int64_t evictions = 0;
  int64_t inserts = 0;
  int64_t rejected = 0;
  int64_t encodes_waited = 0;
};

}  // namespace

// One key being encoded by one GetOrEncode call; other calls that miss the
// same key wait on it. Ends exactly once.
struct ShardedLruCache::Flight {
  absl::Mutex mu;  // guards the fields below
  bool done ABSL_GUARDED_BY(mu) = false;
  absl::Status status ABSL_GUARDED_BY(mu);
  torch::Tensor stored ABSL_GUARDED_BY(mu);  // [N, D] storage dtype, when ok
};

// A key the current call encodes: its first index in `keys` and its flight.
struct ShardedLruCache::Lead {
  size_t index = 0;
  std::shared_ptr<Flight> flight;
  bool ended = false;  // the flight has been ended
};

struct ShardedLruCache::Shard {
  struct Entry {
    SegmentKey key;
    torch::Tensor stored;  // [N, D] contiguous CPU, storage dtype; immutable
    int64_t bytes = 0;     // EntryBytes
  };
  using EntryList = std::list<Entry>;

  mutable absl::Mutex mu;             // guards every field below
  EntryList lru ABSL_GUARDED_BY(mu);  // front: most recently used
  absl::flat_hash_map<SegmentKey, EntryList::iterator> index
      ABSL_GUARDED_BY(mu);
  // Keys some GetOrEncode call is encoding now. (An Insert of such a key
  // meanwhile is allowed; the encoded states then replace it.)
  absl::flat_hash_map<SegmentKey, std::shared_ptr<Flight>> in_flight
      ABSL_GUARDED_BY(mu);
  int64_t bytes ABSL_GUARDED_BY(mu) = 0;  // sum of the entries' bytes
  Counters counters ABSL_GUARDED_BY(mu);

  // The held states of `key`, made the most recently used; undefined when
  // absent. Counts nothing.
  torch::Tensor Touch(const SegmentKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto found = index.find(key);
    if (found == index.end()) return torch::Tensor();
    lru.splice(lru.begin(), lru, found->second);
    return found->second->stored;
  }

  // Holds `stored` under `key` (replacing an entry of the key), evicting
  // from the cold end until `entry_bytes` fits in `budget_bytes`. False,
  // counted as rejected and with nothing changed, when it cannot fit.
  bool Store(const SegmentKey& key, torch::Tensor stored, int64_t entry_bytes,
             int64_t budget_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (entry_bytes > budget_bytes) {
      ++counters.rejected;
      return false;
    }
    auto found = index.find(key);
    if (found != index.end()) Erase(found->second);
    while (bytes + entry_bytes > budget_bytes) {
      Erase(std::prev(lru.end()));
      ++counters.evictions;
    }
    lru.push_front(Entry{key, std::move(stored), entry_bytes});
    index.insert_or_assign(key, lru.begin());
    bytes += entry_bytes;
    ++counters.inserts;
    return true;
  }

  void Erase(EntryList::iterator entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    bytes -= entry->bytes;
    index.erase(entry->key);
    lru.erase(entry);
  }
};

double MaxRoundTripError(const torch::Tensor& states,
                         torch::ScalarType storage) {
  if (!states.defined() || states.numel() == 0) return 0.0;
  const torch::Tensor cpu = states.detach().to(torch::kCPU);
  const torch::Tensor exact = cpu.to(torch::kDouble);
  const torch::Tensor round_trip = cpu.to(storage).to(torch::kDouble);
  const double max_abs = exact.abs().max().item<double>();
  if (max_abs == 0.0) return 0.0;
  return (exact - round_trip).abs().max().item<double>() / max_abs;
}

int64_t ShardedLruCache::EntryBytes(const SegmentKey& key, int64_t numel,
                                    torch::ScalarType storage) {
  const int64_t key_bytes = static_cast<int64_t>(key.model_fingerprint.size() +
                                                 key.content_hash.size());
  return numel * static_cast<int64_t>(c10::elementSize(storage)) +
         2 * key_bytes + kEntryOverheadBytes;
}

absl::StatusOr<std::unique_ptr<ShardedLruCache>> ShardedLruCache::Create(
    const Options& options) {
  if (options.num_shards < 1 || options.num_shards > kMaxShards) {
    return absl::InvalidArgumentError(absl::StrCat("num_shards must be in [1, ",
                                                   kMaxShards, "], got ",
                                                   options.num_shards));
  }
  if (options.capacity_bytes < options.num_shards) {
    return absl::InvalidArgumentError(
        absl::StrCat("capacity_bytes must be at least num_shards (",
                     options.num_shards, "), got ", options.capacity_bytes));
  }
  if (!IsStorageDtype(options.storage_dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("storage_dtype must be bfloat16, float16 or float32, got ",
                     c10::toString(options.storage_dtype)));
  }
  if (!c10::isFloatingType(options.compute_dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("compute_dtype must be a floating dtype, got ",
                     c10::toString(options.compute_dtype)));
  }
  return std::unique_ptr<ShardedLruCache>(new ShardedLruCache(options));
}

ShardedLruCache::ShardedLruCache(const Options& options)
    : options_(options),
      shard_budget_bytes_(options.capacity_bytes / options.num_shards),
      shards_(std::make_unique<Shard[]>(options.num_shards)) {}

ShardedLruCache::~ShardedLruCache() = default;

ShardedLruCache::Shard& ShardedLruCache::ShardFor(const SegmentKey& key) const {
  // A hash other than the shard maps' absl::Hash, so that keys sharing a
  // shard do not also share bits of their map hash.
  const size_t hash = std::hash<std::string>{}(key.content_hash);
  return shards_[hash % static_cast<size_t>(options_.num_shards)];
}

torch::Tensor ShardedLruCache::ToStorage(const torch::Tensor& states) const {
  const auto target =
      torch::TensorOptions().device(torch::kCPU).dtype(options_.storage_dtype);
  return states.detach().to(target, /*non_blocking=*/false, /*copy=*/true,
                            torch::MemoryFormat::Contiguous);
}

torch::Tensor ShardedLruCache::ToCompute(const torch::Tensor& stored) const {
  return stored.to(options_.compute_dtype, /*non_blocking=*/false,
                   /*copy=*/true);
}

torch::Tensor ShardedLruCache::Lookup(const SegmentKey& key) {
  Shard& shard = ShardFor(key);
  torch::Tensor stored;
  {
    absl::MutexLock lock(&shard.mu);
    stored = shard.Touch(key);
    if (stored.defined()) {
      ++shard.counters.hits;
    } else {
      ++shard.counters.misses;
    }
  }
  if (!stored.defined()) return torch::Tensor();
  return ToCompute(stored);
}

bool ShardedLruCache::Insert(const SegmentKey& key,
                             const torch::Tensor& states) {
  if (!CheckStates(key, states).ok()) return false;
  Shard& shard = ShardFor(key);
  const int64_t entry_bytes =
      EntryBytes(key, states.numel(), options_.storage_dtype);
  if (entry_bytes > shard_budget_bytes_) {  // spare the conversion
    absl::MutexLock lock(&shard.mu);
    ++shard.counters.rejected;
    return false;
  }
  torch::Tensor stored = ToStorage(states);
  absl::MutexLock lock(&shard.mu);
  return shard.Store(key, std::move(stored), entry_bytes, shard_budget_bytes_);
}

void ShardedLruCache::Publish(const SegmentKey& key, Lead& lead,
                              const absl::Status& status,
                              const torch::Tensor& stored) {
  Shard& shard = ShardFor(key);
  {
    // Stored and no longer in flight in one critical section, so a caller
    // that misses now sees one or the other and never encodes it again.
    absl::MutexLock lock(&shard.mu);
    if (status.ok()) {
      shard.Store(key, stored,
                  EntryBytes(key, stored.numel(), options_.storage_dtype),
                  shard_budget_bytes_);
    }
    shard.in_flight.erase(key);
  }
  lead.ended = true;
  absl::MutexLock lock(&lead.flight->mu);
  lead.flight->done = true;
  lead.flight->status = status;
  if (status.ok()) lead.flight->stored = stored;
}

absl::Status ShardedLruCache::EncodeAndPublish(
    const std::vector<SegmentKey>& keys, const EncodeFn& encode,
    std::vector<Lead>& leads, std::vector<torch::Tensor>& stored_out) {
  if (leads.empty()) return absl::OkStatus();
  absl::Status status;
  try {
    status = [&]() -> absl::Status {
      if (!encode) {
        return absl::InvalidArgumentError(
            absl::StrCat(leads.size(), " segments missed the cache, starting ",
                         "with ", keys[leads[0].index].ToString(),
                         ", and no encode function was given"));
      }
      std::vector<size_t> indices;
      indices.reserve(leads.size());
      for (const Lead& lead : leads) indices.push_back(lead.index);
      ASSIGN_OR_RETURN(std::vector<torch::Tensor> encoded, encode(indices));
      if (encoded.size() != leads.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("encode returned ", encoded.size(), " tensors for ",
                         leads.size(), " missing segments"));
      }
      // Everything is checked and converted before anything is published,
      // so the call fails or succeeds for all its keys.
      std::vector<torch::Tensor> stored(leads.size());
      for (size_t j = 0; j < leads.size(); ++j) {
        RETURN_IF_ERROR(CheckStates(keys[leads[j].index], encoded[j]));
        stored[j] = ToStorage(encoded[j]);
      }
      for (size_t j = 0; j < leads.size(); ++j) {
        stored_out[leads[j].index] = stored[j];
        Publish(keys[leads[j].index], leads[j], absl::OkStatus(), stored[j]);
      }
      return absl::OkStatus();
    }();
  } catch (const std::exception& e) {
    status = absl::InternalError(absl::StrCat(
        "encoding ", leads.size(), " segments threw: ", TorchErrorMessage(e)));
  } catch (...) {
    status = absl::InternalError(absl::StrCat(
        "encoding ", leads.size(), " segments threw a non-standard exception"));
  }
  if (!status.ok()) {
    for (Lead& lead : leads) {
      if (!lead.ended) Publish(keys[lead.index], lead, status, {});
    }
  }
  return status;
}

absl::StatusOr<std::vector<torch::Tensor>> ShardedLruCache::GetOrEncode(
    const std::vector<SegmentKey>& keys, const EncodeFn& encode) {
  const size_t n = keys.size();
  std::vector<torch::Tensor> stored(n);  // [N, D] storage dtype, by key
  std::vector<size_t> first_of(n);       // first index of the same key
  std::vector<Lead> leads;
  std::vector<std::pair<size_t, std::shared_ptr<Flight>>> waits;
  leads.reserve(n);
  waits.reserve(n);

  // Ends the flights this call leads if anything throws before they are
  // ended, so no waiter blocks forever.
  struct FlightCloser {
    ShardedLruCache* cache;
    const std::vector<SegmentKey>& keys;
    std::vector<Lead>& leads;
    ~FlightCloser() {
      const absl::Status abandoned = absl::InternalError(
          "the call encoding this segment ended by an exception");
      for (Lead& lead : leads) {
        if (!lead.ended) cache->Publish(keys[lead.index], lead, abandoned, {});
      }
    }
  } closer{this, keys, leads};

  // Sort the keys into hits, keys to encode here and keys to wait for.
  absl::flat_hash_map<SegmentKey, size_t> first_index;
  for (size_t i = 0; i < n; ++i) {
    const auto [it, inserted] = first_index.try_emplace(keys[i], i);
    first_of[i] = it->second;
    if (!inserted) continue;
    Shard& shard = ShardFor(keys[i]);
    absl::MutexLock lock(&shard.mu);
    stored[i] = shard.Touch(keys[i]);
    if (stored[i].defined()) {
      ++shard.counters.hits;
      continue;
    }
    ++shard.counters.misses;
    auto flying = shard.in_flight.find(keys[i]);
    if (flying != shard.in_flight.end()) {
      ++shard.counters.encodes_waited;
      waits.emplace_back(i, flying->second);
      continue;
    }
    auto flight = std::make_shared<Flight>();
    shard.in_flight.emplace(keys[i], flight);
    leads.push_back(Lead{i, std::move(flight)});
  }

  // Encode this call's keys first, then wait for the others.
  RETURN_IF_ERROR(EncodeAndPublish(keys, encode, leads, stored));
  for (auto& [index, flight] : waits) {
    absl::MutexLock lock(&flight->mu);
    flight->mu.Await(absl::Condition(&flight->done));
    if (!flight->status.ok()) return flight->status;
    stored[index] = flight->stored;
  }

  std::vector<torch::Tensor> results(n);
  try {
    for (size_t i = 0; i < n; ++i) results[i] = ToCompute(stored[first_of[i]]);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(
        "converting cached states to ", c10::toString(options_.compute_dtype),
        " failed: ", TorchErrorMessage(e)));
  }
  return results;
}

CacheStats ShardedLruCache::stats() const {
  CacheStats stats;
  stats.capacity_bytes = options_.capacity_bytes;
  for (int s = 0; s < options_.num_shards; ++s) {
    const Shard& shard = shards_[s];
    absl::MutexLock lock(&shard.mu);
    stats.hits += shard.counters.hits;
    stats.misses += shard.counters.misses;
    stats.evictions += shard.counters.evictions;
    stats.inserts += shard.counters.inserts;
    stats.rejected += shard.counters.rejected;
    stats.encodes_waited += shard.counters.encodes_waited;
    stats.entries += static_cast<int64_t>(shard.index.size());
    stats.bytes += shard.bytes;
  }
  return stats;
}

std::vector<std::pair<SegmentKey, torch::Tensor>> ShardedLruCache::Snapshot()
    const {
  std::vector<std::pair<SegmentKey, torch::Tensor>> entries;
  for (int s = 0; s < options_.num_shards; ++s) {
    const Shard& shard = shards_[s];
    absl::MutexLock lock(&shard.mu);
    for (auto it = shard.lru.rbegin(); it != shard.lru.rend(); ++it) {
      entries.emplace_back(it->key, it->stored);
    }
  }
  return entries;
}

}  // namespace optrec
