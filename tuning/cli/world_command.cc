#include "absl/status/status.h"
#include "core/cli/args.h"
#include "tuning/cli/commands.h"

namespace optrec {
// Placeholder until the world generator lands in this folder.
int RunWorld(int argc, char** argv) {
  return Fail(absl::UnimplementedError("world: not built yet"));
}
}  // namespace optrec
