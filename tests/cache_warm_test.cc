// optrec cache warm end to end: the state file it writes holds, for every
// distinct catalog segment, the lower-layer states the core computes for
// that text, under the key a request for the same text looks up; bad input
// fails with a message and leaves an existing file as it was.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "cache/segment_key.h"
#include "cache/sharded_lru_cache.h"
#include "cache/state_file.h"
#include "core/model/transformer.h"
#include "tests/cli_path.h"
#include "tests/testlib/tiny_models.h"
#include "tuning/tasks/render.h"
#include "tuning/tasks/task_spec.h"

namespace optrec {
namespace {

using ::testing::HasSubstr;

const std::string kModel = std::string(OPTREC_SOURCE_DIR) + "/models/default";

struct CliRun {
  int exit_code = -1;
  std::string out;  // stdout and stderr together
};

CliRun Optrec(const std::string& args) {
  const std::string command =
      std::string(OPTREC_CLI_PATH) + " " + args + " 2>&1 </dev/null";
  CliRun run;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return run;
  std::array<char, 4096> buffer;
  while (std::fgets(buffer.data(), buffer.size(), pipe)) {
    run.out += buffer.data();
  }
  const int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class CacheWarmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("cache-warm");
    catalog_ = dir_ + "/catalog.jsonl";
    // Two items share their text: one segment serves both.
    std::ofstream(catalog_)
        << R"({"item_id": "a", "text": "Trailforge running socks, red"})"
        << "\n"
        << R"({"item_id": "b", "text": "Voltari bluetooth speaker, grey"})"
        << "\n"
        << R"({"item_id": "c", "text": "Trailforge running socks, red"})"
        << "\n";
  }

  std::string Warm(const std::string& out, const std::string& extra = "",
                   int lower_layers = 3) {
    return "cache warm --model " + kModel + " --lower-layers " +
           std::to_string(lower_layers) + " --catalog " + catalog_ +
           " --template 'Shown: {text}' --out " + out + " " + extra;
  }

  std::string dir_, catalog_;
};

TEST_F(CacheWarmTest, FileHoldsTheCoresStatesUnderTheRequestsKeys) {
  const std::string out = dir_ + "/items.states";
  CliRun run = Optrec(Warm(out));
  ASSERT_EQ(run.exit_code, 0) << run.out;
  EXPECT_THAT(run.out, HasSubstr("3 items, 2 distinct segments"));

  auto model = TransformerLM::Load(kModel);
  ASSERT_TRUE(model.ok()) << model.status();
  ShardedLruCache::Options options;
  options.storage_dtype = torch::kBFloat16;
  auto cache = ShardedLruCache::Create(options);
  ASSERT_TRUE(cache.ok());
  auto loaded = LoadStates(out, (*model)->fingerprint(), 3, cache->get());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->entries, 2);
  EXPECT_EQ(loaded->inserted, 2);

  // The keys a Score request looks up: a late-interaction task whose
  // template shows the candidate as "Shown: {candidate}".
  auto spec = ParseTaskSpec(
      {{"task", "t"},
       {"kind", "score"},
       {"data", "unused"},
       {"lower_layers", 3},
       {"options",
        {{{"label", 0}, {"text", "no"}}, {{"label", 1}, {"text", "yes"}}}},
       {"templates",
        {{{"name", "shown"}, {"input", {"{profile}", "Shown: {candidate}"}}}}}},
      "spec");
  ASSERT_TRUE(spec.ok()) << spec.status();
  InputEncoder encoder(*spec, *(*model)->tokenizer(), nullptr);
  for (const std::string text :
       {"Trailforge running socks, red", "Voltari bluetooth speaker, grey"}) {
    Example e;
    e.fields["profile"].text = "Shopper aged 25-34";
    e.fields["candidate"].text = text;
    auto in = encoder.EncodeExample(e, 0);
    ASSERT_TRUE(in.ok()) << in.status();
    ASSERT_EQ(in->segments.size(), 2u);
    const std::vector<int32_t>& ids = in->segments[1];
    const SegmentKey key = SegmentKey::Make((*model)->fingerprint(), 3, ids);
    torch::Tensor cached = (*cache)->Lookup(key);
    ASSERT_TRUE(cached.defined()) << "no entry for " << text;
    auto want = (*model)->EncodeSegments({ids}, 3);
    ASSERT_TRUE(want.ok()) << want.status();
    // bf16 keeps 8 significant bits: relative error at most 2^-8.
    const double scale = (*want)[0].abs().max().item<double>();
    EXPECT_LE(((*want)[0] - cached).abs().max().item<double>(),
              scale * (1.0 / 256.0))
        << text;
  }
  // States of another split are not in this file.
  auto wrong = LoadStates(out, (*model)->fingerprint(), 4, cache->get());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(CacheWarmTest, BadInputFailsAndLeavesTheOldFile) {
  const std::string out = dir_ + "/items.states";
  ASSERT_EQ(Optrec(Warm(out)).exit_code, 0);
  const std::string before = ReadBytes(out);

  CliRun exists = Optrec(Warm(out));
  EXPECT_EQ(exists.exit_code, 1);
  EXPECT_THAT(exists.out, HasSubstr("exists (--force replaces it)"));

  CliRun field =
      Optrec("cache warm --model " + kModel + " --lower-layers 3 --catalog " +
             catalog_ + " --template '{title}' --out " + out + " --force");
  EXPECT_EQ(field.exit_code, 1);
  EXPECT_THAT(field.out, HasSubstr("has no field 'title'"));

  CliRun deep = Optrec(Warm(out, "--force", /*lower_layers=*/99));
  EXPECT_EQ(deep.exit_code, 2);
  EXPECT_THAT(deep.out, HasSubstr("exceeds the model's 8 layers"));
  EXPECT_EQ(ReadBytes(out), before);

  CliRun forced = Optrec(Warm(out, "--force --storage f32"));
  EXPECT_EQ(forced.exit_code, 0) << forced.out;
  EXPECT_NE(ReadBytes(out), before);  // f32 states: a new, larger file
  EXPECT_GT(ReadBytes(out).size(), before.size());

  CliRun storage = Optrec(Warm(out, "--force --storage int8"));
  EXPECT_EQ(storage.exit_code, 2);
  EXPECT_THAT(storage.out, HasSubstr("--storage must be bf16, f16 or f32"));
}

}  // namespace
}  // namespace optrec
