// The BPE model of a tokenizer.json file: vocabulary, ranked merges, and the
// merge loop that turns one pre-tokenized word into token ids.
#ifndef OPTREC_CORE_TOKENIZER_BPE_MODEL_H_
#define OPTREC_CORE_TOKENIZER_BPE_MODEL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/tokenizer/json_util.h"
#include "nlohmann/json.hpp"

namespace optrec {

// Immutable after Parse; Tokenize is thread-safe (its word cache has its own
// mutex).
class BpeModel {
 public:
  // Builds the model from the "model" object at `at` (type "BPE"). Merges
  // may be written "a b" or ["a", "b"]. InvalidArgument naming the field
  // when a member is malformed, a merge names a token missing from the
  // vocabulary, or the unk_token is not in it; Unimplemented for a non-zero
  // dropout (sampling makes encoding nondeterministic).
  static absl::StatusOr<std::unique_ptr<BpeModel>> Parse(
      const nlohmann::json& config, const JsonPath& at);

  // Appends the ids of `word` (one pre-tokenized piece, valid UTF-8). A
  // character missing from the vocabulary becomes its <0xXX> byte tokens
  // when byte_fallback is on and they all exist, else the unk token (runs
  // fused into one when fuse_unk), else it is dropped, as the reference
  // library does.
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  // Vocabulary look-ups. IdToToken returns nullptr for an id with no token.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  const std::string* IdToToken(int32_t id) const;

  // One past the largest id in the vocabulary.
  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  // The unk token's id, or -1 when the model has none.
  int32_t unk_id() const { return unk_id_; }

 private:
  // A merge: the pair it applies to is the key of merges_.
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  BpeModel() = default;
  void MergeWord(std::string_view word, std::vector<int32_t>* ids) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> tokens_;  // by id; empty for unused ids
  std::vector<bool> has_token_;      // by id
  absl::flat_hash_map<uint64_t, Merge> merges_;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  std::vector<int32_t> byte_ids_;  // <0xXX> token id per byte, -1 if absent

  // Results for words seen before. Bounded: once full, new words are not
  // added (the cache never evicts, so hits stay cheap and predictable).
  static constexpr size_t kCacheCapacity = 16384;
  static constexpr size_t kMaxCachedWordBytes = 256;
  mutable absl::Mutex cache_mutex_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_
      ABSL_GUARDED_BY(cache_mutex_);
};

}  // namespace optrec

#endif  // OPTREC_CORE_TOKENIZER_BPE_MODEL_H_
