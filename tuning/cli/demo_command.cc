// optrec demo: the default model at work on the shop world, zero-shot. For a
// test user it prints the behaviour history, the model's continuation of it
// (its guess at the next click), and its ranking of 100 candidate items (the
// item the user really clicked next and 99 the user never touched) by the
// likelihood of each item's title as the next click. Then it reports how
// well that ranking does over more test users, next to chance.
#include <algorithm>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/cli/args.h"
#include "core/model/generation.h"
#include "core/model/scoring.h"
#include "core/model/transformer.h"
#include "core/util/status_macros.h"
#include "tuning/cli/commands.h"
#include "tuning/world/jsonl.h"

namespace optrec {
namespace {

// One direct-recommendation test example, as text.
struct Case {
  std::string user_id;
  std::string profile;
  std::vector<std::string> history;     // behaviour segments, oldest first
  std::vector<std::string> candidates;  // item segments
  int64_t positive = -1;                // index of the real next click
};

absl::StatusOr<Case> CaseFrom(const nlohmann::json& j, const std::string& at) {
  Case c;
  try {
    c.user_id = j.at("user_id").get<std::string>();
    const nlohmann::json& s = j.at("segments");
    c.profile = s.at("profile").get<std::string>();
    c.history = s.at("history").get<std::vector<std::string>>();
    c.candidates = s.at("candidates").get<std::vector<std::string>>();
    c.positive = j.at("positive_index").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(at, ": not a direct-recommendation example: ", e.what()));
  }
  if (c.positive < 0 ||
      c.positive >= static_cast<int64_t>(c.candidates.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat(at, ": positive_index ", c.positive, " is out of range"));
  }
  return c;
}

// The text the model was trained on: segments joined by ". ", then the
// start of the next click.
std::string ContextText(const Case& c) {
  std::vector<std::string> parts = {c.profile};
  parts.insert(parts.end(), c.history.begin(), c.history.end());
  return absl::StrCat(absl::StrJoin(parts, ". "), ". Clicked:");
}

// An item segment is "title | category path | price band"; the title is
// what follows "Clicked:" in behaviour text.
std::string Title(const std::string& item_segment) {
  return item_segment.substr(0, item_segment.find(" | "));
}

// Scores every candidate's title as the continuation of the context: the
// mean log-likelihood per token of each.
absl::StatusOr<std::vector<double>> ScoreCandidates(const TransformerLM& model,
                                                    const Case& c) {
  const Tokenizer& tok = *model.tokenizer();
  ASSIGN_OR_RETURN(std::vector<int32_t> context,
                   tok.Encode(ContextText(c), /*add_special=*/true));
  std::vector<std::vector<int32_t>> titles;
  for (const std::string& candidate : c.candidates) {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                     tok.Encode(absl::StrCat(" ", Title(candidate), "."),
                                /*add_special=*/false));
    titles.push_back(std::move(ids));
  }
  // The user's text runs once; the 100 titles continue it from the cache.
  ASSIGN_OR_RETURN(std::vector<ContinuationScore> scores,
                   ScoreSharedContext(model, context, titles));
  std::vector<double> out;
  for (const ContinuationScore& s : scores) {
    out.push_back(s.mean_log_likelihood);
  }
  return out;
}

std::vector<size_t> Order(const std::vector<double>& scores) {
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return scores[a] > scores[b]; });
  return order;
}

absl::Status ShowOne(std::shared_ptr<const TransformerLM> model, const Case& c,
                     int64_t shown) {
  std::printf("Test user %s: %s\n", c.user_id.c_str(), c.profile.c_str());
  const size_t first = c.history.size() > 8 ? c.history.size() - 8 : 0;
  std::printf("Recent behaviour (%zu of %zu):\n", c.history.size() - first,
              c.history.size());
  for (size_t i = first; i < c.history.size(); ++i) {
    std::printf("  %s\n", c.history[i].c_str());
  }

  GenerationRequest request;
  ASSIGN_OR_RETURN(request.prompt_ids,
                   model->tokenizer()->Encode(ContextText(c), true));
  request.params.max_tokens = 24;
  request.params.stop = {"."};
  ASSIGN_OR_RETURN(std::vector<GenerationResult> generated,
                   Generate(model, {request}));
  std::printf("\nThe model continues \"... Clicked:\" with:%s\n",
              generated[0].text.c_str());

  ASSIGN_OR_RETURN(std::vector<double> scores, ScoreCandidates(*model, c));
  const std::vector<size_t> order = Order(scores);
  const size_t rank =
      std::find(order.begin(), order.end(), c.positive) - order.begin();
  std::printf(
      "\nZero-shot ranking of %zu candidates (mean log-likelihood per token "
      "of the title as the next click; * = the item clicked next):\n",
      c.candidates.size());
  for (int64_t i = 0; i < shown && i < static_cast<int64_t>(order.size());
       ++i) {
    const size_t k = order[i];
    std::printf("  %2lld. %7.3f %s %s\n", static_cast<long long>(i + 1),
                scores[k], static_cast<int64_t>(k) == c.positive ? "*" : " ",
                c.candidates[k].c_str());
  }
  std::printf("The item clicked next ranks %zu of %zu.\n", rank + 1,
              c.candidates.size());
  return absl::OkStatus();
}

absl::Status Summarise(const TransformerLM& model,
                       const std::vector<Case>& cases) {
  double hits1 = 0, hits10 = 0, reciprocal = 0;
  size_t candidates = 0;
  for (const Case& c : cases) {
    ASSIGN_OR_RETURN(std::vector<double> scores, ScoreCandidates(model, c));
    const std::vector<size_t> order = Order(scores);
    const size_t rank =
        std::find(order.begin(), order.end(), c.positive) - order.begin();
    hits1 += rank < 1;
    hits10 += rank < 10;
    reciprocal += 1.0 / static_cast<double>(rank + 1);
    candidates = c.candidates.size();
  }
  const double n = static_cast<double>(cases.size());
  std::printf(
      "\nOver %zu test users, %zu candidates each: hit@1 %.3f, hit@10 %.3f, "
      "MRR %.3f (chance: hit@1 %.3f, hit@10 %.3f)\n",
      cases.size(), candidates, hits1 / n, hits10 / n, reciprocal / n,
      1.0 / candidates, std::min(1.0, 10.0 / candidates));
  return absl::OkStatus();
}

}  // namespace

int RunDemo(int argc, char** argv) {
  Args args(
      "demo",
      "Shows a model on the shop world, zero-shot: a test user's "
      "history, the model's continuation of it, and its ranking of 100 "
      "candidate items; then hit rates over more test users.",
      {
          {"model", "model directory (with a tokenizer)"},
          {"world", "world directory from `optrec world generate`"},
          {"example", "which test example to show (0-based)", true, false, "0"},
          {"users", "test users for the summary; 0 = none", true, false, "50"},
          {"shown", "top candidates printed", true, false, "10"},
          {"device", "auto, cpu, cuda or cuda:N", true, false, "auto"},
          {"dtype", "auto, f32, bf16 or f16", true, false, "auto"},
          {"help", "print this help", false},
      });
  if (int code = ParseOrExit(args, argc, argv, 2, {"model", "world"});
      code >= 0) {
    return code;
  }
  absl::StatusOr<int64_t> example = args.GetInt("example");
  absl::StatusOr<int64_t> users = args.GetInt("users");
  absl::StatusOr<int64_t> shown = args.GetInt("shown");
  for (const auto* v : {&example, &users, &shown}) {
    if (!v->ok()) return UsageError(std::string(v->status().message()));
    if (**v < 0)
      return UsageError(
          "demo: --example, --users and --shown "
          "must not be negative");
  }
  LoadOptions load;
  absl::StatusOr<DeviceChoice> device =
      ResolveDevice(args.Get("device"), args.Get("dtype"));
  if (!device.ok()) return Fail(device.status());
  load.device = *device;
  absl::StatusOr<std::shared_ptr<const TransformerLM>> model =
      TransformerLM::Load(args.Get("model"), load);
  if (!model.ok()) return Fail(model.status());
  if ((*model)->tokenizer() == nullptr) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("the model in ", args.Get("model"), " has no tokenizer")));
  }
  const std::string path = args.Get("world") + "/tasks/direct/test.jsonl";
  absl::StatusOr<std::vector<nlohmann::json>> lines = ReadJsonl(path);
  if (!lines.ok()) return Fail(lines.status());
  std::vector<Case> cases;
  for (size_t i = 0; i < lines->size(); ++i) {
    absl::StatusOr<Case> c =
        CaseFrom((*lines)[i], absl::StrCat(path, ":", i + 1));
    if (!c.ok()) return Fail(c.status());
    cases.push_back(std::move(*c));
  }
  if (*example >= static_cast<int64_t>(cases.size())) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--example ", *example, ": ", path, " has ", cases.size(),
                     " examples")));
  }
  absl::Status shown_one = ShowOne(*model, cases[*example], *shown);
  if (!shown_one.ok()) return Fail(shown_one);
  if (*users > 0) {
    // Every k-th example, so the summary spreads over the test period.
    std::vector<Case> sample;
    const size_t step = std::max<size_t>(1, cases.size() / *users);
    for (size_t i = 0;
         i < cases.size() && sample.size() < static_cast<size_t>(*users);
         i += step) {
      sample.push_back(cases[i]);
    }
    absl::Status summary = Summarise(**model, sample);
    if (!summary.ok()) return Fail(summary);
  }
  return 0;
}

}  // namespace optrec
