// Typed, non-throwing access to fields of a parsed tokenizer JSON file. Every
// error names the file and the dotted path of the field, so a bad
// tokenizer.json can be fixed from the message alone.
#ifndef OPTREC_CORE_TOKENIZER_JSON_UTIL_H_
#define OPTREC_CORE_TOKENIZER_JSON_UTIL_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace optrec {

// A position in a JSON file: the file's path and the field's path inside it
// ("pre_tokenizer.pretokenizers[1].pattern"). Cheap to copy.
class JsonPath {
 public:
  JsonPath(std::string file, std::string field)
      : file_(std::move(file)), field_(std::move(field)) {}

  // The path of member `key` / element `index` of this value.
  JsonPath Child(std::string_view key) const;
  JsonPath Index(size_t index) const;

  const std::string& file() const { return file_; }
  const std::string& field() const { return field_; }

  // InvalidArgument "<file>: field '<field>': <problem>".
  absl::Status Invalid(std::string_view problem) const;
  // Unimplemented "<file>: field '<field>': <problem>".
  absl::Status Unsupported(std::string_view problem) const;

 private:
  std::string file_;
  std::string field_;
};

// Reads the whole file at `path` and parses it as JSON. NotFound when the
// file does not exist, InvalidArgument (naming the file and the parser's
// byte position) when it is not valid JSON. Never throws.
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);

// Accessors for member `key` of object `obj`, whose own path is `at`. A
// member that is absent or null takes the default where one is given and is
// an error naming the member otherwise; a member of the wrong type is always
// an error naming it.
absl::StatusOr<std::string> JsonString(const nlohmann::json& obj,
                                       std::string_view key,
                                       const JsonPath& at);
absl::StatusOr<std::string> JsonStringOr(const nlohmann::json& obj,
                                         std::string_view key,
                                         const JsonPath& at,
                                         std::string_view fallback);
absl::StatusOr<bool> JsonBoolOr(const nlohmann::json& obj, std::string_view key,
                                const JsonPath& at, bool fallback);
absl::StatusOr<int64_t> JsonInt(const nlohmann::json& obj, std::string_view key,
                                const JsonPath& at);

// Returns the member, or nullptr when it is absent or null.
const nlohmann::json* JsonMember(const nlohmann::json& obj,
                                 std::string_view key);

// Member `key` that must be present and an array / object.
absl::StatusOr<const nlohmann::json*> JsonArray(const nlohmann::json& obj,
                                                std::string_view key,
                                                const JsonPath& at);
absl::StatusOr<const nlohmann::json*> JsonObject(const nlohmann::json& obj,
                                                 std::string_view key,
                                                 const JsonPath& at);

// The "type" member of a component object at `at` (which must be an object).
absl::StatusOr<std::string> JsonType(const nlohmann::json& component,
                                     const JsonPath& at);

}  // namespace optrec

#endif  // OPTREC_CORE_TOKENIZER_JSON_UTIL_H_
