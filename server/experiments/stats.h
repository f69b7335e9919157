// The statistics of an A/B experiment report: the normal, Student t and
// chi-square distributions, proportion and mean summaries with confidence
// intervals, treatment-versus-control comparisons (difference, relative lift,
// two-sided p-value) and the sample-ratio-mismatch check of the assignment.
//
// Conventions shared by every function here:
//   - Rates and p-values are fractions in [0, 1], never percentages. A
//     confidence level is a fraction in (0, 1) such as 0.95; a two-sided
//     interval at level c leaves (1 - c) / 2 outside on each side.
//   - Errors: InvalidArgument for inputs that are malformed (negative counts,
//     a confidence outside (0, 1), NaN, sizes that disagree), naming the
//     field and its value; FailedPrecondition when the inputs are well formed
//     but hold too little data to estimate anything (an arm with no trials, a
//     mean from fewer than two values). No function returns NaN unless it
//     was given one (NormalCdf of NaN); where a quantity is undefined for
//     valid data (a lift over a zero control, a test of two arms without
//     variance) the result carries a flag and a documented sentinel.
//   - Every function is pure and thread-safe; MeanAccumulator is a value type
//     with no internal locking.
#ifndef OPTREC_SERVER_EXPERIMENTS_STATS_H_
#define OPTREC_SERVER_EXPERIMENTS_STATS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace optrec::stats {

// ---- Distributions. ----

// The standard normal CDF, P(Z <= z). Exact to double rounding (it is
// 0.5 * erfc(-z / sqrt 2)); -inf gives 0, +inf gives 1, NaN gives NaN.
double NormalCdf(double z);

// The two-sided p-value of a standard normal statistic, P(|Z| >= |z|), in
// [0, 1]; +-inf gives 0, NaN gives NaN.
double NormalTwoSidedPValue(double z);

// The standard normal quantile: z with P(Z <= z) = p, for p in (0, 1);
// relative error about 2e-16 for p and 1 - p down to 1e-308 (subnormal p,
// which carry fewer digits themselves, about 1e-9). InvalidArgument for p
// outside (0, 1) or NaN (0 and 1 would be infinite).
absl::StatusOr<double> NormalQuantile(double p);

// The two-sided normal critical value for a confidence level: z with
// P(|Z| <= z) = confidence, e.g. 1.959964 for 0.95. InvalidArgument unless
// confidence is in (0, 1).
absl::StatusOr<double> NormalCriticalValue(double confidence);

// The regularized incomplete beta function I_x(a, b) in [0, 1], for finite
// a > 0, b > 0 and x in [0, 1] (I_0 = 0, I_1 = 1). Absolute error below
// 1e-13 for a and b up to 1e5, growing slowly beyond (about 5e-12 at
// a = b = 1e8); small values keep about 13 significant digits.
// InvalidArgument for parameters out of range or NaN; Internal if the
// continued fraction fails to converge, which has not been seen for finite
// parameters in range.
absl::StatusOr<double> RegularizedIncompleteBeta(double a, double b, double x);

// The regularized upper incomplete gamma function Q(s, x) = Gamma(s, x) /
// Gamma(s) in [0, 1], for finite s > 0 and x >= 0 (Q(s, 0) = 1,
// Q(s, inf) = 0). Absolute error below 1e-13 for s up to 1e6; small values
// keep about 13 significant digits. Errors as RegularizedIncompleteBeta.
absl::StatusOr<double> RegularizedUpperGamma(double s, double x);

// The Student t CDF, P(T <= t), for real degrees of freedom df > 0 (not
// only integers: Welch's test gives fractional df). t may be +-inf.
// Absolute error below 1e-14 for df up to 1e7. InvalidArgument for df <= 0,
// infinite df, or NaN t or df.
absl::StatusOr<double> StudentTCdf(double t, double df);

// The two-sided p-value of a t statistic, P(|T| >= |t|), in [0, 1]; errors
// as StudentTCdf. Small p-values keep about 13 significant digits (they are
// computed directly, not as 1 - CDF).
absl::StatusOr<double> StudentTTwoSidedPValue(double t, double df);

// The Student t quantile: t with P(T <= t) = p, for p in (0, 1) and df > 0,
// found by safeguarded Newton iteration on the tail probability to a
// relative tolerance of about 1e-13. InvalidArgument for p outside (0, 1),
// df <= 0, infinite df or NaN; OutOfRange when the quantile exceeds the
// double range (only for df far below 1 and extreme p).
absl::StatusOr<double> StudentTQuantile(double p, double df);

// The chi-square upper-tail probability P(X >= x) for df > 0 degrees of
// freedom (real, usually a whole number of categories minus one), in [0, 1]:
// Q(df / 2, x / 2), with RegularizedUpperGamma's accuracy. x <= 0 gives 1
// and +inf gives 0. InvalidArgument for df <= 0, infinite df or NaN.
absl::StatusOr<double> ChiSquareUpperTail(double x, double df);

// ---- Summaries and comparisons. ----

// A closed interval [lower, upper] in the units of its estimate.
struct Interval {
  double lower = 0;
  double upper = 0;
};

// Binary outcomes of one arm: `successes` of `trials` units converted.
// Valid when 0 <= successes <= trials.
struct BinomialCounts {
  int64_t successes = 0;
  int64_t trials = 0;
};

// The rate of one arm with its Wilson score interval.
struct ProportionSummary {
  BinomialCounts counts;
  double rate = 0;        // successes / trials, in [0, 1]
  Interval interval;      // Wilson score interval, inside [0, 1]
  double confidence = 0;  // the level the interval was built at
};

// Summarizes one arm's conversions at the given two-sided confidence level.
// The Wilson interval stays inside [0, 1] and is well defined at rate 0 or
// 1 (for 0 of n it is [0, z^2 / (n + z^2)]). InvalidArgument for negative
// counts, successes > trials or a confidence outside (0, 1);
// FailedPrecondition when trials is 0.
absl::StatusOr<ProportionSummary> SummarizeProportion(
    const BinomialCounts& counts, double confidence = 0.95);

// Treatment against control for a conversion rate.
struct ProportionComparison {
  double control_rate = 0;
  double treatment_rate = 0;

  // treatment_rate - control_rate, with the unpooled (Wald) interval
  // difference +- z * sqrt(t(1-t)/n_t + c(1-c)/n_c). When both rates are 0
  // or 1 the interval is the single point `difference`.
  double difference = 0;
  Interval difference_interval;

  // (treatment_rate - control_rate) / control_rate, with the delta-method
  // interval lift +- z * sqrt(var_t / c^2 + t^2 var_c / c^4), where var_x is
  // x(1-x)/n_x. When control_rate is 0 the lift is undefined: lift_defined
  // is false and lift and lift_interval are 0.
  bool lift_defined = false;
  double lift = 0;
  Interval lift_interval;

  // The pooled two-proportion z test of equal rates: z = (t - c) /
  // sqrt(p(1-p)(1/n_t + 1/n_c)) with p the pooled rate, and its two-sided
  // p-value. When the pooled rate is 0 or 1 (no unit converted, or every
  // unit did) there is no variance to test against: no_variance is true, z
  // is 0 and p_value is 1, which is also the right answer since the rates
  // are then equal.
  bool no_variance = false;
  double z = 0;
  double p_value = 1;

  double confidence = 0;  // the level of both intervals
};

// Compares treatment with control. Both intervals use the normal critical
// value of `confidence`. InvalidArgument for malformed counts (naming the
// arm) or a confidence outside (0, 1); FailedPrecondition when either arm
// has no trials.
absl::StatusOr<ProportionComparison> CompareProportions(
    const BinomialCounts& control, const BinomialCounts& treatment,
    double confidence = 0.95);

// Summary statistics of a real-valued metric in one arm.
struct MeanSummary {
  int64_t count = 0;    // number of values
  double mean = 0;      // their mean
  double variance = 0;  // their sample variance (divisor count - 1), >= 0
};

// Mean and sample variance fed one value at a time, by Welford's update
// (numerically stable: no sum of squares is kept). Values are expected to
// be finite; a NaN or infinite value makes mean() and variance() non-finite,
// which WelchTTest then rejects.
class MeanAccumulator {
 public:
  // Adds one value.
  void Add(double x);
  // Adds every value `other` has seen, as if they had been added here
  // (combining per-shard accumulators).
  void Merge(const MeanAccumulator& other);

  int64_t count() const { return count_; }
  // The mean of the values; 0 when there are none.
  double mean() const { return mean_; }
  // The sample variance (divisor count - 1); 0 when there are fewer than
  // two values.
  double variance() const;
  MeanSummary Summary() const { return {count_, mean_, variance()}; }

 private:
  int64_t count_ = 0;
  double mean_ = 0;
  double sum_squared_deviations_ = 0;  // sum of (x - mean)^2
};

// Treatment against control for a mean, by Welch's unequal-variance t test.
struct MeanComparison {
  double control_mean = 0;
  double treatment_mean = 0;

  // treatment_mean - control_mean, its standard error sqrt(v_t/n_t +
  // v_c/n_c) and its interval difference +- t_q * standard_error, with t_q
  // the two-sided Student t critical value for `df`.
  double difference = 0;
  double standard_error = 0;
  Interval difference_interval;

  // (treatment_mean - control_mean) / control_mean, with the delta-method
  // interval lift +- z * sqrt(se_t^2 / c^2 + t^2 se_c^2 / c^4) (se_x^2 is
  // v_x / n_x, z the normal critical value: a large-sample interval). The
  // lift reads as a relative change for positive metrics; with a negative
  // control mean its sign is opposite to the difference's. When
  // control_mean is 0, or so near 0 that the lift or its variance
  // overflows, the lift is undefined: lift_defined is false and lift and
  // lift_interval are 0.
  bool lift_defined = false;
  double lift = 0;
  Interval lift_interval;

  // The Welch-Satterthwaite degrees of freedom, the t statistic difference /
  // standard_error and its two-sided p-value. When both sample variances are
  // 0 the standard error is 0 and the test is undefined: no_variance is
  // true, t is 0, p_value is 1, df is n_c + n_t - 2, and the difference
  // interval is the single point `difference`. A report should show the
  // flag rather than the p-value then.
  bool no_variance = false;
  double df = 0;
  double t = 0;
  double p_value = 1;

  double confidence = 0;  // the level of both intervals
};

// Runs Welch's t test from per-arm summaries. InvalidArgument for a
// negative count, a non-finite mean or variance, a negative variance, values
// so large that the difference or its standard error overflows, or a
// confidence outside (0, 1), naming the arm and field; FailedPrecondition
// when either arm has fewer than two values.
absl::StatusOr<MeanComparison> WelchTTest(const MeanSummary& control,
                                          const MeanSummary& treatment,
                                          double confidence = 0.95);

// ---- Sample-ratio mismatch. ----

// The chi-square goodness-of-fit test of observed arm sizes against the
// configured traffic split.
struct SampleRatioCheck {
  std::vector<double> expected;  // total units * normalised weight, per arm
  double chi_square = 0;         // sum of (observed - expected)^2 / expected
  int degrees_of_freedom = 0;    // arms - 1
  double p_value = 1;            // chi-square upper tail of chi_square
  // p_value < the threshold: the assignment or the logging is suspect and
  // the experiment's comparisons should not be trusted.
  bool mismatch = false;
};

// Checks `observed` units per arm against `weights`, any positive numbers
// in the same arm order (normalised here: {1, 1} and {50, 50} are the same
// split). `p_value_threshold` is the significance level that flags a
// mismatch; it is strict by default because the check runs on every report
// refresh. InvalidArgument for fewer than two arms, sizes that differ, a
// negative count, a weight that is not positive and finite (or so small
// beside the largest that its expected count underflows), or a threshold
// outside (0, 1); FailedPrecondition when no unit was observed.
absl::StatusOr<SampleRatioCheck> CheckSampleRatio(
    absl::Span<const int64_t> observed, absl::Span<const double> weights,
    double p_value_threshold = 0.001);

}  // namespace optrec::stats

#endif  // OPTREC_SERVER_EXPERIMENTS_STATS_H_
