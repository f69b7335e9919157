// A retrieval index: every catalog item's embedding from one retrieval
// module's item tower, searchable by inner product (the embeddings are
// L2-normalised, so inner product is cosine similarity) with FAISS
// (libfaiss): an exact flat index for small catalogs, HNSW for large ones.
//
// On disk an index is a folder that appears whole (StagedDirectory):
//   index.faiss  the FAISS index (faiss::write_index)
//   items.json   the item ids, in the index's row order
//   meta.json    {"task", "version", "base_model_fingerprint",
//                 "module_hash" (XXH3-128 of the module file), "type",
//                 "dim", "items", "catalog", "catalog_hash"}
// An index belongs to exactly one module version: loading it for another
// version, or another file under the same name, is refused.
#ifndef OPTREC_SERVER_INDEX_ITEM_INDEX_H_
#define OPTREC_SERVER_INDEX_ITEM_INDEX_H_

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/transformer.h"
#include "tuning/module/prompt_module.h"

namespace faiss {
struct Index;
}

namespace optrec {

struct IndexBuildOptions {
  std::string module_path;   // a retrieve task's module file
  std::string version;       // "" = the version the module records
  std::string catalog_path;  // catalog JSONL (the spec's catalog_id_field)
  std::string out_dir;       // the index folder; must not exist unless force
  bool force = false;
  // "flat" (exact), "hnsw" (approximate), or "auto": flat up to
  // `flat_max_items` items, HNSW beyond.
  std::string type = "auto";
  int64_t flat_max_items = 200000;
  int hnsw_neighbours = 32;  // HNSW's M
  int64_t batch_rows = 64;   // items per forward pass
};

struct SearchHit {
  std::string item_id;
  float score = 0;  // inner product with the query
};

// Thread-safe for concurrent Search calls once loaded.
class ItemIndex {
 public:
  // Encodes every catalog item with the module's item tower over `model`
  // and writes the index folder. Prints a progress line to stderr.
  // InvalidArgument for a module that is not a retrieve task's or a bad
  // catalog line (naming file and line); FailedPrecondition when out_dir
  // exists without force; forward errors as TransformerLM::Forward's.
  static absl::Status Build(const TransformerLM& model,
                            const IndexBuildOptions& options);

  // Reads an index folder and checks it belongs to `module` (task,
  // version, base fingerprint and the module file's hash): FailedPrecondition
  // naming both sides otherwise; NotFound / DataLoss for missing or
  // corrupt files.
  static absl::StatusOr<std::unique_ptr<ItemIndex>> Load(
      const std::string& dir, const std::string& version,
      const std::string& module_path);
  ~ItemIndex();

  // The `k` items with the highest inner product with `query` (length
  // dim()), best first, leaving out the ids in `exclude`. InvalidArgument
  // for a query of the wrong length or k < 1.
  absl::StatusOr<std::vector<SearchHit>> Search(
      const std::vector<float>& query, int64_t k,
      const std::set<std::string>& exclude = {}) const;

  int64_t dim() const { return dim_; }
  int64_t size() const { return static_cast<int64_t>(ids_.size()); }
  const nlohmann::json& meta() const { return meta_; }

 private:
  ItemIndex() = default;

  std::unique_ptr<faiss::Index> index_;
  std::vector<std::string> ids_;
  int64_t dim_ = 0;
  nlohmann::json meta_;
};

}  // namespace optrec

#endif  // OPTREC_SERVER_INDEX_ITEM_INDEX_H_
