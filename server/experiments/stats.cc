#include "server/experiments/stats.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "core/util/status_macros.h"

// The incomplete beta and gamma functions below are written by hand because
// nothing the project builds on provides them as scalar functions: the C++17
// special math functions stop at the complete beta function and absl has no
// distributions. Both use the standard expansions (a power series where it
// converges fast, otherwise a continued fraction evaluated by the modified
// Lentz method), with a convergence check rather than a silent cut-off.

namespace optrec::stats {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kLogSqrtTwoPi = 0.91893853320467274178;  // log(sqrt(2 pi))
constexpr double kSqrtHalf = 0.70710678118654752440;      // 1 / sqrt(2)

// Relative tolerance at which a series or continued fraction has converged.
constexpr double kEpsilon = 1e-16;
// Stand-in for a zero denominator in the Lentz recurrences.
constexpr double kTiny = 1e-300;

// Iterations allowed before a series or continued fraction is declared
// divergent. Both need on the order of sqrt(parameter) terms near their
// switch-over points, so the cap grows with the parameter.
int64_t MaxIterations(double parameter) {
  return 1000 + static_cast<int64_t>(50 * std::sqrt(parameter));
}

// ---- Log-gamma differences. ----

// From this argument on, lgamma(z) is split into Stirling's leading terms
// and the correction below, so that differences of large log-gammas can be
// formed without cancelling digits.
constexpr double kStirlingMin = 20;

// lgamma(z) - ((z - 0.5) log z - z + log sqrt(2 pi)) for z >= kStirlingMin:
// the Stirling series 1/(12z) - 1/(360z^3) + 1/(1260z^5) - 1/(1680z^7) +
// 1/(1188z^9), whose first omitted term is below 1e-17 there.
double StirlingCorrection(double z) {
  const double r = 1 / (z * z);
  return (1.0 / 12 -
          r * (1.0 / 360 - r * (1.0 / 1260 - r * (1.0 / 1680 - r / 1188)))) /
         z;
}

// lgamma(a + b) - lgamma(a) for a >= kStirlingMin and b > 0.
double LogGammaRatio(double a, double b) {
  return (a - 0.5) * std::log1p(b / a) + b * std::log(a + b) - b +
         StirlingCorrection(a + b) - StirlingCorrection(a);
}

// a log(x / x0), where x0 = a / (a + b) is the mean of Beta(a, b) and
// e = x (a + b) - a = x b - y a is the caller's deviation from it: log1p of
// e / a near the mean, where the two large logs would cancel, and the
// difference of logs away from it, where 1 + e / a would.
double ScaledLogRatio(double a, double b, double e, double log_x) {
  const double u = e / a;
  if (std::fabs(u) < 0.5) return a * std::log1p(u);
  return a * (log_x + std::log1p(b / a));
}

// log(x^a y^b / B(a, b)) for y = 1 - x and the logs of both, accurate for
// large parameters too: lgamma(1e6) is about 1.3e7, so forming the
// difference of raw log-gammas would lose about 1e-9 of the result.
double LogBetaFront(double a, double b, double x, double y, double log_x,
                    double log_y) {
  const bool a_large = a >= kStirlingMin;
  const bool b_large = b >= kStirlingMin;
  if (a_large && b_large) {
    // With Stirling for all three log-gammas, the large terms combine into
    // a log(x / x0) + b log(y / y0) (x0, y0 the means), which is small
    // near the mean.
    const double e = x * b - y * a;
    return ScaledLogRatio(a, b, e, log_x) + ScaledLogRatio(b, a, -e, log_y) +
           0.5 * std::log(a * b / (a + b)) - kLogSqrtTwoPi -
           StirlingCorrection(a) - StirlingCorrection(b) +
           StirlingCorrection(a + b);
  }
  if (a_large) {
    return a * log_x + b * log_y - std::lgamma(b) + LogGammaRatio(a, b);
  }
  if (b_large) {
    return a * log_x + b * log_y - std::lgamma(a) + LogGammaRatio(b, a);
  }
  return a * log_x + b * log_y + std::lgamma(a + b) - std::lgamma(a) -
         std::lgamma(b);
}

// log(x^s e^-x / Gamma(s)) for x > 0, accurate for large s as above.
double LogGammaFront(double s, double x) {
  if (s < kStirlingMin) return s * std::log(x) - x - std::lgamma(s);
  // With Stirling for lgamma(s), the large terms combine into
  // s log(x / s) - (x - s) = s (log1p(u) - u) for u = (x - s) / s.
  const double u = (x - s) / s;
  const double deviation = std::fabs(u) < 0.5
                               ? s * (std::log1p(u) - u)
                               : s * (std::log(x) - std::log(s)) - (x - s);
  return deviation + 0.5 * std::log(s) - kLogSqrtTwoPi - StirlingCorrection(s);
}

absl::Status CheckConfidence(double confidence) {
  if (!(confidence > 0 && confidence < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("confidence must be in (0, 1), got ", confidence));
  }
  return absl::OkStatus();
}

absl::Status CheckDegreesOfFreedom(double df) {
  if (!(df > 0) || std::isinf(df)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "degrees of freedom must be positive and finite, got ", df));
  }
  return absl::OkStatus();
}

// ---- Normal. ----

// Coefficients of Acklam's rational approximation to the normal quantile
// (relative error below 1.2e-9 before refinement).
constexpr double kCentralNumerator[] = {
    -3.969683028665376e+01, 2.209460984245205e+02,  -2.759285104469687e+02,
    1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
constexpr double kCentralDenominator[] = {
    -5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
    6.680131188771972e+01, -1.328068155288572e+01};
constexpr double kTailNumerator[] = {
    -7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
    -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
constexpr double kTailDenominator[] = {
    7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
    3.754408661907416e+00};
// Below this probability the tail form of the approximation applies.
constexpr double kTailSplit = 0.02425;

// Horner evaluation of c[0] x^(n-1) + ... + c[n-1].
template <size_t N>
double Polynomial(const double (&c)[N], double x) {
  double sum = c[0];
  for (size_t i = 1; i < N; ++i) sum = sum * x + c[i];
  return sum;
}

// The normal quantile for 0 < p <= 0.5 (a non-positive z). Working only in
// the lower half keeps the refinement's residual Phi(z) - p accurate in
// relative terms however small p is.
double LowerNormalQuantile(double p) {
  double z;
  if (p < kTailSplit) {
    const double q = std::sqrt(-2 * std::log(p));
    z = Polynomial(kTailNumerator, q) /
        (Polynomial(kTailDenominator, q) * q + 1);
  } else {
    const double q = p - 0.5;
    const double r = q * q;
    z = Polynomial(kCentralNumerator, r) * q /
        (Polynomial(kCentralDenominator, r) * r + 1);
  }

  // One Halley step on Phi(z) - p = 0, which takes the approximation to
  // full double precision. u = residual / density, formed in logs so that
  // neither factor under- or overflows for subnormal p.
  const double residual = NormalCdf(z) - p;
  if (residual == 0) return z;
  const double u = std::copysign(
      std::exp(std::log(std::fabs(residual)) + 0.5 * z * z + kLogSqrtTwoPi),
      residual);
  return z - u / (1 + 0.5 * z * u);
}

// ---- Incomplete beta. ----

// The continued fraction 1 + d1 / (1 + d2 / (1 + ...)) of the incomplete
// beta function, whose even and odd terms are
//   d(2m)   =  m (b - m) x / ((a + 2m - 1)(a + 2m)),
//   d(2m+1) = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)).
// It converges fast for x < (a + 1) / (a + b + 2).
absl::StatusOr<double> BetaContinuedFraction(double a, double b, double x) {
  double value = 1;
  double c = 1;
  double d = 0;
  const int64_t max_terms = MaxIterations(std::max(a, b));
  for (int64_t j = 1; j <= max_terms; ++j) {
    const double m = static_cast<double>(j / 2);
    const double term =
        (j % 2 == 0)
            ? m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
            : -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1));
    d = 1 + term * d;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = 1 + term / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1 / d;
    const double delta = c * d;
    value *= delta;
    if (std::fabs(delta - 1) < kEpsilon) return value;
  }
  return absl::InternalError(absl::StrCat(
      "incomplete beta continued fraction did not converge for a=", a, " b=", b,
      " x=", x));
}

// I_x(a, b) evaluated by the continued fraction in x, for a, b > 0 and
// 0 < x < 1, with y = 1 - x passed in by the caller, which can often form it
// without cancellation. Accurate where x < (a + 1) / (a + b + 2), the side
// of the mean on which the fraction converges fast.
absl::StatusOr<double> BetaByFraction(double a, double b, double x, double y) {
  // x^a y^b / B(a, b); log1p keeps the logs of values near 1 accurate.
  const double log_x = x > 0.5 ? std::log1p(-y) : std::log(x);
  const double log_y = y > 0.5 ? std::log1p(-x) : std::log(y);
  const double front = std::exp(LogBetaFront(a, b, x, y, log_x, log_y));
  ASSIGN_OR_RETURN(const double fraction, BetaContinuedFraction(a, b, x));
  return front / (a * fraction);
}

// I_x(a, b) for validated a, b > 0 and 0 <= x <= 1, y = 1 - x as above: the
// fraction on its fast side, otherwise I_x(a, b) = 1 - I_y(b, a).
absl::StatusOr<double> IncompleteBeta(double a, double b, double x, double y) {
  if (x <= 0) return 0.0;
  if (y <= 0) return 1.0;
  if (x < (a + 1) / (a + b + 2)) {
    ASSIGN_OR_RETURN(const double direct, BetaByFraction(a, b, x, y));
    // Close to x = 1 (large a) the first terms of the fraction nearly
    // cancel and it loses up to about 1e-16 / y of the result: 1e-11 for
    // the t distribution at df = 1e6 and t = 2. For b <= 1, unless the
    // result is small beside y, the complement loses less (its subtraction
    // costs a factor 1 / result at most), and its fraction, though on its
    // slow side, converges within a few dozen terms because a result this
    // large keeps y near the mean. Should it not converge, the direct value
    // stands.
    if (b <= 1 && direct > 1e-3 && direct > 30 * y) {
      const absl::StatusOr<double> complement = BetaByFraction(b, a, y, x);
      if (complement.ok()) return 1 - *complement;
    }
    return direct;
  }
  ASSIGN_OR_RETURN(const double complement, BetaByFraction(b, a, y, x));
  return 1 - complement;
}

// ---- Incomplete gamma. ----

// P(s, x) = x^s e^-x / Gamma(s) * sum over n >= 0 of x^n / (s (s+1) ...
// (s+n)), for x < s + 1 where the terms shrink from the start.
absl::StatusOr<double> LowerGammaSeries(double s, double x) {
  double term = 1 / s;
  double sum = term;
  const int64_t max_terms = MaxIterations(s);
  for (int64_t n = 1; n <= max_terms; ++n) {
    term *= x / (s + static_cast<double>(n));
    sum += term;
    if (std::fabs(term) < std::fabs(sum) * kEpsilon) {
      return sum * std::exp(LogGammaFront(s, x));
    }
  }
  return absl::InternalError(absl::StrCat(
      "incomplete gamma series did not converge for s=", s, " x=", x));
}

// Q(s, x) = x^s e^-x / Gamma(s) / f, for x >= s + 1, where f is the
// continued fraction (x + 1 - s) - 1 (1 - s) / ((x + 3 - s) - 2 (2 - s) /
// ((x + 5 - s) - ...)).
absl::StatusOr<double> UpperGammaContinuedFraction(double s, double x) {
  double value = x + 1 - s;
  if (std::fabs(value) < kTiny) value = kTiny;
  double c = value;
  double d = 0;
  const int64_t max_terms = MaxIterations(s);
  for (int64_t j = 1; j <= max_terms; ++j) {
    const double i = static_cast<double>(j);
    const double numerator = -i * (i - s);
    const double denominator = x + 2 * i + 1 - s;
    d = denominator + numerator * d;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = denominator + numerator / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1 / d;
    const double delta = c * d;
    value *= delta;
    if (std::fabs(delta - 1) < kEpsilon) {
      return std::exp(LogGammaFront(s, x)) / value;
    }
  }
  return absl::InternalError(absl::StrCat(
      "incomplete gamma continued fraction did not converge for s=", s,
      " x=", x));
}

// ---- Student t. ----

// P(|T| >= |t|) for a validated df: I_x(df/2, 1/2) with x = df / (df + t^2).
absl::StatusOr<double> TwoSidedT(double t, double df) {
  const double abs_t = std::fabs(t);
  if (std::isinf(abs_t)) return 0.0;
  // Beyond 1e150, t^2 and even x = df / t^2 may leave the double range, yet
  // for small df the tail is far from 0 (0.0097 at t = 1e200, df = 0.01).
  // There I_x(a, b) = x^a / (a B(a, b)) (1 + O(x)) to double precision, and
  // it is formed in logs.
  if (abs_t > 1e150) {
    const double a = 0.5 * df;
    const double log_x = std::log(df) - 2 * std::log(abs_t);
    return std::exp(a * log_x - std::log(a) + std::lgamma(a + 0.5) -
                    std::lgamma(a) - std::lgamma(0.5));
  }
  const double t2 = t * t;
  const double x = df / (df + t2);
  const double y = t2 / (df + t2);
  return IncompleteBeta(0.5 * df, 0.5, x, y);
}

// The Student t density at t for a validated df.
double TDensity(double t, double df) {
  const double log_density = std::lgamma(0.5 * (df + 1)) -
                             std::lgamma(0.5 * df) - 0.5 * std::log(df * kPi) -
                             0.5 * (df + 1) * std::log1p(t * t / df);
  return std::exp(log_density);
}

// The t >= 0 with P(|T| >= t) = alpha, for 0 < alpha <= 1 and a validated
// df. Newton's method on log P(|T| >= t) (well scaled in the centre and in
// the heavy tails alike), kept inside a bracket that shrinks every step and
// falls back to bisection when Newton would leave it.
absl::StatusOr<double> TwoSidedTCritical(double alpha, double df) {
  if (alpha >= 1) return 0.0;
  const double log_alpha = std::log(alpha);

  // Bracket the root, starting from the normal value (the df -> inf limit,
  // below the t value for any df).
  absl::StatusOr<double> normal = NormalQuantile(0.5 * alpha);
  double t = normal.ok() ? std::max(-*normal, 1e-3) : 1.0;
  double lo = 0;
  double hi = t;
  while (true) {
    ASSIGN_OR_RETURN(const double tail, TwoSidedT(hi, df));
    if (tail <= alpha) break;
    lo = hi;
    hi *= 2;
    if (std::isinf(hi)) {
      return absl::OutOfRangeError(
          absl::StrCat("t quantile for two-sided tail ", alpha, " at df ", df,
                       " exceeds the double range"));
    }
  }
  if (!(t > lo && t < hi)) t = 0.5 * (lo + hi);

  for (int i = 0; i < 500; ++i) {
    ASSIGN_OR_RETURN(const double tail, TwoSidedT(t, df));
    if (tail == alpha) return t;
    if (tail > alpha) {
      lo = t;
    } else {
      hi = t;
    }
    if (hi - lo <= 4 * std::numeric_limits<double>::epsilon() * hi) break;

    double next = std::numeric_limits<double>::quiet_NaN();
    const double density = TDensity(t, df);
    if (tail > 0 && density > 0) {
      next = t + (std::log(tail) - log_alpha) * tail / (2 * density);
    }
    if (!(next > lo && next < hi)) {
      // Bisect, geometrically while the bracket spans orders of magnitude
      // (heavy tails at small df put the root far out).
      next = (lo > 0 && hi > 4 * lo) ? std::sqrt(lo * hi) : 0.5 * (lo + hi);
    }
    if (std::fabs(next - t) <= 1e-14 * next) return next;
    t = next;
  }
  return t;
}

// A difference or lift with its symmetric interval.
Interval Around(double center, double half_width) {
  return {center - half_width, center + half_width};
}

// The relative change (t - c) / c of a treatment estimate t over a control
// estimate c, with the delta-method interval lift +- z * sqrt((var_t +
// (t / c)^2 var_c) / c^2), var_x the squared standard error of x. Undefined
// (defined false, lift and interval 0) when c is 0, or so near 0 that the
// lift or its variance is not finite.
struct Lift {
  bool defined = false;
  double lift = 0;
  Interval interval;
};
Lift DeltaMethodLift(double c, double t, double var_c, double var_t, double z) {
  Lift result;
  if (c == 0) return result;
  const double ratio = t / c;
  const double lift = (t - c) / c;
  const double var_lift = (var_t + ratio * ratio * var_c) / (c * c);
  if (std::isfinite(lift) && std::isfinite(var_lift)) {
    result.defined = true;
    result.lift = lift;
    result.interval = Around(lift, z * std::sqrt(var_lift));
  }
  return result;
}

absl::Status CheckCounts(const BinomialCounts& counts, const char* arm) {
  if (counts.trials < 0 || counts.successes < 0 ||
      counts.successes > counts.trials) {
    return absl::InvalidArgumentError(absl::StrCat(
        arm, " counts need 0 <= successes <= trials, got successes=",
        counts.successes, " trials=", counts.trials));
  }
  if (counts.trials == 0) {
    return absl::FailedPreconditionError(absl::StrCat(arm, " has no trials"));
  }
  return absl::OkStatus();
}

absl::Status CheckMeanSummary(const MeanSummary& summary, const char* arm) {
  if (summary.count < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(arm, " count must be >= 0, got ", summary.count));
  }
  if (!std::isfinite(summary.mean)) {
    return absl::InvalidArgumentError(
        absl::StrCat(arm, " mean must be finite, got ", summary.mean));
  }
  if (!std::isfinite(summary.variance) || summary.variance < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        arm, " variance must be finite and >= 0, got ", summary.variance));
  }
  if (summary.count < 2) {
    return absl::FailedPreconditionError(absl::StrCat(
        arm, " needs at least 2 values for a variance, has ", summary.count));
  }
  return absl::OkStatus();
}

}  // namespace

// ---- Distributions. ----

double NormalCdf(double z) { return 0.5 * std::erfc(-z * kSqrtHalf); }

double NormalTwoSidedPValue(double z) {
  return std::erfc(std::fabs(z) * kSqrtHalf);
}

absl::StatusOr<double> NormalQuantile(double p) {
  if (!(p > 0 && p < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("normal quantile needs p in (0, 1), got ", p));
  }
  // 1 - p is exact for p >= 0.5.
  if (p > 0.5) return -LowerNormalQuantile(1 - p);
  return LowerNormalQuantile(p);
}

absl::StatusOr<double> NormalCriticalValue(double confidence) {
  RETURN_IF_ERROR(CheckConfidence(confidence));
  return -LowerNormalQuantile(0.5 * (1 - confidence));
}

absl::StatusOr<double> RegularizedIncompleteBeta(double a, double b, double x) {
  if (!(a > 0) || !(b > 0) || std::isinf(a) || std::isinf(b)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "incomplete beta needs finite a > 0 and b > 0, got a=", a, " b=", b));
  }
  if (!(x >= 0 && x <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("incomplete beta needs x in [0, 1], got ", x));
  }
  return IncompleteBeta(a, b, x, 1 - x);
}

absl::StatusOr<double> RegularizedUpperGamma(double s, double x) {
  if (!(s > 0) || std::isinf(s)) {
    return absl::InvalidArgumentError(
        absl::StrCat("incomplete gamma needs finite s > 0, got ", s));
  }
  if (!(x >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("incomplete gamma needs x >= 0, got ", x));
  }
  if (x == 0) return 1.0;
  if (std::isinf(x)) return 0.0;
  if (x < s + 1) {
    ASSIGN_OR_RETURN(const double lower, LowerGammaSeries(s, x));
    return std::max(0.0, 1 - lower);
  }
  return UpperGammaContinuedFraction(s, x);
}

absl::StatusOr<double> StudentTCdf(double t, double df) {
  RETURN_IF_ERROR(CheckDegreesOfFreedom(df));
  if (std::isnan(t)) {
    return absl::InvalidArgumentError("t statistic is NaN");
  }
  ASSIGN_OR_RETURN(const double tail, TwoSidedT(t, df));
  return t < 0 ? 0.5 * tail : 1 - 0.5 * tail;
}

absl::StatusOr<double> StudentTTwoSidedPValue(double t, double df) {
  RETURN_IF_ERROR(CheckDegreesOfFreedom(df));
  if (std::isnan(t)) {
    return absl::InvalidArgumentError("t statistic is NaN");
  }
  return TwoSidedT(t, df);
}

absl::StatusOr<double> StudentTQuantile(double p, double df) {
  RETURN_IF_ERROR(CheckDegreesOfFreedom(df));
  if (!(p > 0 && p < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("t quantile needs p in (0, 1), got ", p));
  }
  // 1 - p is exact for p >= 0.5, so the two-sided tail loses nothing.
  const double alpha = 2 * std::min(p, 1 - p);
  ASSIGN_OR_RETURN(const double t, TwoSidedTCritical(alpha, df));
  return p < 0.5 ? -t : t;
}

absl::StatusOr<double> ChiSquareUpperTail(double x, double df) {
  RETURN_IF_ERROR(CheckDegreesOfFreedom(df));
  if (std::isnan(x)) {
    return absl::InvalidArgumentError("chi-square statistic is NaN");
  }
  if (x <= 0) return 1.0;
  return RegularizedUpperGamma(0.5 * df, 0.5 * x);
}

// ---- Summaries and comparisons. ----

absl::StatusOr<ProportionSummary> SummarizeProportion(
    const BinomialCounts& counts, double confidence) {
  RETURN_IF_ERROR(CheckCounts(counts, "arm"));
  ASSIGN_OR_RETURN(const double z, NormalCriticalValue(confidence));

  // Wilson: the rates p whose score test at this level does not reject,
  // the roots of (p_hat - p)^2 = z^2 p (1 - p) / n.
  const double n = static_cast<double>(counts.trials);
  const double rate = static_cast<double>(counts.successes) / n;
  const double z2_over_n = z * z / n;
  const double scale = 1 / (1 + z2_over_n);
  const double center = (rate + 0.5 * z2_over_n) * scale;
  const double half_width =
      z * scale * std::sqrt(rate * (1 - rate) / n + 0.25 * z2_over_n / n);

  ProportionSummary summary;
  summary.counts = counts;
  summary.rate = rate;
  summary.interval = {std::max(0.0, center - half_width),
                      std::min(1.0, center + half_width)};
  summary.confidence = confidence;
  return summary;
}

absl::StatusOr<ProportionComparison> CompareProportions(
    const BinomialCounts& control, const BinomialCounts& treatment,
    double confidence) {
  RETURN_IF_ERROR(CheckCounts(control, "control"));
  RETURN_IF_ERROR(CheckCounts(treatment, "treatment"));
  ASSIGN_OR_RETURN(const double z, NormalCriticalValue(confidence));

  const double n_c = static_cast<double>(control.trials);
  const double n_t = static_cast<double>(treatment.trials);
  const double c = static_cast<double>(control.successes) / n_c;
  const double t = static_cast<double>(treatment.successes) / n_t;
  const double var_c = c * (1 - c) / n_c;
  const double var_t = t * (1 - t) / n_t;

  ProportionComparison result;
  result.control_rate = c;
  result.treatment_rate = t;
  result.confidence = confidence;

  // Unpooled (Wald) interval for the difference.
  result.difference = t - c;
  result.difference_interval =
      Around(result.difference, z * std::sqrt(var_t + var_c));

  // Defined over a non-zero control rate.
  const Lift lift = DeltaMethodLift(c, t, var_c, var_t, z);
  result.lift_defined = lift.defined;
  result.lift = lift.lift;
  result.lift_interval = lift.interval;

  // Pooled z test.
  const double pooled =
      static_cast<double>(control.successes + treatment.successes) /
      (n_c + n_t);
  const double var_pooled = pooled * (1 - pooled) * (1 / n_c + 1 / n_t);
  if (var_pooled > 0) {
    result.z = result.difference / std::sqrt(var_pooled);
    result.p_value = NormalTwoSidedPValue(result.z);
  } else {
    result.no_variance = true;
  }
  return result;
}

void MeanAccumulator::Add(double x) {
  ++count_;
  const double delta = x - mean_;
  mean_ += delta / static_cast<double>(count_);
  sum_squared_deviations_ += delta * (x - mean_);
}

void MeanAccumulator::Merge(const MeanAccumulator& other) {
  if (other.count_ == 0) return;
  if (count_ == 0) {
    *this = other;
    return;
  }
  const double n = static_cast<double>(count_);
  const double m = static_cast<double>(other.count_);
  const double total = n + m;
  const double delta = other.mean_ - mean_;
  mean_ += delta * m / total;
  sum_squared_deviations_ +=
      other.sum_squared_deviations_ + delta * delta * n * m / total;
  count_ += other.count_;
}

double MeanAccumulator::variance() const {
  if (count_ < 2) return 0;
  return sum_squared_deviations_ / static_cast<double>(count_ - 1);
}

absl::StatusOr<MeanComparison> WelchTTest(const MeanSummary& control,
                                          const MeanSummary& treatment,
                                          double confidence) {
  RETURN_IF_ERROR(CheckMeanSummary(control, "control"));
  RETURN_IF_ERROR(CheckMeanSummary(treatment, "treatment"));
  ASSIGN_OR_RETURN(const double z, NormalCriticalValue(confidence));

  const double n_c = static_cast<double>(control.count);
  const double n_t = static_cast<double>(treatment.count);
  const double c = control.mean;
  const double t = treatment.mean;
  const double se2_c = control.variance / n_c;  // squared standard errors
  const double se2_t = treatment.variance / n_t;
  const double se2 = se2_c + se2_t;
  if (!std::isfinite(t - c) || !std::isfinite(se2)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "means ", c, " and ", t, " with variances ", control.variance, " and ",
        treatment.variance, " overflow the difference or its standard error"));
  }

  MeanComparison result;
  result.control_mean = c;
  result.treatment_mean = t;
  result.difference = t - c;
  result.standard_error = std::sqrt(se2);
  result.confidence = confidence;

  // Defined over a control mean far enough from 0 for the lift and its
  // variance to be finite.
  const Lift lift = DeltaMethodLift(c, t, se2_c, se2_t, z);
  result.lift_defined = lift.defined;
  result.lift = lift.lift;
  result.lift_interval = lift.interval;

  if (se2 == 0) {
    result.no_variance = true;
    result.df = n_c + n_t - 2;
    result.difference_interval = {result.difference, result.difference};
    return result;
  }

  // Welch-Satterthwaite: df = se2^2 / (se2_c^2 / (n_c - 1) + se2_t^2 /
  // (n_t - 1)), written with the shares of se2 so that nothing underflows.
  const double share_c = se2_c / se2;
  const double share_t = se2_t / se2;
  result.df =
      1 / (share_c * share_c / (n_c - 1) + share_t * share_t / (n_t - 1));
  result.t = result.difference / result.standard_error;
  ASSIGN_OR_RETURN(result.p_value, TwoSidedT(result.t, result.df));
  ASSIGN_OR_RETURN(const double t_critical,
                   TwoSidedTCritical(1 - confidence, result.df));
  result.difference_interval =
      Around(result.difference, t_critical * result.standard_error);
  return result;
}

// ---- Sample-ratio mismatch. ----

absl::StatusOr<SampleRatioCheck> CheckSampleRatio(
    absl::Span<const int64_t> observed, absl::Span<const double> weights,
    double p_value_threshold) {
  if (observed.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sample ratio check needs at least 2 arms, got ", observed.size()));
  }
  if (weights.size() != observed.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("sample ratio check has ", observed.size(),
                     " observed counts but ", weights.size(), " weights"));
  }
  if (!(p_value_threshold > 0 && p_value_threshold < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "p_value_threshold must be in (0, 1), got ", p_value_threshold));
  }
  double max_weight = 0;
  double total = 0;
  for (size_t i = 0; i < observed.size(); ++i) {
    if (observed[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("observed[", i, "] must be >= 0, got ", observed[i]));
    }
    if (!(weights[i] > 0) || std::isinf(weights[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "weights[", i, "] must be positive and finite, got ", weights[i]));
    }
    max_weight = std::max(max_weight, weights[i]);
    total += static_cast<double>(observed[i]);
  }
  if (total == 0) {
    return absl::FailedPreconditionError(
        "sample ratio check has no observed units");
  }

  // Normalise through the largest weight first so that the sum cannot
  // overflow.
  double weight_sum = 0;
  for (double w : weights) weight_sum += w / max_weight;

  SampleRatioCheck check;
  check.expected.reserve(observed.size());
  for (size_t i = 0; i < observed.size(); ++i) {
    const double expected = total * (weights[i] / max_weight) / weight_sum;
    if (!(expected > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("weights[", i, "] = ", weights[i],
                       " is too small beside the largest weight ", max_weight));
    }
    const double deviation = static_cast<double>(observed[i]) - expected;
    check.expected.push_back(expected);
    check.chi_square += deviation * deviation / expected;
  }
  check.degrees_of_freedom = static_cast<int>(observed.size()) - 1;
  ASSIGN_OR_RETURN(check.p_value, ChiSquareUpperTail(check.chi_square,
                                                     check.degrees_of_freedom));
  check.mismatch = check.p_value < p_value_threshold;
  return check;
}

}  // namespace optrec::stats
