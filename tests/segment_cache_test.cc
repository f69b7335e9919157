// Tests of the segment-state cache: keys, the byte-bounded sharded LRU (its
// rounding to the storage dtype checked against a plain bit-level loop, its
// byte bound against sums recomputed from snapshots), single-flight encoding
// under threads, and the state file's refusal of foreign or damaged files.
//
// Shapes: N tokens of one segment, D model width.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/notification.h"
#include "cache/segment_key.h"
#include "cache/sharded_lru_cache.h"
#include "cache/state_cache.h"
#include "cache/state_file.h"
#include "core/util/files.h"
#include "core/util/hash.h"

namespace optrec {
namespace {

using ::testing::HasSubstr;
using Tensors = std::vector<torch::Tensor>;

constexpr char kModel[] = "model-a";
constexpr int64_t kLayers = 4;

SegmentKey Key(int i, const std::string& model = kModel,
               int64_t layers = kLayers) {
  return SegmentKey::Make(model, layers, {i, i + 1, i + 2});
}

// States [rows, width] of normal(0, 2) values drawn from `seed`.
torch::Tensor States(int64_t rows, int64_t width, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  torch::Tensor states = torch::empty({rows, width});
  float* data = states.data_ptr<float>();
  for (int64_t i = 0; i < states.numel(); ++i) data[i] = normal(rng);
  return states;
}

// `x` rounded to bfloat16 (round to nearest, ties to even) by its bits.
float RoundToBfloat16(float x) {
  uint32_t bits = 0;
  std::memcpy(&bits, &x, 4);
  bits += 0x7fff + ((bits >> 16) & 1);
  bits &= 0xffff0000u;
  float y = 0;
  std::memcpy(&y, &bits, 4);
  return y;
}

// What a bfloat16 cache returns for `states`: each element rounded.
torch::Tensor Bfloat16Reference(const torch::Tensor& states) {
  torch::Tensor out = states.clone();
  float* data = out.data_ptr<float>();
  for (int64_t i = 0; i < out.numel(); ++i) data[i] = RoundToBfloat16(data[i]);
  return out;
}

std::unique_ptr<ShardedLruCache> MakeCache(
    int64_t capacity_bytes, int num_shards = 16,
    torch::ScalarType storage = torch::kBFloat16) {
  ShardedLruCache::Options options;
  options.capacity_bytes = capacity_bytes;
  options.num_shards = num_shards;
  options.storage_dtype = storage;
  auto cache = ShardedLruCache::Create(options);
  EXPECT_TRUE(cache.ok()) << cache.status();
  return cache.ok() ? *std::move(cache) : nullptr;
}

// Bytes an entry is charged, worked out here rather than asked of the cache.
int64_t ChargedBytes(const SegmentKey& key, const torch::Tensor& held) {
  const int64_t key_bytes =
      key.model_fingerprint.size() + key.content_hash.size();
  return held.numel() * held.element_size() + 2 * key_bytes +
         ShardedLruCache::kEntryOverheadBytes;
}

// The snapshot's keys, as strings so that failures print them.
std::vector<std::string> SnapshotKeys(const ShardedLruCache& cache) {
  std::vector<std::string> keys;
  for (const auto& [key, states] : cache.Snapshot()) {
    keys.push_back(key.ToString());
  }
  return keys;
}

std::vector<std::string> KeyNames(const std::vector<int>& ids) {
  std::vector<std::string> names;
  for (int id : ids) names.push_back(Key(id).ToString());
  return names;
}

// ---- Keys. ----

TEST(SegmentKeyTest, HashesTokenIdsAsLittleEndianInt32) {
  const SegmentKey key = SegmentKey::Make(kModel, kLayers, {1, 258, -1});
  const std::string bytes("\x01\x00\x00\x00\x02\x01\x00\x00\xff\xff\xff\xff",
                          12);
  EXPECT_EQ(key.content_hash, Xxh3Hex128(bytes));
  EXPECT_EQ(key.content_hash.size(), 32u);
  EXPECT_EQ(key.ToString(), "model-a/L4/" + key.content_hash);
}

TEST(SegmentKeyTest, KeysDifferingOnlyInModelLayersOrIdsAreDistinctEntries) {
  const std::vector<SegmentKey> keys = {SegmentKey::Make("model-a", 4, {7, 8}),
                                        SegmentKey::Make("model-b", 4, {7, 8}),
                                        SegmentKey::Make("model-a", 5, {7, 8}),
                                        SegmentKey::Make("model-a", 4, {8, 7})};
  EXPECT_EQ(keys[0], SegmentKey::Make("model-a", 4, {7, 8}));
  absl::flat_hash_set<SegmentKey> distinct(keys.begin(), keys.end());
  EXPECT_EQ(distinct.size(), keys.size());

  auto cache = MakeCache(1 << 20, 1);
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_TRUE(cache->Insert(keys[i], torch::full({2, 4}, float(i + 1))));
  }
  EXPECT_EQ(cache->stats().entries, 4);
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_TRUE(
        torch::equal(cache->Lookup(keys[i]), torch::full({2, 4}, float(i + 1))))
        << i;
  }
}

// ---- Options and inputs. ----

TEST(ShardedLruCacheTest, CreateRejectsBadOptionsNamingTheField) {
  const auto expect_bad = [](ShardedLruCache::Options options,
                             const std::string& field) {
    auto cache = ShardedLruCache::Create(options);
    ASSERT_FALSE(cache.ok()) << field;
    EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(cache.status().message()), HasSubstr(field));
  };
  ShardedLruCache::Options options;
  options.num_shards = 0;
  expect_bad(options, "num_shards");
  options = {};
  options.capacity_bytes = 8;
  expect_bad(options, "capacity_bytes");
  options = {};
  options.storage_dtype = torch::kDouble;
  expect_bad(options, "storage_dtype");
  options = {};
  options.compute_dtype = torch::kInt;
  expect_bad(options, "compute_dtype");
}

TEST(ShardedLruCacheTest, InsertRefusesMalformedStatesWithoutCountingThem) {
  auto cache = MakeCache(1 << 20);
  EXPECT_FALSE(cache->Insert(Key(1), torch::Tensor()));
  EXPECT_FALSE(cache->Insert(Key(1), torch::ones({4})));
  EXPECT_FALSE(cache->Insert(Key(1), torch::ones({1, 4, 4})));
  EXPECT_FALSE(cache->Insert(Key(1), torch::ones({4, 4}, torch::kInt)));
  const CacheStats stats = cache->stats();
  EXPECT_EQ(stats.entries, 0);
  EXPECT_EQ(stats.bytes, 0);
  EXPECT_EQ(stats.rejected, 0);
}

// ---- Hits and the storage dtype's rounding. ----

TEST(ShardedLruCacheTest, HitReturnsStatesRoundedToBfloat16) {
  auto cache = MakeCache(1 << 20);
  const torch::Tensor states = States(7, 16, 1);
  ASSERT_TRUE(cache->Insert(Key(1), states));
  const torch::Tensor hit = cache->Lookup(Key(1));
  ASSERT_TRUE(hit.defined());
  EXPECT_EQ(hit.scalar_type(), torch::kFloat);
  EXPECT_EQ(hit.sizes(), states.sizes());
  // Exactly the bit-level rounding, hence within bfloat16's 2^-8.
  EXPECT_TRUE(torch::equal(hit, Bfloat16Reference(states)));
  const float* x = states.data_ptr<float>();
  const float* y = hit.data_ptr<float>();
  double max_abs = 0, max_error = 0;
  for (int64_t i = 0; i < states.numel(); ++i) {
    EXPECT_LE(std::abs(y[i] - x[i]), std::ldexp(std::abs(x[i]), -8)) << i;
    max_abs = std::max(max_abs, double(std::abs(x[i])));
    max_error = std::max(max_error, double(std::abs(y[i] - x[i])));
  }
  const double error = MaxRoundTripError(states, torch::kBFloat16);
  EXPECT_NEAR(error, max_error / max_abs, 1e-12);
  EXPECT_GT(error, 0.0);
  EXPECT_LE(error, std::ldexp(1.0, -8));
  EXPECT_EQ(MaxRoundTripError(states, torch::kFloat), 0.0);
  EXPECT_EQ(cache->stats().hits, 1);
}

TEST(ShardedLruCacheTest, Float16AndFloat32StorageStayWithinTheirPrecision) {
  const torch::Tensor states = States(5, 8, 2);
  auto half = MakeCache(1 << 20, 4, torch::kHalf);
  ASSERT_TRUE(half->Insert(Key(1), states));
  const torch::Tensor hit = half->Lookup(Key(1));
  const float* x = states.data_ptr<float>();
  const float* y = hit.data_ptr<float>();
  for (int64_t i = 0; i < states.numel(); ++i) {
    // 2^-11 relative for normal values, 2^-25 absolute for subnormal ones.
    EXPECT_LE(std::abs(y[i] - x[i]),
              std::ldexp(std::abs(x[i]), -11) + std::ldexp(1.0, -25))
        << i;
  }
  EXPECT_LE(MaxRoundTripError(states, torch::kHalf), std::ldexp(1.0, -11));

  auto exact = MakeCache(1 << 20, 4, torch::kFloat);
  ASSERT_TRUE(exact->Insert(Key(1), states));
  EXPECT_TRUE(torch::equal(exact->Lookup(Key(1)), states));
}

TEST(ShardedLruCacheTest, LookupReturnsACopyTheCallerMayModify) {
  auto cache = MakeCache(1 << 20, 1, torch::kFloat);
  const torch::Tensor states = States(3, 4, 3);
  ASSERT_TRUE(cache->Insert(Key(1), states));
  cache->Lookup(Key(1)).fill_(0);
  EXPECT_TRUE(torch::equal(cache->Lookup(Key(1)), states));
  EXPECT_FALSE(cache->Lookup(Key(2)).defined());
  const CacheStats stats = cache->stats();
  EXPECT_EQ(stats.hits, 2);
  EXPECT_EQ(stats.misses, 1);
}

// ---- The byte bound and eviction. ----

TEST(ShardedLruCacheTest, EvictsTheLeastRecentlyUsedEntryOfTheShard) {
  const int64_t entry_bytes =
      ShardedLruCache::EntryBytes(Key(0), 4 * 8, torch::kBFloat16);
  auto cache = MakeCache(3 * entry_bytes + entry_bytes / 2, 1);
  for (int i : {0, 1, 2}) ASSERT_TRUE(cache->Insert(Key(i), States(4, 8, i)));
  ASSERT_TRUE(cache->Lookup(Key(0)).defined());  // 1 is now the coldest
  ASSERT_TRUE(cache->Insert(Key(3), States(4, 8, 3)));
  EXPECT_EQ(SnapshotKeys(*cache), KeyNames({2, 0, 3}));
  ASSERT_TRUE(cache->Insert(Key(4), States(4, 8, 4)));
  EXPECT_EQ(SnapshotKeys(*cache), KeyNames({0, 3, 4}));
  const CacheStats stats = cache->stats();
  EXPECT_EQ(stats.evictions, 2);
  EXPECT_EQ(stats.inserts, 5);
  EXPECT_EQ(stats.bytes, 3 * entry_bytes);
}

TEST(ShardedLruCacheTest, OversizedEntryIsRejectedAndEvictsNothing) {
  const int64_t small_bytes =
      ShardedLruCache::EntryBytes(Key(0), 2 * 8, torch::kBFloat16);
  // Two shards of room for two small entries each.
  auto cache = MakeCache(2 * 2 * small_bytes, 2);
  ASSERT_TRUE(cache->Insert(Key(0), States(2, 8, 0)));
  ASSERT_TRUE(cache->Insert(Key(1), States(2, 8, 1)));
  const torch::Tensor huge = States(64, 8, 9);  // far over a shard's share
  EXPECT_FALSE(cache->Insert(Key(2), huge));
  EXPECT_FALSE(cache->Insert(Key(0), huge));  // the old entry stays
  const CacheStats stats = cache->stats();
  EXPECT_EQ(stats.rejected, 2);
  EXPECT_EQ(stats.evictions, 0);
  EXPECT_EQ(stats.entries, 2);
  EXPECT_EQ(stats.bytes, 2 * small_bytes);
  EXPECT_FALSE(cache->Lookup(Key(2)).defined());
  EXPECT_TRUE(
      torch::equal(cache->Lookup(Key(0)), Bfloat16Reference(States(2, 8, 0))));
}

// Random inserts and lookups into a cache of `num_shards` shards; after
// every operation the bytes stay within the capacity and equal the sum
// recomputed from a snapshot.
void CheckByteBoundUnderRandomLoad(int num_shards) {
  constexpr int64_t kCapacity = 40000;
  constexpr int64_t kWidth = 8;
  auto cache = MakeCache(kCapacity, num_shards);
  std::mt19937 rng(20240611 + num_shards);
  std::uniform_int_distribution<int> pick_key(0, 299);
  // Up to 800 rows: some entries exceed a shard's share when sharded.
  std::uniform_int_distribution<int64_t> pick_rows(0, 800);
  std::bernoulli_distribution insert_op(0.7);
  std::map<int, torch::Tensor> last_inserted;  // key -> states [N, D]
  int64_t expected_rejected = 0;
  for (int op = 0; op < 3000; ++op) {
    const int k = pick_key(rng);
    if (insert_op(rng)) {
      const torch::Tensor states = States(pick_rows(rng), kWidth, op);
      const bool too_big = ChargedBytes(Key(k), states.to(torch::kBFloat16)) >
                           kCapacity / num_shards;
      expected_rejected += too_big;
      EXPECT_EQ(cache->Insert(Key(k), states), !too_big) << "op " << op;
      if (!too_big) last_inserted[k] = states;
    } else {
      const torch::Tensor hit = cache->Lookup(Key(k));
      if (hit.defined()) {
        EXPECT_TRUE(torch::equal(hit, Bfloat16Reference(last_inserted[k])))
            << "op " << op;
      }
    }
    const CacheStats stats = cache->stats();
    ASSERT_LE(stats.bytes, kCapacity) << "op " << op;
    int64_t recomputed = 0;
    const auto snapshot = cache->Snapshot();
    for (const auto& [key, held] : snapshot) {
      EXPECT_EQ(held.scalar_type(), torch::kBFloat16);
      EXPECT_TRUE(held.is_contiguous());
      recomputed += ChargedBytes(key, held);
    }
    ASSERT_EQ(stats.bytes, recomputed) << "op " << op;
    ASSERT_EQ(stats.entries, static_cast<int64_t>(snapshot.size()));
  }
  const CacheStats stats = cache->stats();
  EXPECT_EQ(stats.rejected, expected_rejected);
  EXPECT_GT(stats.evictions, 0);
  // Near-full: the bound is what limits the cache.
  EXPECT_GT(stats.bytes, kCapacity / 2);
}

TEST(ShardedLruCacheTest, ByteBoundHoldsExactlyUnderRandomLoad) {
  for (int num_shards : {1, 4}) {
    SCOPED_TRACE(num_shards);
    CheckByteBoundUnderRandomLoad(num_shards);
  }
}

// ---- GetOrEncode. ----

// An EncodeFn giving States(3, 4, seed of the key's id) for `ids` (the id of
// each key of the call), and recording the indices it was asked for.
EncodeFn EncodeIds(const std::vector<int>& ids,
                   std::vector<std::vector<size_t>>* calls) {
  return [ids, calls](
             const std::vector<size_t>& missing) -> absl::StatusOr<Tensors> {
    calls->push_back(missing);
    Tensors out;
    for (size_t i : missing) out.push_back(States(3, 4, ids[i]));
    return out;
  };
}

TEST(GetOrEncodeTest, EncodesOnlyTheMissesAndKeepsKeyOrder) {
  auto cache = MakeCache(1 << 20);
  ASSERT_TRUE(cache->Insert(Key(10), States(3, 4, 10)));
  ASSERT_TRUE(cache->Insert(Key(12), States(3, 4, 12)));
  const std::vector<int> ids = {10, 11, 12, 13};
  std::vector<SegmentKey> keys;
  for (int id : ids) keys.push_back(Key(id));
  std::vector<std::vector<size_t>> calls;

  auto first = cache->GetOrEncode(keys, EncodeIds(ids, &calls));
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(calls, (std::vector<std::vector<size_t>>{{1, 3}}));
  ASSERT_EQ(first->size(), 4u);
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_TRUE(
        torch::equal((*first)[i], Bfloat16Reference(States(3, 4, ids[i]))))
        << i;
  }
  auto second = cache->GetOrEncode(keys, EncodeIds(ids, &calls));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(calls.size(), 1u);
  const CacheStats stats = cache->stats();
  EXPECT_EQ(stats.hits, 2 + 4);
  EXPECT_EQ(stats.misses, 2);
  EXPECT_EQ(stats.entries, 4);
}

TEST(GetOrEncodeTest, DuplicateKeysInOneCallAreEncodedOnce) {
  auto cache = MakeCache(1 << 20);
  const std::vector<int> ids = {5, 5, 6, 5};
  std::vector<SegmentKey> keys;
  for (int id : ids) keys.push_back(Key(id));
  std::vector<std::vector<size_t>> calls;
  auto result = cache->GetOrEncode(keys, EncodeIds(ids, &calls));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(calls, (std::vector<std::vector<size_t>>{{0, 2}}));
  EXPECT_TRUE(torch::equal((*result)[0], (*result)[1]));
  EXPECT_TRUE(torch::equal((*result)[0], (*result)[3]));
  (*result)[0].fill_(0);  // each result is the caller's own tensor
  EXPECT_FALSE(torch::equal((*result)[0], (*result)[1]));
}

TEST(GetOrEncodeTest, MalformedEncodeResultIsInvalidArgumentAndNotCached) {
  auto cache = MakeCache(1 << 20);
  const std::vector<SegmentKey> keys = {Key(1), Key(2)};
  auto wrong_count = cache->GetOrEncode(
      keys, [](const std::vector<size_t>&) -> absl::StatusOr<Tensors> {
        return Tensors{torch::ones({2, 4})};
      });
  EXPECT_EQ(wrong_count.status().code(), absl::StatusCode::kInvalidArgument);

  auto wrong_shape = cache->GetOrEncode(
      keys, [](const std::vector<size_t>&) -> absl::StatusOr<Tensors> {
        return Tensors{torch::ones({2, 4}), torch::ones({8})};
      });
  EXPECT_EQ(wrong_shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong_shape.status().message()),
              HasSubstr(Key(2).ToString()));
  EXPECT_EQ(cache->stats().entries, 0);

  std::vector<std::vector<size_t>> calls;
  auto good = cache->GetOrEncode(keys, EncodeIds({1, 2}, &calls));
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(calls, (std::vector<std::vector<size_t>>{{0, 1}}));
}

TEST(GetOrEncodeTest, ConcurrentCallsEncodeEachKeyOnce) {
  constexpr int kThreads = 8;
  constexpr int kKeys = 48;
  auto cache = MakeCache(int64_t{64} << 20);
  std::vector<std::atomic<int>> encodes(kKeys);
  std::vector<std::atomic<bool>> requested(kKeys);
  std::atomic<int> mismatches{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::uniform_int_distribution<int> pick(0, kKeys - 1);
      for (int round = 0; round < 25; ++round) {
        std::vector<int> ids;
        std::vector<SegmentKey> keys;
        for (int j = 0; j < 6; ++j) {
          ids.push_back(pick(rng));
          keys.push_back(Key(ids.back()));
          requested[ids.back()] = true;
        }
        const auto encode =
            [&](const std::vector<size_t>& missing) -> absl::StatusOr<Tensors> {
          Tensors out;
          for (size_t i : missing) {
            ++encodes[ids[i]];
            out.push_back(States(2 + ids[i] % 5, 16, ids[i]));
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(2));
          return out;
        };
        auto result = cache->GetOrEncode(keys, encode);
        if (!result.ok()) {
          ++failures;
          continue;
        }
        for (size_t i = 0; i < ids.size(); ++i) {
          const torch::Tensor expected =
              Bfloat16Reference(States(2 + ids[i] % 5, 16, ids[i]));
          if (!torch::equal((*result)[i], expected)) ++mismatches;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  const CacheStats stats = cache->stats();
  EXPECT_EQ(stats.evictions, 0);
  int64_t requested_keys = 0;
  for (int k = 0; k < kKeys; ++k) {
    requested_keys += requested[k].load();
    EXPECT_EQ(encodes[k].load(), requested[k].load() ? 1 : 0) << "key " << k;
  }
  EXPECT_EQ(stats.inserts, requested_keys);
  EXPECT_EQ(stats.entries, requested_keys);
  EXPECT_GT(stats.hits, 0);
}

// Two GetOrEncode calls for `key`: the leader's encode waits until the
// second call has joined its flight, then returns `finish()`. The second
// call's own encode should never run; its calls are counted.
struct TwoCalls {
  absl::StatusOr<Tensors> leader = absl::UnknownError("not run");
  absl::StatusOr<Tensors> waiter = absl::UnknownError("not run");
  int waiter_encodes = 0;
};

TwoCalls RunLeaderAndWaiter(
    ShardedLruCache& cache, const SegmentKey& key,
    const std::function<absl::StatusOr<Tensors>()>& finish) {
  TwoCalls calls;
  absl::Notification started, release;
  std::thread leader([&] {
    calls.leader = cache.GetOrEncode(
        {key}, [&](const std::vector<size_t>&) -> absl::StatusOr<Tensors> {
          started.Notify();
          release.WaitForNotification();
          return finish();
        });
  });
  started.WaitForNotification();
  const int64_t waited_before = cache.stats().encodes_waited;
  std::thread waiter([&] {
    calls.waiter = cache.GetOrEncode(
        {key}, [&](const std::vector<size_t>&) -> absl::StatusOr<Tensors> {
          ++calls.waiter_encodes;
          return Tensors{torch::ones({1, 4})};
        });
  });
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (cache.stats().encodes_waited == waited_before &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  release.Notify();
  leader.join();
  waiter.join();
  return calls;
}

TEST(GetOrEncodeTest, WaiterJoinsTheInFlightEncodeAndGetsItsResult) {
  auto cache = MakeCache(1 << 20);
  const TwoCalls calls = RunLeaderAndWaiter(
      *cache, Key(1), [] { return Tensors{States(3, 4, 1)}; });
  ASSERT_TRUE(calls.leader.ok()) << calls.leader.status();
  ASSERT_TRUE(calls.waiter.ok()) << calls.waiter.status();
  EXPECT_EQ(calls.waiter_encodes, 0);
  EXPECT_EQ(cache->stats().encodes_waited, 1);
  EXPECT_TRUE(torch::equal((*calls.leader)[0], (*calls.waiter)[0]));
  EXPECT_TRUE(
      torch::equal((*calls.waiter)[0], Bfloat16Reference(States(3, 4, 1))));
}

TEST(GetOrEncodeTest, FailedEncodeReachesEveryWaiterAndLeavesKeyUncached) {
  auto cache = MakeCache(1 << 20);
  const TwoCalls calls =
      RunLeaderAndWaiter(*cache, Key(1), []() -> absl::StatusOr<Tensors> {
        return absl::UnavailableError("model busy");
      });
  EXPECT_EQ(calls.leader.status(), absl::UnavailableError("model busy"));
  EXPECT_EQ(calls.waiter.status(), absl::UnavailableError("model busy"));
  EXPECT_EQ(calls.waiter_encodes, 0);
  EXPECT_FALSE(cache->Lookup(Key(1)).defined());
  EXPECT_EQ(cache->stats().entries, 0);

  std::vector<std::vector<size_t>> encoded;
  auto again = cache->GetOrEncode({Key(1)}, EncodeIds({1}, &encoded));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(encoded.size(), 1u);
}

TEST(GetOrEncodeTest, ThrowingEncodeBecomesInternalForEveryWaiter) {
  auto cache = MakeCache(1 << 20);
  const TwoCalls calls =
      RunLeaderAndWaiter(*cache, Key(1), []() -> absl::StatusOr<Tensors> {
        throw std::runtime_error("out of scratch memory");
      });
  for (const auto* result : {&calls.leader, &calls.waiter}) {
    EXPECT_EQ(result->status().code(), absl::StatusCode::kInternal);
    EXPECT_THAT(std::string(result->status().message()),
                HasSubstr("out of scratch memory"));
  }
  EXPECT_EQ(calls.waiter_encodes, 0);
  EXPECT_EQ(cache->stats().entries, 0);
}

// ---- The state file. ----

class StateFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = testing::TempDir() + "/segment_cache_test_" +
            testing::UnitTest::GetInstance()->current_test_info()->name() +
            ".seg";
    std::filesystem::remove(path_);
    source_ = MakeCache(1 << 20);
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(source_->Insert(Key(i), States(1 + i, 16, i)));
    }
    ASSERT_TRUE(SaveStates(path_, kModel, kLayers, source_->Snapshot()).ok());
  }
  void TearDown() override { std::filesystem::remove(path_); }

  std::string ReadBytes() {
    absl::StatusOr<std::string> bytes = ReadFile(path_);
    EXPECT_TRUE(bytes.ok()) << bytes.status();
    return bytes.ok() ? *bytes : "";
  }
  void WriteBytes(const std::string& bytes) {
    std::ofstream(path_, std::ios::binary | std::ios::trunc) << bytes;
  }
  // Loads the file into a fresh cache, expecting it to fail with `code`
  // and to insert nothing; returns the message.
  std::string ExpectLoadFails(absl::StatusCode code,
                              const std::string& fingerprint = kModel,
                              int64_t layers = kLayers) {
    auto target = MakeCache(1 << 20);
    auto loaded = LoadStates(path_, fingerprint, layers, target.get());
    EXPECT_EQ(loaded.status().code(), code) << loaded.status();
    EXPECT_EQ(target->stats().entries, 0);
    EXPECT_EQ(target->stats().inserts, 0);
    return std::string(loaded.status().message());
  }

  std::string path_;
  std::unique_ptr<ShardedLruCache> source_;
};

TEST_F(StateFileTest, SaveThenLoadRestoresTheSameStates) {
  auto target = MakeCache(1 << 20);
  auto loaded = LoadStates(path_, kModel, kLayers, target.get());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->entries, 5);
  EXPECT_EQ(loaded->inserted, 5);
  for (int i = 0; i < 5; ++i) {
    const torch::Tensor restored = target->Lookup(Key(i));
    ASSERT_TRUE(restored.defined()) << i;
    EXPECT_TRUE(torch::equal(restored, source_->Lookup(Key(i)))) << i;
  }
  EXPECT_EQ(target->stats().bytes, source_->stats().bytes);
}

TEST_F(StateFileTest, EmptyCacheSavesAFileThatLoadsNothing) {
  auto empty = MakeCache(1 << 20);
  ASSERT_TRUE(SaveStates(path_, kModel, kLayers, empty->Snapshot()).ok());
  auto target = MakeCache(1 << 20);
  auto loaded = LoadStates(path_, kModel, kLayers, target.get());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->entries, 0);
}

TEST_F(StateFileTest, FileOfAnotherModelOrLayerCountIsRefused) {
  std::string message =
      ExpectLoadFails(absl::StatusCode::kFailedPrecondition, "model-b");
  EXPECT_THAT(message, HasSubstr("model-a"));
  EXPECT_THAT(message, HasSubstr("model-b"));
  message = ExpectLoadFails(absl::StatusCode::kFailedPrecondition, kModel, 5);
  EXPECT_THAT(message, HasSubstr("lower_layers 4"));
  EXPECT_THAT(message, HasSubstr("lower_layers 5"));
}

TEST_F(StateFileTest, FlippedByteInAnEntryIsDataLossAndInsertsNothing) {
  std::string bytes = ReadBytes();
  // The last byte of the last entry's states, before its 8-byte checksum.
  bytes[bytes.size() - 9] ^= 0x01;
  WriteBytes(bytes);
  const std::string message = ExpectLoadFails(absl::StatusCode::kDataLoss);
  EXPECT_THAT(message, HasSubstr(path_));
  EXPECT_THAT(message, HasSubstr("entry 4 of 5"));
}

TEST_F(StateFileTest, TruncatedOrPaddedFileIsDataLossAndInsertsNothing) {
  const std::string bytes = ReadBytes();
  WriteBytes(bytes.substr(0, bytes.size() - 20));
  std::string message = ExpectLoadFails(absl::StatusCode::kDataLoss);
  EXPECT_THAT(message, HasSubstr(path_));
  EXPECT_THAT(message, HasSubstr("entry 4 of 5"));
  WriteBytes(bytes.substr(0, 12));
  message = ExpectLoadFails(absl::StatusCode::kDataLoss);
  EXPECT_THAT(message, HasSubstr("header"));
  WriteBytes(bytes + "x");
  ExpectLoadFails(absl::StatusCode::kDataLoss);
}

TEST_F(StateFileTest, MissingFileIsNotFound) {
  std::filesystem::remove(path_);
  ExpectLoadFails(absl::StatusCode::kNotFound);
}

TEST_F(StateFileTest, SaveRefusesEntriesOfAnotherModelAndKeepsTheOldFile) {
  const std::string before = ReadBytes();
  auto other = MakeCache(1 << 20);
  ASSERT_TRUE(other->Insert(Key(1, "model-b"), States(2, 16, 1)));
  const absl::Status status =
      SaveStates(path_, kModel, kLayers, other->Snapshot());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("entry 0"));
  EXPECT_EQ(ReadBytes(), before);
}

}  // namespace
}  // namespace optrec
