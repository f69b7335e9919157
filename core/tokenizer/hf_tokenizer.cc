#include "core/tokenizer/hf_tokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/tokenizer/string_view_compat.h"
#include "core/tokenizer/utf8.h"
#include "core/util/status_macros.h"

namespace optrec {

using nlohmann::json;

absl::StatusOr<std::unique_ptr<HfTokenizer>> HfTokenizer::Load(
    const std::string& path) {
  ASSIGN_OR_RETURN(const json root, ReadJsonFile(path));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": the top level must be a JSON object"));
  }
  auto tokenizer = std::unique_ptr<HfTokenizer>(new HfTokenizer());
  tokenizer->path_ = path;
  const JsonPath top(path, "");

  // Model. Files written before "type" existed hold a BPE model.
  ASSIGN_OR_RETURN(const json* model, JsonObject(root, "model", top));
  const JsonPath model_at = top.Child("model");
  ASSIGN_OR_RETURN(const std::string model_type,
                   JsonStringOr(*model, "type", model_at, "BPE"));
  if (model_type != "BPE") {
    return model_at.Child("type").Unsupported(absl::StrCat(
        "model type '", model_type, "' is not supported (only BPE)"));
  }
  ASSIGN_OR_RETURN(tokenizer->model_, BpeModel::Parse(*model, model_at));
  tokenizer->vocab_size_ = tokenizer->model_->vocab_size();
  tokenizer->special_.unk_id = tokenizer->model_->unk_id();

  // Pipeline steps; an absent member means no step.
  static const json kNull;
  const auto member = [&root](std::string_view key) -> const json& {
    const json* value = JsonMember(root, key);
    return value == nullptr ? kNull : *value;
  };
  ASSIGN_OR_RETURN(
      tokenizer->normalizer_,
      ParseNormalizer(member("normalizer"), top.Child("normalizer")));
  ASSIGN_OR_RETURN(
      tokenizer->pre_tokenizer_,
      ParsePreTokenizer(member("pre_tokenizer"), top.Child("pre_tokenizer")));
  ASSIGN_OR_RETURN(tokenizer->decoder_,
                   ParseDecoder(member("decoder"), top.Child("decoder")));
  RETURN_IF_ERROR(tokenizer->ParseAddedTokens(root, top));
  RETURN_IF_ERROR(tokenizer->ParsePostProcessor(member("post_processor"),
                                                top.Child("post_processor")));

  if (const json* padding = JsonMember(root, "padding")) {
    const JsonPath padding_at = top.Child("padding");
    if (JsonMember(*padding, "pad_id") != nullptr) {
      ASSIGN_OR_RETURN(const int64_t pad_id,
                       JsonInt(*padding, "pad_id", padding_at));
      if (pad_id < 0 || pad_id >= tokenizer->vocab_size_) {
        return padding_at.Child("pad_id").Invalid(
            absl::StrCat("id ", pad_id, " is out of range"));
      }
      tokenizer->special_.pad_id = static_cast<int32_t>(pad_id);
    }
  }
  return tokenizer;
}

absl::Status HfTokenizer::ParseAddedTokens(const json& root,
                                           const JsonPath& top) {
  std::vector<AddedToken> raw;
  std::vector<AddedToken> normalized;
  if (JsonMember(root, "added_tokens") != nullptr) {
    ASSIGN_OR_RETURN(const json* list, JsonArray(root, "added_tokens", top));
    for (size_t i = 0; i < list->size(); ++i) {
      const json& entry = (*list)[i];
      const JsonPath at = top.Child("added_tokens").Index(i);
      if (!entry.is_object()) return at.Invalid("must be an object");
      AddedToken token;
      ASSIGN_OR_RETURN(const int64_t id, JsonInt(entry, "id", at));
      if (id < 0 || id >= (int64_t{1} << 31) - 1) {
        return at.Child("id").Invalid("must be a non-negative int32");
      }
      token.id = static_cast<int32_t>(id);
      ASSIGN_OR_RETURN(token.content, JsonString(entry, "content", at));
      if (token.content.empty()) return at.Child("content").Invalid("is empty");
      ASSIGN_OR_RETURN(token.special, JsonBoolOr(entry, "special", at, false));
      ASSIGN_OR_RETURN(token.single_word,
                       JsonBoolOr(entry, "single_word", at, false));
      ASSIGN_OR_RETURN(token.lstrip, JsonBoolOr(entry, "lstrip", at, false));
      ASSIGN_OR_RETURN(token.rstrip, JsonBoolOr(entry, "rstrip", at, false));
      ASSIGN_OR_RETURN(token.normalized,
                       JsonBoolOr(entry, "normalized", at, !token.special));
      vocab_size_ = std::max(vocab_size_, token.id + 1);
      added_by_content_[token.content] = token.id;
      added_by_id_[token.id] = token;
      if (token.normalized && normalizer_ != nullptr) {
        // Matched in normalized text, so match its normalized form.
        RETURN_IF_ERROR(normalizer_->Normalize(&token.content));
        normalized.push_back(std::move(token));
      } else if (token.normalized) {
        normalized.push_back(std::move(token));
      } else {
        raw.push_back(std::move(token));
      }
    }
  }
  raw_matcher_ = AddedTokenMatcher(std::move(raw));
  normalized_matcher_ = AddedTokenMatcher(std::move(normalized));
  return absl::OkStatus();
}

absl::Status HfTokenizer::ParsePostProcessor(const json& config,
                                             const JsonPath& at) {
  if (config.is_null()) return absl::OkStatus();
  ASSIGN_OR_RETURN(const std::string type, JsonType(config, at));
  const auto check_id =
      [this](int64_t id, const JsonPath& where) -> absl::StatusOr<int32_t> {
    if (id < 0 || id >= vocab_size_) {
      return where.Invalid(
          absl::StrCat("id ", id, " is out of range [0, ", vocab_size_, ")"));
    }
    return static_cast<int32_t>(id);
  };
  // Fills bos/eos from a template whose ends are single special tokens.
  const auto take_specials = [this](const std::vector<TemplateItem>& items) {
    const auto input =
        std::find_if(items.begin(), items.end(),
                     [](const TemplateItem& i) { return i.is_input; });
    if (input == items.end()) return;
    if (input != items.begin() && items.front().ids.size() == 1 &&
        special_.bos_id < 0) {
      special_.bos_id = items.front().ids[0];
    }
    if (input + 1 != items.end() && items.back().ids.size() == 1 &&
        special_.eos_id < 0) {
      special_.eos_id = items.back().ids[0];
    }
  };

  if (type == "ByteLevel") return absl::OkStatus();  // offsets only
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const json* list, JsonArray(config, "processors", at));
    for (size_t i = 0; i < list->size(); ++i) {
      RETURN_IF_ERROR(
          ParsePostProcessor((*list)[i], at.Child("processors").Index(i)));
    }
    return absl::OkStatus();
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    std::vector<TemplateItem> items(3);
    for (const char* key : {"cls", "sep"}) {
      const JsonPath key_at = at.Child(key);
      const json* pair = JsonMember(config, key);
      if (pair == nullptr || !pair->is_array() || pair->size() != 2 ||
          !(*pair)[1].is_number_integer()) {
        return key_at.Invalid("must be a pair [token, id]");
      }
      ASSIGN_OR_RETURN(const int32_t id,
                       check_id((*pair)[1].get<int64_t>(), key_at));
      items[std::string_view(key) == "cls" ? 0 : 2].ids = {id};
    }
    items[1].is_input = true;
    if (type == "RobertaProcessing") take_specials(items);
    post_templates_.push_back(std::move(items));
    return absl::OkStatus();
  }
  if (type == "TemplateProcessing") {
    ASSIGN_OR_RETURN(const json* single, JsonArray(config, "single", at));
    ASSIGN_OR_RETURN(const json* specials,
                     JsonObject(config, "special_tokens", at));
    const JsonPath specials_at = at.Child("special_tokens");
    std::vector<TemplateItem> items;
    bool has_input = false;
    for (size_t i = 0; i < single->size(); ++i) {
      const json& piece = (*single)[i];
      const JsonPath piece_at = at.Child("single").Index(i);
      TemplateItem item;
      if (const json* sequence = JsonMember(piece, "Sequence")) {
        const JsonPath sequence_at = piece_at.Child("Sequence");
        ASSIGN_OR_RETURN(const std::string name,
                         JsonString(*sequence, "id", sequence_at));
        if (name != "A") {
          return sequence_at.Child("id").Invalid(absl::StrCat(
              "a single-sequence template can only hold $A, not $", name));
        }
        if (has_input) return piece_at.Invalid("$A appears twice");
        has_input = true;
        item.is_input = true;
      } else if (const json* special = JsonMember(piece, "SpecialToken")) {
        const JsonPath special_at = piece_at.Child("SpecialToken");
        ASSIGN_OR_RETURN(const std::string name,
                         JsonString(*special, "id", special_at));
        const json* entry = JsonMember(*specials, name);
        if (entry == nullptr) {
          return special_at.Child("id").Invalid(
              absl::StrCat("'", name, "' is not listed in special_tokens"));
        }
        const JsonPath entry_at = specials_at.Child(name);
        ASSIGN_OR_RETURN(const json* ids, JsonArray(*entry, "ids", entry_at));
        for (size_t k = 0; k < ids->size(); ++k) {
          const JsonPath id_at = entry_at.Child("ids").Index(k);
          if (!(*ids)[k].is_number_integer()) {
            return id_at.Invalid("must be an integer");
          }
          ASSIGN_OR_RETURN(const int32_t id,
                           check_id((*ids)[k].get<int64_t>(), id_at));
          item.ids.push_back(id);
        }
      } else {
        return piece_at.Invalid("must hold \"Sequence\" or \"SpecialToken\"");
      }
      items.push_back(std::move(item));
    }
    take_specials(items);
    post_templates_.push_back(std::move(items));
    return absl::OkStatus();
  }
  return at.Child("type").Unsupported(
      absl::StrCat("unknown or unsupported post-processor type '", type, "'"));
}

absl::Status HfTokenizer::EncodePlain(std::string_view text, bool at_start,
                                      std::vector<int32_t>* ids) const {
  std::string normalized(text);
  if (normalizer_ != nullptr) {
    RETURN_IF_ERROR(normalizer_->Normalize(&normalized));
  }
  for (const TextSegment& segment : normalized_matcher_.Split(normalized)) {
    if (segment.added_id >= 0) {
      ids->push_back(segment.added_id);
      continue;
    }
    std::vector<PreToken> pieces;
    pieces.push_back(
        {normalized.substr(segment.begin, segment.end - segment.begin),
         at_start && segment.begin == 0});
    if (pre_tokenizer_ != nullptr) pre_tokenizer_->PreTokenize(&pieces);
    for (const PreToken& piece : pieces) model_->Tokenize(piece.text, ids);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> HfTokenizer::Encode(
    std::string_view text, bool add_special) const {
  RETURN_IF_ERROR(utf8::CheckEncodable(text));
  std::vector<int32_t> ids;
  for (const TextSegment& segment : raw_matcher_.Split(text)) {
    if (segment.added_id >= 0) {
      ids.push_back(segment.added_id);
      continue;
    }
    RETURN_IF_ERROR(
        EncodePlain(text.substr(segment.begin, segment.end - segment.begin),
                    /*at_start=*/segment.begin == 0, &ids));
  }
  if (add_special) {
    for (const std::vector<TemplateItem>& items : post_templates_) {
      std::vector<int32_t> processed;
      for (const TemplateItem& item : items) {
        const std::vector<int32_t>& part = item.is_input ? ids : item.ids;
        processed.insert(processed.end(), part.begin(), part.end());
      }
      ids = std::move(processed);
    }
  }
  return ids;
}

absl::StatusOr<const std::string*> HfTokenizer::TokenOf(int32_t id) const {
  const auto added = added_by_id_.find(id);
  if (added != added_by_id_.end()) return &added->second.content;
  const std::string* token = model_->IdToToken(id);
  if (token == nullptr) {
    if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", id, " is out of range [0, ", vocab_size_, ")"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("token id ", id, " has no token in ", path_));
  }
  return token;
}

absl::StatusOr<std::string> HfTokenizer::Decode(absl::Span<const int32_t> ids,
                                                bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    ASSIGN_OR_RETURN(const std::string* token, TokenOf(id));
    if (skip_special && IsSpecial(id)) continue;
    tokens.push_back(*token);
  }
  if (decoder_ == nullptr) {
    // The reference library joins undecoded tokens with spaces.
    return utf8::MakeValid(absl::StrJoin(tokens, " "));
  }
  decoder_->DecodeChain(&tokens, DecodeMode());
  return utf8::MakeValid(absl::StrJoin(tokens, ""));
}

absl::StatusOr<std::string> HfTokenizer::TokenText(int32_t id) const {
  ASSIGN_OR_RETURN(const std::string* token, TokenOf(id));
  if (decoder_ == nullptr) return *token;
  std::vector<std::string> tokens = {*token};
  DecodeMode mode;
  mode.sequence_start = false;
  mode.raw_bytes = true;
  decoder_->DecodeChain(&tokens, mode);
  return absl::StrJoin(tokens, "");
}

std::optional<int32_t> HfTokenizer::TokenToId(std::string_view token) const {
  const auto added = added_by_content_.find(AsAbsl(token));
  if (added != added_by_content_.end()) return added->second;
  return model_->TokenToId(token);
}

bool HfTokenizer::IsSpecial(int32_t id) const {
  const auto added = added_by_id_.find(id);
  return added != added_by_id_.end() && added->second.special;
}

}  // namespace optrec
