#include "tuning/tune/constrained_decoding.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace optrec {

void TokenTrie::Add(const std::vector<int32_t>& ids, int64_t value) {
  int32_t at = root();
  for (int32_t id : ids) {
    auto it = nodes_[at].children.find(id);
    if (it == nodes_[at].children.end()) {
      const int32_t next = static_cast<int32_t>(nodes_.size());
      nodes_[at].children.emplace(id, next);
      nodes_.emplace_back();
      at = next;
    } else {
      at = it->second;
    }
  }
  nodes_[at].values.push_back(value);
  depth_ = std::max<int64_t>(depth_, ids.size());
}

namespace {

struct Partial {
  int32_t node = 0;
  double log_prob = 0;
  int64_t row = 0;    // row of the cache holding its keys and values
  int32_t token = 0;  // its last token, not yet run through the model
};

// Log-probabilities [rows, V] (f32, CPU) of the last position of each row.
torch::Tensor LastLogProbs(const ForwardOutput& out) {
  return torch::log_softmax(out.logits.to(torch::kFloat32), -1)
      .to(torch::kCPU)
      .contiguous();
}

}  // namespace

absl::StatusOr<std::vector<BeamHit>> ConstrainedBeamSearch(
    const TransformerLM& model, const RowInput& context, const TokenTrie& trie,
    int64_t beam) {
  if (beam < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("beam must be positive, got ", beam));
  }
  if (trie.node(trie.root()).children.empty()) {
    return absl::InvalidArgumentError("the catalog trie is empty");
  }
  torch::NoGradGuard no_grad;
  KVCache cache = model.NewCache(1);
  ForwardOptions last;
  last.logits = ForwardOptions::Logits::kLast;
  ASSIGN_OR_RETURN(ForwardOutput first, model.Forward({context}, &cache, last));
  torch::Tensor log_probs = LastLogProbs(first);  // [rows, V]

  std::vector<Partial> alive = {{trie.root(), 0.0, 0}};
  std::vector<BeamHit> done;
  for (int64_t depth = 0; depth < trie.depth() && !alive.empty(); ++depth) {
    // Every one-token extension along the trie.
    std::vector<Partial> candidates;
    const float* lp = log_probs.data_ptr<float>();
    const int64_t v = log_probs.size(1);
    for (const Partial& p : alive) {
      for (const auto& [token, child] : trie.node(p.node).children) {
        candidates.push_back(
            {child, p.log_prob + lp[p.row * v + token], p.row, token});
      }
    }
    const size_t keep = std::min<size_t>(beam, candidates.size());
    std::partial_sort(candidates.begin(), candidates.begin() + keep,
                      candidates.end(), [](const Partial& a, const Partial& b) {
                        return a.log_prob > b.log_prob;
                      });
    candidates.resize(keep);
    std::vector<Partial> next;
    for (const Partial& c : candidates) {
      const TokenTrie::Node& node = trie.node(c.node);
      if (!node.values.empty()) done.push_back({node.values, c.log_prob});
      if (!node.children.empty()) next.push_back(c);
    }
    std::sort(done.begin(), done.end(), [](const BeamHit& a, const BeamHit& b) {
      return a.log_prob > b.log_prob;
    });
    if (static_cast<int64_t>(done.size()) > beam) done.resize(beam);
    // Log-probabilities only fall as sequences grow: stop when no partial
    // sequence can still enter the list.
    if (static_cast<int64_t>(done.size()) == beam &&
        (next.empty() || next.front().log_prob <= done.back().log_prob)) {
      break;
    }
    if (next.empty()) break;

    // Extend the kept partial sequences by their last token.
    std::vector<int64_t> parents;
    std::vector<RowInput> rows(next.size());
    for (size_t i = 0; i < next.size(); ++i) {
      parents.push_back(next[i].row);
      rows[i].ids = {next[i].token};
      rows[i].adapter = context.adapter;
      next[i].row = static_cast<int64_t>(i);
    }
    RETURN_IF_ERROR(cache.SelectRows(parents));
    ASSIGN_OR_RETURN(ForwardOutput out, model.Forward(rows, &cache, last));
    log_probs = LastLogProbs(out);
    alive = std::move(next);
  }
  return done;
}

}  // namespace optrec
