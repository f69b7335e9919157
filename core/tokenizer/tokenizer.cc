#include "core/tokenizer/tokenizer.h"

#include <fstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/tokenizer/hf_tokenizer.h"
#include "core/tokenizer/json_util.h"
#include "core/tokenizer/sentencepiece_tokenizer.h"
#include "core/tokenizer/string_view_compat.h"
#include "core/tokenizer/utf8.h"
#include "core/util/log.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

using nlohmann::json;

bool FileExists(const std::string& path) {
  return static_cast<bool>(std::ifstream(path, std::ios::binary));
}

// Fills the unset (-1) ids of `special` from tokenizer_config.json's token
// strings ("bos_token": "<s>" or {"content": "<s>", ...}).
absl::Status FillFromTokenizerConfig(const std::string& path,
                                     const Tokenizer& tokenizer,
                                     SpecialTokens* special) {
  ASSIGN_OR_RETURN(const json config, ReadJsonFile(path));
  const JsonPath top(path, "");
  if (!config.is_object()) return top.Invalid("must be a JSON object");
  const std::pair<const char*, int32_t*> fields[] = {
      {"bos_token", &special->bos_id},
      {"eos_token", &special->eos_id},
      {"pad_token", &special->pad_id},
      {"unk_token", &special->unk_id}};
  for (const auto& [key, id] : fields) {
    const json* value = JsonMember(config, key);
    if (*id >= 0 || value == nullptr) continue;
    const JsonPath at = top.Child(key);
    std::string token;
    if (value->is_string()) {
      token = value->get<std::string>();
    } else if (value->is_object()) {
      ASSIGN_OR_RETURN(token, JsonString(*value, "content", at));
    } else {
      return at.Invalid("must be a string or an object with \"content\"");
    }
    const std::optional<int32_t> found = tokenizer.TokenToId(token);
    if (!found.has_value()) {
      return at.Invalid(absl::StrCat("token '", token,
                                     "' is not in the tokenizer's vocabulary"));
    }
    *id = *found;
  }
  return absl::OkStatus();
}

// Fills the unset (-1) ids of `special` from config.json's *_token_id.
absl::Status FillFromModelConfig(const std::string& path,
                                 const Tokenizer& tokenizer,
                                 SpecialTokens* special) {
  ASSIGN_OR_RETURN(const json config, ReadJsonFile(path));
  const JsonPath top(path, "");
  if (!config.is_object()) return top.Invalid("must be a JSON object");
  const std::pair<const char*, int32_t*> fields[] = {
      {"bos_token_id", &special->bos_id},
      {"eos_token_id", &special->eos_id},
      {"pad_token_id", &special->pad_id}};
  for (const auto& [key, id] : fields) {
    const json* value = JsonMember(config, key);
    if (*id >= 0 || value == nullptr) continue;
    JsonPath at = top.Child(key);
    // Several eos ids (Llama 3) are written as a list; the first is used.
    if (value->is_array() && !value->empty()) {
      value = &(*value)[0];
      at = at.Index(0);
    }
    if (!value->is_number_integer()) return at.Invalid("must be an integer");
    const int64_t number = value->get<int64_t>();
    if (number < 0 || number >= tokenizer.vocab_size()) {
      return at.Invalid(absl::StrCat("id ", number, " is out of range [0, ",
                                     tokenizer.vocab_size(), ")"));
    }
    *id = static_cast<int32_t>(number);
  }
  return absl::OkStatus();
}

// Completes the special ids of a freshly loaded tokenizer from the model
// directory's config files, then shares it.
template <typename T>
absl::StatusOr<std::shared_ptr<const Tokenizer>> FinishDirLoad(
    std::unique_ptr<T> tokenizer, const std::string& dir,
    const std::string& file) {
  SpecialTokens special = tokenizer->special();
  const std::string tokenizer_config = dir + "/tokenizer_config.json";
  if (FileExists(tokenizer_config)) {
    RETURN_IF_ERROR(
        FillFromTokenizerConfig(tokenizer_config, *tokenizer, &special));
  }
  const std::string model_config = dir + "/config.json";
  if (FileExists(model_config)) {
    RETURN_IF_ERROR(FillFromModelConfig(model_config, *tokenizer, &special));
  }
  tokenizer->set_special(special);
  LOG_INFO << "loaded tokenizer " << file << ": " << tokenizer->vocab_size()
           << " ids, bos " << special.bos_id << ", eos " << special.eos_id
           << ", pad " << special.pad_id << ", unk " << special.unk_id;
  return std::shared_ptr<const Tokenizer>(std::move(tokenizer));
}

}  // namespace

absl::StatusOr<std::shared_ptr<const Tokenizer>> LoadTokenizerFromDir(
    const std::string& dir) {
  const std::string json_path = dir + "/tokenizer.json";
  if (FileExists(json_path)) {
    ASSIGN_OR_RETURN(auto tokenizer, HfTokenizer::Load(json_path));
    return FinishDirLoad(std::move(tokenizer), dir, json_path);
  }
  const std::string model_path = dir + "/tokenizer.model";
  if (FileExists(model_path)) {
    ASSIGN_OR_RETURN(auto tokenizer, SentencePieceTokenizer::Load(model_path));
    return FinishDirLoad(std::move(tokenizer), dir, model_path);
  }
  return absl::NotFoundError(absl::StrCat(
      dir, ": no tokenizer.json or tokenizer.model in this directory"));
}

absl::StatusOr<std::shared_ptr<const Tokenizer>> LoadTokenizerFile(
    const std::string& path) {
  if (absl::EndsWith(path, ".json")) {
    ASSIGN_OR_RETURN(auto tokenizer, HfTokenizer::Load(path));
    return std::shared_ptr<const Tokenizer>(std::move(tokenizer));
  }
  ASSIGN_OR_RETURN(auto tokenizer, SentencePieceTokenizer::Load(path));
  return std::shared_ptr<const Tokenizer>(std::move(tokenizer));
}

DecodeStream::DecodeStream(std::shared_ptr<const Tokenizer> tokenizer,
                           bool skip_special)
    : tokenizer_(std::move(tokenizer)), skip_special_(skip_special) {}

absl::StatusOr<std::string> DecodeStream::Push(int32_t id) {
  ids_.push_back(id);
  const absl::Span<const int32_t> all(ids_);
  absl::StatusOr<std::string> text =
      tokenizer_->Decode(all.subspan(prefix_offset_), skip_special_);
  if (!text.ok()) {
    ids_.pop_back();
    return text.status();
  }
  ASSIGN_OR_RETURN(
      const std::string settled,
      tokenizer_->Decode(
          all.subspan(prefix_offset_, read_offset_ - prefix_offset_),
          skip_special_));
  // A trailing U+FFFD means the last ids end inside a character: wait.
  if (text->size() <= settled.size() ||
      absl::EndsWith(*text, AsAbsl(utf8::kReplacementChar))) {
    return std::string();
  }
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return text->substr(settled.size());
}

absl::StatusOr<std::string> DecodeStream::Finish() {
  const absl::Span<const int32_t> all(ids_);
  ASSIGN_OR_RETURN(
      const std::string text,
      tokenizer_->Decode(all.subspan(prefix_offset_), skip_special_));
  ASSIGN_OR_RETURN(
      const std::string settled,
      tokenizer_->Decode(
          all.subspan(prefix_offset_, read_offset_ - prefix_offset_),
          skip_special_));
  ids_.clear();
  prefix_offset_ = 0;
  read_offset_ = 0;
  if (text.size() <= settled.size()) return std::string();
  return text.substr(settled.size());
}

}  // namespace optrec
