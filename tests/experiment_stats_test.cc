// Tests of the experiment statistics against references that share none of
// their code: published table values, closed forms of special cases,
// Simpson integration of the densities written out here, and worked
// examples computed with the plain textbook formulas (the numbers worked by
// hand are in the comments). Property tests run seeded A/A experiments and
// check that the tests reject at their nominal rate.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/experiments/stats.h"

namespace optrec::stats {
namespace {

using ::testing::HasSubstr;

constexpr double kPi = 3.14159265358979323846;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Table values of the standard normal quantile.
constexpr double kZ975 = 1.959963985;  // P(Z <= z) = 0.975
constexpr double kZ995 = 2.575829304;  // 0.995
constexpr double kZ950 = 1.644853627;  // 0.95

// Differences from the Simpson references allowed at the points tested;
// the quadratures themselves are good to about 1e-12 there.
constexpr double kIntegrationTolerance = 1e-9;

// The value of `result`, or NaN after recording a failure.
double Value(const absl::StatusOr<double>& result) {
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *result : kNaN;
}

// Composite Simpson's rule for f over [lo, hi] with an even number of
// panels.
double Simpson(const std::function<double(double)>& f, double lo, double hi,
               int panels) {
  const double h = (hi - lo) / panels;
  double sum = f(lo) + f(hi);
  for (int i = 1; i < panels; ++i) {
    sum += (i % 2 == 1 ? 4 : 2) * f(lo + i * h);
  }
  return sum * h / 3;
}

// The Student t density, from its textbook form.
double TDensity(double u, double df) {
  const double norm =
      std::exp(std::lgamma((df + 1) / 2) - std::lgamma(df / 2)) /
      std::sqrt(df * kPi);
  return norm * std::pow(1 + u * u / df, -(df + 1) / 2);
}

// P(|T| <= |t|) by integrating the density over [0, |t|].
double CentralTMass(double t, double df) {
  return 2 * Simpson([df](double u) { return TDensity(u, df); }, 0,
                     std::fabs(t), 20000);
}

double ReferenceTCdf(double t, double df) {
  const double half = 0.5 * CentralTMass(t, df);
  return t < 0 ? 0.5 - half : 0.5 + half;
}

double ReferenceTTwoSided(double t, double df) {
  return 1 - CentralTMass(t, df);
}

// The chi-square density with k degrees of freedom.
double ChiSquareDensity(double u, double k) {
  return std::exp((k / 2 - 1) * std::log(u) - u / 2 - k / 2 * std::log(2.0) -
                  std::lgamma(k / 2));
}

// P(X >= x) for x > 0 by integrating the density from x outward: finely
// over the first 20, where it falls fastest, then to x + 400, beyond which
// less than 1e-80 remains for the df tested.
double ReferenceChiSquareUpperTail(double x, double k) {
  const auto f = [k](double u) { return ChiSquareDensity(u, k); };
  return Simpson(f, x, x + 20, 40000) + Simpson(f, x + 20, x + 400, 40000);
}

// ---- Normal distribution. ----

TEST(NormalTest, QuantileMatchesTableValues) {
  EXPECT_NEAR(Value(NormalQuantile(0.975)), kZ975, 1e-9);
  EXPECT_NEAR(Value(NormalQuantile(0.025)), -kZ975, 1e-9);
  EXPECT_NEAR(Value(NormalQuantile(0.995)), kZ995, 1e-9);
  EXPECT_NEAR(Value(NormalQuantile(0.95)), kZ950, 1e-9);
  EXPECT_EQ(Value(NormalQuantile(0.5)), 0.0);
  EXPECT_NEAR(Value(NormalCriticalValue(0.95)), kZ975, 1e-9);
  EXPECT_NEAR(Value(NormalCriticalValue(0.99)), kZ995, 1e-9);
  EXPECT_NEAR(Value(NormalCriticalValue(0.90)), kZ950, 1e-9);
}

TEST(NormalTest, QuantileInvertsTheCdfDeepInBothTails) {
  // NormalCdf is erfc from the standard library. In the lower tail the
  // relative error of p is about z^2 times that of z.
  for (double p : {1e-300, 1e-100, 1e-20, 1e-8, 0.001, 0.02, 0.3, 0.49}) {
    const double z = Value(NormalQuantile(p));
    EXPECT_NEAR(NormalCdf(z) / p, 1.0, 1e-12) << "p=" << p;
  }
  // The upper half mirrors the lower one (1 - p is exact for these p).
  for (double p : {0.001, 0.02, 0.3, 0.49}) {
    EXPECT_NEAR(Value(NormalQuantile(1 - p)), -Value(NormalQuantile(p)), 1e-12)
        << "p=" << p;
  }
}

TEST(NormalTest, TwoSidedPValueMatchesTableAndHandlesInfinity) {
  EXPECT_NEAR(NormalTwoSidedPValue(kZ975), 0.05, 1e-10);
  EXPECT_NEAR(NormalTwoSidedPValue(-kZ995), 0.01, 1e-10);
  EXPECT_EQ(NormalTwoSidedPValue(0), 1.0);
  EXPECT_EQ(NormalTwoSidedPValue(kInf), 0.0);
  EXPECT_EQ(NormalCdf(-kInf), 0.0);
  EXPECT_EQ(NormalCdf(kInf), 1.0);
}

TEST(NormalTest, QuantileRejectsProbabilitiesOutsideTheOpenInterval) {
  for (double p : {0.0, 1.0, -0.1, 1.5, kNaN}) {
    EXPECT_EQ(NormalQuantile(p).status().code(),
              absl::StatusCode::kInvalidArgument)
        << "p=" << p;
  }
  for (double c : {0.0, 1.0, 95.0, kNaN}) {
    const absl::StatusOr<double> z = NormalCriticalValue(c);
    EXPECT_EQ(z.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(z.status().message()), HasSubstr("confidence"));
  }
}

// ---- Incomplete beta and gamma. ----

TEST(IncompleteBetaTest, MatchesClosedFormsOfSpecialCases) {
  for (double x : {0.001, 0.1, 0.37, 0.5, 0.8, 0.999}) {
    // I_x(1, b) = 1 - (1 - x)^b, I_x(a, 1) = x^a, I_x(1/2, 1/2) =
    // (2 / pi) asin(sqrt x).
    EXPECT_NEAR(Value(RegularizedIncompleteBeta(1, 3.5, x)),
                1 - std::pow(1 - x, 3.5), 1e-14);
    EXPECT_NEAR(Value(RegularizedIncompleteBeta(7.25, 1, x)), std::pow(x, 7.25),
                1e-14);
    EXPECT_NEAR(Value(RegularizedIncompleteBeta(0.5, 0.5, x)),
                2 / kPi * std::asin(std::sqrt(x)), 1e-14);
  }
  EXPECT_EQ(Value(RegularizedIncompleteBeta(2, 3, 0)), 0.0);
  EXPECT_EQ(Value(RegularizedIncompleteBeta(2, 3, 1)), 1.0);
}

TEST(IncompleteBetaTest, RejectsParametersOutOfRange) {
  EXPECT_FALSE(RegularizedIncompleteBeta(0, 1, 0.5).ok());
  EXPECT_FALSE(RegularizedIncompleteBeta(1, -1, 0.5).ok());
  EXPECT_FALSE(RegularizedIncompleteBeta(1, 1, 1.5).ok());
  EXPECT_FALSE(RegularizedIncompleteBeta(1, 1, kNaN).ok());
  EXPECT_FALSE(RegularizedIncompleteBeta(kInf, 1, 0.5).ok());
}

TEST(IncompleteGammaTest, MatchesThePoissonSumForWholeShapes) {
  // Q(n, x) = e^-x * sum over k < n of x^k / k!; the points straddle the
  // switch between the series (x < s + 1) and the continued fraction.
  for (double x : {0.5, 3.0, 5.9, 6.1, 15.0, 60.0}) {
    double term = 1;
    double sum = 0;
    for (int k = 0; k < 5; ++k) {
      sum += term;
      term *= x / (k + 1);
    }
    const double expected = std::exp(-x) * sum;
    EXPECT_NEAR(Value(RegularizedUpperGamma(5, x)) / expected, 1, 1e-13)
        << "x=" << x;
    EXPECT_NEAR(Value(RegularizedUpperGamma(1, x)), std::exp(-x), 1e-15);
  }
  EXPECT_EQ(Value(RegularizedUpperGamma(2.5, 0)), 1.0);
  EXPECT_EQ(Value(RegularizedUpperGamma(2.5, kInf)), 0.0);
  EXPECT_FALSE(RegularizedUpperGamma(0, 1).ok());
  EXPECT_FALSE(RegularizedUpperGamma(1, -1).ok());
}

// ---- Student t. ----

TEST(StudentTTest, TwoSidedPValueMatchesTableValues) {
  // Two-sided 5% critical values of the t table.
  EXPECT_NEAR(Value(StudentTTwoSidedPValue(2.228138852, 10)), 0.05, 1e-9);
  EXPECT_NEAR(Value(StudentTTwoSidedPValue(-2.085963447, 20)), 0.05, 1e-9);
  EXPECT_NEAR(Value(StudentTTwoSidedPValue(12.70620474, 1)), 0.05, 1e-9);
  // Large df approaches the normal.
  EXPECT_NEAR(Value(StudentTTwoSidedPValue(kZ975, 1e9)), 0.05, 1e-9);
}

TEST(StudentTTest, CdfMatchesClosedFormsAtOneAndTwoDf) {
  for (double t : {-30.0, -2.5, -0.3, 0.0, 0.7, 4.0, 1e6}) {
    // df 1 is the Cauchy distribution; df 2 has CDF 1/2 + t / (2
    // sqrt(2 + t^2)).
    EXPECT_NEAR(Value(StudentTCdf(t, 1)), 0.5 + std::atan(t) / kPi, 1e-14)
        << "t=" << t;
    EXPECT_NEAR(Value(StudentTCdf(t, 2)), 0.5 + t / (2 * std::sqrt(2 + t * t)),
                1e-14)
        << "t=" << t;
  }
}

TEST(StudentTTest, CdfMatchesIntegratedDensityAtFractionalDf) {
  for (double df : {0.7, 1.5, 3.0, 4.5, 12.3, 25.408}) {
    for (double t : {-2.7, -0.4, 0.9, 1.96, 3.5}) {
      EXPECT_NEAR(Value(StudentTCdf(t, df)), ReferenceTCdf(t, df),
                  kIntegrationTolerance)
          << "t=" << t << " df=" << df;
      EXPECT_NEAR(Value(StudentTTwoSidedPValue(t, df)),
                  ReferenceTTwoSided(t, df), kIntegrationTolerance)
          << "t=" << t << " df=" << df;
    }
  }
}

TEST(StudentTTest, QuantileMatchesTableValues) {
  EXPECT_NEAR(Value(StudentTQuantile(0.975, 10)), 2.228138852, 1e-8);
  EXPECT_NEAR(Value(StudentTQuantile(0.975, 20)), 2.085963447, 1e-8);
  EXPECT_NEAR(Value(StudentTQuantile(0.025, 20)), -2.085963447, 1e-8);
  EXPECT_NEAR(Value(StudentTQuantile(0.975, 1)), 12.70620474, 1e-7);
  EXPECT_EQ(Value(StudentTQuantile(0.5, 3)), 0.0);
}

TEST(StudentTTest, QuantileInvertsIntegratedCdfAtFractionalDf) {
  for (double df : {0.8, 2.5, 7.3, 25.408}) {
    for (double p : {0.01, 0.2, 0.6, 0.975}) {
      const double t = Value(StudentTQuantile(p, df));
      EXPECT_NEAR(ReferenceTCdf(t, df), p, kIntegrationTolerance)
          << "p=" << p << " df=" << df;
    }
  }
}

TEST(StudentTTest, InfiniteStatisticHasZeroTail) {
  EXPECT_EQ(Value(StudentTTwoSidedPValue(kInf, 5)), 0.0);
  EXPECT_EQ(Value(StudentTCdf(-kInf, 5)), 0.0);
  EXPECT_EQ(Value(StudentTCdf(kInf, 5)), 1.0);
}

TEST(StudentTTest, HugeStatisticAtTinyDfKeepsItsHeavyTail) {
  // At df = 0.01 the tail falls like t^-0.01: still about 1% at 1e200,
  // where t^2 overflows. The tail is then x^a / (a B(a, 1/2)) with
  // x = df / t^2 and a = df / 2, to double precision.
  const double df = 0.01;
  const double a = df / 2;
  const double log_x = std::log(df) - 2 * std::log(1e200);
  const double expected = std::exp(a * log_x + std::lgamma(a + 0.5) -
                                   std::lgamma(a) - std::lgamma(0.5)) /
                          a;
  EXPECT_NEAR(Value(StudentTTwoSidedPValue(1e200, df)), expected, 1e-15);
  EXPECT_GT(expected, 0.009);
}

TEST(StudentTTest, RejectsBadArguments) {
  for (double df : {0.0, -1.0, kInf, kNaN}) {
    EXPECT_EQ(StudentTCdf(1, df).status().code(),
              absl::StatusCode::kInvalidArgument)
        << "df=" << df;
    EXPECT_FALSE(StudentTTwoSidedPValue(1, df).ok());
    EXPECT_FALSE(StudentTQuantile(0.9, df).ok());
  }
  EXPECT_FALSE(StudentTCdf(kNaN, 3).ok());
  EXPECT_FALSE(StudentTQuantile(0, 3).ok());
  EXPECT_FALSE(StudentTQuantile(1, 3).ok());
  // The 97.5% point at df = 0.001 is about 1e1300.
  EXPECT_EQ(StudentTQuantile(0.975, 0.001).status().code(),
            absl::StatusCode::kOutOfRange);
}

// ---- Chi-square. ----

TEST(ChiSquareTest, UpperTailMatchesTableValues) {
  EXPECT_NEAR(Value(ChiSquareUpperTail(3.841458821, 1)), 0.05, 1e-9);
  EXPECT_NEAR(Value(ChiSquareUpperTail(5.991464547, 2)), 0.05, 1e-9);
  EXPECT_NEAR(Value(ChiSquareUpperTail(10.82756617, 1)), 0.001, 1e-10);
  EXPECT_NEAR(Value(ChiSquareUpperTail(7.814727903, 3)), 0.05, 1e-9);
}

TEST(ChiSquareTest, UpperTailMatchesClosedFormsAtOneAndTwoDf) {
  for (double x : {0.01, 0.5, 2.0, 7.0, 30.0, 100.0}) {
    // df 2: e^(-x/2); df 1: erfc(sqrt(x / 2)).
    EXPECT_NEAR(Value(ChiSquareUpperTail(x, 2)) / std::exp(-x / 2), 1, 1e-13)
        << "x=" << x;
    EXPECT_NEAR(Value(ChiSquareUpperTail(x, 1)) / std::erfc(std::sqrt(x / 2)),
                1, 1e-13)
        << "x=" << x;
  }
}

TEST(ChiSquareTest, UpperTailMatchesIntegratedDensityAtFractionalDf) {
  for (double df : {0.5, 1.0, 2.5, 3.0, 7.3, 12.0}) {
    for (double x : {0.3, 1.1, 4.0, 9.5, 20.0}) {
      EXPECT_NEAR(Value(ChiSquareUpperTail(x, df)),
                  ReferenceChiSquareUpperTail(x, df), kIntegrationTolerance)
          << "x=" << x << " df=" << df;
    }
  }
}

TEST(ChiSquareTest, NonPositiveStatisticHasTailOneAndBadDfIsRejected) {
  EXPECT_EQ(Value(ChiSquareUpperTail(0, 3)), 1.0);
  EXPECT_EQ(Value(ChiSquareUpperTail(-2, 3)), 1.0);
  EXPECT_EQ(Value(ChiSquareUpperTail(kInf, 3)), 0.0);
  EXPECT_FALSE(ChiSquareUpperTail(1, 0).ok());
  EXPECT_FALSE(ChiSquareUpperTail(kNaN, 2).ok());
}

// ---- One proportion. ----

// The Wilson score interval from its textbook formula.
Interval ReferenceWilson(double successes, double n, double z) {
  const double p = successes / n;
  const double denominator = 1 + z * z / n;
  const double center = (p + z * z / (2 * n)) / denominator;
  const double half =
      z / denominator * std::sqrt(p * (1 - p) / n + z * z / (4 * n * n));
  return {center - half, center + half};
}

TEST(ProportionTest, WilsonIntervalMatchesWorkedExample) {
  // 30 of 200 at 95%: p = 0.15, z^2 / n = 0.0192073, centre 0.156596,
  // half-width 0.049460, so [0.107136, 0.206056].
  absl::StatusOr<ProportionSummary> summary = SummarizeProportion({30, 200});
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_DOUBLE_EQ(summary->rate, 0.15);
  EXPECT_EQ(summary->confidence, 0.95);
  EXPECT_NEAR(summary->interval.lower, 0.107136, 1e-6);
  EXPECT_NEAR(summary->interval.upper, 0.206056, 1e-6);
  const Interval reference = ReferenceWilson(30, 200, kZ975);
  EXPECT_NEAR(summary->interval.lower, reference.lower, 1e-9);
  EXPECT_NEAR(summary->interval.upper, reference.upper, 1e-9);
}

TEST(ProportionTest, WilsonIntervalFollowsTheConfidenceLevel) {
  absl::StatusOr<ProportionSummary> summary =
      SummarizeProportion({412, 5000}, 0.90);
  ASSERT_TRUE(summary.ok()) << summary.status();
  const Interval reference = ReferenceWilson(412, 5000, kZ950);
  EXPECT_NEAR(summary->interval.lower, reference.lower, 1e-9);
  EXPECT_NEAR(summary->interval.upper, reference.upper, 1e-9);
}

TEST(ProportionTest, WilsonIntervalStaysInsideZeroOneAtTheEdges) {
  // 0 of 10: [0, z^2 / (10 + z^2)] = [0, 0.277533]; 10 of 10 mirrors it.
  absl::StatusOr<ProportionSummary> none = SummarizeProportion({0, 10});
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->rate, 0.0);
  EXPECT_EQ(none->interval.lower, 0.0);
  EXPECT_NEAR(none->interval.upper, 0.277533, 1e-6);
  absl::StatusOr<ProportionSummary> all = SummarizeProportion({10, 10});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->rate, 1.0);
  EXPECT_NEAR(all->interval.lower, 1 - 0.277533, 1e-6);
  EXPECT_EQ(all->interval.upper, 1.0);
}

TEST(ProportionTest, RejectsMalformedCountsAndReportsMissingData) {
  EXPECT_EQ(SummarizeProportion({0, 0}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(SummarizeProportion({5, 4}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SummarizeProportion({-1, 4}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SummarizeProportion({1, 4}, 1.0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- Two proportions. ----

TEST(CompareProportionsTest, MatchesWorkedExample) {
  // Control 1000 / 10000 = 0.10, treatment 1100 / 10000 = 0.11.
  // Pooled 0.105: z = 0.01 / sqrt(0.105 * 0.895 * 2e-4) = 2.306635,
  // p = 0.021075. Wald: se = sqrt(0.11 * 0.89 / 1e4 + 0.1 * 0.9 / 1e4) =
  // 0.0043347, [0.001504, 0.018496]. Lift 0.1: var = 9.79e-6 / 0.01 +
  // 0.0121 * 9e-6 / 1e-4 = 0.002068, [0.010870, 0.189130].
  absl::StatusOr<ProportionComparison> result =
      CompareProportions({1000, 10000}, {1100, 10000});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_DOUBLE_EQ(result->control_rate, 0.10);
  EXPECT_DOUBLE_EQ(result->treatment_rate, 0.11);
  EXPECT_NEAR(result->difference, 0.01, 1e-15);
  EXPECT_NEAR(result->z, 2.306635, 1e-6);
  EXPECT_NEAR(result->p_value, 0.021075, 1e-6);
  EXPECT_NEAR(result->difference_interval.lower, 0.001504, 1e-6);
  EXPECT_NEAR(result->difference_interval.upper, 0.018496, 1e-6);
  ASSERT_TRUE(result->lift_defined);
  EXPECT_NEAR(result->lift, 0.1, 1e-14);
  EXPECT_NEAR(result->lift_interval.lower, 0.010870, 1e-6);
  EXPECT_NEAR(result->lift_interval.upper, 0.189130, 1e-6);
  EXPECT_FALSE(result->no_variance);

  // The same from the plain formulas, to full precision.
  const double pooled = 2100.0 / 20000;
  const double z = 0.01 / std::sqrt(pooled * (1 - pooled) * (2 / 1e4));
  EXPECT_NEAR(result->z, z, 1e-12);
  EXPECT_NEAR(result->p_value, std::erfc(z / std::sqrt(2.0)), 1e-12);
  const double wald = std::sqrt(0.11 * 0.89 / 1e4 + 0.1 * 0.9 / 1e4);
  EXPECT_NEAR(result->difference_interval.lower, 0.01 - kZ975 * wald, 1e-9);
  const double lift_se =
      std::sqrt(0.11 * 0.89 / 1e4 / (0.1 * 0.1) +
                0.11 * 0.11 * (0.1 * 0.9 / 1e4) / std::pow(0.1, 4));
  EXPECT_NEAR(result->lift_interval.upper, 0.1 + kZ975 * lift_se, 1e-9);
}

TEST(CompareProportionsTest, ZeroControlRateLeavesLiftUndefined) {
  absl::StatusOr<ProportionComparison> result =
      CompareProportions({0, 1000}, {5, 1000});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->lift_defined);
  EXPECT_EQ(result->lift, 0.0);
  EXPECT_EQ(result->lift_interval.lower, 0.0);
  EXPECT_EQ(result->lift_interval.upper, 0.0);
  EXPECT_NEAR(result->difference, 0.005, 1e-15);
  EXPECT_FALSE(result->no_variance);
  EXPECT_TRUE(std::isfinite(result->p_value));
  EXPECT_LT(result->p_value, 0.1);
}

TEST(CompareProportionsTest, ArmsWithoutVarianceGivePValueOneWithFlag) {
  absl::StatusOr<ProportionComparison> none =
      CompareProportions({0, 100}, {0, 200});
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->no_variance);
  EXPECT_EQ(none->z, 0.0);
  EXPECT_EQ(none->p_value, 1.0);
  EXPECT_EQ(none->difference_interval.lower, 0.0);
  EXPECT_EQ(none->difference_interval.upper, 0.0);
  EXPECT_FALSE(none->lift_defined);

  absl::StatusOr<ProportionComparison> all =
      CompareProportions({100, 100}, {50, 50});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_TRUE(all->no_variance);
  EXPECT_EQ(all->p_value, 1.0);
  ASSERT_TRUE(all->lift_defined);
  EXPECT_EQ(all->lift, 0.0);
}

TEST(CompareProportionsTest, NamesTheArmWithBadCounts) {
  const absl::StatusOr<ProportionComparison> empty =
      CompareProportions({0, 0}, {1, 10});
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(empty.status().message()), HasSubstr("control"));
  const absl::StatusOr<ProportionComparison> bad =
      CompareProportions({1, 10}, {11, 10});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("treatment"));
}

// ---- Means. ----

TEST(MeanAccumulatorTest, MatchesTwoPassMeanAndVariance) {
  // A large offset makes a sum-of-squares formula lose every digit; the
  // two-pass reference subtracts the mean first.
  std::mt19937_64 rng(7);
  std::normal_distribution<double> noise(0, 2);
  std::vector<double> values;
  MeanAccumulator accumulator;
  for (int i = 0; i < 1000; ++i) {
    values.push_back(1e8 + noise(rng));
    accumulator.Add(values.back());
  }
  double sum = 0;
  for (double v : values) sum += v;
  const double mean = sum / values.size();
  double squares = 0;
  for (double v : values) squares += (v - mean) * (v - mean);
  const double variance = squares / (values.size() - 1);

  EXPECT_EQ(accumulator.count(), 1000);
  EXPECT_NEAR(accumulator.mean(), mean, 1e-7);
  EXPECT_NEAR(accumulator.variance() / variance, 1, 1e-8);
  const MeanSummary summary = accumulator.Summary();
  EXPECT_EQ(summary.count, 1000);
  EXPECT_EQ(summary.mean, accumulator.mean());
  EXPECT_EQ(summary.variance, accumulator.variance());
}

TEST(MeanAccumulatorTest, MergedShardsMatchOneAccumulator) {
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> uniform(-3, 10);
  MeanAccumulator whole;
  MeanAccumulator shards[3];
  for (int i = 0; i < 900; ++i) {
    const double v = uniform(rng);
    whole.Add(v);
    shards[i < 100 ? 0 : (i < 600 ? 1 : 2)].Add(v);
  }
  MeanAccumulator merged;
  merged.Merge(MeanAccumulator());  // merging nothing changes nothing
  for (const MeanAccumulator& shard : shards) merged.Merge(shard);
  EXPECT_EQ(merged.count(), whole.count());
  EXPECT_NEAR(merged.mean(), whole.mean(), 1e-12);
  EXPECT_NEAR(merged.variance(), whole.variance(), 1e-11);
}

TEST(MeanAccumulatorTest, FewerThanTwoValuesHaveZeroVariance) {
  MeanAccumulator accumulator;
  EXPECT_EQ(accumulator.count(), 0);
  EXPECT_EQ(accumulator.mean(), 0.0);
  EXPECT_EQ(accumulator.variance(), 0.0);
  accumulator.Add(4.5);
  EXPECT_EQ(accumulator.mean(), 4.5);
  EXPECT_EQ(accumulator.variance(), 0.0);
}

TEST(WelchTest, MatchesHandWorkedExample) {
  // Control n 10, mean 5, variance 4; treatment n 20, mean 6.5, variance 9.
  // se^2 = 4/10 + 9/20 = 0.85, se = 0.921954, t = 1.5 / se = 1.626978;
  // df = 0.85^2 / (0.4^2 / 9 + 0.45^2 / 19) = 0.7225 / 0.0284357 = 25.4082;
  // two-sided p = 0.116081. Lift 0.3: var = (0.45 + 1.3^2 * 0.4) / 25 =
  // 0.04504, [-0.115956, 0.715956] at z = 1.959964.
  absl::StatusOr<MeanComparison> result =
      WelchTTest({10, 5.0, 4.0}, {20, 6.5, 9.0});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_DOUBLE_EQ(result->difference, 1.5);
  EXPECT_NEAR(result->standard_error, 0.921954, 1e-6);
  EXPECT_NEAR(result->t, 1.626978, 1e-6);
  EXPECT_NEAR(result->df, 25.4082, 1e-4);
  EXPECT_NEAR(result->p_value, 0.116081, 1e-6);
  EXPECT_NEAR(result->p_value, ReferenceTTwoSided(result->t, result->df),
              kIntegrationTolerance);
  ASSERT_TRUE(result->lift_defined);
  EXPECT_NEAR(result->lift, 0.3, 1e-15);
  EXPECT_NEAR(result->lift_interval.lower, -0.115956, 1e-6);
  EXPECT_NEAR(result->lift_interval.upper, 0.715956, 1e-6);
  EXPECT_FALSE(result->no_variance);

  // The interval uses the t point of the Welch df: its half-width in
  // standard errors leaves 5% in the two tails of the integrated density.
  const double half_width =
      (result->difference_interval.upper - result->difference_interval.lower) /
      2;
  EXPECT_NEAR(result->difference_interval.lower + half_width, 1.5, 1e-12);
  EXPECT_NEAR(
      ReferenceTTwoSided(half_width / result->standard_error, result->df), 0.05,
      kIntegrationTolerance);
}

TEST(WelchTest, DegreesOfFreedomReduceToKnownCases) {
  // Equal sizes and variances: df = 2n - 2. One arm without variance: the
  // other arm's n - 1.
  absl::StatusOr<MeanComparison> equal = WelchTTest({15, 1, 3}, {15, 2, 3});
  ASSERT_TRUE(equal.ok()) << equal.status();
  EXPECT_NEAR(equal->df, 28, 1e-12);
  absl::StatusOr<MeanComparison> one = WelchTTest({5, 1, 0}, {10, 2, 4});
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_NEAR(one->df, 9, 1e-12);
  EXPECT_NEAR(one->t, 1 / std::sqrt(0.4), 1e-12);
}

TEST(WelchTest, NoVarianceGivesPValueOneWithFlag) {
  absl::StatusOr<MeanComparison> result = WelchTTest({4, 1, 0}, {6, 2, 0});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->no_variance);
  EXPECT_EQ(result->t, 0.0);
  EXPECT_EQ(result->p_value, 1.0);
  EXPECT_EQ(result->df, 8.0);
  EXPECT_EQ(result->difference, 1.0);
  EXPECT_EQ(result->difference_interval.lower, 1.0);
  EXPECT_EQ(result->difference_interval.upper, 1.0);
}

TEST(WelchTest, ZeroControlMeanLeavesLiftUndefined) {
  absl::StatusOr<MeanComparison> result = WelchTTest({8, 0, 1}, {8, 0.5, 1});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->lift_defined);
  EXPECT_EQ(result->lift, 0.0);
  EXPECT_TRUE(std::isfinite(result->p_value));
}

TEST(WelchTest, RejectsMalformedSummariesAndTooFewValues) {
  EXPECT_EQ(WelchTTest({1, 0, 0}, {5, 0, 1}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(WelchTTest({5, 0, -1}, {5, 0, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  const absl::StatusOr<MeanComparison> nan =
      WelchTTest({5, 0, 1}, {5, kNaN, 1});
  EXPECT_EQ(nan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(nan.status().message()), HasSubstr("treatment"));
  EXPECT_EQ(WelchTTest({5, 0, 1}, {5, 0, kInf}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WelchTTest({-3, 0, 1}, {5, 0, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WelchTTest({5, 0, 1}, {5, 0, 1}, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WelchTTest({5, -1e308, 1}, {5, 1e308, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WelchTest, ControlMeanNearZeroLeavesLiftUndefinedRatherThanInfinite) {
  absl::StatusOr<MeanComparison> result =
      WelchTTest({8, 1e-310, 1}, {8, 0.5, 1});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->lift_defined);
  EXPECT_EQ(result->lift_interval.lower, 0.0);
  EXPECT_EQ(result->lift_interval.upper, 0.0);
}

// ---- Sample-ratio mismatch. ----

TEST(SampleRatioTest, FlagsA52To48SplitOfAFiftyFiftyExperiment) {
  // chi^2 = 2 * 400^2 / 10000 = 32, df 1: p = erfc(4) = 1.54e-8.
  absl::StatusOr<SampleRatioCheck> check =
      CheckSampleRatio({10400, 9600}, {50, 50});
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_NEAR(check->chi_square, 32, 1e-12);
  EXPECT_EQ(check->degrees_of_freedom, 1);
  EXPECT_NEAR(check->p_value / std::erfc(4.0), 1, 1e-12);
  EXPECT_TRUE(check->mismatch);
  EXPECT_THAT(check->expected, ::testing::ElementsAre(10000, 10000));
}

TEST(SampleRatioTest, DoesNotFlagOrdinaryNoise) {
  // chi^2 = 2 * 30^2 / 10000 = 0.18: p = erfc(0.3) = 0.671373.
  absl::StatusOr<SampleRatioCheck> check =
      CheckSampleRatio({10030, 9970}, {50, 50});
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_NEAR(check->chi_square, 0.18, 1e-12);
  EXPECT_NEAR(check->p_value, 0.671373, 1e-6);
  EXPECT_FALSE(check->mismatch);
}

TEST(SampleRatioTest, NormalisesWeightsOfAnyScale) {
  for (const std::vector<double>& weights :
       {std::vector<double>{1, 3}, std::vector<double>{25, 75},
        std::vector<double>{0.001, 0.003}}) {
    absl::StatusOr<SampleRatioCheck> check =
        CheckSampleRatio({250, 750}, weights);
    ASSERT_TRUE(check.ok()) << check.status();
    EXPECT_NEAR(check->chi_square, 0, 1e-12);
    EXPECT_NEAR(check->p_value, 1, 1e-12);
    EXPECT_FALSE(check->mismatch);
  }
}

TEST(SampleRatioTest, ThreeArmsUseTwoDegreesOfFreedom) {
  // Expected 3333.33 each; chi^2 = (66.67^2 + 2 * 33.33^2) / 3333.33 = 2,
  // df 2: p = e^-1.
  absl::StatusOr<SampleRatioCheck> check =
      CheckSampleRatio({3400, 3300, 3300}, {1, 1, 1});
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->degrees_of_freedom, 2);
  EXPECT_NEAR(check->chi_square, 2, 1e-12);
  EXPECT_NEAR(check->p_value, std::exp(-1.0), 1e-12);
}

TEST(SampleRatioTest, ThresholdDecidesTheFlag) {
  // chi^2 = 2, df 1: p = erfc(1) = 0.1573.
  absl::StatusOr<SampleRatioCheck> strict =
      CheckSampleRatio({10100, 9900}, {1, 1});
  ASSERT_TRUE(strict.ok()) << strict.status();
  EXPECT_NEAR(strict->p_value, std::erfc(1.0), 1e-12);
  EXPECT_FALSE(strict->mismatch);
  absl::StatusOr<SampleRatioCheck> loose =
      CheckSampleRatio({10100, 9900}, {1, 1}, 0.2);
  ASSERT_TRUE(loose.ok()) << loose.status();
  EXPECT_TRUE(loose->mismatch);
}

TEST(SampleRatioTest, RejectsMalformedConfigurations) {
  const auto code = [](std::vector<int64_t> observed,
                       std::vector<double> weights, double threshold) {
    return CheckSampleRatio(observed, weights, threshold).status().code();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code({10, 10}, {1, 1, 1}, 0.001), kInvalid);  // sizes differ
  EXPECT_EQ(code({10}, {1}, 0.001), kInvalid);            // one arm
  EXPECT_EQ(code({}, {}, 0.001), kInvalid);
  EXPECT_EQ(code({10, 10}, {1, 0}, 0.001), kInvalid);
  EXPECT_EQ(code({10, 10}, {1, -2}, 0.001), kInvalid);
  EXPECT_EQ(code({10, 10}, {1, kNaN}, 0.001), kInvalid);
  EXPECT_EQ(code({10, 10}, {1, kInf}, 0.001), kInvalid);
  EXPECT_EQ(code({10, -1}, {1, 1}, 0.001), kInvalid);
  EXPECT_EQ(code({10, 10}, {1, 1}, 0), kInvalid);
  EXPECT_EQ(code({10, 10}, {1, 1}, 1), kInvalid);
  EXPECT_EQ(code({0, 0}, {1, 1}, 0.001), absl::StatusCode::kFailedPrecondition);
  const absl::StatusOr<SampleRatioCheck> named =
      CheckSampleRatio({10, 10}, {1, 0});
  EXPECT_THAT(std::string(named.status().message()), HasSubstr("weights[1]"));
}

// ---- A/A and power properties. ----

// Enough runs for a band of +-0.006, so that a test rejecting at 0.06 or
// 0.04 fails; both tests below hold 0.05 to within 0.001 for these designs.
constexpr int kRepetitions = 20000;
constexpr double kAlpha = 0.05;

// The band a rejection rate of kRepetitions independent tests at level
// kAlpha falls in except with negligible probability: four binomial
// standard deviations either side.
double RejectionBand() {
  return 4 * std::sqrt(kAlpha * (1 - kAlpha) / kRepetitions);
}

TEST(AaPropertyTest, ZTestRejectsEqualRatesAtTheNominalRate) {
  std::mt19937_64 rng(20240611);
  std::binomial_distribution<int64_t> conversions(2000, 0.1);
  int rejections = 0;
  for (int i = 0; i < kRepetitions; ++i) {
    absl::StatusOr<ProportionComparison> result =
        CompareProportions({conversions(rng), 2000}, {conversions(rng), 2000});
    ASSERT_TRUE(result.ok()) << result.status();
    if (result->p_value < kAlpha) ++rejections;
  }
  const double rate = static_cast<double>(rejections) / kRepetitions;
  EXPECT_NEAR(rate, kAlpha, RejectionBand()) << rejections << " rejections";
}

TEST(AaPropertyTest, WelchRejectsEqualMeansAtTheNominalRate) {
  // Unequal variances and sizes, where a pooled-variance test would not
  // hold its level.
  std::mt19937_64 rng(99);
  std::normal_distribution<double> control(10, 1);
  std::normal_distribution<double> treatment(10, 3);
  int rejections = 0;
  for (int i = 0; i < kRepetitions; ++i) {
    MeanAccumulator c;
    MeanAccumulator t;
    for (int j = 0; j < 50; ++j) c.Add(control(rng));
    for (int j = 0; j < 20; ++j) t.Add(treatment(rng));
    absl::StatusOr<MeanComparison> result =
        WelchTTest(c.Summary(), t.Summary());
    ASSERT_TRUE(result.ok()) << result.status();
    if (result->p_value < kAlpha) ++rejections;
  }
  const double rate = static_cast<double>(rejections) / kRepetitions;
  EXPECT_NEAR(rate, kAlpha, RejectionBand()) << rejections << " rejections";
}

TEST(AaPropertyTest, ZTestDetectsARealLift) {
  // 0.10 against 0.12 with 10000 units per arm: z is about 4.5, so nearly
  // every run rejects.
  std::mt19937_64 rng(5);
  std::binomial_distribution<int64_t> control(10000, 0.10);
  std::binomial_distribution<int64_t> treatment(10000, 0.12);
  int rejections = 0;
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<ProportionComparison> result =
        CompareProportions({control(rng), 10000}, {treatment(rng), 10000});
    ASSERT_TRUE(result.ok()) << result.status();
    if (result->p_value < kAlpha) ++rejections;
  }
  EXPECT_GE(rejections, 95);
}

}  // namespace
}  // namespace optrec::stats
