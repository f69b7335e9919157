// The optrec binary end to end: exit codes, messages, output formats.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/cli_path.h"
#include "tests/testlib/tiny_models.h"

namespace optrec {
namespace {

using ::testing::HasSubstr;

struct CliRun {
  int exit_code = -1;
  std::string out;  // stdout and stderr together
};

// Runs the optrec binary with `args` (shell words), stdin from `input`;
// stderr joins stdout unless `stderr_too` is false.
CliRun Optrec(const std::string& args, const std::string& input = "",
              bool stderr_too = true) {
  std::string stdin_file = MakeTempDir("cli-stdin") + "/in.txt";
  std::ofstream(stdin_file) << input;
  std::string command = std::string(OPTREC_CLI_PATH) + " " + args + " < " +
                        stdin_file + (stderr_too ? " 2>&1" : " 2>/dev/null");
  CliRun run;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return run;
  std::array<char, 4096> buffer;
  while (std::fgets(buffer.data(), buffer.size(), pipe)) {
    run.out += buffer.data();
  }
  int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

std::string TinyLlamaDir() {
  std::string dir = MakeTempDir("cli-model");
  TinyModelSpec spec;
  EXPECT_TRUE(WriteTinyModel(dir, spec).ok());
  return dir;
}

TEST(CliTest, UnknownCommandAndMissingModelAreUsageErrors) {
  CliRun unknown = Optrec("frobnicate");
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_THAT(unknown.out, HasSubstr("unknown command 'frobnicate'"));

  CliRun no_model = Optrec("score --option x");
  EXPECT_EQ(no_model.exit_code, 2);
  EXPECT_THAT(no_model.out, HasSubstr("--model"));

  CliRun bad_flag = Optrec("generate --model /tmp --tempurature 2");
  EXPECT_EQ(bad_flag.exit_code, 2);
  EXPECT_THAT(bad_flag.out, HasSubstr("unknown flag --tempurature"));
}

TEST(CliTest, GenerateWithIdsPrintsTheRequestedNumberOfIds) {
  CliRun run = Optrec("generate --model " + TinyLlamaDir() +
                      " --prompt-ids '1 5 9' --max-tokens 4");
  ASSERT_EQ(run.exit_code, 0) << run.out;
  EXPECT_THAT(run.out, HasSubstr("prompt ids: 1 5 9"));
  size_t at = run.out.find("generated ids: ");
  ASSERT_NE(at, std::string::npos) << run.out;
  std::string line = run.out.substr(at, run.out.find('\n', at) - at);
  EXPECT_EQ(std::count(line.begin(), line.end(), ' '), 2 + 3) << line;
  EXPECT_THAT(run.out, HasSubstr("finish: length"));
}

TEST(CliTest, ScoreRanksEveryOption) {
  CliRun run = Optrec("score --model " + TinyLlamaDir() +
                      " --context-ids '1 5 9' --option-ids '7 8' "
                      "--option-ids 3 --option-ids '10 11 12'");
  ASSERT_EQ(run.exit_code, 0) << run.out;
  EXPECT_THAT(run.out, HasSubstr("rank"));
  for (const char* option : {"7 8\n", "3\n", "10 11 12\n"}) {
    EXPECT_THAT(run.out, HasSubstr(option));
  }
}

TEST(CliTest, BadTokenIdNamesTheId) {
  CliRun run =
      Optrec("generate --model " + TinyLlamaDir() + " --prompt-ids '1 500'");
  EXPECT_NE(run.exit_code, 0);
  EXPECT_THAT(run.out, HasSubstr("500"));
}

TEST(CliTest, TokenizeWritesOneLinePerInputAndFlagsBadLines) {
  const std::string tokenizer = std::string(OPTREC_SOURCE_DIR) +
                                "/../shared/data/tokenizers/gpt2/"
                                "tokenizer.json";
  if (!std::filesystem::exists(tokenizer)) {
    GTEST_SKIP() << tokenizer << " is absent; a real tokenizer is needed";
  }
  CliRun run = Optrec("tokenize --tokenizer " + tokenizer,
                      "\"Hello world\"\nnot json\n\"\"\n",
                      /*stderr_too=*/false);
  EXPECT_EQ(run.exit_code, 1);
  // GPT-2 ids of "Hello" and " world"; an empty text has none.
  EXPECT_EQ(run.out,
            "[15496,995]\n"
            "{\"error\":\"line 2: expected a JSON string\"}\n"
            "[]\n");
}

TEST(CliTest, TrainingSideCommandsCheckTheirFlags) {
  CliRun world = Optrec("world generate");
  EXPECT_EQ(world.exit_code, 2);
  EXPECT_THAT(world.out, HasSubstr("--out"));
  CliRun size = Optrec("world generate --out /tmp/x --size huge");
  EXPECT_EQ(size.exit_code, 2);
  EXPECT_THAT(size.out, HasSubstr("huge"));

  CliRun pretrain = Optrec("pretrain --out /tmp/x");
  EXPECT_EQ(pretrain.exit_code, 2);
  EXPECT_THAT(pretrain.out, HasSubstr("--corpus"));
  CliRun heads = Optrec(
      "pretrain --corpus a --valid-corpus b --out c --hidden 30 --heads 4");
  EXPECT_EQ(heads.exit_code, 2);
  EXPECT_THAT(heads.out, HasSubstr("hidden 30"));

  const std::string dir = MakeTempDir("cli-corpus");
  std::ofstream(dir + "/bad.jsonl") << "{\"text\": \"a\"}\n[1, 2]\n";
  CliRun corrupt =
      Optrec("pretrain --corpus " + dir + "/bad.jsonl" + " --valid-corpus " +
             dir + "/bad.jsonl --out " + dir + "/model");
  EXPECT_EQ(corrupt.exit_code, 1);
  EXPECT_THAT(corrupt.out, HasSubstr("bad.jsonl:2"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/model"));

  CliRun demo = Optrec("demo --model " + TinyLlamaDir() + " --world " + dir);
  EXPECT_EQ(demo.exit_code, 1);
  EXPECT_THAT(demo.out, HasSubstr("tokenizer"));
}

}  // namespace
}  // namespace optrec
