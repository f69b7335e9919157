#include "core/tokenizer/sentencepiece_tokenizer.h"

#include <fstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "core/tokenizer/utf8.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

// SentencePiece's visible space, U+2581.
constexpr char kMetaSpace[] = "\xE2\x96\x81";
constexpr size_t kMetaSpaceSize = 3;

}  // namespace

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>>
SentencePieceTokenizer::Load(const std::string& path) {
  if (!std::ifstream(path, std::ios::binary)) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open file"));
  }
  auto tokenizer =
      std::unique_ptr<SentencePieceTokenizer>(new SentencePieceTokenizer());
  ASSIGN_OR_RETURN(tokenizer->model_, SentencePieceModel::Load(path));
  const SentencePieceModel& model = *tokenizer->model_;
  tokenizer->special_.bos_id = model.bos_id();
  tokenizer->special_.eos_id = model.eos_id();
  tokenizer->special_.pad_id = model.pad_id();
  tokenizer->special_.unk_id = model.unk_id();

  std::vector<AddedToken> controls;
  for (int id = 0; id < model.piece_size(); ++id) {
    if (!model.IsControl(id)) continue;
    AddedToken token;
    token.id = id;
    token.content = model.IdToPiece(id);
    token.special = true;
    controls.push_back(std::move(token));
  }
  tokenizer->control_matcher_ = AddedTokenMatcher(std::move(controls));
  return tokenizer;
}

absl::StatusOr<std::vector<int32_t>> SentencePieceTokenizer::Encode(
    std::string_view text, bool add_special) const {
  RETURN_IF_ERROR(utf8::CheckEncodable(text));
  std::vector<int32_t> ids;
  if (add_special && special_.bos_id >= 0) ids.push_back(special_.bos_id);
  std::vector<int> piece_ids;
  for (const TextSegment& segment : control_matcher_.Split(text)) {
    if (segment.added_id >= 0) {
      ids.push_back(segment.added_id);
      continue;
    }
    RETURN_IF_ERROR(model_->Encode(
        text.substr(segment.begin, segment.end - segment.begin), &piece_ids));
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
  }
  return ids;
}

absl::Status SentencePieceTokenizer::CheckId(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token id ", id, " is out of range [0, ", vocab_size(), ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> SentencePieceTokenizer::DecodeRun(
    const std::vector<int>& run) const {
  std::string text;
  RETURN_IF_ERROR(model_->Decode(run, &text));
  return text;
}

absl::StatusOr<std::string> SentencePieceTokenizer::Decode(
    absl::Span<const int32_t> ids, bool skip_special) const {
  // libsentencepiece drops control pieces when decoding, so the runs between
  // them are decoded separately and the control pieces written in between.
  // It also drops the leading space of a run's first word (the dummy
  // prefix); a run that follows written text gets that space back, as
  // Hugging Face's Llama decoding gives "<s> Hello".
  std::string text;
  std::vector<int> run;
  const auto flush = [&]() -> absl::Status {
    if (run.empty()) return absl::OkStatus();
    ASSIGN_OR_RETURN(const std::string decoded, DecodeRun(run));
    if (!text.empty() &&
        model_->IdToPiece(run.front()).compare(0, kMetaSpaceSize, kMetaSpace) ==
            0) {
      text.push_back(' ');
    }
    text.append(decoded);
    run.clear();
    return absl::OkStatus();
  };
  for (const int32_t id : ids) {
    RETURN_IF_ERROR(CheckId(id));
    if (!model_->IsControl(id)) {
      run.push_back(id);
      continue;
    }
    RETURN_IF_ERROR(flush());
    if (!skip_special) text.append(model_->IdToPiece(id));
  }
  RETURN_IF_ERROR(flush());
  return utf8::MakeValid(text);
}

absl::StatusOr<std::string> SentencePieceTokenizer::TokenText(
    int32_t id) const {
  RETURN_IF_ERROR(CheckId(id));
  const std::string& piece = model_->IdToPiece(id);
  if (model_->IsControl(id)) return piece;
  if (model_->IsByte(id)) {
    // Byte pieces are spelled <0xXX>, X an uppercase hex digit.
    const auto digit = [&piece](size_t i) {
      const char c = piece[i];
      return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
    };
    return std::string(1, static_cast<char>(digit(3) * 16 + digit(4)));
  }
  if (model_->IsUnknown(id)) return DecodeRun({id});
  return absl::StrReplaceAll(piece, {{kMetaSpace, " "}});
}

std::optional<int32_t> SentencePieceTokenizer::TokenToId(
    std::string_view token) const {
  const int id = model_->PieceToId(token);
  // PieceToId answers unk_id for unknown pieces.
  if (id < 0 || (id == model_->unk_id() && model_->IdToPiece(id) != token)) {
    return std::nullopt;
  }
  return id;
}

int32_t SentencePieceTokenizer::vocab_size() const {
  return model_->piece_size();
}

bool SentencePieceTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && model_->IsControl(id);
}

}  // namespace optrec
