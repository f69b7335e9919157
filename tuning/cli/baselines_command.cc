// optrec baselines: the non-LM baselines and the oracle on the shop world's
// task data (tuning/baselines/baselines.h).
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/cli/args.h"
#include "core/util/files.h"
#include "core/util/status_macros.h"
#include "tuning/baselines/baselines.h"
#include "tuning/cli/commands.h"

namespace optrec {
namespace {

Args BaselineArgs() {
  return Args("baselines",
              "Scores the simple non-LM baselines (popularity, logistic "
              "regression for click scoring) and the world's oracle on a "
              "split of the shop world's task data.",
              {
                  {"world", "the world's directory"},
                  {"split", "valid or test", true, false, "test"},
                  {"json", "also write the results to this file"},
                  {"help", "print this help", false},
              });
}

void Print(const nlohmann::json& results) {
  for (auto task = results.begin(); task != results.end(); ++task) {
    for (auto method = task->begin(); method != task->end(); ++method) {
      std::string line;
      for (auto m = method->begin(); m != method->end(); ++m) {
        if (m.key() == "output") continue;
        absl::StrAppend(&line, "  ", m.key(), " ",
                        m->is_number_float()
                            ? absl::StrFormat("%.4f", m->get<double>())
                            : m->dump());
      }
      std::printf("%-15s %-20s%s\n", task.key().c_str(), method.key().c_str(),
                  line.c_str());
    }
  }
}

}  // namespace

int RunBaselinesCommand(int argc, char** argv) {
  Args args = BaselineArgs();
  if (int code = ParseOrExit(args, argc, argv, 2, {"world"}); code >= 0) {
    return code;
  }
  BaselineOptions options;
  options.world = args.Get("world");
  options.split = args.Get("split");
  if (options.split != "valid" && options.split != "test") {
    return UsageError(absl::StrCat("--split must be valid or test, got '",
                                   options.split, "'"));
  }
  absl::StatusOr<nlohmann::json> results = RunBaselines(options);
  if (!results.ok()) return Fail(results.status());
  Print(*results);
  if (args.Has("json")) {
    absl::Status written =
        WriteFileAtomic(args.Get("json"), results->dump(2) + "\n");
    if (!written.ok()) return Fail(written);
  }
  return 0;
}

}  // namespace optrec
