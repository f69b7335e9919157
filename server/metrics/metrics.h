// Serving metrics in the Prometheus text exposition format (version 0.0.4):
// counters and histograms keyed by label values, plus gauges read at
// scrape time. Cheap enough for every call: one mutex-guarded map update.
#ifndef OPTREC_SERVER_METRICS_METRICS_H_
#define OPTREC_SERVER_METRICS_METRICS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace optrec {

// Label names and values, in the order given (values are escaped on
// export).
using Labels = std::vector<std::pair<std::string, std::string>>;

// Thread-safe.
class Metrics {
 public:
  // Latency buckets of optrec_rpc_duration_seconds, in seconds.
  static const std::vector<double>& LatencyBuckets();

  // Adds `value` to counter `name` with `labels`. `help` is printed once
  // per name.
  void Add(const std::string& name, const std::string& help,
           const Labels& labels, double value = 1);
  // Records one observation in histogram `name` (cumulative buckets,
  // _sum and _count, as Prometheus expects).
  void Observe(const std::string& name, const std::string& help,
               const Labels& labels, double value,
               const std::vector<double>& buckets);
  // A gauge whose value is read by `read` at every export.
  void Gauge(const std::string& name, const std::string& help,
             std::function<double()> read);
  // A counter kept elsewhere (a total another component counts), read by
  // `read` at every export.
  void CounterFunc(const std::string& name, const std::string& help,
                   std::function<double()> read);

  // One gRPC call that ended: requests and errors by code, latency.
  void ObserveCall(const std::string& rpc, const std::string& task,
                   const std::string& version, const std::string& code,
                   double seconds);

  // Every metric in the text format, sorted by name.
  std::string ExportText() const;

 private:
  struct Histogram {
    std::vector<double> bounds;
    std::vector<int64_t> counts;  // per bucket, not cumulative
    double sum = 0;
    int64_t count = 0;
  };
  struct Family {
    std::string help, type;
    std::map<std::string, double> counters;       // rendered labels -> value
    std::map<std::string, Histogram> histograms;  // rendered labels -> data
    std::function<double()> gauge;
  };

  mutable absl::Mutex mu_;  // guards families_
  std::map<std::string, Family> families_ ABSL_GUARDED_BY(mu_);
};

// `{a="x",b="y"}` with quotes, backslashes and newlines escaped; "" for no
// labels.
std::string RenderLabels(const Labels& labels);

}  // namespace optrec

#endif  // OPTREC_SERVER_METRICS_METRICS_H_
