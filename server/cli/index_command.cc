// optrec index build: encodes a catalog with a retrieval module's item
// tower into a FAISS index folder (server/index/item_index.h).
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/cli/args.h"
#include "core/model/transformer.h"
#include "core/runtime/device.h"
#include "core/util/status_macros.h"
#include "server/cli/commands.h"
#include "server/index/item_index.h"

namespace optrec {
namespace {

Args IndexArgs() {
  const IndexBuildOptions d;
  return Args(
      "index build",
      "Encodes every catalog item with a retrieval module's item tower and "
      "writes a FAISS index folder that optrec serve --index loads for that "
      "module version.",
      {
          {"model", "the frozen backbone the module was trained on"},
          {"module", "the retrieve task's module file"},
          {"version", "the module's version (default: the one it records)"},
          {"catalog", "catalog JSONL"},
          {"out", "the index folder to write"},
          {"type", "auto, flat (exact) or hnsw", true, false, d.type},
          {"force", "replace an existing index folder", false},
          {"device", "auto, cpu, cuda or cuda:N", true, false, "auto"},
          {"help", "print this help", false},
      });
}

}  // namespace

int RunIndex(int argc, char** argv) {
  if (argc < 3 || std::string(argv[2]) != "build") {
    return UsageError(
        "usage: optrec index build --model DIR --module FILE "
        "--catalog FILE --out DIR (optrec index build --help)");
  }
  Args args = IndexArgs();
  if (int code = ParseOrExit(args, argc, argv, 3,
                             {"model", "module", "catalog", "out"});
      code >= 0) {
    return code;
  }
  IndexBuildOptions o;
  o.module_path = args.Get("module");
  o.version = args.Get("version");
  o.catalog_path = args.Get("catalog");
  o.out_dir = args.Get("out");
  o.type = args.Get("type");
  o.force = args.Has("force");
  LoadOptions load;
  absl::StatusOr<DeviceChoice> device = ResolveDevice(args.Get("device"));
  if (!device.ok()) return UsageError(std::string(device.status().message()));
  load.device = *device;
  auto model = TransformerLM::Load(args.Get("model"), load);
  if (!model.ok()) return Fail(model.status());
  absl::Status built = ItemIndex::Build(**model, o);
  if (!built.ok()) return Fail(built);
  std::printf("wrote %s\n", o.out_dir.c_str());
  return 0;
}

}  // namespace optrec
