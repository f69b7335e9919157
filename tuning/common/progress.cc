#include "tuning/common/progress.h"

#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"

namespace optrec {
namespace {

std::string ClockText(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) {
    return absl::StrFormat("%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60);
  }
  return absl::StrFormat("%d:%02d", s / 60, s % 60);
}

}  // namespace

ProgressLine::ProgressLine(FILE* out, int64_t first_step, int64_t total_steps,
                           std::string unit)
    : out_(out),
      terminal_(isatty(fileno(out)) != 0),
      first_step_(first_step),
      total_steps_(total_steps),
      unit_(std::move(unit)) {}

void ProgressLine::Update(int64_t step, int64_t units,
                          const std::string& extra) {
  units_ += units;
  const Clock::time_point now = Clock::now();
  const double gap = std::chrono::duration<double>(now - last_print_).count();
  const bool last = step >= total_steps_;
  if (printed_ && !last && gap < (terminal_ ? 0.25 : 10.0)) return;
  printed_ = true;
  last_print_ = now;

  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const int64_t done = step - first_step_;
  const double per_step = done > 0 ? elapsed / done : 0.0;
  const double eta = per_step * static_cast<double>(total_steps_ - step);
  const double rate = elapsed > 0 ? units_ / elapsed : 0.0;
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(
      kWidth * std::min<double>(1.0, static_cast<double>(step) / total_steps_));
  std::string bar(filled, '#');
  bar.resize(kWidth, '.');
  const std::string line = absl::StrFormat(
      "[%s] %d/%d  %.1f %s/s  %s  elapsed %s  ETA %s", bar, step, total_steps_,
      rate, unit_, extra, ClockText(elapsed), ClockText(eta));
  if (terminal_) {
    std::fprintf(out_, "\r%s\033[K", line.c_str());
    open_line_ = true;
  } else {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

void ProgressLine::Finish() {
  if (open_line_) std::fputc('\n', out_);
  open_line_ = false;
  std::fflush(out_);
}

}  // namespace optrec
