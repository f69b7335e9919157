#include "core/util/jsonl.h"

#include <fstream>

#include "absl/strings/str_cat.h"

namespace optrec {

absl::Status ForEachJsonl(const std::string& path,
                          const std::function<absl::StatusOr<bool>(
                              int64_t line, const nlohmann::json& value)>& fn) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::string text;
  int64_t number = 0;
  while (std::getline(in, text)) {
    ++number;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json value = nlohmann::json::parse(text, nullptr, false);
    if (value.is_discarded()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number, ": not valid JSON"));
    }
    absl::StatusOr<bool> more = fn(number, value);
    if (!more.ok()) return more.status();
    if (!*more) return absl::OkStatus();
  }
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat(path, ":", number, ": read error"));
  }
  return absl::OkStatus();
}

}  // namespace optrec
