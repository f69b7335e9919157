// Early-return helpers for absl::Status and absl::StatusOr.
#ifndef OPTREC_CORE_UTIL_STATUS_MACROS_H_
#define OPTREC_CORE_UTIL_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define OPTREC_CONCAT_INNER_(a, b) a##b
#define OPTREC_CONCAT_(a, b) OPTREC_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing
// function when it is not OK.
#define RETURN_IF_ERROR(expr)               \
  do {                                      \
    ::absl::Status optrec_status_ = (expr); \
    if (!optrec_status_.ok()) {             \
      return optrec_status_;                \
    }                                       \
  } while (0)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status from
// the enclosing function, otherwise moves the value into `lhs`, which may be a
// declaration (`auto x`) or an existing variable.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(OPTREC_CONCAT_(optrec_statusor_, __LINE__), lhs, rexpr)

#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                           \
  if (!statusor.ok()) {                              \
    return std::move(statusor).status();             \
  }                                                  \
  lhs = std::move(statusor).value()

#endif  // OPTREC_CORE_UTIL_STATUS_MACROS_H_
