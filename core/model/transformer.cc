#include "core/model/transformer.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/checkpoint/weight_store.h"
#include "core/util/log.h"
#include "core/util/status_macros.h"
#include "core/util/torch_errors.h"

namespace optrec {

struct LayerWeights {
  torch::Tensor attn_norm_w, attn_norm_b;  // [D]; bias for LayerNorm only
  torch::Tensor qkv_w, qkv_b;              // [(H+2K)E, D], [(H+2K)E]
  torch::Tensor q_norm_w, k_norm_w;        // [E] (qk_norm only)
  torch::Tensor o_w, o_b;                  // [D, HE], [D]
  torch::Tensor mlp_norm_w, mlp_norm_b;    // [D]
  // kLlama: gate and up fused, [2F, D]; kGpt2: c_fc as [F, D].
  torch::Tensor up_w, up_b;
  torch::Tensor down_w, down_b;  // [D, F], [D]
};

struct TransformerLM::Weights {
  torch::Tensor embed;         // [V, D]
  torch::Tensor pos_embed;     // [max_positions, D] (kGpt2 only)
  torch::Tensor final_norm_w;  // [D]
  torch::Tensor final_norm_b;  // [D] (kGpt2 only)
  torch::Tensor lm_head;       // [V, D]; the same tensor as embed when tied
  torch::Tensor inv_freq;      // [E/2] f32 RoPE frequencies (kLlama only)
  std::vector<LayerWeights> layers;
};

namespace {

constexpr float kMaskedScore = -1e30f;

// Reads tensors from the store onto the chosen device and dtype.
class WeightLoader {
 public:
  WeightLoader(const WeightStore& store, const DeviceChoice& device)
      : store_(store), device_(device) {}

  absl::StatusOr<torch::Tensor> Get(const std::string& name,
                                    std::vector<int64_t> shape) const {
    ASSIGN_OR_RETURN(torch::Tensor t, store_.Get(name, shape, device_.dtype));
    return t.to(device_.device);
  }

  // A linear layer's weight [out, in] stored as Conv1D ([in, out]).
  absl::StatusOr<torch::Tensor> GetTransposed(const std::string& name,
                                              int64_t out, int64_t in) const {
    ASSIGN_OR_RETURN(torch::Tensor t, Get(name, {in, out}));
    return t.t().contiguous();
  }

  bool Has(const std::string& name) const {
    return store_.Find(name) != nullptr;
  }

 private:
  const WeightStore& store_;
  const DeviceChoice& device_;
};

// RoPE inverse frequencies [E/2], with the config's rescaling applied.
torch::Tensor RopeInverseFrequencies(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<float> inv(half);
  const RopeScaling& rs = c.rope_scaling;
  for (int64_t i = 0; i < half; ++i) {
    double f = std::pow(c.rope_theta, -2.0 * i / c.head_dim);
    if (rs.type == RopeScaling::Type::kLinear) {
      f /= rs.factor;
    } else if (rs.type == RopeScaling::Type::kLlama3) {
      // Llama 3.1's published rule: long wavelengths are divided by the
      // factor, short ones kept, the band between blended linearly.
      const double old_ctx = static_cast<double>(rs.original_max_positions);
      const double wavelen = 2.0 * M_PI / f;
      const double low_wavelen = old_ctx / rs.low_freq_factor;
      const double high_wavelen = old_ctx / rs.high_freq_factor;
      if (wavelen > low_wavelen) {
        f /= rs.factor;
      } else if (wavelen >= high_wavelen) {
        double smooth = (old_ctx / wavelen - rs.low_freq_factor) /
                        (rs.high_freq_factor - rs.low_freq_factor);
        f = (1.0 - smooth) * f / rs.factor + smooth * f;
      }
    }
    inv[i] = static_cast<float>(f);
  }
  return torch::tensor(inv, torch::kFloat32);
}

absl::Status LoadLlamaLayer(const WeightLoader& w, const ModelConfig& c,
                            int64_t l, LayerWeights* out) {
  const std::string p = absl::StrCat("model.layers.", l, ".");
  const int64_t d = c.hidden_size, e = c.head_dim, h = c.num_heads,
                k = c.num_kv_heads, f = c.intermediate_size;
  ASSIGN_OR_RETURN(out->attn_norm_w, w.Get(p + "input_layernorm.weight", {d}));
  ASSIGN_OR_RETURN(out->mlp_norm_w,
                   w.Get(p + "post_attention_layernorm.weight", {d}));
  ASSIGN_OR_RETURN(auto q, w.Get(p + "self_attn.q_proj.weight", {h * e, d}));
  ASSIGN_OR_RETURN(auto kw, w.Get(p + "self_attn.k_proj.weight", {k * e, d}));
  ASSIGN_OR_RETURN(auto v, w.Get(p + "self_attn.v_proj.weight", {k * e, d}));
  out->qkv_w = torch::cat({q, kw, v}, 0);
  if (c.qkv_bias) {
    ASSIGN_OR_RETURN(auto qb, w.Get(p + "self_attn.q_proj.bias", {h * e}));
    ASSIGN_OR_RETURN(auto kb, w.Get(p + "self_attn.k_proj.bias", {k * e}));
    ASSIGN_OR_RETURN(auto vb, w.Get(p + "self_attn.v_proj.bias", {k * e}));
    out->qkv_b = torch::cat({qb, kb, vb}, 0);
  }
  if (c.qk_norm) {
    ASSIGN_OR_RETURN(out->q_norm_w, w.Get(p + "self_attn.q_norm.weight", {e}));
    ASSIGN_OR_RETURN(out->k_norm_w, w.Get(p + "self_attn.k_norm.weight", {e}));
  }
  ASSIGN_OR_RETURN(out->o_w, w.Get(p + "self_attn.o_proj.weight", {d, h * e}));
  if (c.o_bias) {
    ASSIGN_OR_RETURN(out->o_b, w.Get(p + "self_attn.o_proj.bias", {d}));
  }
  ASSIGN_OR_RETURN(auto gate, w.Get(p + "mlp.gate_proj.weight", {f, d}));
  ASSIGN_OR_RETURN(auto up, w.Get(p + "mlp.up_proj.weight", {f, d}));
  out->up_w = torch::cat({gate, up}, 0);
  ASSIGN_OR_RETURN(out->down_w, w.Get(p + "mlp.down_proj.weight", {d, f}));
  if (c.mlp_bias) {
    ASSIGN_OR_RETURN(auto gb, w.Get(p + "mlp.gate_proj.bias", {f}));
    ASSIGN_OR_RETURN(auto ub, w.Get(p + "mlp.up_proj.bias", {f}));
    out->up_b = torch::cat({gb, ub}, 0);
    ASSIGN_OR_RETURN(out->down_b, w.Get(p + "mlp.down_proj.bias", {d}));
  }
  return absl::OkStatus();
}

absl::Status LoadLlama(const WeightLoader& w, const ModelConfig& c,
                       TransformerLM::Weights* out) {
  const int64_t v = c.vocab_size, d = c.hidden_size;
  ASSIGN_OR_RETURN(out->embed, w.Get("model.embed_tokens.weight", {v, d}));
  ASSIGN_OR_RETURN(out->final_norm_w, w.Get("model.norm.weight", {d}));
  if (c.tie_word_embeddings && !w.Has("lm_head.weight")) {
    out->lm_head = out->embed;
  } else {
    ASSIGN_OR_RETURN(out->lm_head, w.Get("lm_head.weight", {v, d}));
  }
  out->layers.resize(c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    RETURN_IF_ERROR(LoadLlamaLayer(w, c, l, &out->layers[l]));
  }
  out->inv_freq = RopeInverseFrequencies(c);
  return absl::OkStatus();
}

absl::Status LoadGpt2(const WeightLoader& w, const ModelConfig& c,
                      TransformerLM::Weights* out) {
  const int64_t v = c.vocab_size, d = c.hidden_size, f = c.intermediate_size;
  // GPT2LMHeadModel saves under "transformer."; the original files do not.
  const std::string root =
      w.Has("transformer.wte.weight") ? "transformer." : "";
  ASSIGN_OR_RETURN(out->embed, w.Get(root + "wte.weight", {v, d}));
  ASSIGN_OR_RETURN(out->pos_embed,
                   w.Get(root + "wpe.weight", {c.max_positions, d}));
  ASSIGN_OR_RETURN(out->final_norm_w, w.Get(root + "ln_f.weight", {d}));
  ASSIGN_OR_RETURN(out->final_norm_b, w.Get(root + "ln_f.bias", {d}));
  if (c.tie_word_embeddings || !w.Has("lm_head.weight")) {
    out->lm_head = out->embed;
  } else {
    ASSIGN_OR_RETURN(out->lm_head, w.Get("lm_head.weight", {v, d}));
  }
  out->layers.resize(c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat(root, "h.", l, ".");
    LayerWeights& lw = out->layers[l];
    ASSIGN_OR_RETURN(lw.attn_norm_w, w.Get(p + "ln_1.weight", {d}));
    ASSIGN_OR_RETURN(lw.attn_norm_b, w.Get(p + "ln_1.bias", {d}));
    ASSIGN_OR_RETURN(lw.qkv_w,
                     w.GetTransposed(p + "attn.c_attn.weight", 3 * d, d));
    ASSIGN_OR_RETURN(lw.qkv_b, w.Get(p + "attn.c_attn.bias", {3 * d}));
    ASSIGN_OR_RETURN(lw.o_w, w.GetTransposed(p + "attn.c_proj.weight", d, d));
    ASSIGN_OR_RETURN(lw.o_b, w.Get(p + "attn.c_proj.bias", {d}));
    ASSIGN_OR_RETURN(lw.mlp_norm_w, w.Get(p + "ln_2.weight", {d}));
    ASSIGN_OR_RETURN(lw.mlp_norm_b, w.Get(p + "ln_2.bias", {d}));
    ASSIGN_OR_RETURN(lw.up_w, w.GetTransposed(p + "mlp.c_fc.weight", f, d));
    ASSIGN_OR_RETURN(lw.up_b, w.Get(p + "mlp.c_fc.bias", {f}));
    ASSIGN_OR_RETURN(lw.down_w, w.GetTransposed(p + "mlp.c_proj.weight", d, f));
    ASSIGN_OR_RETURN(lw.down_b, w.Get(p + "mlp.c_proj.bias", {d}));
  }
  return absl::OkStatus();
}

torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& weight,
                      double eps) {
  // Normalise in f32 whatever the compute dtype, as the reference does.
  torch::Tensor xf = x.to(torch::kFloat32);
  torch::Tensor scale = torch::rsqrt(xf.pow(2).mean(-1, true) + eps);
  return (xf * scale).to(x.scalar_type()) * weight;
}

// GPT-2's GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), written as
// x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)) (the same function, since
// 0.5 (1 + tanh z) = sigmoid(2z)) in in-place steps: on this LibTorch that
// takes about half the time of at::gelu(x, "tanh"), with the same accuracy.
// When autograd records (a soft prompt being tuned), the plain op is used,
// since in-place steps would overwrite what backward needs.
torch::Tensor GeluTanh(const torch::Tensor& x) {
  if (torch::GradMode::is_enabled() && x.requires_grad()) {
    return torch::gelu(x, "tanh");
  }
  const double scale = 2.0 * std::sqrt(2.0 / M_PI);
  return x.pow(3).mul_(0.044715).add_(x).mul_(scale).sigmoid_().mul_(x);
}

// Rotates pairs (i, i + E/2) of x [B, N, T, E] by the angles in cos/sin
// [B, 1, T, E] (the Hugging Face rotate-half layout).
torch::Tensor ApplyRope(const torch::Tensor& x, const torch::Tensor& cos,
                        const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  torch::Tensor x1 = x.narrow(-1, 0, half);
  torch::Tensor x2 = x.narrow(-1, half, half);
  torch::Tensor rotated = torch::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

}  // namespace

namespace {

// Checks a row's adapter shapes and token overrides.
absl::Status CheckRowExtras(const ModelConfig& c, const RowInput& row,
                            size_t r) {
  const RowAdapter& a = row.adapter;
  if (a.defined()) {
    const bool ok =
        a.up.defined() && a.scale.defined() && a.down.dim() == 3 &&
        a.down.size(0) == c.num_layers && a.down.size(1) == c.hidden_size &&
        a.up.dim() == 3 && a.up.size(0) == c.num_layers &&
        a.up.size(1) == a.down.size(2) && a.up.size(2) == c.hidden_size &&
        a.scale.dim() == 1 && a.scale.size(0) == c.num_layers;
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Forward: row ", r, " has an adapter with down ",
          c10::str(a.down.sizes()), ", up ",
          a.up.defined() ? c10::str(a.up.sizes()) : "undefined", ", scale ",
          a.scale.defined() ? c10::str(a.scale.sizes()) : "undefined",
          "; expected [", c.num_layers, ", ", c.hidden_size, ", R], [",
          c.num_layers, ", R, ", c.hidden_size, "], [", c.num_layers, "]"));
    }
  }
  if (row.override_at.empty()) {
    if (row.override_embeddings.defined() &&
        row.override_embeddings.size(0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Forward: row ", r, " has override embeddings but no positions"));
    }
    return absl::OkStatus();
  }
  const int64_t n = static_cast<int64_t>(row.override_at.size());
  if (!row.override_embeddings.defined() ||
      row.override_embeddings.dim() != 2 ||
      row.override_embeddings.size(0) != n ||
      row.override_embeddings.size(1) != c.hidden_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("Forward: row ", r, " overrides ", n,
                     " token embeddings but override_embeddings is ",
                     row.override_embeddings.defined()
                         ? c10::str(row.override_embeddings.sizes())
                         : "undefined",
                     "; expected [", n, ", ", c.hidden_size, "]"));
  }
  std::vector<int64_t> sorted = row.override_at;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    if (sorted[i] < 0 || sorted[i] >= static_cast<int64_t>(row.ids.size()) ||
        (i > 0 && sorted[i] == sorted[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("Forward: row ", r, " overrides token position ",
                       sorted[i], " (positions must be distinct and below its ",
                       row.ids.size(), " ids)"));
    }
  }
  return absl::OkStatus();
}

// Each row's adapter weights gathered for one call: rows without an adapter
// get zero scale. Undefined members when no row has one.
struct GatheredAdapters {
  torch::Tensor down;   // [B, L, D, R] or [L, D, R] when every row shares one
  torch::Tensor up;     // [B, L, R, D] or [L, R, D]
  torch::Tensor scale;  // [B, L] or [L]
  bool shared = false;
};

GatheredAdapters GatherAdapters(const std::vector<RowInput>& rows,
                                const torch::Device& dev,
                                torch::ScalarType dtype) {
  GatheredAdapters g;
  std::vector<const RowAdapter*> unique;
  std::vector<int64_t> index(rows.size(), -1);
  for (size_t r = 0; r < rows.size(); ++r) {
    const RowAdapter& a = rows[r].adapter;
    if (!a.defined()) continue;
    for (size_t u = 0; u < unique.size(); ++u) {
      if (unique[u]->down.is_same(a.down) && unique[u]->up.is_same(a.up) &&
          unique[u]->scale.is_same(a.scale)) {
        index[r] = static_cast<int64_t>(u);
      }
    }
    if (index[r] < 0) {
      index[r] = static_cast<int64_t>(unique.size());
      unique.push_back(&a);
    }
  }
  if (unique.empty()) return g;
  const bool all_rows =
      std::all_of(index.begin(), index.end(), [](int64_t i) { return i >= 0; });
  if (unique.size() == 1 && all_rows) {
    g.shared = true;
    g.down = unique[0]->down.to(dev, dtype);
    g.up = unique[0]->up.to(dev, dtype);
    g.scale = unique[0]->scale.to(dev, dtype);
    return g;
  }
  // Stack the distinct adapters plus a zero-scale slot for rows without
  // one, then gather one entry per row. Adapters of lower rank are padded
  // with zero columns of down and zero rows of up, which adds nothing.
  int64_t rank = 0;
  for (const RowAdapter* a : unique) rank = std::max(rank, a->down.size(2));
  std::vector<torch::Tensor> downs, ups, scales;
  for (const RowAdapter* a : unique) {
    const int64_t pad = rank - a->down.size(2);
    torch::Tensor down = a->down.to(dev, dtype);  // [L, D, R_a]
    torch::Tensor up = a->up.to(dev, dtype);      // [L, R_a, D]
    if (pad > 0) {
      down = torch::nn::functional::pad(
          down, torch::nn::functional::PadFuncOptions({0, pad}));
      up = torch::nn::functional::pad(
          up, torch::nn::functional::PadFuncOptions({0, 0, 0, pad}));
    }
    downs.push_back(down);
    ups.push_back(up);
    scales.push_back(a->scale.to(dev, dtype));
  }
  const int64_t none = static_cast<int64_t>(unique.size());
  if (!all_rows) {
    downs.push_back(torch::zeros_like(downs[0]));
    ups.push_back(torch::zeros_like(ups[0]));
    scales.push_back(torch::zeros_like(scales[0]));
  }
  for (int64_t& i : index) {
    if (i < 0) i = none;
  }
  torch::Tensor idx = torch::tensor(index, torch::kInt64).to(dev);  // [B]
  g.down = torch::stack(downs).index_select(0, idx);
  g.up = torch::stack(ups).index_select(0, idx);
  g.scale = torch::stack(scales).index_select(0, idx);
  return g;
}

// The adapter term of layer l for MLP input x [B, T, D].
torch::Tensor AdapterDelta(const GatheredAdapters& g, int64_t l,
                           const torch::Tensor& x) {
  if (g.shared) {
    torch::Tensor h = torch::gelu(torch::matmul(x, g.down[l]), "tanh");
    return torch::matmul(h, g.up[l]) * g.scale[l];
  }
  torch::Tensor down = g.down.select(1, l);  // [B, D, R]
  torch::Tensor up = g.up.select(1, l);      // [B, R, D]
  torch::Tensor scale = g.scale.select(1, l).view({-1, 1, 1});
  torch::Tensor h = torch::gelu(torch::bmm(x, down), "tanh");  // [B, T, R]
  return torch::bmm(h, up) * scale;
}

}  // namespace

// Everything the layers share within one call.
struct TransformerLM::CallContext {
  torch::Tensor rope_cos, rope_sin;  // [B, 1, T, E] (kLlama)
  torch::Tensor bias;                // [B, 1, 1, T, S] additive scores mask
  KVCache* cache = nullptr;
};

namespace {

using CallContext = TransformerLM::CallContext;
using CallInputs = TransformerLM::CallInputs;

// The family's normalisation: RMSNorm (kLlama) or LayerNorm (kGpt2).
torch::Tensor Norm(const ModelConfig& c, const torch::Tensor& x,
                   const torch::Tensor& weight, const torch::Tensor& bias) {
  if (c.family == Family::kLlama) return RmsNorm(x, weight, c.norm_eps);
  return torch::layer_norm(x, {c.hidden_size}, weight, bias, c.norm_eps);
}

// The attention mask of one call as additive scores, and RoPE angles.
// Keys are the cached columns followed by this call's; a query sees a key
// that is valid, not later than itself (inside its row's bidirectional
// prefix: any prefix key), and within the sliding window if there is one.
CallContext MakeContext(const ModelConfig& c, const TransformerLM::Weights& w,
                        const CallInputs& in, const std::vector<RowInput>& rows,
                        KVCache* cache, torch::ScalarType dtype) {
  const int64_t b = in.positions.size(0), t = in.positions.size(1);
  const auto dev = in.positions.device();
  CallContext ctx;
  ctx.cache = cache;
  torch::Tensor key_pos = in.positions, key_valid = in.valid;  // [B, S]
  if (cache != nullptr) {
    std::tie(key_pos, key_valid) = cache->BeginStep(in.positions, in.valid);
  }
  torch::Tensor q_pos = in.positions.unsqueeze(2);     // [B, T, 1]
  torch::Tensor k_pos = key_pos.unsqueeze(1);          // [B, 1, S]
  torch::Tensor k_valid = key_valid.unsqueeze(1);      // [B, 1, S]
  torch::Tensor allowed = k_valid & (k_pos <= q_pos);  // [B, T, S]
  if (c.sliding_window > 0) {
    allowed &= k_pos > q_pos - c.sliding_window;
  }
  std::vector<int64_t> prefix_end(b);
  bool any_prefix = false;
  for (int64_t r = 0; r < b; ++r) {
    prefix_end[r] = in.starts[r] + rows[r].bidirectional_prefix;
    any_prefix |= rows[r].bidirectional_prefix > 0;
  }
  if (any_prefix) {
    torch::Tensor end =
        torch::tensor(prefix_end, torch::kInt64).to(dev).view({b, 1, 1});
    allowed |= k_valid & (q_pos < end) & (k_pos < end);
  }
  const int64_t s = key_pos.size(1);
  ctx.bias = torch::zeros({b, t, s}, torch::dtype(torch::kFloat32).device(dev))
                 .masked_fill_(allowed.logical_not(), kMaskedScore)
                 .view({b, 1, 1, t, s});

  if (c.family == Family::kLlama) {
    // Angles [B, T, E/2] -> cos/sin [B, 1, T, E], in f32 like the reference.
    torch::Tensor angles =
        in.positions.to(torch::kFloat32).unsqueeze(-1) * w.inv_freq;
    torch::Tensor full = torch::cat({angles, angles}, -1).unsqueeze(1);
    ctx.rope_cos = full.cos().to(dtype);
    ctx.rope_sin = full.sin().to(dtype);
  }
  return ctx;
}

// Self-attention of layer `layer` on x [B, T, D]; returns its output
// projection [B, T, D] (before the residual add).
torch::Tensor Attention(const ModelConfig& c, const LayerWeights& lw,
                        int64_t layer, const torch::Tensor& x,
                        const CallContext& ctx) {
  const int64_t b = x.size(0), t = x.size(1);
  const int64_t h = c.num_heads, k = c.num_kv_heads, e = c.head_dim;
  const int64_t g = h / k;
  torch::Tensor normed = Norm(c, x, lw.attn_norm_w, lw.attn_norm_b);
  torch::Tensor qkv = torch::linear(normed, lw.qkv_w, lw.qkv_b);
  torch::Tensor q = qkv.narrow(-1, 0, h * e).view({b, t, h, e});
  torch::Tensor kk = qkv.narrow(-1, h * e, k * e).view({b, t, k, e});
  torch::Tensor v = qkv.narrow(-1, (h + k) * e, k * e).view({b, t, k, e});
  if (c.qk_norm) {
    q = RmsNorm(q, lw.q_norm_w, c.norm_eps);
    kk = RmsNorm(kk, lw.k_norm_w, c.norm_eps);
  }
  q = q.transpose(1, 2);    // [B, H, T, E]
  kk = kk.transpose(1, 2);  // [B, K, T, E]
  v = v.transpose(1, 2);    // [B, K, T, E]
  if (c.family == Family::kLlama) {
    q = ApplyRope(q, ctx.rope_cos, ctx.rope_sin);
    kk = ApplyRope(kk, ctx.rope_cos, ctx.rope_sin);
  }
  if (ctx.cache != nullptr) {
    std::tie(kk, v) = ctx.cache->Store(layer, kk, v);  // [B, K, S, E]
  }
  const int64_t s = kk.size(2);
  // Each key/value head serves G query heads: [B, K, G*T, E].
  torch::Tensor qg = q.reshape({b, k, g * t, e});
  const double scale = 1.0 / std::sqrt(static_cast<double>(e));
  torch::Tensor scores =
      torch::matmul(qg, kk.transpose(-1, -2)).mul_(scale);  // [B,K,G*T,S]
  // Softmax in f32 whatever the compute dtype; in place where already f32.
  torch::Tensor probs = scores.view({b, k, g, t, s})
                            .to(torch::kFloat32)
                            .add_(ctx.bias)
                            .softmax(-1)
                            .to(v.scalar_type())
                            .view({b, k, g * t, s});
  torch::Tensor attn = torch::matmul(probs, v)  // [B, K, G*T, E]
                           .view({b, h, t, e})
                           .transpose(1, 2)
                           .reshape({b, t, h * e});
  return torch::linear(attn, lw.o_w, lw.o_b);
}

// The MLP of one layer on its normalised input [B, T, D].
torch::Tensor Mlp(const ModelConfig& c, const LayerWeights& lw,
                  const torch::Tensor& x) {
  torch::Tensor up = torch::linear(x, lw.up_w, lw.up_b);  // [B, T, 2F or F]
  torch::Tensor act;
  if (c.family == Family::kLlama) {
    const int64_t f = c.intermediate_size;
    act = torch::silu(up.narrow(-1, 0, f)) * up.narrow(-1, f, f);
  } else {
    act = c.activation == "gelu" ? torch::gelu(up) : GeluTanh(up);
  }
  return torch::linear(act, lw.down_w, lw.down_b);  // [B, T, D]
}

// Layers [begin, end) on the residual stream x [B, T, D].
torch::Tensor RunLayers(const ModelConfig& c, const TransformerLM::Weights& w,
                        torch::Tensor x, const CallContext& ctx,
                        const GatheredAdapters& adapters,
                        const ForwardOptions& options, int64_t begin,
                        int64_t end) {
  for (int64_t l = begin; l < end; ++l) {
    const LayerWeights& lw = w.layers[l];
    x = x + Attention(c, lw, l, x, ctx);
    torch::Tensor mlp_in = Norm(c, x, lw.mlp_norm_w, lw.mlp_norm_b);
    torch::Tensor mlp_out = Mlp(c, lw, mlp_in);
    if (adapters.down.defined()) {
      mlp_out = mlp_out + AdapterDelta(adapters, l, mlp_in);
    }
    if (options.mlp_hook) mlp_out = options.mlp_hook(l, mlp_in, mlp_out);
    x = x + mlp_out;
  }
  return x;
}

// Positions starts[r]..starts[r]+lengths[r]-1 of each row, padding repeating
// the row's last position (masked anyway, and inside a learned position
// table), and validity; both [B, T] on `dev`.
void RowPositions(const std::vector<int64_t>& lengths,
                  const std::vector<int64_t>& starts, int64_t t,
                  const torch::Device& dev, torch::Tensor* positions,
                  torch::Tensor* valid) {
  const int64_t b = static_cast<int64_t>(lengths.size());
  torch::Tensor pos = torch::zeros({b, t}, torch::kInt64);  // [B, T]
  torch::Tensor ok = torch::zeros({b, t}, torch::kBool);    // [B, T]
  auto pos_a = pos.accessor<int64_t, 2>();
  auto ok_a = ok.accessor<bool, 2>();
  for (int64_t r = 0; r < b; ++r) {
    const int64_t last = std::max<int64_t>(lengths[r] - 1, 0);
    for (int64_t i = 0; i < t; ++i) {
      pos_a[r][i] = starts[r] + std::min(i, last);
      ok_a[r][i] = i < lengths[r];
    }
  }
  *positions = pos.to(dev);
  *valid = ok.to(dev);
}

}  // namespace

TransformerLM::~TransformerLM() = default;

absl::StatusOr<std::shared_ptr<const TransformerLM>> TransformerLM::Load(
    const std::string& dir, const LoadOptions& options) {
  std::shared_ptr<TransformerLM> model(new TransformerLM());
  model->dir_ = dir;
  model->device_ = options.device;
  ASSIGN_OR_RETURN(model->config_, LoadModelConfig(dir));
  ASSIGN_OR_RETURN(auto store, WeightStore::OpenDir(dir));
  model->fingerprint_ = store->Fingerprint(model->config_.CanonicalText());

  auto weights = std::make_unique<Weights>();
  WeightLoader loader(*store, model->device_);
  try {
    if (model->config_.family == Family::kLlama) {
      RETURN_IF_ERROR(LoadLlama(loader, model->config_, weights.get()));
    } else {
      RETURN_IF_ERROR(LoadGpt2(loader, model->config_, weights.get()));
    }
    weights->inv_freq = weights->inv_freq.defined()
                            ? weights->inv_freq.to(model->device_.device)
                            : weights->inv_freq;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(
        dir, ": loading weights failed: ", e.what_without_backtrace()));
  }
  model->weights_ = std::move(weights);

  if (options.load_tokenizer) {
    auto tokenizer = LoadTokenizerFromDir(dir);
    if (tokenizer.ok()) {
      model->tokenizer_ = *std::move(tokenizer);
    } else if (!absl::IsNotFound(tokenizer.status())) {
      return tokenizer.status();
    }
  }
  LOG_INFO << "loaded " << model->config_.model_type << " model from " << dir
           << ": " << model->config_.num_layers << " layers, width "
           << model->config_.hidden_size << ", " << model->parameter_count()
           << " parameters, " << DtypeName(model->device_.dtype) << " on "
           << model->device_.device.str() << ", fingerprint "
           << model->fingerprint_
           << (model->tokenizer_ ? "" : ", no tokenizer (ids only)");
  return std::shared_ptr<const TransformerLM>(std::move(model));
}

std::vector<torch::Tensor> TransformerLM::parameters() const {
  const Weights& w = *weights_;
  std::vector<torch::Tensor> all;
  auto add = [&all](const torch::Tensor& t) {
    if (t.defined()) all.push_back(t);
  };
  add(w.embed);
  add(w.pos_embed);
  add(w.final_norm_w);
  add(w.final_norm_b);
  if (!w.lm_head.is_same(w.embed)) add(w.lm_head);
  for (const LayerWeights& lw : w.layers) {
    for (const torch::Tensor* t :
         {&lw.attn_norm_w, &lw.attn_norm_b, &lw.qkv_w, &lw.qkv_b, &lw.q_norm_w,
          &lw.k_norm_w, &lw.o_w, &lw.o_b, &lw.mlp_norm_w, &lw.mlp_norm_b,
          &lw.up_w, &lw.up_b, &lw.down_w, &lw.down_b}) {
      add(*t);
    }
  }
  return all;
}

int64_t TransformerLM::parameter_count() const {
  int64_t total = 0;
  for (const torch::Tensor& t : parameters()) total += t.numel();
  return total;
}

KVCache TransformerLM::NewCache(int64_t rows) const {
  return KVCache(rows, config_.num_layers, config_.num_kv_heads,
                 config_.head_dim,
                 torch::dtype(device_.dtype).device(device_.device));
}

torch::Tensor TransformerLM::EmbedTokens(const torch::Tensor& ids) const {
  return torch::embedding(weights_->embed, ids);
}

torch::Tensor TransformerLM::Project(const torch::Tensor& hidden) const {
  return torch::linear(hidden, weights_->lm_head);
}

absl::StatusOr<ForwardOutput> TransformerLM::Forward(
    const std::vector<RowInput>& rows, KVCache* cache,
    const ForwardOptions& options) const {
  if (rows.empty()) {
    return absl::InvalidArgumentError("Forward: no rows");
  }
  if (cache != nullptr && cache->rows() != static_cast<int64_t>(rows.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("Forward: cache holds ", cache->rows(),
                     " rows, batch has ", rows.size()));
  }
  int64_t longest = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    const RowInput& row = rows[r];
    for (int32_t id : row.ids) {
      if (id < 0 || id >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Forward: row ", r, " has token id ", id,
            " outside the vocabulary [0, ", config_.vocab_size, ")"));
      }
    }
    int64_t prompt_len = 0;
    if (row.prompt.defined()) {
      if (row.prompt.dim() != 2 || row.prompt.size(1) != config_.hidden_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("Forward: row ", r, " has a soft prompt of shape ",
                         c10::str(row.prompt.sizes()), "; expected [P, ",
                         config_.hidden_size, "]"));
      }
      prompt_len = row.prompt.size(0);
    }
    const int64_t length = prompt_len + static_cast<int64_t>(row.ids.size());
    RETURN_IF_ERROR(CheckRowExtras(config_, row, r));
    if (row.bidirectional_prefix < 0 || row.bidirectional_prefix > length) {
      return absl::InvalidArgumentError(
          absl::StrCat("Forward: row ", r, " has bidirectional_prefix ",
                       row.bidirectional_prefix, " outside [0, ", length, "]"));
    }
    const int64_t start = cache ? cache->next_position(r) : 0;
    if (config_.family == Family::kGpt2 &&
        start + length > config_.max_positions) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Forward: row ", r, " reaches position ", start + length - 1,
          " but the model has ", config_.max_positions, " positions"));
    }
    longest = std::max(longest, length);
  }
  if (longest == 0) {
    return absl::InvalidArgumentError("Forward: every row is empty");
  }
  ForwardOutput out;
  try {
    ForwardImpl(rows, cache, options, &out);
  } catch (const std::exception& e) {
    if (cache != nullptr) cache->AbortStep();
    return absl::InternalError(
        absl::StrCat("Forward failed: ", TorchErrorMessage(e)));
  }
  return out;
}

void TransformerLM::ForwardImpl(const std::vector<RowInput>& rows,
                                KVCache* cache, const ForwardOptions& options,
                                ForwardOutput* out) const {
  CallInputs in = PrepareInputs(rows, cache);
  CallContext ctx =
      MakeContext(config_, *weights_, in, rows, cache, device_.dtype);
  const GatheredAdapters adapters =
      GatherAdapters(rows, device_.device, device_.dtype);
  torch::Tensor x = RunLayers(config_, *weights_, in.x, ctx, adapters, options,
                              0, config_.num_layers);  // [B, T, D]
  FinishOutput(std::move(x), std::move(in), options, out);
}

void TransformerLM::FinishOutput(torch::Tensor x, CallInputs in,
                                 const ForwardOptions& options,
                                 ForwardOutput* out) const {
  out->hidden = Norm(config_, x, weights_->final_norm_w,
                     weights_->final_norm_b);  // [B, T, D]
  out->valid = in.valid;
  out->positions = in.positions;
  out->lengths = std::move(in.lengths);
  if (options.logits == ForwardOptions::Logits::kAll) {
    out->logits = Project(out->hidden);  // [B, T, V]
  } else if (options.logits == ForwardOptions::Logits::kLast) {
    const int64_t b = static_cast<int64_t>(out->lengths.size());
    std::vector<int64_t> last(b);
    for (int64_t r = 0; r < b; ++r) {
      last[r] = std::max<int64_t>(0, out->lengths[r] - 1);
    }
    const auto long_opts = torch::dtype(torch::kInt64).device(device_.device);
    torch::Tensor index = torch::tensor(last).to(long_opts);
    torch::Tensor row_index = torch::arange(b, long_opts);
    out->logits = Project(out->hidden.index({row_index, index}));  // [B, V]
  }
}

absl::StatusOr<std::vector<torch::Tensor>> TransformerLM::EncodeSegments(
    const std::vector<std::vector<int32_t>>& segments,
    int64_t lower_layers) const {
  if (lower_layers < 0 || lower_layers > config_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("EncodeSegments: lower_layers ", lower_layers,
                     " outside [0, ", config_.num_layers, "]"));
  }
  std::vector<RowInput> rows(segments.size());
  for (size_t i = 0; i < segments.size(); ++i) {
    const std::vector<int32_t>& ids = segments[i];
    if (ids.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("EncodeSegments: segment ", i, " is empty"));
    }
    for (int32_t id : ids) {
      if (id < 0 || id >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "EncodeSegments: segment ", i, " has token id ", id,
            " outside the vocabulary [0, ", config_.vocab_size, ")"));
      }
    }
    if (config_.family == Family::kGpt2 &&
        static_cast<int64_t>(ids.size()) > config_.max_positions) {
      return absl::InvalidArgumentError(absl::StrCat(
          "EncodeSegments: segment ", i, " has ", ids.size(),
          " tokens but the model has ", config_.max_positions, " positions"));
    }
    rows[i].ids = ids;
  }
  std::vector<torch::Tensor> states;
  if (segments.empty()) return states;
  try {
    torch::NoGradGuard no_grad;
    const auto long_opts = torch::dtype(torch::kInt64).device(device_.device);
    if (lower_layers == 0) {
      for (const std::vector<int32_t>& ids : segments) {
        std::vector<int64_t> wide(ids.begin(), ids.end());
        states.push_back(EmbedTokens(torch::tensor(wide).to(long_opts)));
      }
      return states;
    }
    CallInputs in = PrepareInputs(rows, nullptr);
    CallContext ctx =
        MakeContext(config_, *weights_, in, rows, nullptr, device_.dtype);
    torch::Tensor x = RunLayers(config_, *weights_, in.x, ctx,
                                GatheredAdapters{}, ForwardOptions{}, 0,
                                lower_layers);  // [B, T, D]
    for (size_t i = 0; i < segments.size(); ++i) {
      const int64_t n = static_cast<int64_t>(segments[i].size());
      states.push_back(x[i].narrow(0, 0, n).clone());  // [N_i, D]
    }
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("EncodeSegments failed: ", TorchErrorMessage(e)));
  }
  return states;
}

absl::StatusOr<ForwardOutput> TransformerLM::ForwardJoint(
    const std::vector<JointRowInput>& rows, int64_t lower_layers,
    const ForwardOptions& options) const {
  const int64_t d = config_.hidden_size;
  if (rows.empty()) {
    return absl::InvalidArgumentError("ForwardJoint: no rows");
  }
  if (lower_layers < 0 || lower_layers > config_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("ForwardJoint: lower_layers ", lower_layers,
                     " outside [0, ", config_.num_layers, "]"));
  }
  std::vector<RowInput> shells(rows.size());  // adapters only, for checks
  for (size_t r = 0; r < rows.size(); ++r) {
    const JointRowInput& row = rows[r];
    int64_t length = 0;
    if (row.prompt.defined()) {
      if (row.prompt.dim() != 2 || row.prompt.size(1) != d) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ForwardJoint: row ", r, " has a soft prompt of shape ",
            c10::str(row.prompt.sizes()), "; expected [P, ", d, "]"));
      }
      length += row.prompt.size(0);
    }
    if (!row.segment_embeddings.empty() &&
        row.segment_embeddings.size() != row.segments.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ForwardJoint: row ", r, " has ", row.segment_embeddings.size(),
          " segment embeddings for ", row.segments.size(), " segments"));
    }
    for (size_t i = 0; i < row.segments.size(); ++i) {
      const torch::Tensor& seg = row.segments[i];
      if (!seg.defined() || seg.dim() != 2 || seg.size(1) != d) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ForwardJoint: row ", r, " segment ", i, " has states of shape ",
            seg.defined() ? c10::str(seg.sizes()) : "undefined",
            "; expected [N, ", d, "]"));
      }
      if (!row.segment_embeddings.empty() &&
          row.segment_embeddings[i].defined() &&
          (row.segment_embeddings[i].dim() != 1 ||
           row.segment_embeddings[i].size(0) != d)) {
        return absl::InvalidArgumentError(
            absl::StrCat("ForwardJoint: row ", r, " segment ", i,
                         " has a segment embedding of shape ",
                         c10::str(row.segment_embeddings[i].sizes()),
                         "; expected [", d, "]"));
      }
      length += seg.size(0);
    }
    if (length == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("ForwardJoint: row ", r, " has no prompt or states"));
    }
    if (config_.family == Family::kGpt2 && lower_layers == 0 &&
        length > config_.max_positions) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ForwardJoint: row ", r, " reaches position ", length - 1,
          " but the model has ", config_.max_positions, " positions"));
    }
    shells[r].adapter = row.adapter;
    RETURN_IF_ERROR(CheckRowExtras(config_, shells[r], r));
  }
  ForwardOutput out;
  try {
    CallInputs in = PrepareJointInputs(rows, lower_layers);
    CallContext ctx =
        MakeContext(config_, *weights_, in, shells, nullptr, device_.dtype);
    const GatheredAdapters adapters =
        GatherAdapters(shells, device_.device, device_.dtype);
    torch::Tensor x =
        RunLayers(config_, *weights_, in.x, ctx, adapters, options,
                  lower_layers, config_.num_layers);  // [B, T, D]
    FinishOutput(std::move(x), std::move(in), options, &out);
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("ForwardJoint failed: ", TorchErrorMessage(e)));
  }
  return out;
}

TransformerLM::CallInputs TransformerLM::PrepareJointInputs(
    const std::vector<JointRowInput>& rows, int64_t lower_layers) const {
  const int64_t b = static_cast<int64_t>(rows.size());
  const auto dev = device_.device;
  const auto dtype = device_.dtype;
  CallInputs in;
  in.starts.assign(b, 0);
  std::vector<torch::Tensor> row_inputs;  // [len_r, D] each
  for (const JointRowInput& row : rows) {
    std::vector<torch::Tensor> parts;
    if (row.prompt.defined()) parts.push_back(row.prompt.to(dev, dtype));
    for (size_t i = 0; i < row.segments.size(); ++i) {
      torch::Tensor seg = row.segments[i].to(dev, dtype);  // [N_i, D]
      if (!row.segment_embeddings.empty() &&
          row.segment_embeddings[i].defined()) {
        seg = seg + row.segment_embeddings[i].to(dev, dtype);
      }
      parts.push_back(seg);
    }
    row_inputs.push_back(torch::cat(parts, 0));
    in.lengths.push_back(row_inputs.back().size(0));
  }
  const int64_t t = *std::max_element(in.lengths.begin(), in.lengths.end());
  for (torch::Tensor& x : row_inputs) {
    const int64_t pad = t - x.size(0);
    if (pad > 0) {
      x = torch::cat({x, torch::zeros({pad, x.size(1)}, x.options())}, 0);
    }
  }
  in.x = torch::stack(row_inputs);  // [B, T, D]
  RowPositions(in.lengths, in.starts, t, dev, &in.positions, &in.valid);
  if (config_.family == Family::kGpt2 && lower_layers == 0) {
    in.x = in.x + torch::embedding(weights_->pos_embed, in.positions);
  }
  return in;
}

TransformerLM::CallInputs TransformerLM::PrepareInputs(
    const std::vector<RowInput>& rows, KVCache* cache) const {
  const int64_t b = static_cast<int64_t>(rows.size());
  const auto dev = device_.device;
  CallInputs in;

  // Row layout along T: [prompt (P) | ids (N) | padding].
  std::vector<int64_t> prompt_len(b, 0);
  in.lengths.assign(b, 0);
  in.starts.assign(b, 0);
  for (int64_t r = 0; r < b; ++r) {
    prompt_len[r] = rows[r].prompt.defined() ? rows[r].prompt.size(0) : 0;
    in.lengths[r] = prompt_len[r] + rows[r].ids.size();
    in.starts[r] = cache ? cache->next_position(r) : 0;
  }
  const int64_t t = *std::max_element(in.lengths.begin(), in.lengths.end());

  torch::Tensor ids = torch::zeros({b, t}, torch::kInt64);  // [B, T]
  auto ids_a = ids.accessor<int64_t, 2>();
  for (int64_t r = 0; r < b; ++r) {
    for (size_t i = 0; i < rows[r].ids.size(); ++i) {
      ids_a[r][prompt_len[r] + i] = rows[r].ids[i];
    }
  }
  RowPositions(in.lengths, in.starts, t, dev, &in.positions, &in.valid);

  // Input embeddings [B, T, D], soft prompts in front of their rows' tokens.
  in.x = EmbedTokens(ids.to(dev));
  bool any_change = false;
  for (const RowInput& row : rows) {
    any_change |= row.prompt.defined() || !row.override_at.empty();
  }
  if (any_change) {
    std::vector<torch::Tensor> row_inputs;
    for (int64_t r = 0; r < b; ++r) {
      const RowInput& row = rows[r];
      if (prompt_len[r] == 0 && row.override_at.empty()) {
        row_inputs.push_back(in.x[r]);
        continue;
      }
      torch::Tensor tokens =
          in.x[r].narrow(0, prompt_len[r], t - prompt_len[r]);  // [T - P, D]
      if (!row.override_at.empty()) {
        torch::Tensor at =
            torch::tensor(row.override_at, torch::kInt64).to(dev);
        tokens = tokens.index_put(
            {at}, row.override_embeddings.to(dev, device_.dtype));
      }
      if (prompt_len[r] > 0) {
        torch::Tensor prompt = row.prompt.to(dev, device_.dtype);  // [P, D]
        tokens = torch::cat({prompt, tokens}, 0);                  // [T, D]
      }
      row_inputs.push_back(tokens);
    }
    in.x = torch::stack(row_inputs);
  }
  if (config_.family == Family::kGpt2) {
    in.x = in.x + torch::embedding(weights_->pos_embed, in.positions);
  }
  return in;
}

}  // namespace optrec
