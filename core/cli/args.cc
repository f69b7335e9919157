#include "core/cli/args.h"

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace optrec {

Args::Args(std::string command, std::string summary, std::vector<Flag> flags)
    : command_(std::move(command)),
      summary_(std::move(summary)),
      flags_(std::move(flags)) {}

const Args::Flag* Args::Find(const std::string& name) const {
  for (const Flag& f : flags_) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

absl::Status Args::Parse(int argc, char** argv, int first) {
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          command_, ": unexpected argument '", arg, "'\n", Usage()));
    }
    std::string name = arg.substr(2), value;
    bool inline_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    const Flag* flag = Find(name);
    if (flag == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(command_, ": unknown flag --", name, "\n", Usage()));
    }
    if (flag->takes_value && !inline_value) {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(
            absl::StrCat(command_, ": flag --", name, " needs a value"));
      }
      value = argv[++i];
    } else if (!flag->takes_value && !inline_value) {
      value = "true";
    }
    if (!flag->repeated && values_.count(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(command_, ": flag --", name, " given twice"));
    }
    values_[name].push_back(value);
  }
  return absl::OkStatus();
}

bool Args::Has(const std::string& name) const {
  return values_.count(name) > 0;
}

std::string Args::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it != values_.end()) return it->second.back();
  const Flag* flag = Find(name);
  return flag ? flag->fallback : "";
}

std::vector<std::string> Args::GetAll(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

absl::StatusOr<int64_t> Args::GetInt(const std::string& name) const {
  int64_t v = 0;
  std::string text = Get(name);
  if (!absl::SimpleAtoi(text, &v)) {
    return absl::InvalidArgumentError(absl::StrCat(
        command_, ": --", name, " must be an integer, got '", text, "'"));
  }
  return v;
}

absl::StatusOr<double> Args::GetDouble(const std::string& name) const {
  double v = 0;
  std::string text = Get(name);
  if (!absl::SimpleAtod(text, &v)) {
    return absl::InvalidArgumentError(absl::StrCat(
        command_, ": --", name, " must be a number, got '", text, "'"));
  }
  return v;
}

std::string Args::Usage() const {
  std::string out = absl::StrCat("usage: optrec ", command_, " [flags]\n  ",
                                 summary_, "\nflags:\n");
  for (const Flag& f : flags_) {
    absl::StrAppend(&out, "  --", f.name, f.takes_value ? " VALUE" : "",
                    f.repeated ? " (repeatable)" : "", "\n      ", f.help);
    if (!f.fallback.empty())
      absl::StrAppend(&out, " [default: ", f.fallback, "]");
    absl::StrAppend(&out, "\n");
  }
  return out;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "optrec: %s\n", std::string(status.message()).c_str());
  return 1;
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "optrec: %s\n", message.c_str());
  return 2;
}

int ParseOrExit(Args& args, int argc, char** argv, int first,
                const std::vector<std::string>& required) {
  absl::Status parsed = args.Parse(argc, argv, first);
  if (!parsed.ok()) return UsageError(std::string(parsed.message()));
  if (args.Has("help")) {
    std::fputs(args.Usage().c_str(), stdout);
    return 0;
  }
  for (const std::string& flag : required) {
    if (!args.Has(flag)) {
      return UsageError(
          absl::StrCat(args.command(), ": --", flag, " is required"));
    }
  }
  return -1;
}

namespace {

std::string ShellQuoted(const std::string& word) {
  const bool safe =
      !word.empty() && word.find_first_not_of(
                           "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV"
                           "WXYZ0123456789_./=:,+-@%") == std::string::npos;
  if (safe) return word;
  std::string quoted = "'";
  for (char c : word) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  return quoted + "'";
}

}  // namespace

std::string ShellCommandLine(int argc, char** argv) {
  std::string line = "optrec";
  for (int i = 1; i < argc; ++i)
    absl::StrAppend(&line, " ", ShellQuoted(argv[i]));
  return line;
}

}  // namespace optrec
