// A one-line progress report for long jobs: steps, throughput (tokens or
// examples a second), loss and the time left. On a terminal the line redraws in
// place; otherwise a line is printed every few seconds, so logs stay readable.
#ifndef OPTREC_TUNING_COMMON_PROGRESS_H_
#define OPTREC_TUNING_COMMON_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace optrec {

class ProgressLine {
 public:
  // Reports steps (first_step, total_steps] to `out` (not owned). `unit`
  // names what Update counts, as the rate shows it ("tok", "ex").
  ProgressLine(FILE* out, int64_t first_step, int64_t total_steps,
               std::string unit = "tok");

  // Step `step` is done; `units` of work (tokens, examples) were processed
  // since the last call. `extra` is appended (e.g. "loss 2.31 lr 1.2e-3").
  void Update(int64_t step, int64_t units, const std::string& extra);

  // Ends the line (on a terminal) so that other output starts clean.
  void Finish();

 private:
  using Clock = std::chrono::steady_clock;

  FILE* out_;
  bool terminal_;
  int64_t first_step_;
  int64_t total_steps_;
  std::string unit_;
  int64_t units_ = 0;
  Clock::time_point start_ = Clock::now();
  Clock::time_point last_print_;
  bool printed_ = false;
  bool open_line_ = false;
};

}  // namespace optrec

#endif  // OPTREC_TUNING_COMMON_PROGRESS_H_
