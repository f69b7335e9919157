// Command-line flags of one optrec subcommand: --name VALUE, --name=VALUE,
// repeated flags, and boolean --name. Unknown flags and missing values are
// errors that name the flag.
#ifndef OPTREC_CORE_CLI_ARGS_H_
#define OPTREC_CORE_CLI_ARGS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace optrec {

class Args {
 public:
  struct Flag {
    std::string name;  // without the dashes
    std::string help;
    bool takes_value = true;
    bool repeated = false;
    std::string fallback;  // default value; empty = none
  };

  Args(std::string command, std::string summary, std::vector<Flag> flags);

  // Parses argv[first..argc). InvalidArgument naming the flag on error.
  absl::Status Parse(int argc, char** argv, int first);

  bool Has(const std::string& name) const;
  // The last value given, or the flag's default.
  std::string Get(const std::string& name) const;
  std::vector<std::string> GetAll(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name) const;
  absl::StatusOr<double> GetDouble(const std::string& name) const;

  std::string Usage() const;
  const std::string& command() const { return command_; }

 private:
  const Flag* Find(const std::string& name) const;

  std::string command_;
  std::string summary_;
  std::vector<Flag> flags_;
  std::map<std::string, std::vector<std::string>> values_;
};

// Exit codes of every optrec command: 0 success, 1 the job failed (bad
// model or input, I/O), 2 the command line was wrong.

// Prints "optrec: MESSAGE" of a failed job to stderr and returns 1.
int Fail(const absl::Status& status);

// Prints a command-line problem to stderr and returns 2.
int UsageError(const std::string& message);

// Parses argv[first..argc) into `args` and checks that the `required` flags
// are present. Returns -1 to go on, or the exit code to return now: 0 after
// printing --help, 2 after printing what is wrong with the command line.
int ParseOrExit(Args& args, int argc, char** argv, int first,
                const std::vector<std::string>& required = {});

// The command line "optrec ARG..." (argv[1..argc)) as a POSIX shell reads
// it back: each word bare when it holds only safe characters, otherwise in
// single quotes. Recorded in model cards and module metadata.
std::string ShellCommandLine(int argc, char** argv);

}  // namespace optrec

#endif  // OPTREC_CORE_CLI_ARGS_H_
