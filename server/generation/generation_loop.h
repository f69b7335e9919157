// Continuous batching for generation: one thread drives a core Decoder
// (core/model/generation.h) over every active sequence, whatever its task;
// new sequences join and finished ones leave between decoding steps, so a
// long generation never holds up a short one. Each sequence streams its new
// text through its own callback as it is decoded.
//
// Deadlines and cancellation are checked before every step: an expired or
// cancelled sequence leaves at once (DEADLINE_EXCEEDED / CANCELLED) and its
// row leaves the running batch. A bounded queue refuses new sequences with
// RESOURCE_EXHAUSTED. A failing step ends exactly the sequences of that
// step with INTERNAL; the loop goes on.
#ifndef OPTREC_SERVER_GENERATION_GENERATION_LOOP_H_
#define OPTREC_SERVER_GENERATION_GENERATION_LOOP_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/model/generation.h"
#include "server/scheduler/batch_scheduler.h"

namespace optrec {

struct GenerationLoopOptions {
  // Sequences decoded together at most; more wait in the queue.
  int64_t max_active = 32;
  // Sequences that may wait; beyond it Submit refuses.
  int64_t max_queued = 256;
};

// InvalidArgument naming the field for options that cannot work.
absl::Status ValidateGenerationLoopOptions(const GenerationLoopOptions& o);

// One sequence to generate.
struct GenerationJob {
  GenerationRequest request;  // prompt ids, soft prompt, adapter, sampling
  absl::Time deadline = absl::InfiniteFuture();
  // Polled before every step; true ends the sequence with CANCELLED. May be
  // empty.
  std::function<bool()> cancelled;
  // New text as it becomes final (never empty), from the loop thread.
  std::function<void(const std::string& text)> on_text;
  // Called exactly once when the sequence ends: OK with why it finished
  // and how many tokens it generated, or the error that ended it.
  std::function<void(absl::Status status, FinishReason finish, int64_t tokens)>
      on_done;
};

// Thread-safe: Submit may be called from any thread.
class GenerationLoop {
 public:
  GenerationLoop(std::shared_ptr<const TransformerLM> model,
                 GenerationLoopOptions options,
                 std::shared_ptr<Clock> clock = Clock::Real());
  // Stops accepting, finishes every queued and active sequence, joins the
  // loop thread.
  ~GenerationLoop();

  GenerationLoop(const GenerationLoop&) = delete;
  GenerationLoop& operator=(const GenerationLoop&) = delete;

  // Queues a sequence. On an error the job's callbacks are never called:
  // RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE after shutdown
  // began, DEADLINE_EXCEEDED when the deadline passed already,
  // InvalidArgument for sampling parameters Decoder refuses or a prompt
  // plus max_tokens longer than the model's positions.
  absl::Status Submit(GenerationJob job);

  // Stops accepting; queued and active sequences still finish. Idempotent.
  void Shutdown();

  // Sequences decoding now and waiting now.
  int64_t active() const;
  int64_t queued() const;

 private:
  struct Running;

  void Loop();
  // Starts queued jobs (up to max_active), ends expired and cancelled ones.
  void Admit();
  void EndCancelledAndExpired();
  void Finish(int64_t sequence, absl::Status status, FinishReason finish);

  const std::shared_ptr<const TransformerLM> model_;
  const GenerationLoopOptions options_;
  const std::shared_ptr<Clock> clock_;

  mutable absl::Mutex mu_;  // guards queue_, active_count_, stopping_
  std::deque<GenerationJob> queue_ ABSL_GUARDED_BY(mu_);
  int64_t active_count_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // Owned by the loop thread alone.
  std::unique_ptr<Decoder> decoder_;
  int64_t joined_ = 0;  // sequences the current decoder has seen
  std::map<int64_t, std::unique_ptr<Running>> running_;

  std::thread thread_;
};

}  // namespace optrec

#endif  // OPTREC_SERVER_GENERATION_GENERATION_LOOP_H_
