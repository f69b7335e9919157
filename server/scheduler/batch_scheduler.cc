#include "server/scheduler/batch_scheduler.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cache/segment_key.h"
#include "core/util/status_macros.h"
#include "core/util/torch_errors.h"

namespace optrec {
namespace {

class RealClock : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};

// How often a waiting runner looks again at deadlines and cancellations
// when nothing else wakes it.
constexpr absl::Duration kPollInterval = absl::Milliseconds(20);

// Tokens of a row's input: its ids, or the sum of its segments.
int64_t InputTokens(const EncodedInput& in) {
  int64_t n = static_cast<int64_t>(in.ids.size());
  for (const auto& seg : in.segments) n += static_cast<int64_t>(seg.size());
  return n;
}

bool IsLate(const PromptModule& module) {
  return module.spec().lower_layers > 0;
}

// Lower-layer states of `segments` (distinct ids), encoded in passes of at
// most `max_tokens` padded positions, similar lengths together, so a batch
// of many misses never becomes one huge pass.
absl::StatusOr<std::vector<torch::Tensor>> EncodeInChunks(
    const TransformerLM& model,
    const std::vector<const std::vector<int32_t>*>& segments, int64_t lower,
    int64_t max_tokens) {
  std::vector<size_t> order(segments.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return segments[a]->size() < segments[b]->size();
  });
  std::vector<torch::Tensor> states(segments.size());
  size_t begin = 0;
  while (begin < order.size()) {
    size_t end = begin + 1;
    // Sorted ascending: the chunk's longest is its last.
    while (end < order.size() &&
           static_cast<int64_t>(segments[order[end]]->size()) *
                   static_cast<int64_t>(end - begin + 1) <=
               max_tokens) {
      ++end;
    }
    std::vector<std::vector<int32_t>> chunk;
    for (size_t i = begin; i < end; ++i) chunk.push_back(*segments[order[i]]);
    ASSIGN_OR_RETURN(std::vector<torch::Tensor> encoded,
                     model.EncodeSegments(chunk, lower));
    for (size_t i = begin; i < end; ++i) {
      states[order[i]] = std::move(encoded[i - begin]);
    }
    begin = end;
  }
  return states;
}

// Final states [N, D] at each row's last valid position.
torch::Tensor LastPositions(const ForwardOutput& out) {
  const int64_t t = out.hidden.size(1);
  std::vector<int64_t> flat;
  for (size_t i = 0; i < out.lengths.size(); ++i) {
    flat.push_back(static_cast<int64_t>(i) * t + out.lengths[i] - 1);
  }
  return out.hidden.reshape({-1, out.hidden.size(2)})
      .index_select(0,
                    torch::tensor(flat, torch::kInt64).to(out.hidden.device()));
}

}  // namespace

std::shared_ptr<Clock> Clock::Real() {
  static const std::shared_ptr<Clock> clock = std::make_shared<RealClock>();
  return clock;
}

absl::Status ValidateSchedulerOptions(const SchedulerOptions& o) {
  auto bad = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(parts...));
  };
  if (o.max_batch_rows < 1) {
    return bad("max_batch_rows must be at least 1, got ", o.max_batch_rows);
  }
  if (o.max_batch_tokens < 1) {
    return bad("max_batch_tokens must be at least 1, got ", o.max_batch_tokens);
  }
  if (o.max_queue_delay_us < 0) {
    return bad("max_queue_delay_us must not be negative, got ",
               o.max_queue_delay_us);
  }
  if (o.max_queued_rows < o.max_batch_rows) {
    return bad("max_queued_rows (", o.max_queued_rows,
               ") must be at least max_batch_rows (", o.max_batch_rows, ")");
  }
  if (o.runner_threads < 1) {
    return bad("runner_threads must be at least 1, got ", o.runner_threads);
  }
  return absl::OkStatus();
}

struct BatchScheduler::Pending {
  BatchRequest request;
  BatchCallback done;
  absl::Time enqueued;
  int64_t prompt_length = 0;
  size_t next_row = 0;  // rows before it are in a batch (guarded by mu_)

  absl::Mutex mu;  // guards the fields below, written by runners
  BatchResult results ABSL_GUARDED_BY(mu);
  size_t rows_done ABSL_GUARDED_BY(mu) = 0;
  bool finished ABSL_GUARDED_BY(mu) = false;

  // Marks the request ended unless it ended already; true when this call
  // ended it (the caller then runs `done`, outside any lock).
  bool Finish() {
    absl::MutexLock lock(&mu);
    if (finished) return false;
    finished = true;
    return true;
  }
};

BatchScheduler::BatchScheduler(std::shared_ptr<const TransformerLM> model,
                               SchedulerOptions options,
                               std::shared_ptr<Clock> clock)
    : model_(std::move(model)),
      options_(std::move(options)),
      clock_(std::move(clock)) {
  for (int i = 0; i < options_.runner_threads; ++i) {
    runners_.emplace_back([this] { RunnerLoop(); });
  }
}

BatchScheduler::~BatchScheduler() {
  Shutdown();
  for (std::thread& t : runners_) t.join();
}

void BatchScheduler::Shutdown() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
}

int64_t BatchScheduler::queued_rows() const {
  absl::MutexLock lock(&mu_);
  return queued_rows_;
}

BatchScheduler::Counters BatchScheduler::counters() const {
  absl::MutexLock lock(&mu_);
  return counters_;
}

void BatchScheduler::Submit(BatchRequest request, BatchCallback done) {
  auto refuse = [&done](absl::Status status) { done(std::move(status)); };
  if (request.module == nullptr || request.rows.empty()) {
    return refuse(
        absl::InvalidArgumentError("a batch request needs a module and rows"));
  }
  const TaskKind kind = request.module->spec().kind;
  const bool wants_options = request.output == RowOutput::kOptionProbabilities;
  if ((kind == TaskKind::kScore) != wants_options ||
      (!wants_options && kind != TaskKind::kRetrieve)) {
    return refuse(absl::InvalidArgumentError(
        absl::StrCat("task ", request.module->spec().task, " is a ",
                     TaskKindName(kind), " task; it cannot give ",
                     wants_options ? "option probabilities" : "embeddings")));
  }
  const int64_t prompt = request.module->spec().prompt_length;
  const bool late = IsLate(*request.module);
  for (size_t r = 0; r < request.rows.size(); ++r) {
    const EncodedInput& in = request.rows[r];
    const int64_t tokens = InputTokens(in);
    const bool empty_segment =
        std::any_of(in.segments.begin(), in.segments.end(),
                    [](const auto& seg) { return seg.empty(); });
    const int64_t parts = late ? request.module->segment().size(0) : int64_t{0};
    const bool parts_fit =
        in.segment_part.size() == in.segments.size() &&
        std::all_of(in.segment_part.begin(), in.segment_part.end(),
                    [parts](int p) { return p >= 0 && p < parts; });
    const bool well_formed = late ? !in.segments.empty() && in.ids.empty() &&
                                        !empty_segment && parts_fit
                                  : !in.ids.empty() && in.segments.empty();
    if (!well_formed) {
      return refuse(absl::InvalidArgumentError(absl::StrCat(
          "row ", r, " of task ", request.module->spec().task, " must be ",
          late ? "non-empty segments (the module uses late interaction)"
               : "token ids")));
    }
    const int64_t length = prompt + tokens;
    if (length > model_->config().max_positions) {
      return refuse(absl::InvalidArgumentError(
          absl::StrCat("row ", r, " has ", tokens, " tokens; with the ", prompt,
                       "-vector prompt it must fit the "
                       "model's ",
                       model_->config().max_positions, " positions")));
    }
  }
  auto pending = std::make_shared<Pending>();
  pending->prompt_length = prompt;
  pending->done = std::move(done);
  pending->request = std::move(request);
  {
    absl::MutexLock lock(&pending->mu);
    pending->results.resize(pending->request.rows.size());
  }
  const int64_t rows = static_cast<int64_t>(pending->request.rows.size());
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    pending->enqueued = clock_->Now();
    if (stopping_) {
      refused = absl::UnavailableError("the scheduler is shutting down");
    } else if (pending->request.deadline <= pending->enqueued) {
      ++counters_.expired;
      refused = absl::DeadlineExceededError(
          "the deadline passed before the request was queued");
    } else if (queued_rows_ + rows > options_.max_queued_rows) {
      ++counters_.refused;
      refused = absl::ResourceExhaustedError(absl::StrCat(
          "the queue is full (", queued_rows_, " rows waiting, at most ",
          options_.max_queued_rows, "); retry later"));
    } else {
      queue_.push_back(pending);
      queued_rows_ += rows;
    }
  }
  if (!refused.ok()) pending->done(refused);
}

bool BatchScheduler::BatchReady() const {
  if (queue_.empty()) return false;
  if (stopping_ || queued_rows_ >= options_.max_batch_rows) return true;
  const absl::Duration waited = clock_->Now() - queue_.front()->enqueued;
  if (waited >= absl::Microseconds(options_.max_queue_delay_us)) return true;
  // Enough positions queued to fill a batch by tokens.
  int64_t longest = 0, count = 0;
  for (const auto& p : queue_) {
    for (size_t r = p->next_row; r < p->request.rows.size(); ++r) {
      longest = std::max<int64_t>(
          longest, p->prompt_length + InputTokens(p->request.rows[r]));
      ++count;
    }
  }
  return longest * count >= options_.max_batch_tokens;
}

std::vector<BatchScheduler::Dropped> BatchScheduler::DropExpired() {
  const absl::Time now = clock_->Now();
  std::vector<Dropped> dropped;
  for (auto it = queue_.begin(); it != queue_.end();) {
    Pending& p = **it;
    const bool cancelled = p.request.cancelled && p.request.cancelled();
    if (!cancelled && p.request.deadline > now) {
      ++it;
      continue;
    }
    queued_rows_ -= static_cast<int64_t>(p.request.rows.size() - p.next_row);
    if (cancelled) {
      ++counters_.cancelled;
      dropped.push_back(
          {*it, absl::CancelledError("the request was cancelled")});
    } else {
      ++counters_.expired;
      dropped.push_back(
          {*it, absl::DeadlineExceededError(
                    "the deadline passed while the request was queued")});
    }
    it = queue_.erase(it);
  }
  return dropped;
}

std::vector<BatchScheduler::Slice> BatchScheduler::NextBatch() {
  std::vector<Slice> batch;
  int64_t rows = 0, longest = 0;
  while (!queue_.empty() && rows < options_.max_batch_rows) {
    std::shared_ptr<Pending> p = queue_.front();
    Slice slice{p, p->next_row, p->next_row};
    while (slice.end < p->request.rows.size() &&
           rows < options_.max_batch_rows) {
      const int64_t length =
          p->prompt_length + InputTokens(p->request.rows[slice.end]);
      const int64_t wider = std::max(longest, length);
      if (rows > 0 && wider * (rows + 1) > options_.max_batch_tokens) break;
      longest = wider;
      ++rows;
      ++slice.end;
    }
    if (slice.end == slice.begin) break;  // the token limit is reached
    p->next_row = slice.end;
    queued_rows_ -= static_cast<int64_t>(slice.end - slice.begin);
    batch.push_back(std::move(slice));
    if (p->next_row < p->request.rows.size()) break;  // the batch is full
    queue_.pop_front();
  }
  return batch;
}

void BatchScheduler::RunnerLoop() {
  while (true) {
    std::vector<Slice> batch;
    std::vector<Dropped> dropped;
    bool exit = false;
    {
      absl::MutexLock lock(&mu_);
      dropped = DropExpired();
      if (!dropped.empty()) {
        // Their callbacks first, then look again.
      } else if (queue_.empty() && stopping_) {
        exit = true;
      } else if (BatchReady()) {
        batch = NextBatch();
      } else {
        // Wake for new rows, shutdown, or when the oldest row's wait ends.
        absl::Duration wait = kPollInterval;
        if (!queue_.empty()) {
          const absl::Duration left =
              queue_.front()->enqueued +
              absl::Microseconds(options_.max_queue_delay_us) - clock_->Now();
          wait = std::min(wait, std::max(left, absl::ZeroDuration()));
        }
        const int64_t before = queued_rows_;
        auto changed = [this, before]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || queued_rows_ != before;
        };
        mu_.AwaitWithTimeout(absl::Condition(&changed), wait);
      }
    }
    // Callbacks run without the lock: they may submit again.
    for (Dropped& d : dropped) {
      if (d.request->Finish()) d.request->done(d.status);
    }
    if (exit) return;
    if (!batch.empty()) RunBatch(batch);
  }
}

absl::StatusOr<torch::Tensor> BatchScheduler::LastStates(
    const std::vector<Slice>& batch) {
  // Plain rows, and late rows by split, with their places in the batch.
  std::vector<RowInput> plain;
  std::vector<int64_t> plain_at;
  struct Late {
    std::vector<const EncodedInput*> inputs;
    std::vector<const PromptModule*> modules;
    std::vector<int64_t> at;
  };
  std::map<int64_t, Late> late;
  int64_t b = 0;
  for (const Slice& s : batch) {
    const BatchRequest& r = s.request->request;
    const bool item = r.output == RowOutput::kItemEmbedding;
    for (size_t i = s.begin; i < s.end; ++i, ++b) {
      if (IsLate(*r.module)) {
        Late& l = late[r.module->spec().lower_layers];
        l.inputs.push_back(&r.rows[i]);
        l.modules.push_back(r.module.get());
        l.at.push_back(b);
      } else {
        plain.push_back(r.module->MakeRow(r.rows[i], item));
        plain_at.push_back(b);
      }
    }
  }
  const auto dev = model_->device().device;
  torch::Tensor h =
      torch::empty({b, model_->config().hidden_size},
                   torch::dtype(model_->device().dtype).device(dev));
  ForwardOptions options;
  options.logits = ForwardOptions::Logits::kNone;
  if (!plain.empty()) {
    ASSIGN_OR_RETURN(ForwardOutput out,
                     model_->Forward(plain, nullptr, options));
    h.index_copy_(0, torch::tensor(plain_at, torch::kInt64).to(dev),
                  LastPositions(out));
  }
  for (const auto& [lower, l] : late) {
    // Every distinct segment of the split's rows through the cache: the
    // misses of all requests in the batch encoded together, in chunks.
    std::vector<const std::vector<int32_t>*> unique;
    std::vector<SegmentKey> keys;
    std::map<std::vector<int32_t>, size_t> index;
    std::vector<size_t> of_segment;  // per row segment, in order
    for (const EncodedInput* in : l.inputs) {
      for (const auto& seg : in->segments) {
        auto [it, fresh] = index.emplace(seg, unique.size());
        if (fresh) {
          unique.push_back(&seg);
          keys.push_back(SegmentKey::Make(model_->fingerprint(), lower, seg));
        }
        of_segment.push_back(it->second);
      }
    }
    auto encode = [&, lower = lower](const std::vector<size_t>& missing) {
      std::vector<const std::vector<int32_t>*> wanted;
      for (size_t i : missing) wanted.push_back(unique[i]);
      return EncodeInChunks(*model_, wanted, lower, options_.max_batch_tokens);
    };
    std::vector<torch::Tensor> distinct;
    if (options_.segment_cache != nullptr) {
      ASSIGN_OR_RETURN(distinct,
                       options_.segment_cache->GetOrEncode(keys, encode));
    } else {
      std::vector<size_t> all(unique.size());
      for (size_t i = 0; i < all.size(); ++i) all[i] = i;
      ASSIGN_OR_RETURN(distinct, encode(all));
    }
    // Each distinct state moves to the device once, shared by its rows.
    for (torch::Tensor& t : distinct) t = t.to(dev, model_->device().dtype);
    std::vector<torch::Tensor> states;
    for (size_t u : of_segment) states.push_back(distinct[u]);
    std::vector<JointRowInput> rows;
    size_t next = 0;
    for (size_t r = 0; r < l.inputs.size(); ++r) {
      const size_t n = l.inputs[r]->segments.size();
      rows.push_back(l.modules[r]->MakeJointRow(
          *l.inputs[r], std::vector<torch::Tensor>(states.begin() + next,
                                                   states.begin() + next + n)));
      next += n;
    }
    ASSIGN_OR_RETURN(ForwardOutput out,
                     model_->ForwardJoint(rows, lower, options));
    h.index_copy_(0, torch::tensor(l.at, torch::kInt64).to(dev),
                  LastPositions(out));
  }
  return h;
}

void BatchScheduler::RunBatch(const std::vector<Slice>& batch) {
  int64_t rows = 0, longest = 0;
  std::vector<BatchResult> results(batch.size());
  absl::Status failure;
  for (const Slice& s : batch) {
    for (size_t i = s.begin; i < s.end; ++i) {
      ++rows;
      longest = std::max<int64_t>(
          longest,
          s.request->prompt_length + InputTokens(s.request->request.rows[i]));
    }
  }
  try {
    torch::InferenceMode inference;
    absl::StatusOr<torch::Tensor> states = LastStates(batch);
    if (!states.ok()) {
      // Rows were checked at Submit, so this is the server's failure.
      failure = absl::InternalError(
          absl::StrCat("the batch failed: ", states.status().message()));
    } else {
      const torch::Tensor& h = *states;  // [B, D]
      int64_t at = 0;
      for (size_t b = 0; b < batch.size(); ++b) {
        const BatchRequest& r = batch[b].request->request;
        const int64_t n = static_cast<int64_t>(batch[b].end - batch[b].begin);
        torch::Tensor mine = h.narrow(0, at, n);
        at += n;
        torch::Tensor values =
            r.output == RowOutput::kOptionProbabilities
                ? torch::softmax(
                      r.module->OptionLogits(mine).to(torch::kFloat32), -1)
                : r.module->Embed(mine, r.output == RowOutput::kItemEmbedding)
                      .to(torch::kFloat32);
        values = values.to(torch::kCPU).contiguous();
        BatchResult vectors;
        for (int64_t i = 0; i < n; ++i) {
          const float* v = values[i].data_ptr<float>();
          vectors.emplace_back(v, v + values.size(1));
        }
        results[b] = std::move(vectors);
      }
    }
  } catch (const std::exception& e) {
    failure = absl::InternalError(
        absl::StrCat("the batch failed: ", TorchErrorMessage(e)));
  }
  if (observer_) {
    std::vector<std::pair<const PromptModule*, int64_t>> per_module;
    for (const Slice& s : batch) {
      per_module.emplace_back(s.request->request.module.get(),
                              static_cast<int64_t>(s.end - s.begin));
    }
    observer_(per_module, longest * rows);
  }
  {
    absl::MutexLock lock(&mu_);
    ++counters_.batches;
    counters_.rows += rows;
    counters_.tokens += longest * rows;
    if (!failure.ok()) counters_.failed += static_cast<int64_t>(batch.size());
  }
  for (size_t b = 0; b < batch.size(); ++b) {
    Pending& p = *batch[b].request;
    if (!failure.ok()) {
      if (p.Finish()) p.done(failure);
      continue;
    }
    bool complete = false;
    BatchResult all;
    {
      absl::MutexLock lock(&p.mu);
      if (p.finished) continue;  // failed or dropped meanwhile
      BatchResult& vectors = results[b];
      for (size_t i = 0; i < vectors.size(); ++i) {
        p.results[batch[b].begin + i] = std::move(vectors[i]);
      }
      p.rows_done += vectors.size();
      if (p.rows_done == p.request.rows.size()) {
        p.finished = true;
        complete = true;
        all = std::move(p.results);
      }
    }
    if (complete) p.done(std::move(all));
  }
}

}  // namespace optrec
