#include "tuning/world/jsonl.h"

#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/util/jsonl.h"

namespace optrec {

absl::StatusOr<std::vector<nlohmann::json>> ReadJsonl(const std::string& path) {
  std::vector<nlohmann::json> values;
  absl::Status read =
      ForEachJsonl(path, [&values](int64_t, const nlohmann::json& value) {
        values.push_back(value);
        return true;
      });
  if (!read.ok()) return read;
  return values;
}

void AppendJsonString(std::string* out, absl::string_view text) {
  out->push_back('"');
  for (char c : text) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(out, "\\u%04x", static_cast<int>(c));
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

void JsonObject::Key(absl::string_view key) {
  if (body_.size() > 1) body_.push_back(',');
  AppendJsonString(&body_, key);
  body_.push_back(':');
}

JsonObject& JsonObject::Str(absl::string_view key, absl::string_view value) {
  Key(key);
  AppendJsonString(&body_, value);
  return *this;
}

JsonObject& JsonObject::Int(absl::string_view key, int64_t value) {
  Key(key);
  absl::StrAppend(&body_, value);
  return *this;
}

JsonObject& JsonObject::Num(absl::string_view key, double value) {
  Key(key);
  absl::StrAppendFormat(&body_, "%.6f", value);
  return *this;
}

JsonObject& JsonObject::StrList(absl::string_view key,
                                const std::vector<std::string>& values) {
  Key(key);
  body_.push_back('[');
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) body_.push_back(',');
    AppendJsonString(&body_, values[i]);
  }
  body_.push_back(']');
  return *this;
}

JsonObject& JsonObject::Raw(absl::string_view key, absl::string_view json) {
  Key(key);
  body_.append(json.data(), json.size());
  return *this;
}

void JsonObject::AppendLine(std::string* out) const {
  out->append(body_);
  out->append("}\n");
}

}  // namespace optrec
