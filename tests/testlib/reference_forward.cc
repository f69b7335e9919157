// Plain-loop reference forward passes in double precision.
//
// Dimension letters: S positions (P prefix rows + T tokens), D model width,
// H query heads, K key/value heads, E head width, F MLP width, V vocabulary.
// Activations are std::vector<double>, one per position; a matrix is one flat
// row-major vector.
#include "tests/testlib/reference_forward.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <sstream>

namespace optrec {
namespace {

using Vec = std::vector<double>;

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    out << (i ? ", " : "") << shape[i];
  }
  out << "]";
  return out.str();
}

// Looks weights up by name and shape, remembering whether any was missing.
class WeightFinder {
 public:
  explicit WeightFinder(const ReferenceWeights& weights) : weights_(weights) {}

  // The values of `name`, which must exist with `shape`; nullptr (and a gtest
  // failure) otherwise.
  const Vec* Need(const std::string& name, std::vector<int64_t> shape) {
    auto it = weights_.find(name);
    if (it == weights_.end()) {
      ADD_FAILURE() << "reference forward: weight " << name << " is missing";
      ok_ = false;
      return nullptr;
    }
    return Check(it, shape);
  }

  // Like Need, but an absent weight is fine and gives nullptr.
  const Vec* Maybe(const std::string& name, std::vector<int64_t> shape) {
    auto it = weights_.find(name);
    if (it == weights_.end()) return nullptr;
    return Check(it, shape);
  }

  bool Has(const std::string& name) const { return weights_.count(name) > 0; }
  bool ok() const { return ok_; }

 private:
  const Vec* Check(ReferenceWeights::const_iterator it,
                   const std::vector<int64_t>& shape) {
    const auto& [actual_shape, values] = it->second;
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    if (actual_shape != shape || static_cast<int64_t>(values.size()) != numel) {
      ADD_FAILURE() << "reference forward: weight " << it->first
                    << " has shape " << ShapeText(actual_shape) << " and "
                    << values.size() << " values, expected "
                    << ShapeText(shape);
      ok_ = false;
      return nullptr;
    }
    return &values;
  }

  const ReferenceWeights& weights_;
  bool ok_ = true;
};

// y[o] = sum_i w[o][i] x[i] + b[o], with w in torch.nn.Linear layout
// [out, in]. `b` may be null.
Vec Linear(const Vec& x, const Vec& w, const Vec* b, int out) {
  const size_t in = x.size();
  Vec y(out, 0.0);
  for (int o = 0; o < out; ++o) {
    double sum = b ? (*b)[o] : 0.0;
    for (size_t i = 0; i < in; ++i) sum += w[o * in + i] * x[i];
    y[o] = sum;
  }
  return y;
}

// y[o] = sum_i x[i] w[i][o] + b[o], with w in GPT-2 Conv1D layout [in, out].
Vec Conv1D(const Vec& x, const Vec& w, const Vec& b) {
  const size_t in = x.size();
  const size_t out = b.size();
  Vec y(b);
  for (size_t i = 0; i < in; ++i) {
    for (size_t o = 0; o < out; ++o) y[o] += x[i] * w[i * out + o];
  }
  return y;
}

// x / sqrt(mean(x^2) + eps) * w over `x[begin, begin + n)`, in place.
void RmsNormInPlace(Vec& x, size_t begin, size_t n, const Vec& w, double eps) {
  double sum_sq = 0.0;
  for (size_t i = 0; i < n; ++i) sum_sq += x[begin + i] * x[begin + i];
  const double scale = 1.0 / std::sqrt(sum_sq / n + eps);
  for (size_t i = 0; i < n; ++i) x[begin + i] = x[begin + i] * scale * w[i];
}

Vec RmsNorm(Vec x, const Vec& w, double eps) {
  RmsNormInPlace(x, 0, x.size(), w, eps);
  return x;
}

// (x - mean) / sqrt(var + eps) * w + b, with the biased variance.
Vec LayerNorm(const Vec& x, const Vec& w, const Vec& b, double eps) {
  const size_t n = x.size();
  double mean = 0.0;
  for (double v : x) mean += v;
  mean /= n;
  double var = 0.0;
  for (double v : x) var += (v - mean) * (v - mean);
  var /= n;
  const double inv = 1.0 / std::sqrt(var + eps);
  Vec y(n);
  for (size_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * inv * w[i] + b[i];
  return y;
}

double Silu(double x) { return x / (1.0 + std::exp(-x)); }

// GELU, tanh approximation ("gelu_new").
double GeluTanh(double x) {
  constexpr double kPi = 3.14159265358979323846;
  const double k = std::sqrt(2.0 / kPi);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

// Rotates each of the `heads` heads of width `e` in `x` to position `pos`,
// rotate-half layout: the pair (i, i + e/2) turns by pos * theta^(-2i/e).
void ApplyRope(Vec& x, int heads, int e, int pos, double theta) {
  const int half = e / 2;
  for (int h = 0; h < heads; ++h) {
    double* head = &x[h * e];
    for (int i = 0; i < half; ++i) {
      const double inv_freq = std::pow(theta, -2.0 * i / e);
      const double angle = pos * inv_freq;
      const double c = std::cos(angle);
      const double s = std::sin(angle);
      const double a = head[i];
      const double b = head[i + half];
      head[i] = a * c - b * s;
      head[i + half] = b * c + a * s;
    }
  }
}

// Causal attention. q[s] holds H heads of width E, k[s] and v[s] hold K
// heads; query head h reads key/value head h / (H / K). Returns [S][H E].
std::vector<Vec> CausalAttention(const std::vector<Vec>& q,
                                 const std::vector<Vec>& k,
                                 const std::vector<Vec>& v, int heads,
                                 int kv_heads, int e) {
  const size_t positions = q.size();
  const int group = heads / kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(e));
  std::vector<Vec> out(positions, Vec(heads * e, 0.0));
  for (size_t s = 0; s < positions; ++s) {
    for (int h = 0; h < heads; ++h) {
      const int kv = h / group;
      Vec scores(s + 1);
      double max_score = -INFINITY;
      for (size_t j = 0; j <= s; ++j) {
        double dot = 0.0;
        for (int d = 0; d < e; ++d) dot += q[s][h * e + d] * k[j][kv * e + d];
        scores[j] = dot * scale;
        max_score = std::max(max_score, scores[j]);
      }
      double total = 0.0;
      for (double& score : scores) {
        score = std::exp(score - max_score);
        total += score;
      }
      for (size_t j = 0; j <= s; ++j) {
        const double p = scores[j] / total;
        for (int d = 0; d < e; ++d) {
          out[s][h * e + d] += p * v[j][kv * e + d];
        }
      }
    }
  }
  return out;
}

// Logits [S][V] from final hidden states and a [V, D] output matrix.
std::vector<Vec> Logits(const std::vector<Vec>& x, const Vec& out_w,
                        int vocab) {
  std::vector<Vec> logits;
  logits.reserve(x.size());
  for (const Vec& row : x) logits.push_back(Linear(row, out_w, nullptr, vocab));
  return logits;
}

// Input rows [S][D]: the prefix rows, then the embeddings of `ids` taken
// from `embed` [V, D]. Empty (with a gtest failure) on a bad id or row.
std::vector<Vec> EmbedInputs(const ReferenceConfig& c, const Vec& embed,
                             const std::vector<int>& ids,
                             const std::vector<Vec>& prefix) {
  std::vector<Vec> x;
  for (size_t p = 0; p < prefix.size(); ++p) {
    if (prefix[p].size() != static_cast<size_t>(c.hidden)) {
      ADD_FAILURE() << "reference forward: prefix row " << p << " has "
                    << prefix[p].size() << " values, expected " << c.hidden;
      return {};
    }
    x.push_back(prefix[p]);
  }
  for (int id : ids) {
    if (id < 0 || id >= c.vocab) {
      ADD_FAILURE() << "reference forward: token id " << id
                    << " outside the vocabulary of " << c.vocab;
      return {};
    }
    x.emplace_back(embed.begin() + static_cast<size_t>(id) * c.hidden,
                   embed.begin() + static_cast<size_t>(id + 1) * c.hidden);
  }
  return x;
}

// Layers [begin, end) of the Llama family on x [S][D], at positions
// 0..S-1. False (with a failure recorded) on a missing weight.
bool LlamaLayers(const ReferenceConfig& c, const ReferenceWeights& weights,
                 std::vector<Vec>& x, int begin, int end) {
  const int64_t d = c.hidden, h = c.heads, k = c.kv_heads, e = c.head_dim;
  const int64_t f = c.ffn;
  WeightFinder w(weights);
  const size_t positions = x.size();
  for (int layer = begin; layer < end; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    const std::string a = p + "self_attn.";
    const Vec* in_norm = w.Need(p + "input_layernorm.weight", {d});
    const Vec* post_norm = w.Need(p + "post_attention_layernorm.weight", {d});
    const Vec* wq = w.Need(a + "q_proj.weight", {h * e, d});
    const Vec* wk = w.Need(a + "k_proj.weight", {k * e, d});
    const Vec* wv = w.Need(a + "v_proj.weight", {k * e, d});
    const Vec* wo = w.Need(a + "o_proj.weight", {d, h * e});
    const Vec* bq = w.Maybe(a + "q_proj.bias", {h * e});
    const Vec* bk = w.Maybe(a + "k_proj.bias", {k * e});
    const Vec* bv = w.Maybe(a + "v_proj.bias", {k * e});
    const Vec* q_norm = w.Maybe(a + "q_norm.weight", {e});
    const Vec* k_norm = w.Maybe(a + "k_norm.weight", {e});
    const Vec* gate = w.Need(p + "mlp.gate_proj.weight", {f, d});
    const Vec* up = w.Need(p + "mlp.up_proj.weight", {f, d});
    const Vec* down = w.Need(p + "mlp.down_proj.weight", {d, f});
    if (!w.ok()) return false;

    // Attention block.
    std::vector<Vec> q(positions), kk(positions), vv(positions);
    for (size_t s = 0; s < positions; ++s) {
      const Vec normed = RmsNorm(x[s], *in_norm, c.eps);  // [D]
      q[s] = Linear(normed, *wq, bq, h * e);              // [H E]
      kk[s] = Linear(normed, *wk, bk, k * e);             // [K E]
      vv[s] = Linear(normed, *wv, bv, k * e);             // [K E]
      for (int64_t head = 0; q_norm && head < h; ++head) {
        RmsNormInPlace(q[s], head * e, e, *q_norm, c.eps);
      }
      for (int64_t head = 0; k_norm && head < k; ++head) {
        RmsNormInPlace(kk[s], head * e, e, *k_norm, c.eps);
      }
      ApplyRope(q[s], h, e, static_cast<int>(s), c.rope_theta);
      ApplyRope(kk[s], k, e, static_cast<int>(s), c.rope_theta);
    }
    const std::vector<Vec> attn =
        CausalAttention(q, kk, vv, h, k, e);  // [S][H E]
    for (size_t s = 0; s < positions; ++s) {
      const Vec o = Linear(attn[s], *wo, nullptr, d);
      for (int64_t i = 0; i < d; ++i) x[s][i] += o[i];
    }

    // SwiGLU MLP block.
    for (size_t s = 0; s < positions; ++s) {
      const Vec normed = RmsNorm(x[s], *post_norm, c.eps);
      const Vec g = Linear(normed, *gate, nullptr, f);  // [F]
      const Vec u = Linear(normed, *up, nullptr, f);    // [F]
      Vec act(f);
      for (int64_t i = 0; i < f; ++i) act[i] = Silu(g[i]) * u[i];
      const Vec out = Linear(act, *down, nullptr, d);
      for (int64_t i = 0; i < d; ++i) x[s][i] += out[i];
    }
  }
  return true;
}

// Layers [begin, end) of GPT-2 on x [S][D] (positions enter through the
// learned table only, added by the caller). `root` is "" or "transformer.".
bool Gpt2Layers(const ReferenceConfig& c, const ReferenceWeights& weights,
                const std::string& root, std::vector<Vec>& x, int begin,
                int end) {
  const int64_t d = c.hidden, h = c.heads, e = c.head_dim, f = c.ffn;
  WeightFinder w(weights);
  const size_t positions = x.size();
  for (int layer = begin; layer < end; ++layer) {
    const std::string p = root + "h." + std::to_string(layer) + ".";
    const Vec* ln1_w = w.Need(p + "ln_1.weight", {d});
    const Vec* ln1_b = w.Need(p + "ln_1.bias", {d});
    const Vec* attn_w = w.Need(p + "attn.c_attn.weight", {d, 3 * d});
    const Vec* attn_b = w.Need(p + "attn.c_attn.bias", {3 * d});
    const Vec* proj_w = w.Need(p + "attn.c_proj.weight", {d, d});
    const Vec* proj_b = w.Need(p + "attn.c_proj.bias", {d});
    const Vec* ln2_w = w.Need(p + "ln_2.weight", {d});
    const Vec* ln2_b = w.Need(p + "ln_2.bias", {d});
    const Vec* fc_w = w.Need(p + "mlp.c_fc.weight", {d, f});
    const Vec* fc_b = w.Need(p + "mlp.c_fc.bias", {f});
    const Vec* mproj_w = w.Need(p + "mlp.c_proj.weight", {f, d});
    const Vec* mproj_b = w.Need(p + "mlp.c_proj.bias", {d});
    if (!w.ok()) return false;

    // Attention block: c_attn gives q, k, v side by side.
    std::vector<Vec> q(positions), kk(positions), vv(positions);
    for (size_t s = 0; s < positions; ++s) {
      const Vec normed = LayerNorm(x[s], *ln1_w, *ln1_b, c.eps);
      const Vec qkv = Conv1D(normed, *attn_w, *attn_b);  // [3 D]
      q[s].assign(qkv.begin(), qkv.begin() + d);
      kk[s].assign(qkv.begin() + d, qkv.begin() + 2 * d);
      vv[s].assign(qkv.begin() + 2 * d, qkv.end());
    }
    const std::vector<Vec> attn =
        CausalAttention(q, kk, vv, h, h, e);  // [S][D]
    for (size_t s = 0; s < positions; ++s) {
      const Vec o = Conv1D(attn[s], *proj_w, *proj_b);
      for (int64_t i = 0; i < d; ++i) x[s][i] += o[i];
    }

    // GELU MLP block.
    for (size_t s = 0; s < positions; ++s) {
      const Vec normed = LayerNorm(x[s], *ln2_w, *ln2_b, c.eps);
      Vec hidden = Conv1D(normed, *fc_w, *fc_b);  // [F]
      for (double& value : hidden) value = GeluTanh(value);
      const Vec out = Conv1D(hidden, *mproj_w, *mproj_b);
      for (int64_t i = 0; i < d; ++i) x[s][i] += out[i];
    }
  }
  return true;
}

// The weights around the layers: embeddings, final norm, output matrix.
struct Ends {
  std::string root;  // GPT-2's "transformer." prefix, or ""
  const Vec* embed = nullptr;
  const Vec* wpe = nullptr;  // GPT-2 only
  int64_t max_positions = 0;
  const Vec* norm_w = nullptr;
  const Vec* norm_b = nullptr;  // GPT-2 only
  const Vec* out_w = nullptr;
};

bool FindEnds(const ReferenceConfig& c, const ReferenceWeights& weights,
              Ends* ends) {
  const int64_t d = c.hidden, v = c.vocab;
  WeightFinder w(weights);
  if (c.family == "llama") {
    ends->embed = w.Need("model.embed_tokens.weight", {v, d});
    ends->norm_w = w.Need("model.norm.weight", {d});
  } else {
    ends->root = w.Has("transformer.wte.weight") ? "transformer." : "";
    ends->embed = w.Need(ends->root + "wte.weight", {v, d});
    auto wpe_it = weights.find(ends->root + "wpe.weight");
    ends->max_positions =
        wpe_it == weights.end() || wpe_it->second.first.empty()
            ? 0
            : wpe_it->second.first[0];
    ends->wpe = w.Need(ends->root + "wpe.weight", {ends->max_positions, d});
    ends->norm_w = w.Need(ends->root + "ln_f.weight", {d});
    ends->norm_b = w.Need(ends->root + "ln_f.bias", {d});
  }
  ends->out_w = c.tied ? ends->embed : w.Need("lm_head.weight", {v, d});
  return w.ok();
}

// GPT-2: adds the learned position embeddings 0..S-1 to x [S][D]. False
// (with a failure) when x is longer than the table. Llama: nothing.
bool AddLearnedPositions(const ReferenceConfig& c, const Ends& ends,
                         std::vector<Vec>& x) {
  if (c.family != "gpt2") return true;
  if (static_cast<int64_t>(x.size()) > ends.max_positions) {
    ADD_FAILURE() << "reference forward: " << x.size()
                  << " positions exceed the " << ends.max_positions
                  << " learned position embeddings";
    return false;
  }
  for (size_t s = 0; s < x.size(); ++s) {
    for (int i = 0; i < c.hidden; ++i) x[s][i] += (*ends.wpe)[s * c.hidden + i];
  }
  return true;
}

bool RunLayers(const ReferenceConfig& c, const ReferenceWeights& weights,
               const Ends& ends, std::vector<Vec>& x, int begin, int end) {
  if (c.family == "llama") return LlamaLayers(c, weights, x, begin, end);
  return Gpt2Layers(c, weights, ends.root, x, begin, end);
}

// Final norm and logits [S][V].
std::vector<Vec> Head(const ReferenceConfig& c, const Ends& ends,
                      std::vector<Vec> x) {
  for (Vec& row : x) {
    row = c.family == "llama"
              ? RmsNorm(row, *ends.norm_w, c.eps)
              : LayerNorm(row, *ends.norm_w, *ends.norm_b, c.eps);
  }
  return Logits(x, *ends.out_w, c.vocab);
}

// Checks the numbers a forward pass relies on; records a failure if not.
bool ConfigIsValid(const ReferenceConfig& c) {
  std::ostringstream problem;
  if (c.family != "llama" && c.family != "gpt2") {
    problem << "family '" << c.family << "' is not llama or gpt2";
  } else if (c.hidden <= 0 || c.layers < 0 || c.heads <= 0 || c.head_dim <= 0 ||
             c.ffn <= 0 || c.vocab <= 0) {
    problem << "hidden, heads, head_dim, ffn and vocab must be positive, "
               "layers non-negative";
  } else if (c.family == "llama" &&
             (c.kv_heads <= 0 || c.heads % c.kv_heads != 0 ||
              c.head_dim % 2 != 0)) {
    problem << "llama needs kv_heads dividing heads (" << c.heads << " / "
            << c.kv_heads << ") and an even head_dim (" << c.head_dim << ")";
  } else if (c.family == "gpt2" && c.heads * c.head_dim != c.hidden) {
    problem << "gpt2 needs heads * head_dim == hidden";
  } else if (!(c.eps >= 0.0)) {
    problem << "eps " << c.eps << " is negative";
  }
  if (problem.str().empty()) return true;
  ADD_FAILURE() << "reference forward: bad config: " << problem.str();
  return false;
}

}  // namespace

std::vector<std::vector<double>> ReferenceForward(
    const ReferenceConfig& config, const ReferenceWeights& weights,
    const std::vector<int>& ids,
    const std::vector<std::vector<double>>& prefix) {
  Ends ends;
  if (!ConfigIsValid(config) || !FindEnds(config, weights, &ends)) return {};
  std::vector<Vec> x = EmbedInputs(config, *ends.embed, ids, prefix);
  if (x.empty() || !AddLearnedPositions(config, ends, x) ||
      !RunLayers(config, weights, ends, x, 0, config.layers)) {
    return {};
  }
  return Head(config, ends, std::move(x));
}

std::vector<std::vector<double>> ReferenceLateInteraction(
    const ReferenceConfig& config, const ReferenceWeights& weights,
    const std::vector<std::vector<int>>& segments, int lower_layers,
    const std::vector<std::vector<double>>& prefix,
    const std::vector<std::vector<double>>& segment_embeddings) {
  Ends ends;
  if (!ConfigIsValid(config) || !FindEnds(config, weights, &ends)) return {};
  if (lower_layers < 0 || lower_layers > config.layers ||
      (!segment_embeddings.empty() &&
       segment_embeddings.size() != segments.size())) {
    ADD_FAILURE() << "reference late interaction: lower_layers " << lower_layers
                  << " or " << segment_embeddings.size()
                  << " segment embeddings do not fit";
    return {};
  }
  std::vector<Vec> joint = prefix;  // [S][D]
  for (size_t i = 0; i < segments.size(); ++i) {
    // The segment alone, its positions from 0, through the lower layers.
    std::vector<Vec> x = EmbedInputs(config, *ends.embed, segments[i], {});
    if (x.empty()) return {};
    if (lower_layers > 0 &&
        (!AddLearnedPositions(config, ends, x) ||
         !RunLayers(config, weights, ends, x, 0, lower_layers))) {
      return {};
    }
    for (Vec& row : x) {
      if (!segment_embeddings.empty()) {
        for (int j = 0; j < config.hidden; ++j) {
          row[j] += segment_embeddings[i][j];
        }
      }
      joint.push_back(std::move(row));
    }
  }
  if (lower_layers == 0 && !AddLearnedPositions(config, ends, joint)) {
    return {};
  }
  if (!RunLayers(config, weights, ends, joint, lower_layers, config.layers)) {
    return {};
  }
  return Head(config, ends, std::move(joint));
}

ReferenceWeights ReadAllWeights(const WeightStore& store) {
  ReferenceWeights out;
  for (const std::string& name : store.names()) {
    const TensorView* view = store.Find(name);
    absl::StatusOr<torch::Tensor> tensor =
        store.Get(name, view->shape, DTypeToTorch(view->dtype));
    if (!tensor.ok()) {
      ADD_FAILURE() << "ReadAllWeights: " << tensor.status();
      continue;
    }
    const torch::Tensor values = tensor->to(torch::kDouble).contiguous();
    const double* data = values.data_ptr<double>();
    out[name] = {view->shape, Vec(data, data + values.numel())};
  }
  return out;
}

}  // namespace optrec
