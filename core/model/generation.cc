#include "core/model/generation.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace optrec {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStopId:
      return "stop_id";
    case FinishReason::kStopSequence:
      return "stop_sequence";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

struct Decoder::Sequence {
  SamplingParams params;
  TokenSampler sampler;
  std::vector<int32_t> stop_ids;
  GenerationResult result;
  size_t emitted = 0;  // bytes of result.text already reported
  bool done = false;
  int32_t pending = -1;  // sampled, not yet fed to the model

  explicit Sequence(const SamplingParams& p) : params(p), sampler(p) {}
};

namespace {

// Bytes at the end of `text` that may not be reported yet: an incomplete
// UTF-8 character, a replacement character that may still resolve, or a
// prefix of a stop sequence.
size_t HeldBack(const std::string& text, const std::vector<std::string>& stop) {
  size_t held = 0;
  // Incomplete UTF-8 sequence at the end.
  for (size_t back = 1; back <= std::min<size_t>(4, text.size()); ++back) {
    unsigned char ch = text[text.size() - back];
    if ((ch & 0xC0) == 0x80) continue;  // continuation byte
    size_t need = ch < 0x80          ? 1
                  : (ch >> 5) == 0x6 ? 2
                  : (ch >> 4) == 0xE ? 3
                                     : 4;
    if (need > back) held = back;
    break;
  }
  static const std::string kReplacement = "\xEF\xBF\xBD";
  if (text.size() >= kReplacement.size() &&
      text.compare(text.size() - 3, 3, kReplacement) == 0) {
    held = std::max<size_t>(held, 3);
  }
  for (const std::string& s : stop) {
    for (size_t len = std::min(s.size() - 1, text.size()); len > 0; --len) {
      if (text.compare(text.size() - len, len, s, 0, len) == 0) {
        held = std::max(held, len);
        break;
      }
    }
  }
  return held;
}

}  // namespace

Decoder::Decoder(std::shared_ptr<const TransformerLM> model)
    : model_(std::move(model)) {}

bool Decoder::finished(int64_t sequence) const {
  return sequences_[sequence]->done;
}

const GenerationResult& Decoder::result(int64_t sequence) const {
  return sequences_[sequence]->result;
}

void Decoder::Cancel(int64_t sequence) {
  Sequence& s = *sequences_[sequence];
  if (s.done) return;
  s.done = true;
  s.result.finish = FinishReason::kCancelled;
}

void Decoder::Accept(Sequence& s, int64_t index, int32_t id,
                     const TokenCallback& on_token) {
  const Tokenizer* tokenizer = model_->tokenizer();
  if (std::find(s.stop_ids.begin(), s.stop_ids.end(), id) != s.stop_ids.end()) {
    s.done = true;
    s.result.finish = FinishReason::kStopId;
  } else {
    s.result.ids.push_back(id);
    s.pending = id;
    if (tokenizer != nullptr) {
      auto text = tokenizer->Decode(s.result.ids, /*skip_special=*/true);
      if (text.ok()) s.result.text = *std::move(text);
    }
    for (const std::string& stop : s.params.stop) {
      size_t at = s.result.text.find(
          stop, s.emitted > stop.size() ? s.emitted - stop.size() : 0);
      if (at != std::string::npos) {
        s.result.text.resize(at);
        s.done = true;
        s.result.finish = FinishReason::kStopSequence;
      }
    }
    if (!s.done &&
        static_cast<int64_t>(s.result.ids.size()) >= s.params.max_tokens) {
      s.done = true;
      s.result.finish = FinishReason::kLength;
    }
  }
  size_t ready = s.result.text.size();
  if (!s.done) ready -= HeldBack(s.result.text, s.params.stop);
  std::string delta;
  if (ready > s.emitted) {
    delta = s.result.text.substr(s.emitted, ready - s.emitted);
    s.emitted = ready;
  }
  const bool produced = s.result.finish != FinishReason::kStopId || !s.done;
  if (on_token && (produced || !delta.empty())) {
    if (!on_token(index, produced ? id : -1, delta) && !s.done) {
      s.done = true;
      s.result.finish = FinishReason::kCancelled;
    }
  }
}

absl::StatusOr<std::vector<int64_t>> Decoder::Join(
    const std::vector<GenerationRequest>& requests,
    const TokenCallback& on_token) {
  torch::InferenceMode inference;
  if (requests.empty()) return std::vector<int64_t>{};
  std::vector<RowInput> rows;
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationRequest& r = requests[i];
    absl::Status valid = ValidateSamplingParams(r.params);
    if (!valid.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", i, ": ", valid.message()));
    }
    if (!r.params.stop.empty() && model_->tokenizer() == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "request ", i, ": stop sequences need a tokenizer; the model in ",
          model_->directory(), " has none"));
    }
    if (r.prompt_ids.empty() && !r.soft_prompt.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", i, ": empty prompt"));
    }
    RowInput row;
    row.ids = r.prompt_ids;
    row.prompt = r.soft_prompt;
    rows.push_back(std::move(row));
  }
  auto cache = std::make_unique<KVCache>(model_->NewCache(rows.size()));
  ForwardOptions options;
  options.logits = ForwardOptions::Logits::kLast;
  ASSIGN_OR_RETURN(ForwardOutput out,
                   model_->Forward(rows, cache.get(), options));
  if (cache_ == nullptr) {
    cache_ = std::move(cache);
  } else {
    RETURN_IF_ERROR(cache_->AppendRows(*cache));
  }

  std::vector<int64_t> indices;
  for (size_t i = 0; i < requests.size(); ++i) {
    auto s = std::make_unique<Sequence>(requests[i].params);
    s->stop_ids = requests[i].params.stop_ids.empty()
                      ? model_->config().eos_ids
                      : requests[i].params.stop_ids;
    const int64_t index = static_cast<int64_t>(sequences_.size());
    indices.push_back(index);
    active_.push_back(index);
    sequences_.push_back(std::move(s));
    Accept(*sequences_.back(), index,
           sequences_.back()->sampler.Next(out.logits[i]), on_token);
  }
  DropFinished();
  return indices;
}

absl::Status Decoder::Step(const TokenCallback& on_token) {
  torch::InferenceMode inference;
  DropFinished();
  if (active_.empty()) return absl::OkStatus();
  std::vector<RowInput> rows(active_.size());
  for (size_t r = 0; r < active_.size(); ++r) {
    rows[r].ids = {sequences_[active_[r]]->pending};
  }
  ForwardOptions options;
  options.logits = ForwardOptions::Logits::kLast;
  ASSIGN_OR_RETURN(ForwardOutput out,
                   model_->Forward(rows, cache_.get(), options));
  for (size_t r = 0; r < active_.size(); ++r) {
    Sequence& s = *sequences_[active_[r]];
    Accept(s, active_[r], s.sampler.Next(out.logits[r]), on_token);
  }
  DropFinished();
  return absl::OkStatus();
}

void Decoder::DropFinished() {
  std::vector<int64_t> keep_rows, keep_active;
  for (size_t r = 0; r < active_.size(); ++r) {
    if (!sequences_[active_[r]]->done) {
      keep_rows.push_back(static_cast<int64_t>(r));
      keep_active.push_back(active_[r]);
    }
  }
  if (keep_active.size() == active_.size()) return;
  active_ = std::move(keep_active);
  if (active_.empty()) {
    cache_.reset();
    return;
  }
  cache_->SelectRows(keep_rows);
  cache_->Compact();
}

absl::StatusOr<std::vector<GenerationResult>> Generate(
    std::shared_ptr<const TransformerLM> model,
    const std::vector<GenerationRequest>& requests,
    const TokenCallback& on_token) {
  Decoder decoder(std::move(model));
  ASSIGN_OR_RETURN(std::vector<int64_t> indices,
                   decoder.Join(requests, on_token));
  while (decoder.active() > 0) {
    RETURN_IF_ERROR(decoder.Step(on_token));
  }
  std::vector<GenerationResult> results;
  for (int64_t i : indices) results.push_back(decoder.result(i));
  return results;
}

}  // namespace optrec
