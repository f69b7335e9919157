// A one-line progress report for long jobs: steps, throughput, loss and the
// time left. On a terminal the line redraws in place; otherwise a line is
// printed every few seconds, so logs stay readable.
#ifndef OPTREC_TUNING_PRETRAIN_PROGRESS_H_
#define OPTREC_TUNING_PRETRAIN_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace optrec {

class ProgressLine {
 public:
  // Reports steps (first_step, total_steps] to `out` (not owned).
  ProgressLine(FILE* out, int64_t first_step, int64_t total_steps);

  // Step `step` is done; `tokens` were processed since the last call.
  // `extra` is appended (e.g. "loss 2.31 lr 1.2e-3").
  void Update(int64_t step, int64_t tokens, const std::string& extra);

  // Ends the line (on a terminal) so that other output starts clean.
  void Finish();

 private:
  using Clock = std::chrono::steady_clock;

  FILE* out_;
  bool terminal_;
  int64_t first_step_;
  int64_t total_steps_;
  int64_t tokens_ = 0;
  Clock::time_point start_ = Clock::now();
  Clock::time_point last_print_;
  bool printed_ = false;
  bool open_line_ = false;
};

}  // namespace optrec

#endif  // OPTREC_TUNING_PRETRAIN_PROGRESS_H_
