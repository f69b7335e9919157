// Late interaction against the full forward pass for one Score request: a
// user context (a profile and H behaviour segments) and C candidate items,
// each candidate one row of [soft prompt | profile | behaviours |
// candidate], scored by two soft options on the last position's final state.
//
//   full   every row through all L layers (TransformerLM::Forward);
//   warm   every segment's lower-layer states from the segment-state cache
//          (all hits), then the upper L - L' layers over the concatenation
//          (TransformerLM::ForwardJoint);
//   cold   the same with an empty cache: every segment encoded through the
//          lower layers (EncodeSegments, all segments of the request in one
//          batch), stored, then the upper layers.
//
// For each split L' it prints latency, candidates/s, the speed-up of warm
// over full next to the target 0.7 * L / (L - L'), the cold cost, the bytes
// a cached segment takes, and how far cached (bf16) states move the click
// probabilities from uncached (f32) ones.
//
// usage: late_interaction_bench [--model DIR] [--candidates C] [--history H]
//            [--profile N] [--segment N] [--prompt P] [--splits 9,11]
//            [--reps N] [--storage bf16|f16|f32]
// Defaults: the GPT-2-small-shaped random model, 100 candidates, a 20-token
// profile, 8 behaviours and candidates of 12 tokens, 16 prompt vectors,
// splits 9 and 11, 3 repetitions (medians after one warm-up).
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "cache/segment_key.h"
#include "cache/sharded_lru_cache.h"
#include "core/model/transformer.h"
#include "core/runtime/process.h"

namespace optrec {
namespace {

struct Settings {
  std::string model_dir;  // empty: the GPT-2-small-shaped random model
  int64_t candidates = 100, history = 8, profile = 20, segment = 12;
  int64_t prompt = 16;
  std::vector<int64_t> splits = {9, 11};
  int reps = 3;
  torch::ScalarType storage = torch::kBFloat16;
};

// One Score request as segments of token ids: profile, behaviours, then the
// candidates.
struct Request {
  std::vector<std::vector<int32_t>> user;        // profile + behaviours
  std::vector<std::vector<int32_t>> candidates;  // one per row
};

Request MakeRequest(const Settings& s, int64_t vocab) {
  torch::manual_seed(1);
  auto random_ids = [&](int64_t n) {
    torch::Tensor t = torch::randint(3, vocab, {n}, torch::kInt32);
    std::vector<int32_t> ids(t.data_ptr<int32_t>(), t.data_ptr<int32_t>() + n);
    ids[0] = 1;  // every segment starts with BOS, as it is encoded alone
    return ids;
  };
  Request r;
  r.user.push_back(random_ids(s.profile));
  for (int64_t h = 0; h < s.history; ++h)
    r.user.push_back(random_ids(s.segment));
  for (int64_t c = 0; c < s.candidates; ++c) {
    r.candidates.push_back(random_ids(s.segment));
  }
  return r;
}

// Click probabilities [C] from final states [C, T, D] at each row's last
// position, with the two soft options `options` [2, D].
torch::Tensor ClickProbabilities(const ForwardOutput& out,
                                 const torch::Tensor& options) {
  const int64_t b = out.hidden.size(0);
  std::vector<int64_t> last(b);
  for (int64_t r = 0; r < b; ++r) last[r] = out.lengths[r] - 1;
  torch::Tensor h = out.hidden.index(
      {torch::arange(b), torch::tensor(last, torch::kInt64)});    // [C, D]
  return torch::matmul(h, options.t()).softmax(-1).select(1, 1);  // [C]
}

torch::Tensor FullScores(const TransformerLM& model, const Request& req,
                         const torch::Tensor& prompt,
                         const torch::Tensor& options) {
  std::vector<int32_t> context;
  for (const auto& seg : req.user) {
    context.insert(context.end(), seg.begin(), seg.end());
  }
  std::vector<RowInput> rows(req.candidates.size());
  for (size_t c = 0; c < rows.size(); ++c) {
    rows[c].prompt = prompt;
    rows[c].ids = context;
    rows[c].ids.insert(rows[c].ids.end(), req.candidates[c].begin(),
                       req.candidates[c].end());
  }
  ForwardOptions fo;
  fo.logits = ForwardOptions::Logits::kNone;
  return ClickProbabilities(model.Forward(rows, nullptr, fo).value(), options);
}

// The joint pass over states of the user's segments and each candidate's.
torch::Tensor JointScores(const TransformerLM& model, int64_t lower,
                          const std::vector<torch::Tensor>& user,
                          const std::vector<torch::Tensor>& candidates,
                          const torch::Tensor& prompt,
                          const torch::Tensor& options) {
  std::vector<JointRowInput> rows(candidates.size());
  for (size_t c = 0; c < rows.size(); ++c) {
    rows[c].prompt = prompt;
    rows[c].segments = user;
    rows[c].segments.push_back(candidates[c]);
  }
  ForwardOptions fo;
  fo.logits = ForwardOptions::Logits::kNone;
  return ClickProbabilities(model.ForwardJoint(rows, lower, fo).value(),
                            options);
}

// Every segment of the request through the cache: hits, or one batched
// encode of the misses. Returns the user's states and the candidates'.
void CachedStates(const TransformerLM& model, int64_t lower,
                  SegmentStateCache& cache, const Request& req,
                  std::vector<torch::Tensor>* user,
                  std::vector<torch::Tensor>* candidates) {
  std::vector<std::vector<int32_t>> all = req.user;
  all.insert(all.end(), req.candidates.begin(), req.candidates.end());
  std::vector<SegmentKey> keys;
  for (const auto& ids : all) {
    keys.push_back(SegmentKey::Make(model.fingerprint(), lower, ids));
  }
  auto states =
      cache.GetOrEncode(keys, [&](const std::vector<size_t>& missing) {
        std::vector<std::vector<int32_t>> segments;
        for (size_t i : missing) segments.push_back(all[i]);
        return model.EncodeSegments(segments, lower);
      });
  std::vector<torch::Tensor>& got = states.value();
  user->assign(got.begin(), got.begin() + req.user.size());
  candidates->assign(got.begin() + req.user.size(), got.end());
}

std::unique_ptr<ShardedLruCache> NewCache(const Settings& s) {
  ShardedLruCache::Options o;
  o.capacity_bytes = int64_t{4} << 30;
  o.storage_dtype = s.storage;
  return ShardedLruCache::Create(o).value();
}

bool ParseFlags(int argc, char** argv, Settings* s) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    int64_t n = 0;
    const bool number = absl::SimpleAtoi(value, &n) && n >= 0;
    if (flag == "--model") {
      s->model_dir = value;
    } else if (flag == "--splits") {
      s->splits.clear();
      for (absl::string_view part : absl::StrSplit(value, ',')) {
        int64_t l = 0;
        if (!absl::SimpleAtoi(part, &l)) return false;
        s->splits.push_back(l);
      }
    } else if (flag == "--storage") {
      if (value == "bf16") {
        s->storage = torch::kBFloat16;
      } else if (value == "f16") {
        s->storage = torch::kFloat16;
      } else if (value == "f32") {
        s->storage = torch::kFloat32;
      } else {
        return false;
      }
    } else if (!number || n < 1) {
      return false;
    } else if (flag == "--candidates") {
      s->candidates = n;
    } else if (flag == "--history") {
      s->history = n;
    } else if (flag == "--profile") {
      s->profile = n;
    } else if (flag == "--segment") {
      s->segment = n;
    } else if (flag == "--prompt") {
      s->prompt = n;
    } else if (flag == "--reps") {
      s->reps = static_cast<int>(n);
    } else {
      return false;
    }
  }
  return argc % 2 == 1;
}

int Run(int argc, char** argv) {
  Settings s;
  if (!ParseFlags(argc, argv, &s)) {
    std::fprintf(stderr,
                 "usage: late_interaction_bench [--model DIR] [--candidates "
                 "C] [--history H] [--profile N] [--segment N] [--prompt P] "
                 "[--splits 9,11] [--reps N] [--storage bf16|f16|f32]\n");
    return 2;
  }
  LoadOptions load;
  load.load_tokenizer = false;
  auto loaded = LoadBenchModel(s.model_dir, load);
  if (!loaded.ok()) {
    std::fprintf(stderr, "late_interaction_bench: %s\n",
                 loaded.status().ToString().c_str());
    return 1;
  }
  const TransformerLM& model = **loaded;
  const int64_t layers = model.config().num_layers;
  for (int64_t l : s.splits) {
    if (l < 0 || l >= layers) {
      std::fprintf(stderr,
                   "late_interaction_bench: split %lld outside [0, %lld)\n",
                   static_cast<long long>(l), static_cast<long long>(layers));
      return 2;
    }
  }
  const Request req = MakeRequest(s, model.config().vocab_size);
  const int64_t d = model.config().hidden_size;
  torch::manual_seed(2);
  const torch::Tensor prompt = torch::randn({s.prompt, d}) * 0.02;
  const torch::Tensor options = torch::randn({2, d}) * 0.05;
  const int64_t row_len =
      s.prompt + s.profile + s.history * s.segment + s.segment;

  torch::InferenceMode inference;
  std::printf(
      "model %s: %lld layers, width %lld, %lld parameters; %d threads\n"
      "Score request: %lld candidates, rows of %lld positions (%lld prompt, "
      "%lld profile, %lld behaviours x %lld, candidate %lld); %d reps, "
      "medians\n\n",
      s.model_dir.empty() ? "gpt2-small (random)" : s.model_dir.c_str(),
      static_cast<long long>(layers), static_cast<long long>(d),
      static_cast<long long>(model.parameter_count()), torch::get_num_threads(),
      static_cast<long long>(s.candidates), static_cast<long long>(row_len),
      static_cast<long long>(s.prompt), static_cast<long long>(s.profile),
      static_cast<long long>(s.history), static_cast<long long>(s.segment),
      static_cast<long long>(s.segment), s.reps);

  torch::Tensor full_p;
  const double full_s = MedianSeconds(
      s.reps, [&] { full_p = FullScores(model, req, prompt, options); });
  std::printf("%-22s %10.1f ms %10.1f candidates/s\n", "full forward",
              full_s * 1e3, s.candidates / full_s);
  // With no lower layers the joint pass must be the plain one.
  {
    std::vector<std::vector<int32_t>> all = req.user;
    all.insert(all.end(), req.candidates.begin(), req.candidates.end());
    std::vector<torch::Tensor> states = model.EncodeSegments(all, 0).value();
    std::vector<torch::Tensor> user(states.begin(),
                                    states.begin() + req.user.size());
    std::vector<torch::Tensor> cands(states.begin() + req.user.size(),
                                     states.end());
    const torch::Tensor p0 =
        JointScores(model, 0, user, cands, prompt, options);
    std::printf(
        "  check: L'=0 joint vs full, largest probability difference "
        "%.2e\n\n",
        (p0 - full_p).abs().max().item<double>());
  }

  for (int64_t lower : s.splits) {
    std::vector<torch::Tensor> user, cands;
    torch::Tensor cold_p, warm_p;
    const double cold_s = MedianSeconds(s.reps, [&] {
      auto cache = NewCache(s);
      CachedStates(model, lower, *cache, req, &user, &cands);
      cold_p = JointScores(model, lower, user, cands, prompt, options);
    });
    auto cache = NewCache(s);
    CachedStates(model, lower, *cache, req, &user, &cands);
    const double lookup_s = MedianSeconds(s.reps, [&] {
      CachedStates(model, lower, *cache, req, &user, &cands);
    });
    const double warm_s = MedianSeconds(s.reps, [&] {
      CachedStates(model, lower, *cache, req, &user, &cands);
      warm_p = JointScores(model, lower, user, cands, prompt, options);
    });
    // Uncached: the f32 states straight from the encoder.
    std::vector<std::vector<int32_t>> all = req.user;
    all.insert(all.end(), req.candidates.begin(), req.candidates.end());
    std::vector<torch::Tensor> f32 = model.EncodeSegments(all, lower).value();
    const torch::Tensor exact_p = JointScores(
        model, lower,
        std::vector<torch::Tensor>(f32.begin(), f32.begin() + req.user.size()),
        std::vector<torch::Tensor>(f32.begin() + req.user.size(), f32.end()),
        prompt, options);
    double round_trip = 0;
    for (const torch::Tensor& t : f32) {
      round_trip = std::max(round_trip, MaxRoundTripError(t, s.storage));
    }
    const CacheStats st = cache->stats();
    const double target = 0.7 * layers / static_cast<double>(layers - lower);
    std::printf("L' = %lld (upper %lld of %lld layers)\n",
                static_cast<long long>(lower),
                static_cast<long long>(layers - lower),
                static_cast<long long>(layers));
    std::printf(
        "  %-20s %10.1f ms %10.1f candidates/s  speed-up %.2fx "
        "(target %.2fx)\n",
        "warm cache", warm_s * 1e3, s.candidates / warm_s, full_s / warm_s,
        target);
    std::printf(
        "  %-20s %10.1f ms  (cache look-ups of all %lld segments)\n",
        "of which", lookup_s * 1e3,
        static_cast<long long>(req.user.size() + req.candidates.size()));
    std::printf("  %-20s %10.1f ms %10.1f candidates/s  speed-up %.2fx\n",
                "cold cache", cold_s * 1e3, s.candidates / cold_s,
                full_s / cold_s);
    std::printf(
        "  cache: %lld segments, %lld bytes, %.0f bytes per segment "
        "(%.0f per token)\n",
        static_cast<long long>(st.entries), static_cast<long long>(st.bytes),
        static_cast<double>(st.bytes) / std::max<int64_t>(1, st.entries),
        static_cast<double>(st.bytes) /
            static_cast<double>(s.profile +
                                (s.history + s.candidates) * s.segment));
    std::printf(
        "  cached vs uncached states: round-trip error %.2e "
        "(relative), largest probability difference %.2e\n",
        round_trip, (warm_p - exact_p).abs().max().item<double>());
    std::printf("  warm vs cold probabilities identical: %s\n\n",
                torch::equal(warm_p, cold_p) ? "yes" : "NO");
  }
  return 0;
}

}  // namespace
}  // namespace optrec

int main(int argc, char** argv) {
  absl::Status started = optrec::InitProcess(argc, argv);
  if (!started.ok()) {
    std::fprintf(stderr, "late_interaction_bench: %s\n",
                 started.ToString().c_str());
    return 1;
  }
  return optrec::Run(argc, argv);
}
