// Reading JSON Lines files one line at a time, so that files of any size
// stream through a callback instead of being held in memory.
#ifndef OPTREC_CORE_UTIL_JSONL_H_
#define OPTREC_CORE_UTIL_JSONL_H_

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"

namespace optrec {

// Calls fn(line_number, value) for every non-blank line of `path` (line
// numbers 1-based), in order, until fn returns false or an error. Errors:
// NotFound naming the path when it cannot be opened; InvalidArgument
// "path:line: not valid JSON" for a line that does not parse; DataLoss on a
// read error; fn's own error, as it returned it.
absl::Status ForEachJsonl(const std::string& path,
                          const std::function<absl::StatusOr<bool>(
                              int64_t line, const nlohmann::json& value)>& fn);

}  // namespace optrec

#endif  // OPTREC_CORE_UTIL_JSONL_H_
