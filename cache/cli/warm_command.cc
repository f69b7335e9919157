// optrec cache warm: encodes every catalog item's text segment through the
// lower L' layers of the frozen model and saves the states to a state file
// (cache/state_file.h) that a server loads to start with a warm cache.
//
// A segment is tokenized by EncodeSegmentText (tuning/tasks/render.h), as
// requests and tuning tokenize theirs, so the keys written here are the
// keys a request for the same text looks up.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "cache/cli/commands.h"
#include "cache/segment_key.h"
#include "cache/sharded_lru_cache.h"
#include "cache/state_file.h"
#include "core/cli/args.h"
#include "core/model/transformer.h"
#include "core/runtime/device.h"
#include "core/util/status_macros.h"
#include "tuning/common/progress.h"
#include "tuning/tasks/examples.h"
#include "tuning/tasks/render.h"

namespace optrec {
namespace {

Args WarmArgs() {
  return Args(
      "cache warm",
      "Encodes every catalog item's text segment through the lower layers of "
      "a model and writes the states to a file that a server loads to start "
      "with a warm segment-state cache.",
      {
          {"model", "the frozen backbone, with its tokenizer"},
          {"lower-layers",
           "L': how many lower layers the segments run through"},
          {"catalog", "catalog JSONL"},
          {"template",
           "the item's segment text over catalog fields, as the task's "
           "template part writes the candidate, e.g. 'Shown: {text}'"},
          {"separator", "joins the elements of a list field", true, false,
           ". "},
          {"out", "the state file to write"},
          {"id-field", "the catalog's id field", true, false, "item_id"},
          {"batch", "segments per forward pass", true, false, "64"},
          {"storage", "bf16, f16 or f32: the dtype states are kept in", true,
           false, "bf16"},
          {"force", "replace an existing state file", false},
          {"device", "auto, cpu, cuda or cuda:N", true, false, "auto"},
          {"help", "print this help", false},
      });
}

// The {name} fields a template refers to.
std::set<std::string> TemplateFields(const std::string& text) {
  std::set<std::string> names;
  size_t pos = 0;
  while ((pos = text.find('{', pos)) != std::string::npos) {
    const size_t close = text.find('}', pos);
    if (close == std::string::npos) break;
    names.insert(text.substr(pos + 1, close - pos - 1));
    pos = close + 1;
  }
  return names;
}

struct WarmOptions {
  std::string catalog, id_field, text_template, separator, out;
  int64_t lower_layers = 0, batch = 64;
  torch::ScalarType storage = torch::kBFloat16;
};

absl::Status Warm(const TransformerLM& model, const WarmOptions& o) {
  const Tokenizer* tokenizer = model.tokenizer();
  if (tokenizer == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cache warm: the model in ", model.directory(), " has no tokenizer"));
  }
  ASSIGN_OR_RETURN(
      std::shared_ptr<const Catalog> catalog,
      Catalog::Load(o.catalog, o.id_field, TemplateFields(o.text_template)));

  // Token ids of every distinct segment (items with the same text share
  // one entry).
  std::vector<std::vector<int32_t>> segments;
  std::vector<SegmentKey> keys;
  absl::flat_hash_set<std::string> seen;
  int64_t tokens = 0;
  for (int64_t i = 0; i < catalog->size(); ++i) {
    absl::StatusOr<std::string> text =
        FillText(o.text_template, catalog->fields(i), nullptr, o.separator,
                 /*keep_list=*/-1);
    if (!text.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          o.catalog, ": item ", catalog->id(i), ": ", text.status().message()));
    }
    absl::StatusOr<std::vector<int32_t>> ids =
        EncodeSegmentText(*tokenizer, *text);
    if (!ids.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          o.catalog, ": item ", catalog->id(i), ": ", ids.status().message()));
    }
    SegmentKey key =
        SegmentKey::Make(model.fingerprint(), o.lower_layers, *ids);
    if (!seen.insert(key.content_hash).second) continue;
    tokens += static_cast<int64_t>(ids->size());
    keys.push_back(std::move(key));
    segments.push_back(*std::move(ids));
  }

  // Encoded in batches of similar lengths, so little of a batch is padding.
  std::vector<size_t> order(segments.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return segments[a].size() < segments[b].size();
  });
  std::vector<std::pair<SegmentKey, torch::Tensor>> entries(segments.size());
  const int64_t n = static_cast<int64_t>(segments.size());
  const int64_t batches = (n + o.batch - 1) / o.batch;
  ProgressLine progress(stderr, 0, batches, "seg");
  double round_trip = 0;
  torch::InferenceMode inference;
  for (int64_t b = 0; b < batches; ++b) {
    const int64_t begin = b * o.batch, end = std::min(n, begin + o.batch);
    std::vector<std::vector<int32_t>> batch;
    for (int64_t i = begin; i < end; ++i) batch.push_back(segments[order[i]]);
    ASSIGN_OR_RETURN(std::vector<torch::Tensor> states,
                     model.EncodeSegments(batch, o.lower_layers));
    for (int64_t i = begin; i < end; ++i) {
      const torch::Tensor& s = states[i - begin];
      round_trip = std::max(round_trip, MaxRoundTripError(s, o.storage));
      entries[order[i]] = {keys[order[i]],
                           s.to(torch::kCPU, o.storage).contiguous()};
    }
    progress.Update(b + 1, end - begin, "");
  }
  progress.Finish();
  RETURN_IF_ERROR(
      SaveStates(o.out, model.fingerprint(), o.lower_layers, entries));
  std::error_code ec;
  const auto bytes = std::filesystem::file_size(o.out, ec);
  std::printf(
      "wrote %s: %lld items, %lld distinct segments, %lld tokens, L' = %lld, "
      "%s states, %lld bytes; largest relative round-trip error %.2e\n",
      o.out.c_str(), static_cast<long long>(catalog->size()),
      static_cast<long long>(n), static_cast<long long>(tokens),
      static_cast<long long>(o.lower_layers),
      std::string(c10::toString(o.storage)).c_str(),
      static_cast<long long>(ec ? 0 : bytes), round_trip);
  return absl::OkStatus();
}

}  // namespace

int RunCache(int argc, char** argv) {
  if (argc < 3 || std::string(argv[2]) != "warm") {
    return UsageError(
        "usage: optrec cache warm --model DIR --lower-layers N --catalog FILE "
        "--template TEXT --out FILE (optrec cache warm --help)");
  }
  Args args = WarmArgs();
  if (int code =
          ParseOrExit(args, argc, argv, 3,
                      {"model", "lower-layers", "catalog", "template", "out"});
      code >= 0) {
    return code;
  }
  WarmOptions o;
  o.catalog = args.Get("catalog");
  o.id_field = args.Get("id-field");
  o.text_template = args.Get("template");
  o.separator = args.Get("separator");
  o.out = args.Get("out");
  absl::StatusOr<int64_t> lower = args.GetInt("lower-layers");
  if (!lower.ok() || *lower < 0) {
    return UsageError("--lower-layers must be a whole number >= 0");
  }
  o.lower_layers = *lower;
  absl::StatusOr<int64_t> batch = args.GetInt("batch");
  if (!batch.ok() || *batch < 1) {
    return UsageError("--batch must be a whole number >= 1");
  }
  o.batch = *batch;
  const std::string storage = args.Get("storage");
  if (storage == "bf16") {
    o.storage = torch::kBFloat16;
  } else if (storage == "f16") {
    o.storage = torch::kFloat16;
  } else if (storage == "f32") {
    o.storage = torch::kFloat32;
  } else {
    return UsageError("--storage must be bf16, f16 or f32, not '" + storage +
                      "'");
  }
  if (TemplateFields(o.text_template).empty()) {
    return UsageError("--template names no {field} of the catalog");
  }
  if (std::filesystem::exists(o.out) && !args.Has("force")) {
    return Fail(absl::AlreadyExistsError(
        absl::StrCat(o.out, " exists (--force replaces it)")));
  }
  absl::StatusOr<DeviceChoice> device = ResolveDevice(args.Get("device"));
  if (!device.ok()) return UsageError(std::string(device.status().message()));
  LoadOptions load;
  load.device = *device;
  auto model = TransformerLM::Load(args.Get("model"), load);
  if (!model.ok()) return Fail(model.status());
  if (o.lower_layers > (*model)->config().num_layers) {
    return UsageError(absl::StrCat("--lower-layers ", o.lower_layers,
                                   " exceeds the model's ",
                                   (*model)->config().num_layers, " layers"));
  }
  absl::Status warmed = Warm(**model, o);
  if (!warmed.ok()) return Fail(warmed);
  return 0;
}

}  // namespace optrec
