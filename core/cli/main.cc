// optrec: one binary, one subcommand per job. The commands of the core are
// always here; the build adds the tuning jobs' commands when it compiles
// them in (OPTREC_WITH_TUNING).
#include <c10/util/Exception.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "core/cli/commands.h"
#include "core/runtime/process.h"
#ifdef OPTREC_WITH_TUNING
#include "tuning/cli/commands.h"
#endif
#ifdef OPTREC_WITH_SERVER
#include "server/cli/commands.h"
#endif
#ifdef OPTREC_WITH_CACHE_CLI
#include "cache/cli/commands.h"
#endif

namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
};

constexpr Command kCommands[] = {
    {"generate", "continue a text (or token ids) with a model",
     optrec::RunGenerate},
    {"score", "rank options after a context by log-likelihood",
     optrec::RunScore},
    {"tokenize", "turn JSON strings on stdin into token ids",
     optrec::RunTokenize},
    {"random-model", "write a random-weight checkpoint (benchmarks, smoke)",
     optrec::RunRandomModel},
#ifdef OPTREC_WITH_TUNING
    {"world", "generate the simulated shop and its data sets",
     optrec::RunWorld},
    {"pretrain", "train a small Llama and its tokenizer on a text corpus",
     optrec::RunPretrain},
    {"demo", "show a model completing and ranking a shop user's behaviour",
     optrec::RunDemo},
    {"tune", "train task prompt modules over a frozen model", optrec::RunTune},
    {"eval", "evaluate a prompt module, or a task zero-shot", optrec::RunEval},
    {"baselines", "score non-LM baselines and the oracle on the shop world",
     optrec::RunBaselinesCommand},
#endif
#ifdef OPTREC_WITH_CACHE_CLI
    {"cache", "warm the segment-state cache of late interaction",
     optrec::RunCache},
#endif
#ifdef OPTREC_WITH_SERVER
    {"serve", "serve task modules over gRPC", optrec::RunServe},
    {"index", "build a retrieval index of a catalog", optrec::RunIndex},
    {"client", "call a running server for one shop-world user",
     optrec::RunClient},
    {"experiments", "report an A/B experiment, or simulate one",
     optrec::RunExperiments},
#endif
};

void PrintUsage(FILE* out) {
  std::fputs(
      "usage: optrec COMMAND [flags]   (optrec COMMAND --help for its "
      "flags)\ncommands:\n",
      out);
  for (const Command& c : kCommands) {
    std::fprintf(out, "  %-13s %s\n", c.name, c.summary);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    PrintUsage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  const Command* command = nullptr;
  for (const Command& c : kCommands) {
    if (name == c.name) command = &c;
  }
  if (command == nullptr) {
    std::fprintf(stderr, "optrec: unknown command '%s'\n", name.c_str());
    PrintUsage(stderr);
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
    return command->run(argc, argv);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "optrec %s: internal error: %s\n", name.c_str(),
                 e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "optrec %s: internal error: %s\n", name.c_str(),
                 e.what());
  }
  return 1;
}
