#include "core/tokenizer/json_util.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/tokenizer/string_view_compat.h"

namespace optrec {

using nlohmann::json;

JsonPath JsonPath::Child(std::string_view key) const {
  return JsonPath(file_, field_.empty()
                             ? std::string(key)
                             : absl::StrCat(field_, ".", AsAbsl(key)));
}

JsonPath JsonPath::Index(size_t index) const {
  return JsonPath(file_, absl::StrCat(field_, "[", index, "]"));
}

absl::Status JsonPath::Invalid(std::string_view problem) const {
  return absl::InvalidArgumentError(
      absl::StrCat(file_, ": field '", field_, "': ", AsAbsl(problem)));
}

absl::Status JsonPath::Unsupported(std::string_view problem) const {
  return absl::UnimplementedError(
      absl::StrCat(file_, ": field '", field_, "': ", AsAbsl(problem)));
}

absl::StatusOr<json> ReadJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open file"));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat(path, ": read failed"));
  }
  // The non-throwing parse reports failure only as a discarded value; a SAX
  // pass over the same text then finds the position for the message.
  json parsed = json::parse(contents.str(), /*cb=*/nullptr,
                            /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    struct ErrorPosition : nlohmann::json_sax<json> {
      size_t position = 0;
      std::string message;
      bool null() override { return true; }
      bool boolean(bool) override { return true; }
      bool number_integer(number_integer_t) override { return true; }
      bool number_unsigned(number_unsigned_t) override { return true; }
      bool number_float(number_float_t, const string_t&) override {
        return true;
      }
      bool string(string_t&) override { return true; }
      bool binary(binary_t&) override { return true; }
      bool start_object(std::size_t) override { return true; }
      bool key(string_t&) override { return true; }
      bool end_object() override { return true; }
      bool start_array(std::size_t) override { return true; }
      bool end_array() override { return true; }
      bool parse_error(std::size_t pos, const std::string&,
                       const nlohmann::detail::exception& e) override {
        position = pos;
        message = e.what();
        return false;
      }
    } sax;
    json::sax_parse(contents.str(), &sax, json::input_format_t::json,
                    /*strict=*/true);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not valid JSON (error near byte ", sax.position,
                     "): ", sax.message));
  }
  return parsed;
}

const json* JsonMember(const json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<std::string> JsonString(const json& obj, std::string_view key,
                                       const JsonPath& at) {
  const json* member = JsonMember(obj, key);
  if (member == nullptr) return at.Child(key).Invalid("missing");
  if (!member->is_string()) {
    return at.Child(key).Invalid("must be a string");
  }
  return member->get<std::string>();
}

absl::StatusOr<std::string> JsonStringOr(const json& obj, std::string_view key,
                                         const JsonPath& at,
                                         std::string_view fallback) {
  const json* member = JsonMember(obj, key);
  if (member == nullptr) return std::string(fallback);
  if (!member->is_string()) {
    return at.Child(key).Invalid("must be a string");
  }
  return member->get<std::string>();
}

absl::StatusOr<bool> JsonBoolOr(const json& obj, std::string_view key,
                                const JsonPath& at, bool fallback) {
  const json* member = JsonMember(obj, key);
  if (member == nullptr) return fallback;
  if (!member->is_boolean()) {
    return at.Child(key).Invalid("must be true or false");
  }
  return member->get<bool>();
}

absl::StatusOr<int64_t> JsonInt(const json& obj, std::string_view key,
                                const JsonPath& at) {
  const json* member = JsonMember(obj, key);
  if (member == nullptr) return at.Child(key).Invalid("missing");
  if (!member->is_number_integer()) {
    return at.Child(key).Invalid("must be an integer");
  }
  return member->get<int64_t>();
}

absl::StatusOr<const json*> JsonArray(const json& obj, std::string_view key,
                                      const JsonPath& at) {
  const json* member = JsonMember(obj, key);
  if (member == nullptr) return at.Child(key).Invalid("missing");
  if (!member->is_array()) return at.Child(key).Invalid("must be an array");
  return member;
}

absl::StatusOr<const json*> JsonObject(const json& obj, std::string_view key,
                                       const JsonPath& at) {
  const json* member = JsonMember(obj, key);
  if (member == nullptr) return at.Child(key).Invalid("missing");
  if (!member->is_object()) {
    return at.Child(key).Invalid("must be an object");
  }
  return member;
}

absl::StatusOr<std::string> JsonType(const json& component,
                                     const JsonPath& at) {
  if (!component.is_object()) return at.Invalid("must be an object");
  return JsonString(component, "type", at);
}

}  // namespace optrec
