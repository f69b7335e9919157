#include "bench/bench_util.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <vector>

#include "core/model/random_model.h"

namespace optrec {

double Seconds(const std::function<void()>& fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

double MedianSeconds(int reps, const std::function<void()>& fn) {
  fn();
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) times.push_back(Seconds(fn));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

absl::StatusOr<std::shared_ptr<const TransformerLM>> LoadBenchModel(
    const std::string& model_dir, const LoadOptions& options) {
  if (!model_dir.empty()) return TransformerLM::Load(model_dir, options);
  const std::string temp = (std::filesystem::temp_directory_path() /
                            ("optrec-bench-gpt2-" + std::to_string(getpid())))
                               .string();
  absl::Status written = WriteRandomModel(temp, Gpt2SmallSpec());
  if (!written.ok()) return written;
  auto loaded = TransformerLM::Load(temp, options);
  std::error_code ignored;
  std::filesystem::remove_all(temp, ignored);
  return loaded;
}

}  // namespace optrec
