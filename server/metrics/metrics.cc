#include "server/metrics/metrics.h"

#include <algorithm>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace optrec {
namespace {

std::string Escape(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// The shortest of %.15g and %.17g that reads back as the same double (0.1,
// not 0.10000000000000001).
std::string Number(double v) {
  const std::string short_form = absl::StrFormat("%.15g", v);
  if (std::strtod(short_form.c_str(), nullptr) == v) return short_form;
  return absl::StrFormat("%.17g", v);
}

// `labels` (rendered, may be "") with one more label added.
std::string WithLabel(const std::string& labels, const std::string& name,
                      const std::string& value) {
  const std::string extra = absl::StrCat(name, "=\"", value, "\"");
  if (labels.empty()) return absl::StrCat("{", extra, "}");
  return absl::StrCat(labels.substr(0, labels.size() - 1), ",", extra, "}");
}

}  // namespace

std::string RenderLabels(const Labels& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    absl::StrAppend(&out, i > 0 ? "," : "", labels[i].first, "=\"",
                    Escape(labels[i].second), "\"");
  }
  return out + "}";
}

const std::vector<double>& Metrics::LatencyBuckets() {
  static const std::vector<double> buckets = {
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  return buckets;
}

void Metrics::Add(const std::string& name, const std::string& help,
                  const Labels& labels, double value) {
  absl::MutexLock lock(&mu_);
  Family& f = families_[name];
  f.help = help;
  f.type = "counter";
  f.counters[RenderLabels(labels)] += value;
}

void Metrics::Observe(const std::string& name, const std::string& help,
                      const Labels& labels, double value,
                      const std::vector<double>& buckets) {
  absl::MutexLock lock(&mu_);
  Family& f = families_[name];
  f.help = help;
  f.type = "histogram";
  Histogram& h = f.histograms[RenderLabels(labels)];
  if (h.bounds.empty()) {
    h.bounds = buckets;
    h.counts.assign(buckets.size() + 1, 0);  // the last is +Inf
  }
  const size_t bucket =
      std::lower_bound(h.bounds.begin(), h.bounds.end(), value) -
      h.bounds.begin();
  ++h.counts[bucket];
  h.sum += value;
  ++h.count;
}

void Metrics::Gauge(const std::string& name, const std::string& help,
                    std::function<double()> read) {
  absl::MutexLock lock(&mu_);
  Family& f = families_[name];
  f.help = help;
  f.type = "gauge";
  f.gauge = std::move(read);
}

void Metrics::CounterFunc(const std::string& name, const std::string& help,
                          std::function<double()> read) {
  absl::MutexLock lock(&mu_);
  Family& f = families_[name];
  f.help = help;
  f.type = "counter";
  f.gauge = std::move(read);
}

void Metrics::ObserveCall(const std::string& rpc, const std::string& task,
                          const std::string& version, const std::string& code,
                          double seconds) {
  const Labels labels = {{"rpc", rpc}, {"task", task}, {"version", version}};
  Add("optrec_rpc_requests_total", "gRPC calls that ended, by RPC and task",
      labels);
  if (code != "OK") {
    Labels with_code = labels;
    with_code.emplace_back("code", code);
    Add("optrec_rpc_errors_total", "gRPC calls that ended with an error",
        with_code);
  }
  Observe("optrec_rpc_duration_seconds", "gRPC call latency", labels, seconds,
          LatencyBuckets());
}

std::string Metrics::ExportText() const {
  std::vector<std::pair<std::string, std::function<double()>>> gauges;
  std::string out;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, f] : families_) {
      absl::StrAppend(&out, "# HELP ", name, " ", f.help, "\n", "# TYPE ", name,
                      " ", f.type, "\n");
      for (const auto& [labels, v] : f.counters) {
        absl::StrAppend(&out, name, labels, " ", Number(v), "\n");
      }
      for (const auto& [labels, h] : f.histograms) {
        int64_t cumulative = 0;
        for (size_t b = 0; b < h.counts.size(); ++b) {
          cumulative += h.counts[b];
          const std::string le =
              b < h.bounds.size() ? Number(h.bounds[b]) : "+Inf";
          absl::StrAppend(&out, name, "_bucket", WithLabel(labels, "le", le),
                          " ", cumulative, "\n");
        }
        absl::StrAppend(&out, name, "_sum", labels, " ", Number(h.sum), "\n",
                        name, "_count", labels, " ", h.count, "\n");
      }
      if (f.gauge) {
        // Read after the lock is released: a gauge may take other locks.
        gauges.emplace_back(name, f.gauge);
        absl::StrAppend(&out, "\x01", name, "\n");
      }
    }
  }
  // Fill in the gauges' values where their markers stand.
  for (const auto& [name, read] : gauges) {
    const std::string marker = absl::StrCat("\x01", name, "\n");
    const size_t at = out.find(marker);
    out.replace(at, marker.size(),
                absl::StrCat(name, " ", Number(read()), "\n"));
  }
  return out;
}

}  // namespace optrec
