#include "absl/status/status.h"
#include "core/cli/args.h"
#include "tuning/cli/commands.h"

namespace optrec {
int RunPretrain(int argc, char** argv) {
  return Fail(absl::UnimplementedError("pretrain: not built yet"));
}
int RunDemo(int argc, char** argv) {
  return Fail(absl::UnimplementedError("demo: not built yet"));
}
}  // namespace optrec
