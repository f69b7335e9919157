// Decoding limited to a catalog: a trie over the token sequences of the
// catalog's entries (item titles, say) and a beam search that only follows
// its branches, so every result is a real entry, ranked by the model's
// log-probability of the whole sequence.
#ifndef OPTREC_TUNING_TUNE_CONSTRAINED_DECODING_H_
#define OPTREC_TUNING_TUNE_CONSTRAINED_DECODING_H_

#include <cstdint>
#include <map>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/transformer.h"

namespace optrec {

// A prefix tree over token sequences; each complete sequence carries the
// values (catalog indices) that spell it. Not thread-safe while adding;
// read-only use is.
class TokenTrie {
 public:
  struct Node {
    std::map<int32_t, int32_t> children;  // token -> node index
    std::vector<int64_t> values;          // sequences ending here
  };

  TokenTrie() : nodes_(1) {}

  // Adds `ids` (non-empty) as the spelling of `value`. Sequences that are
  // prefixes of others are allowed: end them with an end token (EOS) to
  // keep every sequence ending at a leaf.
  void Add(const std::vector<int32_t>& ids, int64_t value);

  const Node& node(int32_t index) const { return nodes_[index]; }
  int32_t root() const { return 0; }
  size_t size() const { return nodes_.size(); }
  // Tokens of the longest sequence.
  int64_t depth() const { return depth_; }

 private:
  std::vector<Node> nodes_;
  int64_t depth_ = 0;
};

// One complete sequence found by the search.
struct BeamHit {
  std::vector<int64_t> values;  // the catalog indices it spells
  double log_prob = 0;          // sum over its tokens
};

// The `beam` best complete sequences of `trie` as continuations of
// `context` (its ids, soft prompt and adapter; positions start at 0), by
// summed log-probability, best first. A beam search: each step keeps the
// `beam` best partial sequences; it stops when `beam` sequences are
// complete and no partial one can still beat the worst of them. Errors:
// InvalidArgument for beam < 1 or an empty trie; forward errors as
// TransformerLM::Forward's.
absl::StatusOr<std::vector<BeamHit>> ConstrainedBeamSearch(
    const TransformerLM& model, const RowInput& context, const TokenTrie& trie,
    int64_t beam);

}  // namespace optrec

#endif  // OPTREC_TUNING_TUNE_CONSTRAINED_DECODING_H_
