// Reading settings from JSON objects (configs, specs, definitions) so that
// every error names the field: unknown fields are refused rather than
// ignored, and a value of the wrong type is refused rather than converted.
#ifndef OPTREC_CORE_UTIL_JSON_FIELDS_H_
#define OPTREC_CORE_UTIL_JSON_FIELDS_H_

#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace optrec {

// InvalidArgument "<where>: unknown field '<prefix><key>' (known: ...)" for
// the first key of `object` outside `known`; OK otherwise. `prefix` names
// the object inside the document ("batching."), "" at its top.
inline absl::Status CheckKnownFields(const nlohmann::json& object,
                                     const std::string& where,
                                     const std::string& prefix,
                                     const std::set<std::string>& known) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    if (known.count(it.key()) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": unknown field '", prefix, it.key(),
                       "' (known: ", absl::StrJoin(known, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

// Sets *out to object[key] when present; leaves it when absent. T is
// std::string (a JSON string), an integer type (a JSON integer) or a
// floating type (any JSON number). InvalidArgument "<where>: field
// '<prefix><key>' has the wrong type (<value>)" otherwise.
template <typename T>
absl::Status ReadJsonField(const nlohmann::json& object, const std::string& key,
                           const std::string& where, const std::string& prefix,
                           T* out) {
  if (!object.contains(key)) return absl::OkStatus();
  const nlohmann::json& v = object[key];
  bool ok = false;
  if constexpr (std::is_same_v<T, std::string>) {
    ok = v.is_string();
  } else if constexpr (std::is_integral_v<T>) {
    ok = v.is_number_integer();
  } else {
    static_assert(std::is_floating_point_v<T>, "string, integer or float");
    ok = v.is_number();
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": field '", prefix, key, "' has the wrong type (",
                     v.dump(), ")"));
  }
  *out = v.get<T>();
  return absl::OkStatus();
}

}  // namespace optrec

#endif  // OPTREC_CORE_UTIL_JSON_FIELDS_H_
