#include "server/index/item_index.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/impl/FaissException.h>
#include <faiss/index_io.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/util/files.h"
#include "core/util/hash.h"
#include "core/util/status_macros.h"
#include "core/util/torch_errors.h"
#include "tuning/common/progress.h"
#include "tuning/tasks/examples.h"
#include "tuning/tasks/render.h"

namespace optrec {
namespace {

using Json = nlohmann::json;

absl::StatusOr<std::string> ModuleVersionName(const PromptModule& module,
                                              const std::string& given,
                                              const std::string& path) {
  if (!given.empty()) return given;
  const Json& info = module.info();
  if (info.contains("version") && info["version"].is_string()) {
    return info["version"].get<std::string>();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": the module records no version; give one"));
}

// Embeddings [N, E] of catalog items through the item tower, in batches.
absl::StatusOr<torch::Tensor> EncodeCatalog(const TransformerLM& model,
                                            const PromptModule& module,
                                            const InputEncoder& encoder,
                                            int64_t items, int64_t batch_rows) {
  std::vector<torch::Tensor> parts;
  ProgressLine progress(stderr, 0, (items + batch_rows - 1) / batch_rows,
                        "items");
  ForwardOptions options;
  options.logits = ForwardOptions::Logits::kNone;
  torch::InferenceMode inference;
  for (int64_t begin = 0; begin < items; begin += batch_rows) {
    const int64_t end = std::min(items, begin + batch_rows);
    std::vector<RowInput> rows;
    for (int64_t i = begin; i < end; ++i) {
      ASSIGN_OR_RETURN(EncodedInput in, encoder.EncodeItem(i));
      rows.push_back(module.MakeRow(in, /*item_tower=*/true));
    }
    ASSIGN_OR_RETURN(ForwardOutput out, model.Forward(rows, nullptr, options));
    const int64_t t = out.hidden.size(1);
    std::vector<int64_t> flat;
    for (size_t r = 0; r < rows.size(); ++r) {
      flat.push_back(static_cast<int64_t>(r) * t + out.lengths[r] - 1);
    }
    torch::Tensor h =
        out.hidden.reshape({-1, out.hidden.size(2)})
            .index_select(
                0, torch::tensor(flat, torch::kInt64).to(out.hidden.device()));
    parts.push_back(
        module.Embed(h, true).to(torch::kCPU, torch::kFloat32).contiguous());
    progress.Update(begin / batch_rows + 1, end - begin, "");
  }
  progress.Finish();
  return torch::cat(parts, 0).contiguous();
}

}  // namespace

absl::Status ItemIndex::Build(const TransformerLM& model,
                              const IndexBuildOptions& o) {
  if (o.batch_rows < 1) {
    return absl::InvalidArgumentError("batch_rows must be positive");
  }
  if (o.type != "auto" && o.type != "flat" && o.type != "hnsw") {
    return absl::InvalidArgumentError(
        absl::StrCat("--type must be auto, flat or hnsw, got '", o.type, "'"));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<PromptModule> module,
                   PromptModule::Load(o.module_path, model));
  const TaskSpec& spec = module->spec();
  if (spec.kind != TaskKind::kRetrieve) {
    return absl::InvalidArgumentError(absl::StrCat(
        o.module_path, ": task ", spec.task, " is a ", TaskKindName(spec.kind),
        " task; an index needs a retrieve task's item tower"));
  }
  ASSIGN_OR_RETURN(std::string version,
                   ModuleVersionName(*module, o.version, o.module_path));
  ASSIGN_OR_RETURN(std::string module_hash, FileXxh3Hex128(o.module_path));
  // Fail on an unusable output folder before the long part.
  ASSIGN_OR_RETURN(StagedDirectory out,
                   StagedDirectory::Create(o.out_dir, o.force));
  ASSIGN_OR_RETURN(std::shared_ptr<const Catalog> catalog,
                   Catalog::Load(o.catalog_path, spec.catalog_id_field,
                                 ReferencedFields(spec).catalog));
  if (model.tokenizer() == nullptr) {
    return absl::FailedPreconditionError("the model has no tokenizer");
  }
  InputEncoder encoder(spec, *model.tokenizer(), catalog.get());
  torch::Tensor embeddings;
  try {
    ASSIGN_OR_RETURN(embeddings, EncodeCatalog(model, *module, encoder,
                                               catalog->size(), o.batch_rows));
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("encoding the catalog failed: ", TorchErrorMessage(e)));
  }
  const int64_t n = embeddings.size(0), dim = embeddings.size(1);
  const std::string type =
      o.type != "auto" ? o.type : (n <= o.flat_max_items ? "flat" : "hnsw");
  try {
    std::unique_ptr<faiss::Index> index;
    if (type == "flat") {
      index = std::make_unique<faiss::IndexFlatIP>(dim);
    } else {
      index = std::make_unique<faiss::IndexHNSWFlat>(
          dim, o.hnsw_neighbours, faiss::METRIC_INNER_PRODUCT);
    }
    index->add(n, embeddings.data_ptr<float>());
    faiss::write_index(index.get(), (out.path() + "/index.faiss").c_str());
  } catch (const faiss::FaissException& e) {
    return absl::InternalError(absl::StrCat("FAISS: ", e.what()));
  }
  Json ids = Json::array();
  for (int64_t i = 0; i < n; ++i) ids.push_back(catalog->id(i));
  RETURN_IF_ERROR(WriteFileAtomic(out.path() + "/items.json", ids.dump()));
  const Json meta = {{"task", spec.task},
                     {"version", version},
                     {"base_model_fingerprint", model.fingerprint()},
                     {"module_hash", module_hash},
                     {"type", type},
                     {"dim", dim},
                     {"items", n},
                     {"catalog", o.catalog_path},
                     {"catalog_hash", catalog->hash()}};
  RETURN_IF_ERROR(
      WriteFileAtomic(out.path() + "/meta.json", meta.dump(2) + "\n"));
  return out.Commit();
}

absl::StatusOr<std::unique_ptr<ItemIndex>> ItemIndex::Load(
    const std::string& dir, const std::string& version,
    const std::string& module_path) {
  std::unique_ptr<ItemIndex> index(new ItemIndex());
  ASSIGN_OR_RETURN(std::string meta_text, ReadFile(dir + "/meta.json"));
  index->meta_ = Json::parse(meta_text, nullptr, false);
  const Json& m = index->meta_;
  if (!m.is_object() || !m.contains("version") || !m["version"].is_string() ||
      !m.contains("module_hash") || !m["module_hash"].is_string() ||
      !m.contains("dim") || !m["dim"].is_number_integer()) {
    return absl::DataLossError(absl::StrCat(dir, "/meta.json is corrupt"));
  }
  ASSIGN_OR_RETURN(std::string module_hash, FileXxh3Hex128(module_path));
  if (m["version"].get<std::string>() != version ||
      m["module_hash"].get<std::string>() != module_hash) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir, " was built by module version ", m["version"].get<std::string>(),
        " (module hash ", m["module_hash"].get<std::string>(),
        "), not by version ", version, " from ", module_path, " (hash ",
        module_hash, "); rebuild it with optrec index build"));
  }
  index->dim_ = m["dim"].get<int64_t>();
  ASSIGN_OR_RETURN(std::string ids_text, ReadFile(dir + "/items.json"));
  const Json ids = Json::parse(ids_text, nullptr, false);
  if (!ids.is_array()) {
    return absl::DataLossError(absl::StrCat(dir, "/items.json is corrupt"));
  }
  for (const Json& id : ids) {
    if (!id.is_string()) {
      return absl::DataLossError(absl::StrCat(dir, "/items.json is corrupt"));
    }
    index->ids_.push_back(id.get<std::string>());
  }
  try {
    index->index_.reset(faiss::read_index((dir + "/index.faiss").c_str()));
  } catch (const faiss::FaissException& e) {
    return absl::DataLossError(
        absl::StrCat(dir, "/index.faiss is unreadable: ", e.what()));
  }
  if (index->index_->d != index->dim_ ||
      index->index_->ntotal != static_cast<int64_t>(index->ids_.size())) {
    return absl::DataLossError(absl::StrCat(
        dir, ": the index holds ", index->index_->ntotal, " vectors of width ",
        index->index_->d, "; items.json and meta.json say ", index->ids_.size(),
        " of width ", index->dim_));
  }
  if (auto* hnsw = dynamic_cast<faiss::IndexHNSW*>(index->index_.get())) {
    hnsw->hnsw.efSearch = 128;  // set once: searches only read it
  }
  return index;
}

ItemIndex::~ItemIndex() = default;

absl::StatusOr<std::vector<SearchHit>> ItemIndex::Search(
    const std::vector<float>& query, int64_t k,
    const std::set<std::string>& exclude) const {
  if (static_cast<int64_t>(query.size()) != dim_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the query has ", query.size(), " values; the index has ", dim_));
  }
  if (k < 1) return absl::InvalidArgumentError("k must be positive");
  const int64_t wanted =
      std::min<int64_t>(size(), k + static_cast<int64_t>(exclude.size()));
  std::vector<float> scores(wanted);
  std::vector<faiss::Index::idx_t> rows(wanted);
  try {
    index_->search(1, query.data(), wanted, scores.data(), rows.data());
  } catch (const faiss::FaissException& e) {
    return absl::InternalError(absl::StrCat("FAISS search: ", e.what()));
  }
  std::vector<SearchHit> hits;
  for (int64_t i = 0; i < wanted && static_cast<int64_t>(hits.size()) < k;
       ++i) {
    if (rows[i] < 0) continue;  // fewer results than asked (HNSW)
    const std::string& id = ids_[rows[i]];
    if (exclude.count(id) != 0) continue;
    hits.push_back({id, scores[i]});
  }
  return hits;
}

}  // namespace optrec
