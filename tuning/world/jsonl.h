// JSON Lines helpers: a reader for the world's files and task data sets, and
// the string escaping the writers use (the writers build lines by hand so
// that numbers are printed with fixed precision on every machine).
#ifndef OPTREC_TUNING_WORLD_JSONL_H_
#define OPTREC_TUNING_WORLD_JSONL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace optrec {

// Reads a JSON Lines file: one JSON value per line; empty lines are
// skipped. NotFound when the file cannot be opened; InvalidArgument naming
// "path:line" for a line that is not valid JSON. Holds the whole file in
// memory: for the world's task splits, not for multi-GB files.
absl::StatusOr<std::vector<nlohmann::json>> ReadJsonl(const std::string& path);

// Appends `text` to `out` as a quoted JSON string ("\"", "\\" and control
// characters escaped; other bytes copied as they are).
void AppendJsonString(std::string* out, absl::string_view text);

// Builds one JSON object, keys in the order they are added.
class JsonObject {
 public:
  JsonObject& Str(absl::string_view key, absl::string_view value);
  JsonObject& Int(absl::string_view key, int64_t value);
  // Printed with "%.6f".
  JsonObject& Num(absl::string_view key, double value);
  JsonObject& StrList(absl::string_view key,
                      const std::vector<std::string>& values);
  // `json` must already be valid JSON (an object, an array, ...).
  JsonObject& Raw(absl::string_view key, absl::string_view json);
  // The object text, e.g. {"a":1}.
  std::string Build() const { return body_ + "}"; }
  // The object text and a newline, appended to `out`.
  void AppendLine(std::string* out) const;

 private:
  void Key(absl::string_view key);
  std::string body_ = "{";
};

}  // namespace optrec

#endif  // OPTREC_TUNING_WORLD_JSONL_H_
