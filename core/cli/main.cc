// optrec: one binary, one subcommand per job.
#include <c10/util/Exception.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "core/cli/commands.h"
#include "core/runtime/process.h"

namespace {

constexpr char kUsage[] =
    "usage: optrec COMMAND [flags]   (optrec COMMAND --help for its flags)\n"
    "commands:\n"
    "  generate   continue a text (or token ids) with a model\n"
    "  score      rank options after a context by log-likelihood\n"
    "  tokenize   turn JSON strings on stdin into token ids\n"
    "  random-model  write a random-weight checkpoint (benchmarks, smoke "
    "tests)\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  if (command != "generate" && command != "score" && command != "tokenize" &&
      command != "random-model") {
    std::fprintf(stderr, "optrec: unknown command '%s'\n%s", command.c_str(),
                 kUsage);
    return 2;
  }
  absl::Status started = optrec::InitProcess(argc, argv);
  if (!started.ok()) {
    std::fprintf(stderr, "optrec: %s\n", started.ToString().c_str());
    return 1;
  }
  // The last boundary: whatever a command lets escape ends it with a
  // message and exit code 1, never an abort.
  try {
    if (command == "generate") return optrec::RunGenerate(argc, argv);
    if (command == "score") return optrec::RunScore(argc, argv);
    if (command == "random-model") return optrec::RunRandomModel(argc, argv);
    return optrec::RunTokenize(argc, argv);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "optrec %s: internal error: %s\n", command.c_str(),
                 e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "optrec %s: internal error: %s\n", command.c_str(),
                 e.what());
  }
  return 1;
}
