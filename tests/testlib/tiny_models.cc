#include "tests/testlib/tiny_models.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"

namespace optrec {

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.defined() || !b.defined() || a.sizes() != b.sizes()) {
    ADD_FAILURE() << "tensors missing or of different shapes";
    return std::numeric_limits<double>::infinity();
  }
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64))
      .abs()
      .max()
      .item<double>();
}

torch::Tensor ToTensor(const std::vector<std::vector<double>>& rows) {
  std::vector<torch::Tensor> out;
  for (const auto& r : rows) out.push_back(torch::tensor(r, torch::kFloat64));
  return out.empty() ? torch::Tensor() : torch::stack(out);
}

ReferenceConfig TinyReferenceConfig(const TinyModelSpec& s) {
  ReferenceConfig c;
  c.family = s.model_type == "gpt2" ? "gpt2" : "llama";
  c.hidden = s.hidden;
  c.layers = s.layers;
  c.heads = s.heads;
  c.kv_heads = s.model_type == "gpt2" ? s.heads : s.kv_heads;
  c.head_dim = s.hidden / s.heads;
  c.ffn = s.ffn;
  c.vocab = s.vocab;
  c.eps = s.model_type == "gpt2" ? 1e-5 : 1e-6;
  c.rope_theta = 10000.0;
  c.tied = s.model_type == "gpt2" || s.tied;
  return c;
}

namespace {

// Directories made by MakeTempDir, removed when the test process exits.
class TempDirs {
 public:
  static TempDirs& Get() {
    static TempDirs* dirs = [] {
      auto* d = new TempDirs();
      std::atexit([] { Get().RemoveAll(); });
      return d;
    }();
    return *dirs;
  }
  void Add(const std::string& dir) {
    std::lock_guard<std::mutex> lock(mu_);
    dirs_.push_back(dir);
  }
  void RemoveAll() {
    std::lock_guard<std::mutex> lock(mu_);
    std::error_code ignored;
    for (const std::string& dir : dirs_) {
      std::filesystem::remove_all(dir, ignored);
    }
    dirs_.clear();
  }

 private:
  std::mutex mu_;  // guards dirs_
  std::vector<std::string> dirs_;
};

}  // namespace

std::string MakeTempDir(const std::string& stem) {
  static std::atomic<int> counter{0};
  const char* base = std::getenv("TEST_TMPDIR");
  std::filesystem::path root = base ? std::filesystem::path(base)
                                    : std::filesystem::temp_directory_path();
  std::filesystem::path dir =
      root / absl::StrCat("optrec-", stem, "-", getpid(), "-", counter++);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  TempDirs::Get().Add(dir.string());
  return dir.string();
}

}  // namespace optrec
