// optrec world generate: writes the simulated shop world to a directory.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/cli/args.h"
#include "core/util/status_macros.h"
#include "tuning/cli/commands.h"
#include "tuning/world/generate.h"
#include "tuning/world/world.h"

namespace optrec {
namespace {

const char kWorldUsage[] =
    "usage: optrec world generate --out DIR [flags]\n"
    "  writes the simulated shop world (run 'optrec world generate --help' "
    "for its flags)\n";

// The config of --size, with --seed and the --items/--users/--days
// overrides applied.
absl::StatusOr<WorldConfig> ConfigFromArgs(const Args& args) {
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed"));
  if (seed < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("world generate: --seed must be >= 0, got ", seed));
  }
  const std::string size = args.Get("size");
  WorldConfig config;
  if (size == "small") {
    config = SmallWorldConfig(static_cast<uint64_t>(seed));
  } else if (size == "large") {
    config = LargeWorldConfig(static_cast<uint64_t>(seed));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "world generate: --size must be small or large, got '", size, "'"));
  }
  if (args.Has("items")) {
    ASSIGN_OR_RETURN(config.items, args.GetInt("items"));
  }
  if (args.Has("users")) {
    ASSIGN_OR_RETURN(config.users, args.GetInt("users"));
  }
  if (args.Has("days")) {
    ASSIGN_OR_RETURN(int64_t days, args.GetInt("days"));
    if (days < 8 || days > 3650) {
      return absl::InvalidArgumentError(absl::StrCat(
          "world generate: --days must be in [8, 3650], got ", days));
    }
    config.days = static_cast<int>(days);
  }
  RETURN_IF_ERROR(ValidateWorldConfig(config));
  return config;
}

// The generation options the flags ask for; InvalidArgument naming a bad
// flag value.
absl::StatusOr<GenerateOptions> OptionsFromArgs(const Args& args) {
  GenerateOptions options;
  options.force = args.Has("force");
  ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads"));
  if (threads < 1 || threads > 64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world generate: --threads must be in [1, 64], got ", threads));
  }
  options.threads = static_cast<int>(threads);
  options.progress = [](const std::string& message) {
    std::fprintf(stderr, "world: %s\n", message.c_str());
  };
  return options;
}

absl::Status Generate(const Args& args, const WorldConfig& config,
                      const GenerateOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(GenerateWorld(config, args.Get("out"), options));
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  std::fprintf(stderr, "world: wrote %s (seed %llu) in %.1f s\n",
               args.Get("out").c_str(),
               static_cast<unsigned long long>(config.seed), secs);
  return absl::OkStatus();
}

}  // namespace

int RunWorld(int argc, char** argv) {
  if (argc < 3 || std::string(argv[2]) == "--help" ||
      std::string(argv[2]) == "help") {
    std::fputs(kWorldUsage, argc < 3 ? stderr : stdout);
    return argc < 3 ? 2 : 0;
  }
  if (std::string(argv[2]) != "generate") {
    return UsageError(absl::StrCat("world: unknown subcommand '", argv[2],
                                   "' (expected: generate)"));
  }
  Args args("world generate", "write the simulated shop world to a directory",
            {{"out", "output directory (written atomically)"},
             {"seed", "random seed; same seed and sizes give identical files",
              true, false, "1"},
             {"size",
              "small (3000 items, 2000 users) or large (1M items, 100k "
              "users)",
              true, false, "small"},
             {"items", "override the number of items"},
             {"users", "override the number of users"},
             {"days", "override the number of simulated days"},
             {"threads", "worker threads (the output does not depend on it)",
              true, false, "2"},
             {"force", "replace a non-empty --out directory", false},
             {"help", "print this help", false}});
  if (int code = ParseOrExit(args, argc, argv, 3, {"out"}); code >= 0) {
    return code;
  }
  // Bad flag values are command-line errors (exit 2); failures while
  // writing are the job's (exit 1).
  absl::StatusOr<WorldConfig> config = ConfigFromArgs(args);
  if (!config.ok()) return UsageError(std::string(config.status().message()));
  if (absl::Status valid = ValidateWorldConfig(*config); !valid.ok()) {
    return UsageError(std::string(valid.message()));
  }
  absl::StatusOr<GenerateOptions> options = OptionsFromArgs(args);
  if (!options.ok()) {
    return UsageError(std::string(options.status().message()));
  }
  absl::Status status = Generate(args, *config, *options);
  return status.ok() ? 0 : Fail(status);
}

}  // namespace optrec
