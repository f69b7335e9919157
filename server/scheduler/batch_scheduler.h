// Coalesces the rows of many requests, for any tasks, into shared forward
// passes: the scheduler behind Score and Embed. A request is a group of
// rows (one per candidate, or one text to embed), each with its task's
// module; the scheduler queues them, cuts batches under limits on rows and
// tokens per forward pass once a batch is full or its oldest row has waited
// the maximum queue delay, runs each batch through the frozen backbone with
// every row's own module (prompts, options, adapters, projections), and
// hands every request its results.
//
// Deadlines and cancellation are honoured before compute: a request whose
// deadline passed (or that was cancelled) while queued gets
// DEADLINE_EXCEEDED (CANCELLED) and its rows never run. A bounded queue
// refuses new rows with RESOURCE_EXHAUSTED instead of letting latency grow
// without end. A LibTorch failure inside a batch fails exactly the requests
// with rows in that batch, with INTERNAL and the message; the scheduler
// keeps serving.
#ifndef OPTREC_SERVER_SCHEDULER_BATCH_SCHEDULER_H_
#define OPTREC_SERVER_SCHEDULER_BATCH_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cache/state_cache.h"
#include "core/model/transformer.h"
#include "tuning/module/prompt_module.h"
#include "tuning/tasks/render.h"

namespace optrec {

struct SchedulerOptions {
  // Most rows in one forward pass; at least 1.
  int64_t max_batch_rows = 64;
  // Most positions (rows x the longest row, prompts included) in one
  // forward pass; a single longer row still runs alone.
  int64_t max_batch_tokens = 32768;
  // How long the oldest queued row may wait for more rows before its batch
  // runs anyway, in microseconds; 0 = run as soon as a batch runner is free.
  int64_t max_queue_delay_us = 2000;
  // Rows that may wait at once; a request that would exceed it is refused
  // with RESOURCE_EXHAUSTED. At least max_batch_rows.
  int64_t max_queued_rows = 4096;
  // Threads running batches (each runs one forward pass at a time).
  int runner_threads = 1;
  // Late interaction (modules whose spec has lower_layers > 0): where the
  // segments' lower-layer states are looked up, the misses of a whole
  // batch encoded in one pass (shared by every task and request). Null:
  // every batch encodes its segments afresh.
  std::shared_ptr<SegmentStateCache> segment_cache;
};

// InvalidArgument naming the field for options that cannot work.
absl::Status ValidateSchedulerOptions(const SchedulerOptions& options);

// What a row computes from its final hidden state.
enum class RowOutput {
  kOptionProbabilities,  // softmax of the module's option scores [C]
  kUserEmbedding,        // the user tower's normalised embedding [E]
  kItemEmbedding,        // the item tower's
};

// One request: rows of one module (the scheduler mixes requests of any
// modules in a batch). The rows of a late-interaction module (spec
// lower_layers > 0) are segmented inputs (EncodedInput::segments): their
// segments' lower layers come from the segment cache, and their rows run
// through the upper layers only, in one joint pass per split.
struct BatchRequest {
  std::shared_ptr<const PromptModule> module;
  RowOutput output = RowOutput::kOptionProbabilities;
  std::vector<EncodedInput> rows;  // at least one
  absl::Time deadline = absl::InfiniteFuture();
  // Polled before the rows run; true drops them with CANCELLED. May be
  // empty.
  std::function<bool()> cancelled;
};

// One vector per row, in the request's order.
using BatchResult = std::vector<std::vector<float>>;
using BatchCallback = std::function<void(absl::StatusOr<BatchResult>)>;

// The time source the scheduler reads deadlines and queue delays from, so
// that tests can drive it.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // The wall clock.
  static std::shared_ptr<Clock> Real();
};

// Thread-safe: Submit may be called from any thread.
class BatchScheduler {
 public:
  // `model` and `clock` are shared; runner threads start at once.
  BatchScheduler(std::shared_ptr<const TransformerLM> model,
                 SchedulerOptions options,
                 std::shared_ptr<Clock> clock = Clock::Real());
  // Stops accepting, finishes every queued request, joins the runners.
  ~BatchScheduler();

  BatchScheduler(const BatchScheduler&) = delete;
  BatchScheduler& operator=(const BatchScheduler&) = delete;

  // Queues the request; `done` is called exactly once, from a runner
  // thread (or from Submit itself when the request is refused at once:
  // InvalidArgument for an empty or malformed request, RESOURCE_EXHAUSTED
  // when the queue is full, UNAVAILABLE after shutdown began,
  // DEADLINE_EXCEEDED when the deadline passed already).
  void Submit(BatchRequest request, BatchCallback done);

  // Stops accepting requests; queued ones still run. Idempotent.
  void Shutdown();

  // Called after every batch with each module's row count in it and the
  // batch's positions (padding included), from the runner thread; for
  // per-task metrics. Set it before the first Submit.
  using BatchObserver = std::function<void(
      const std::vector<std::pair<const PromptModule*, int64_t>>& rows,
      int64_t tokens)>;
  void SetObserver(BatchObserver observer) { observer_ = std::move(observer); }

  // Rows waiting now.
  int64_t queued_rows() const;

  // Totals since start, for metrics.
  struct Counters {
    int64_t batches = 0;
    int64_t rows = 0;     // rows run
    int64_t tokens = 0;   // positions run (padding included)
    int64_t refused = 0;  // requests refused for a full queue
    int64_t expired = 0;  // requests dropped for their deadline
    int64_t cancelled = 0;
    int64_t failed = 0;  // requests failed by a batch error
  };
  Counters counters() const;

 private:
  struct Pending;  // one submitted request and its progress
  struct Slice {   // rows [begin, end) of a pending request in a batch
    std::shared_ptr<Pending> request;
    size_t begin = 0, end = 0;
  };
  struct Dropped {  // a request taken off the queue, and why
    std::shared_ptr<Pending> request;
    absl::Status status;
  };

  void RunnerLoop();
  // Takes the next batch from the queue; empty once shut down and drained.
  std::vector<Slice> NextBatch() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool BatchReady() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes queued requests whose deadline passed or that were cancelled off
  // the queue; the caller ends them once it released the lock.
  std::vector<Dropped> DropExpired() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RunBatch(const std::vector<Slice>& batch);
  // Final states [B, D] at the last position of every row of `batch`, in
  // order: plain rows in one forward pass, late-interaction rows in one
  // joint pass per split. LibTorch errors propagate as exceptions.
  absl::StatusOr<torch::Tensor> LastStates(const std::vector<Slice>& batch);

  const std::shared_ptr<const TransformerLM> model_;
  const SchedulerOptions options_;
  const std::shared_ptr<Clock> clock_;

  mutable absl::Mutex mu_;  // guards the queue, the counters and stopping_
  // Requests with rows still to run, oldest first; the front one may be
  // partly taken.
  std::deque<std::shared_ptr<Pending>> queue_ ABSL_GUARDED_BY(mu_);
  int64_t queued_rows_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  Counters counters_ ABSL_GUARDED_BY(mu_);

  BatchObserver observer_;  // set before traffic, then only read
  std::vector<std::thread> runners_;
};

}  // namespace optrec

#endif  // OPTREC_SERVER_SCHEDULER_BATCH_SCHEDULER_H_
