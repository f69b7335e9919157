// The Prometheus text the server exports: counters, cumulative histogram
// buckets, gauges read at scrape time, escaped labels.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/metrics/metrics.h"

namespace optrec {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, CountersHistogramsAndGaugesInTheTextFormat) {
  Metrics m;
  m.Add("optrec_things_total", "things", {{"task", "ctr"}}, 2);
  m.Add("optrec_things_total", "things", {{"task", "ctr"}}, 3);
  m.Add("optrec_things_total", "things", {{"task", "a\"b\\c\nd"}});
  for (double v : {0.004, 0.02, 0.02, 3.0, 100.0}) {
    m.Observe("optrec_latency_seconds", "latency", {{"rpc", "Score"}}, v,
              {0.01, 0.1, 1});
  }
  double depth = 7;
  m.Gauge("optrec_depth", "queue depth", [&depth] { return depth; });
  depth = 9;  // read at export, not at registration
  const std::string text = m.ExportText();
  EXPECT_THAT(text, HasSubstr("# HELP optrec_things_total things\n"
                              "# TYPE optrec_things_total counter\n"));
  EXPECT_THAT(text, HasSubstr("optrec_things_total{task=\"ctr\"} 5\n"));
  EXPECT_THAT(text,
              HasSubstr("optrec_things_total{task=\"a\\\"b\\\\c\\nd\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE optrec_latency_seconds histogram\n"));
  EXPECT_THAT(
      text,
      HasSubstr(
          "optrec_latency_seconds_bucket{rpc=\"Score\",le=\"0.01\"} 1\n"
          "optrec_latency_seconds_bucket{rpc=\"Score\",le=\"0.1\"} 3\n"
          "optrec_latency_seconds_bucket{rpc=\"Score\",le=\"1\"} 3\n"
          "optrec_latency_seconds_bucket{rpc=\"Score\",le=\"+Inf\"} 5\n"));
  EXPECT_THAT(text,
              HasSubstr("optrec_latency_seconds_sum{rpc=\"Score\"} 103.044\n"));
  EXPECT_THAT(text,
              HasSubstr("optrec_latency_seconds_count{rpc=\"Score\"} 5\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE optrec_depth gauge\noptrec_depth 9\n"));
}

TEST(MetricsTest, CallsCountRequestsErrorsByCodeAndLatency) {
  Metrics m;
  m.ObserveCall("Score", "ctr", "v1", "OK", 0.003);
  m.ObserveCall("Score", "ctr", "v1", "INVALID_ARGUMENT", 0.001);
  const std::string text = m.ExportText();
  EXPECT_THAT(text, HasSubstr("optrec_rpc_requests_total{rpc=\"Score\",task="
                              "\"ctr\",version=\"v1\"} 2\n"));
  EXPECT_THAT(text,
              HasSubstr("optrec_rpc_errors_total{rpc=\"Score\",task=\"ctr\","
                        "version=\"v1\",code=\"INVALID_ARGUMENT\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("optrec_rpc_duration_seconds_count{rpc=\"Score\","
                              "task=\"ctr\",version=\"v1\"} 2\n"));
}

}  // namespace
}  // namespace optrec
