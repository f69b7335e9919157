#include "tuning/pretrain/corpus.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/util/hash.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

bool IsBlank(const std::string& line) {
  return line.find_first_not_of(" \t\r") == std::string::npos;
}

}  // namespace

absl::StatusOr<Corpus> ReadCorpus(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open corpus ", path));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();
  Corpus corpus;
  corpus.bytes = static_cast<int64_t>(bytes.size());
  corpus.hash = Xxh3Hex128(bytes);

  std::istringstream lines(bytes);
  std::string line;
  for (int64_t number = 1; std::getline(lines, line); ++number) {
    if (IsBlank(line)) continue;
    const std::string where = absl::StrCat(path, ":", number);
    nlohmann::json doc = nlohmann::json::parse(line, nullptr, false);
    if (doc.is_discarded()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": not a JSON object"));
    }
    if (!doc.is_object() || !doc.contains("text") || !doc["text"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": needs a string field \"text\""));
    }
    std::string text = doc["text"].get<std::string>();
    if (text.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": empty \"text\""));
    }
    corpus.documents.push_back(std::move(text));
  }
  if (corpus.documents.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("corpus ", path, " has no documents"));
  }
  return corpus;
}

absl::Status WritePlainText(const Corpus& corpus, const std::string& path) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    for (std::string doc : corpus.documents) {
      for (char& c : doc) {
        if (c == '\n' || c == '\r') c = ' ';
      }
      out << doc << '\n';
    }
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      return absl::InternalError(absl::StrCat("cannot write ", tmp));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> TokenizeCorpus(
    const Corpus& corpus, const Tokenizer& tokenizer) {
  const int32_t bos = tokenizer.special().bos_id;
  const int32_t eos = tokenizer.special().eos_id;
  if (bos < 0 || eos < 0) {
    return absl::InvalidArgumentError(
        "the tokenizer needs both a BOS and an EOS token for pretraining");
  }
  std::vector<int32_t> stream;
  for (size_t i = 0; i < corpus.documents.size(); ++i) {
    absl::StatusOr<std::vector<int32_t>> ids =
        tokenizer.Encode(corpus.documents[i], /*add_special=*/false);
    if (!ids.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("document ", i + 1,
                       " cannot be tokenized: ", ids.status().message()));
    }
    stream.push_back(bos);
    stream.insert(stream.end(), ids->begin(), ids->end());
    stream.push_back(eos);
  }
  return stream;
}

absl::StatusOr<torch::Tensor> PackBlocks(const std::vector<int32_t>& stream,
                                         int64_t block_tokens) {
  const int64_t total = static_cast<int64_t>(stream.size());
  const int64_t n = block_tokens > 0 ? (total - 1) / block_tokens : 0;
  if (n <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the corpus has ", total, " tokens, fewer than one block",
                     " of ", block_tokens, " + 1"));
  }
  torch::Tensor flat = torch::tensor(stream, torch::kInt64);
  // Block i = flat[i T, i T + T]; adjacent blocks share one token.
  return flat.as_strided({n, block_tokens + 1}, {block_tokens, 1}).clone();
}

double UnigramPerplexity(const std::vector<int32_t>& train,
                         const torch::Tensor& blocks, int64_t vocab) {
  std::vector<double> counts(vocab, 1.0);
  for (int32_t id : train) {
    if (id >= 0 && id < vocab) counts[id] += 1.0;
  }
  const double total = static_cast<double>(train.size() + vocab);
  torch::Tensor targets = blocks.narrow(1, 1, blocks.size(1) - 1).flatten();
  const int64_t* ids = targets.data_ptr<int64_t>();
  double nll = 0.0;
  for (int64_t i = 0; i < targets.numel(); ++i) {
    nll -= std::log(counts[ids[i]] / total);
  }
  return std::exp(nll / static_cast<double>(targets.numel()));
}

}  // namespace optrec
