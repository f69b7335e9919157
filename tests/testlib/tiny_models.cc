#include "tests/testlib/tiny_models.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace optrec {

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

std::string MakeTempDir(const std::string& stem) {
  static std::atomic<int> counter{0};
  const char* base = std::getenv("TEST_TMPDIR");
  std::filesystem::path root = base ? std::filesystem::path(base)
                                    : std::filesystem::temp_directory_path();
  std::filesystem::path dir =
      root / absl::StrCat("optrec-", stem, "-", getpid(), "-", counter++);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

}  // namespace optrec
