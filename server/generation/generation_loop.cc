#include "server/generation/generation_loop.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/model/sampling.h"

namespace optrec {
namespace {

// A decoder keeps every finished sequence's result; an idle one that has
// seen this many is replaced, so memory stays bounded.
constexpr int64_t kDecoderRenewAfter = 4096;

}  // namespace

struct GenerationLoop::Running {
  GenerationJob job;
};

absl::Status ValidateGenerationLoopOptions(const GenerationLoopOptions& o) {
  if (o.max_active < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_active must be at least 1, got ", o.max_active));
  }
  if (o.max_queued < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queued must not be negative, got ", o.max_queued));
  }
  return absl::OkStatus();
}

GenerationLoop::GenerationLoop(std::shared_ptr<const TransformerLM> model,
                               GenerationLoopOptions options,
                               std::shared_ptr<Clock> clock)
    : model_(std::move(model)),
      options_(options),
      clock_(std::move(clock)),
      thread_([this] { Loop(); }) {}

GenerationLoop::~GenerationLoop() {
  Shutdown();
  thread_.join();
}

void GenerationLoop::Shutdown() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
}

int64_t GenerationLoop::active() const {
  absl::MutexLock lock(&mu_);
  return active_count_;
}

int64_t GenerationLoop::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(queue_.size());
}

absl::Status GenerationLoop::Submit(GenerationJob job) {
  absl::Status valid = ValidateSamplingParams(job.request.params);
  if (!valid.ok()) return valid;
  const int64_t prompt =
      job.request.soft_prompt.defined() ? job.request.soft_prompt.size(0) : 0;
  const int64_t length = prompt +
                         static_cast<int64_t>(job.request.prompt_ids.size()) +
                         job.request.params.max_tokens;
  if (job.request.prompt_ids.empty() ||
      length > model_->config().max_positions) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens: the input (", job.request.prompt_ids.size(),
        " tokens and a ", prompt, "-vector prompt) plus ",
        job.request.params.max_tokens, " new tokens must fit the model's ",
        model_->config().max_positions, " positions"));
  }
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("generation is shutting down");
  if (job.deadline <= clock_->Now()) {
    return absl::DeadlineExceededError("the deadline passed already");
  }
  if (static_cast<int64_t>(queue_.size()) >= options_.max_queued) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the generation queue is full (", queue_.size(),
                     " waiting); retry later"));
  }
  queue_.push_back(std::move(job));
  return absl::OkStatus();
}

void GenerationLoop::Finish(int64_t sequence, absl::Status status,
                            FinishReason finish) {
  auto it = running_.find(sequence);
  if (it == running_.end()) return;
  std::unique_ptr<Running> r = std::move(it->second);
  running_.erase(it);
  int64_t tokens = 0;
  if (decoder_ != nullptr && sequence < joined_) {
    tokens = static_cast<int64_t>(decoder_->result(sequence).ids.size());
  }
  {
    absl::MutexLock lock(&mu_);
    --active_count_;
  }
  r->job.on_done(std::move(status), finish, tokens);
}

void GenerationLoop::Admit() {
  std::vector<GenerationJob> take;
  std::vector<std::pair<GenerationJob, absl::Status>> dropped;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    while (!queue_.empty() &&
           active_count_ + static_cast<int64_t>(take.size()) <
               options_.max_active) {
      GenerationJob job = std::move(queue_.front());
      queue_.pop_front();
      if (job.cancelled && job.cancelled()) {
        dropped.emplace_back(std::move(job),
                             absl::CancelledError("the call was cancelled"));
      } else if (job.deadline <= now) {
        dropped.emplace_back(
            std::move(job),
            absl::DeadlineExceededError("the deadline passed while queued"));
      } else {
        take.push_back(std::move(job));
      }
    }
    active_count_ += static_cast<int64_t>(take.size());
  }
  for (auto& [job, status] : dropped) {
    job.on_done(status, FinishReason::kCancelled, 0);
  }
  if (take.empty()) return;
  if (decoder_ == nullptr ||
      (running_.empty() && joined_ >= kDecoderRenewAfter)) {
    decoder_ = std::make_unique<Decoder>(model_);
    joined_ = 0;
  }
  // The decoder numbers sequences in the order they join.
  std::vector<GenerationRequest> requests;
  for (size_t i = 0; i < take.size(); ++i) {
    requests.push_back(take[i].request);
    auto r = std::make_unique<Running>();
    r->job = std::move(take[i]);
    running_[joined_ + static_cast<int64_t>(i)] = std::move(r);
  }
  const int64_t first = joined_;
  auto on_token = [this](int64_t sequence, int32_t, const std::string& text) {
    auto it = running_.find(sequence);
    if (it == running_.end()) return false;
    if (!text.empty()) it->second->job.on_text(text);
    return true;
  };
  absl::StatusOr<std::vector<int64_t>> joined =
      decoder_->Join(requests, on_token);
  if (!joined.ok()) {
    // Nothing joined: end these sequences, the others go on.
    for (size_t i = 0; i < requests.size(); ++i) {
      Finish(first + static_cast<int64_t>(i),
             absl::Status(
                 joined.status().code() == absl::StatusCode::kInvalidArgument
                     ? absl::StatusCode::kInvalidArgument
                     : absl::StatusCode::kInternal,
                 joined.status().message()),
             FinishReason::kCancelled);
    }
    return;
  }
  joined_ += static_cast<int64_t>(requests.size());
  for (int64_t sequence : *joined) {
    if (decoder_->finished(sequence)) {
      Finish(sequence, absl::OkStatus(), decoder_->result(sequence).finish);
    }
  }
}

void GenerationLoop::EndCancelledAndExpired() {
  const absl::Time now = clock_->Now();
  std::vector<std::pair<int64_t, absl::Status>> ended;
  for (const auto& [sequence, r] : running_) {
    if (r->job.cancelled && r->job.cancelled()) {
      ended.emplace_back(sequence,
                         absl::CancelledError("the call was cancelled"));
    } else if (r->job.deadline <= now) {
      ended.emplace_back(sequence, absl::DeadlineExceededError(
                                       "the deadline passed while generating"));
    }
  }
  for (auto& [sequence, status] : ended) {
    decoder_->Cancel(sequence);  // its row leaves the batch at the next step
    Finish(sequence, status, FinishReason::kCancelled);
  }
}

void GenerationLoop::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !queue_.empty() || active_count_ > 0;
      };
      mu_.Await(absl::Condition(&work));
      if (stopping_ && queue_.empty() && active_count_ == 0) return;
    }
    Admit();
    if (running_.empty()) continue;
    EndCancelledAndExpired();
    if (running_.empty()) continue;
    auto on_token = [this](int64_t sequence, int32_t, const std::string& text) {
      auto it = running_.find(sequence);
      if (it == running_.end()) return false;
      if (!text.empty()) it->second->job.on_text(text);
      return true;
    };
    absl::Status stepped = decoder_->Step(on_token);
    std::vector<int64_t> sequences;
    for (const auto& [sequence, r] : running_) sequences.push_back(sequence);
    if (!stepped.ok()) {
      // Every sequence of the failed step ends; a fresh decoder serves the
      // next ones.
      for (int64_t sequence : sequences) {
        Finish(sequence,
               absl::InternalError(
                   absl::StrCat("generation failed: ", stepped.message())),
               FinishReason::kCancelled);
      }
      decoder_.reset();
      joined_ = 0;
      continue;
    }
    for (int64_t sequence : sequences) {
      if (decoder_->finished(sequence)) {
        Finish(sequence, absl::OkStatus(), decoder_->result(sequence).finish);
      }
    }
  }
}

}  // namespace optrec
