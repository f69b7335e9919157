#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/cli/args.h"
#include "core/cli/commands.h"
#include "core/model/generation.h"
#include "core/model/random_model.h"
#include "core/model/scoring.h"
#include "core/model/transformer.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

const Args::Flag kModelFlag{"model", "model directory (Hugging Face layout)"};
const Args::Flag kDeviceFlag{"device", "auto, cpu, cuda or cuda:N", true, false,
                             "auto"};
const Args::Flag kDtypeFlag{"dtype", "auto, f32, bf16 or f16", true, false,
                            "auto"};
const Args::Flag kHelpFlag{"help", "print this help", false};

// Parses "1 2 3" or "1,2,3".
absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& flag,
                                              const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view piece :
       absl::StrSplit(text, absl::ByAnyChar(", "), absl::SkipEmpty())) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(piece, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": '", piece, "' is not a token id"));
    }
    ids.push_back(id);
  }
  if (ids.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  }
  return ids;
}

absl::StatusOr<std::shared_ptr<const TransformerLM>> LoadModel(
    const Args& args) {
  LoadOptions options;  // --model is present: ParseOrExit requires it
  ASSIGN_OR_RETURN(options.device,
                   ResolveDevice(args.Get("device"), args.Get("dtype")));
  return TransformerLM::Load(args.Get("model"), options);
}

// Text or ids for one input: --NAME TEXT (needs a tokenizer) or
// --NAME-ids IDS.
absl::StatusOr<std::vector<int32_t>> InputIds(const Args& args,
                                              const TransformerLM& model,
                                              const std::string& name,
                                              bool add_special) {
  const std::string ids_flag = name + "-ids";
  if (args.Has(ids_flag)) return ParseIds(ids_flag, args.Get(ids_flag));
  if (!args.Has(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("give --", name, " TEXT or --", ids_flag, " IDS"));
  }
  if (model.tokenizer() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("the model in ", model.directory(),
                     " has no tokenizer; give token ids with --", ids_flag));
  }
  return model.tokenizer()->Encode(args.Get(name), add_special);
}

absl::Status Generate(const Args& args) {
  ASSIGN_OR_RETURN(auto model, LoadModel(args));
  GenerationRequest req;
  ASSIGN_OR_RETURN(req.prompt_ids,
                   InputIds(args, *model, "prompt", /*add_special=*/true));
  ASSIGN_OR_RETURN(req.params.max_tokens, args.GetInt("max-tokens"));
  ASSIGN_OR_RETURN(req.params.temperature, args.GetDouble("temperature"));
  ASSIGN_OR_RETURN(req.params.top_k, args.GetInt("top-k"));
  ASSIGN_OR_RETURN(req.params.top_p, args.GetDouble("top-p"));
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed"));
  req.params.seed = static_cast<uint64_t>(seed);
  req.params.stop = args.GetAll("stop");
  const bool print_ids = args.Has("print-ids") || !model->tokenizer();

  if (model->tokenizer()) {
    auto prompt_text = model->tokenizer()->Decode(req.prompt_ids, true);
    if (prompt_text.ok()) std::cout << *prompt_text << std::flush;
  }
  auto start = std::chrono::steady_clock::now();
  auto stream = [&](int64_t, int32_t, const std::string& delta) {
    if (!print_ids) std::cout << delta << std::flush;
    return true;
  };
  ASSIGN_OR_RETURN(auto results, optrec::Generate(model, {req}, stream));
  double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  const GenerationResult& r = results[0];
  if (print_ids) {
    std::cout << "prompt ids: " << absl::StrJoin(req.prompt_ids, " ") << "\n"
              << "generated ids: " << absl::StrJoin(r.ids, " ") << "\n";
    if (model->tokenizer()) std::cout << "text: " << r.text << "\n";
  } else {
    std::cout << "\n";
  }
  std::cout << std::flush;  // the summary on stderr comes after the text
  std::fprintf(stderr, "[%zu tokens, finish: %s, %.1f tokens/s]\n",
               r.ids.size(), FinishReasonName(r.finish),
               r.ids.size() / std::max(secs, 1e-9));
  return absl::OkStatus();
}

absl::Status Score(const Args& args) {
  ASSIGN_OR_RETURN(auto model, LoadModel(args));
  ASSIGN_OR_RETURN(std::vector<int32_t> context,
                   InputIds(args, *model, "context", /*add_special=*/true));
  std::vector<std::string> labels;
  std::vector<ContinuationRequest> reqs;
  for (const std::string& ids : args.GetAll("option-ids")) {
    ContinuationRequest req;
    req.context = context;
    ASSIGN_OR_RETURN(req.continuation, ParseIds("option-ids", ids));
    labels.push_back(ids);
    reqs.push_back(std::move(req));
  }
  for (const std::string& text : args.GetAll("option")) {
    if (model->tokenizer() == nullptr) {
      return absl::InvalidArgumentError(
          "--option TEXT needs a tokenizer; use --option-ids");
    }
    ContinuationRequest req;
    req.context = context;
    ASSIGN_OR_RETURN(req.continuation,
                     model->tokenizer()->Encode(text, /*add_special=*/false));
    if (req.continuation.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--option '", text, "' has no tokens"));
    }
    labels.push_back(text);
    reqs.push_back(std::move(req));
  }
  if (reqs.size() < 1) {
    return absl::InvalidArgumentError(
        "give at least one --option TEXT or --option-ids IDS");
  }
  ASSIGN_OR_RETURN(auto scores, ScoreContinuations(*model, reqs));
  std::vector<size_t> order(scores.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return scores[a].mean_log_likelihood > scores[b].mean_log_likelihood;
  });
  std::cout << absl::StrFormat("%-4s %12s %12s %6s  %s\n", "rank", "mean_logp",
                               "sum_logp", "tokens", "option");
  for (size_t rank = 0; rank < order.size(); ++rank) {
    const ContinuationScore& s = scores[order[rank]];
    std::cout << absl::StrFormat("%-4d %12.4f %12.4f %6d  %s\n", rank + 1,
                                 s.mean_log_likelihood, s.log_likelihood,
                                 s.tokens, labels[order[rank]]);
  }
  return absl::OkStatus();
}

}  // namespace

int RunGenerate(int argc, char** argv) {
  Args args("generate", "continue a text or token ids with a model",
            {kModelFlag,
             {"prompt",
              "text to continue (encoded with BOS if the tokenizer "
              "adds one)"},
             {"prompt-ids", "token ids to continue, e.g. '1 5 9'"},
             {"max-tokens", "most tokens to generate", true, false, "32"},
             {"temperature", "0 = greedy", true, false, "0"},
             {"top-k", "0 = no limit", true, false, "0"},
             {"top-p", "nucleus mass, 1 = no limit", true, false, "1"},
             {"seed", "random seed for sampling", true, false, "0"},
             {"stop", "stop sequence (text)", true, true},
             {"print-ids", "print token ids as well as text", false},
             kDeviceFlag,
             kDtypeFlag,
             kHelpFlag});
  if (int code = ParseOrExit(args, argc, argv, 2, {"model"}); code >= 0) {
    return code;
  }
  absl::Status status = Generate(args);
  return status.ok() ? 0 : Fail(status);
}

int RunScore(int argc, char** argv) {
  Args args("score",
            "rank options after a context by length-normalised "
            "log-likelihood",
            {kModelFlag,
             {"context",
              "context text (encoded with BOS if the tokenizer "
              "adds one)"},
             {"context-ids", "context token ids"},
             {"option", "an option text", true, true},
             {"option-ids", "an option as token ids", true, true},
             kDeviceFlag,
             kDtypeFlag,
             kHelpFlag});
  if (int code = ParseOrExit(args, argc, argv, 2, {"model"}); code >= 0) {
    return code;
  }
  absl::Status status = Score(args);
  return status.ok() ? 0 : Fail(status);
}

int RunTokenize(int argc, char** argv) {
  Args args(
      "tokenize",
      "read one JSON string per stdin line, write one JSON array of "
      "ids per stdout line; a bad line gets {\"error\": ...} and the "
      "exit code is 1",
      {{"model", "model directory whose tokenizer to use"},
       {"tokenizer", "a bare tokenizer.json or SentencePiece .model"},
       {"add-special", "add BOS/EOS as the tokenizer's template says", false},
       kHelpFlag});
  if (int code = ParseOrExit(args, argc, argv, 2); code >= 0) return code;
  absl::StatusOr<std::shared_ptr<const Tokenizer>> tokenizer;
  if (args.Has("tokenizer")) {
    tokenizer = LoadTokenizerFile(args.Get("tokenizer"));
  } else if (args.Has("model")) {
    tokenizer = LoadTokenizerFromDir(args.Get("model"));
  } else {
    return UsageError("tokenize: give --model DIR or --tokenizer FILE");
  }
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  const bool add_special = args.Has("add-special");
  std::string line;
  int64_t number = 0, bad = 0;
  while (std::getline(std::cin, line)) {
    ++number;
    nlohmann::json in = nlohmann::json::parse(line, nullptr, false);
    nlohmann::json out;
    if (in.is_discarded() || !in.is_string()) {
      out["error"] = absl::StrCat("line ", number, ": expected a JSON string");
    } else {
      auto ids = (*tokenizer)->Encode(in.get<std::string>(), add_special);
      if (ids.ok()) {
        out = *ids;
      } else {
        out["error"] =
            absl::StrCat("line ", number, ": ", ids.status().message());
      }
    }
    if (out.is_object()) {
      ++bad;
      std::fprintf(stderr, "optrec tokenize: %s\n",
                   out["error"].get<std::string>().c_str());
    }
    std::cout << out.dump() << "\n";
  }
  std::cout << std::flush;
  return bad == 0 ? 0 : 1;
}

int RunRandomModel(int argc, char** argv) {
  Args args("random-model",
            "write a random-weight checkpoint in the Hugging Face layout",
            {{"out", "directory to write (must not hold a config.json)"},
             {"preset", "tiny-gpt2, tiny-llama or gpt2-small", true, false,
              "tiny-gpt2"},
             {"tokenizer",
              "a tokenizer.json to copy in; its vocabulary "
              "size becomes the model's"},
             {"seed", "random seed", true, false, "1"},
             kHelpFlag});
  if (int code = ParseOrExit(args, argc, argv, 2, {"out"}); code >= 0) {
    return code;
  }
  const std::string out = args.Get("out");
  std::error_code fs_error;
  if (std::filesystem::exists(out, fs_error)) {
    return Fail(absl::AlreadyExistsError(
        absl::StrCat("random-model: ", out, " exists; not overwriting")));
  }
  RandomModelSpec spec;
  const std::string preset = args.Get("preset");
  if (preset == "gpt2-small") {
    spec = Gpt2SmallSpec();
  } else if (preset == "tiny-gpt2" || preset == "tiny-llama") {
    spec.model_type = preset == "tiny-gpt2" ? "gpt2" : "llama";
    spec.hidden = 64;
    spec.layers = 2;
    spec.heads = 4;
    spec.kv_heads = spec.model_type == "gpt2" ? 4 : 2;
    spec.ffn = 4 * spec.hidden;
    spec.vocab = 512;
    spec.max_positions = 256;
    spec.tied = true;
  } else {
    return UsageError(absl::StrCat(
        "random-model: --preset must be tiny-gpt2, tiny-llama or gpt2-small, "
        "got '",
        preset, "'"));
  }
  auto seed = args.GetInt("seed");
  if (!seed.ok()) return Fail(seed.status());
  spec.seed = static_cast<uint64_t>(*seed);
  if (args.Has("tokenizer")) {
    auto tokenizer = LoadTokenizerFile(args.Get("tokenizer"));
    if (!tokenizer.ok()) return Fail(tokenizer.status());
    spec.vocab = (*tokenizer)->vocab_size();
    spec.bos_id = (*tokenizer)->special().bos_id;
    spec.eos_id = (*tokenizer)->special().eos_id;
    // GPT-2 style files name their one special token only as an added
    // token; it serves as both.
    if (auto eot = (*tokenizer)->TokenToId("<|endoftext|>")) {
      if (spec.bos_id < 0) spec.bos_id = *eot;
      if (spec.eos_id < 0) spec.eos_id = *eot;
    }
  }
  // Written beside `out` and renamed into place, so an interrupted run
  // leaves no half-written model under that name.
  const std::string staging = absl::StrCat(out, ".partial-", getpid());
  absl::Status written = WriteRandomModel(staging, spec);
  if (written.ok() && args.Has("tokenizer")) {
    std::filesystem::copy_file(args.Get("tokenizer"),
                               staging + "/tokenizer.json", fs_error);
    if (fs_error) {
      written = absl::InternalError(absl::StrCat(
          "random-model: copying the tokenizer: ", fs_error.message()));
    }
  }
  if (written.ok()) {
    std::filesystem::rename(staging, out, fs_error);
    if (fs_error) {
      written = absl::InternalError(absl::StrCat("random-model: moving ",
                                                 staging, " to ", out, ": ",
                                                 fs_error.message()));
    }
  }
  if (!written.ok()) {
    std::filesystem::remove_all(staging, fs_error);
    return Fail(written);
  }
  std::printf("wrote a random %s model (%s, vocabulary %ld) to %s\n",
              spec.model_type.c_str(), preset.c_str(),
              static_cast<long>(spec.vocab), out.c_str());
  return 0;
}

}  // namespace optrec
