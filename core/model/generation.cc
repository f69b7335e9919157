#include "core/model/generation.h"

#include <algorithm>
#include <limits>

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
  // Text decoding in the context of the prompt, so that spaces and
  // multi-token characters come out as in a whole decode; null without a
  // tokenizer.
  std::unique_ptr<DecodeStream> stream;
  // Tokens that can still be fed before the model's position limit.
  int64_t positions_left = 0;
  size_t emitted = 0;  // bytes of result.text already reported
  bool done = false;
  int32_t pending = -1;  // sampled, not yet fed to the model
  RowAdapter adapter;    // applied at every step of this sequence

  explicit Sequence(const SamplingParams& p) : params(p), sampler(p) {}
};

namespace {

// Bytes at the end of `text` that may not be reported yet because they could
// be the start of a stop sequence. (Incomplete characters never reach the
// text: DecodeStream holds them.)
size_t HeldBack(const std::string& text, const std::vector<std::string>& stop) {
  size_t held = 0;
  for (const std::string& s : stop) {
    for (size_t len = std::min(s.size() - 1, text.size()); len > held; --len) {
      if (text.compare(text.size() - len, len, s, 0, len) == 0) {
        held = len;
        break;
      }
    }
  }
  return held;
}

}  // namespace

Decoder::Decoder(std::shared_ptr<const TransformerLM> model)
    : model_(std::move(model)) {}

Decoder::~Decoder() = default;

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
  const bool stop_id =
      std::find(s.stop_ids.begin(), s.stop_ids.end(), id) != s.stop_ids.end();
  if (stop_id) {
    s.done = true;
    s.result.finish = FinishReason::kStopId;
  } else {
    s.result.ids.push_back(id);
    s.pending = id;
    --s.positions_left;
    if (s.stream != nullptr) {
      // An id the tokenizer does not know (models often pad their
      // vocabulary) adds no text.
      auto piece = s.stream->Push(id);
      if (piece.ok()) s.result.text += *piece;
    }
    // positions_left < 0: this token would not fit the position table.
    if (static_cast<int64_t>(s.result.ids.size()) >= s.params.max_tokens ||
        s.positions_left < 0) {
      s.done = true;
      s.result.finish = FinishReason::kLength;
    }
  }
  if (s.done && s.stream != nullptr) {
    auto rest = s.stream->Finish();
    if (rest.ok()) s.result.text += *rest;
  }
  for (const std::string& stop : s.params.stop) {
    // Text before `emitted` holds no stop sequence's start (see HeldBack).
    size_t at = s.result.text.find(stop, s.emitted);
    if (at != std::string::npos) {
      s.result.text.resize(at);
      s.done = true;
      s.result.finish = FinishReason::kStopSequence;
    }
  }
  size_t ready = s.result.text.size();
  if (!s.done) ready -= HeldBack(s.result.text, s.params.stop);
  std::string delta;
  if (ready > s.emitted) {
    delta = s.result.text.substr(s.emitted, ready - s.emitted);
    s.emitted = ready;
  }
  if (on_token && (!stop_id || !delta.empty())) {
    if (!on_token(index, stop_id ? -1 : id, delta) && !s.done) {
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
    if (r.prompt_ids.empty() &&
        (!r.soft_prompt.defined() || r.soft_prompt.size(0) == 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", i, ": empty prompt"));
    }
    RowInput row;
    row.ids = r.prompt_ids;
    row.prompt = r.soft_prompt;
    row.adapter = r.adapter;
    rows.push_back(std::move(row));
  }
  auto cache = std::make_unique<KVCache>(model_->NewCache(rows.size()));
  ForwardOptions options;
  options.logits = ForwardOptions::Logits::kLast;
  ASSIGN_OR_RETURN(ForwardOutput out,
                   model_->Forward(rows, cache.get(), options));

  // Sample every first token before changing any state, so that a failure
  // leaves the decoder as it was.
  std::vector<std::unique_ptr<Sequence>> fresh;
  std::vector<int32_t> first;
  const ModelConfig& config = model_->config();
  for (size_t i = 0; i < requests.size(); ++i) {
    auto s = std::make_unique<Sequence>(requests[i].params);
    s->adapter = requests[i].adapter;
    s->stop_ids = requests[i].params.stop_ids.empty()
                      ? config.eos_ids
                      : requests[i].params.stop_ids;
    // Learned position tables end; RoPE models may run on.
    s->positions_left = config.family == Family::kGpt2
                            ? config.max_positions - out.lengths[i]
                            : std::numeric_limits<int64_t>::max();
    if (model_->shared_tokenizer() != nullptr) {
      s->stream = std::make_unique<DecodeStream>(model_->shared_tokenizer(),
                                                 /*skip_special=*/true);
      for (int32_t id : requests[i].prompt_ids) (void)s->stream->Push(id);
    }
    ASSIGN_OR_RETURN(int32_t id, s->sampler.Next(out.logits[i]));
    first.push_back(id);
    fresh.push_back(std::move(s));
  }
  if (cache_ == nullptr) {
    cache_ = std::move(cache);
  } else {
    RETURN_IF_ERROR(cache_->AppendRows(*cache));
  }
  std::vector<int64_t> indices;
  for (size_t i = 0; i < fresh.size(); ++i) {
    const int64_t index = static_cast<int64_t>(sequences_.size());
    indices.push_back(index);
    active_.push_back(index);
    sequences_.push_back(std::move(fresh[i]));
    Accept(*sequences_.back(), index, first[i], on_token);
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
    rows[r].adapter = sequences_[active_[r]]->adapter;
  }
  ForwardOptions options;
  options.logits = ForwardOptions::Logits::kLast;
  ASSIGN_OR_RETURN(ForwardOutput out,
                   model_->Forward(rows, cache_.get(), options));
  // Sample all rows first: a failure then fails the step as a whole.
  std::vector<int32_t> next(active_.size());
  for (size_t r = 0; r < active_.size(); ++r) {
    auto id = sequences_[active_[r]]->sampler.Next(out.logits[r]);
    if (!id.ok()) {
      cache_->AbortStep();  // the fed tokens will be fed again on retry
      return id.status();
    }
    next[r] = *id;
  }
  for (size_t r = 0; r < active_.size(); ++r) {
    Accept(*sequences_[active_[r]], active_[r], next[r], on_token);
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
  // keep_rows are indices of current rows, always in range.
  (void)cache_->SelectRows(keep_rows);
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
