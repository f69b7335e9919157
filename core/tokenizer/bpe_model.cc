#include "core/tokenizer/bpe_model.h"

#include <queue>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/tokenizer/string_view_compat.h"
#include "core/tokenizer/utf8.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

using nlohmann::json;

// A symbol of a word being merged: a token id in a doubly linked list.
struct Symbol {
  int32_t id;
  int prev;  // index of the previous live symbol, -1 at the start
  int next;  // index of the next live symbol, -1 at the end
  bool alive;
};

// A merge that may apply to symbols[left] and the symbol after it.
struct Candidate {
  int32_t rank;
  int left;
  int32_t left_id;
  int32_t right_id;
  int32_t result;
};

// Orders the queue so the lowest rank, then the leftmost position, is on top.
struct LaterCandidate {
  bool operator()(const Candidate& a, const Candidate& b) const {
    if (a.rank != b.rank) return a.rank > b.rank;
    return a.left > b.left;
  }
};

// Reads one merge, written "a b" or ["a", "b"].
absl::StatusOr<std::pair<std::string, std::string>> ParseMergePair(
    const json& merge, const JsonPath& at) {
  if (merge.is_string()) {
    const std::string& line = merge.get_ref<const std::string&>();
    const size_t space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos) {
      return at.Invalid(absl::StrCat("merge '", line,
                                     "' must be two tokens separated by one "
                                     "space"));
    }
    return std::make_pair(line.substr(0, space), line.substr(space + 1));
  }
  if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
      merge[1].is_string()) {
    return std::make_pair(merge[0].get<std::string>(),
                          merge[1].get<std::string>());
  }
  return at.Invalid(
      "a merge must be a string \"a b\" or a pair [\"a\", \"b\"]");
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Parse(const json& config,
                                                          const JsonPath& at) {
  auto model = std::unique_ptr<BpeModel>(new BpeModel());

  if (const json* dropout = JsonMember(config, "dropout")) {
    if (!dropout->is_number()) {
      return at.Child("dropout").Invalid("must be a number or null");
    }
    if (dropout->get<double>() != 0.0) {
      return at.Child("dropout").Unsupported(
          "BPE dropout samples merges at random; optrec encodes "
          "deterministically and does not support it");
    }
  }
  ASSIGN_OR_RETURN(model->fuse_unk_, JsonBoolOr(config, "fuse_unk", at, false));
  ASSIGN_OR_RETURN(model->byte_fallback_,
                   JsonBoolOr(config, "byte_fallback", at, false));
  ASSIGN_OR_RETURN(model->ignore_merges_,
                   JsonBoolOr(config, "ignore_merges", at, false));
  ASSIGN_OR_RETURN(model->continuing_subword_prefix_,
                   JsonStringOr(config, "continuing_subword_prefix", at, ""));
  ASSIGN_OR_RETURN(model->end_of_word_suffix_,
                   JsonStringOr(config, "end_of_word_suffix", at, ""));

  // Vocabulary.
  ASSIGN_OR_RETURN(const json* vocab, JsonObject(config, "vocab", at));
  const JsonPath vocab_at = at.Child("vocab");
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() >= (int64_t{1} << 31) - 1) {
      return vocab_at.Child(token).Invalid("id must be a non-negative int32");
    }
    model->vocab_[token] = static_cast<int32_t>(id.get<int64_t>());
    max_id = std::max(max_id, id.get<int64_t>());
  }
  model->tokens_.resize(max_id + 1);
  model->has_token_.assign(max_id + 1, false);
  for (const auto& [token, id] : model->vocab_) {
    if (model->has_token_[id]) {
      return vocab_at.Invalid(absl::StrCat("id ", id, " is used by '",
                                           model->tokens_[id], "' and '", token,
                                           "'"));
    }
    model->tokens_[id] = token;
    model->has_token_[id] = true;
  }

  // Unknown token.
  ASSIGN_OR_RETURN(const std::string unk_token,
                   JsonStringOr(config, "unk_token", at, ""));
  if (!unk_token.empty()) {
    const auto it = model->vocab_.find(unk_token);
    if (it == model->vocab_.end()) {
      return at.Child("unk_token")
          .Invalid(absl::StrCat("'", unk_token, "' is not in the vocabulary"));
    }
    model->unk_id_ = it->second;
  }

  // Merges: rank is the position in the list.
  ASSIGN_OR_RETURN(const json* merges, JsonArray(config, "merges", at));
  const JsonPath merges_at = at.Child("merges");
  const size_t prefix_size = model->continuing_subword_prefix_.size();
  model->merges_.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const JsonPath merge_at = merges_at.Index(i);
    ASSIGN_OR_RETURN(auto pair, ParseMergePair((*merges)[i], merge_at));
    const auto left = model->vocab_.find(pair.first);
    const auto right = model->vocab_.find(pair.second);
    for (const auto* side : {&pair.first, &pair.second}) {
      if (!model->vocab_.contains(*side)) {
        return merge_at.Invalid(
            absl::StrCat("token '", *side, "' is not in the vocabulary"));
      }
    }
    std::string merged = pair.first;
    if (prefix_size > 0 &&
        pair.second.compare(0, prefix_size,
                            model->continuing_subword_prefix_) == 0) {
      merged.append(pair.second, prefix_size, std::string::npos);
    } else {
      merged.append(pair.second);
    }
    const auto result = model->vocab_.find(merged);
    if (result == model->vocab_.end()) {
      return merge_at.Invalid(
          absl::StrCat("merged token '", merged, "' is not in the vocabulary"));
    }
    // As in the reference library, a pair listed twice keeps its last rank.
    model->merges_[PairKey(left->second, right->second)] =
        Merge{static_cast<int32_t>(i), result->second};
  }

  model->byte_ids_.assign(256, -1);
  for (int b = 0; b < 256; ++b) {
    const auto it = model->vocab_.find(absl::StrFormat("<0x%02X>", b));
    if (it != model->vocab_.end()) model->byte_ids_[b] = it->second;
  }
  return model;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  const auto it = vocab_.find(AsAbsl(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !has_token_[id]) return nullptr;
  return &tokens_[id];
}

void BpeModel::Tokenize(std::string_view word,
                        std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&cache_mutex_);
    const auto it = cache_.find(AsAbsl(word));
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> word_ids;
  MergeWord(word, &word_ids);
  ids->insert(ids->end(), word_ids.begin(), word_ids.end());
  if (cacheable) {
    absl::MutexLock lock(&cache_mutex_);
    if (cache_.size() < kCacheCapacity) {
      cache_.emplace(std::string(word), std::move(word_ids));
    }
  }
}

void BpeModel::MergeWord(std::string_view word,
                         std::vector<int32_t>* ids) const {
  if (ignore_merges_) {
    const auto it = vocab_.find(AsAbsl(word));
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }

  // Initial symbols: one per character (with prefix / suffix), or its byte
  // tokens, or unk.
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  bool last_was_unk = false;
  std::string piece;
  const auto add = [&symbols](int32_t id) {
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({id, index - 1, -1, true});
  };
  for (size_t pos = 0; pos < word.size();) {
    const size_t length = utf8::CharLength(word, pos);
    const std::string_view character = word.substr(pos, length);
    piece.clear();
    if (pos > 0) piece.append(continuing_subword_prefix_);
    piece.append(character);
    pos += length;
    if (pos == word.size()) piece.append(end_of_word_suffix_);

    const auto it = vocab_.find(AsAbsl(piece));
    if (it != vocab_.end()) {
      add(it->second);
      last_was_unk = false;
      continue;
    }
    if (byte_fallback_) {
      bool all_bytes = true;
      for (const char byte : character) {
        all_bytes =
            all_bytes && byte_ids_[static_cast<unsigned char>(byte)] >= 0;
      }
      if (all_bytes) {
        for (const char byte : character) {
          add(byte_ids_[static_cast<unsigned char>(byte)]);
        }
        last_was_unk = false;
        continue;
      }
    }
    if (unk_id_ >= 0 && !(fuse_unk_ && last_was_unk)) {
      add(unk_id_);
      last_was_unk = true;
    }
  }
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    symbols[i].next = static_cast<int>(i + 1);
  }

  // Apply merges, lowest rank first, leftmost first among equal ranks.
  std::priority_queue<Candidate, std::vector<Candidate>, LaterCandidate> queue;
  const auto consider = [&](int left) {
    if (left < 0 || symbols[left].next < 0) return;
    const int32_t left_id = symbols[left].id;
    const int32_t right_id = symbols[symbols[left].next].id;
    const auto it = merges_.find(PairKey(left_id, right_id));
    if (it == merges_.end()) return;
    queue.push({it->second.rank, left, left_id, right_id, it->second.result});
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    consider(static_cast<int>(i));
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.left];
    // Skip candidates made stale by earlier merges.
    if (!left.alive || left.id != top.left_id || left.next < 0 ||
        symbols[left.next].id != top.right_id) {
      continue;
    }
    Symbol& right = symbols[left.next];
    left.id = top.result;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    consider(left.prev);
    consider(top.left);
  }
  for (const Symbol& symbol : symbols) {
    if (symbol.alive) ids->push_back(symbol.id);
  }
}

}  // namespace optrec
