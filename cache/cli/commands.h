// The optrec subcommands of the segment-state cache. Each returns the process
// exit code (0 success, 1 the job failed, 2 the command line was wrong) and
// writes its messages to stderr.
#ifndef OPTREC_CACHE_CLI_COMMANDS_H_
#define OPTREC_CACHE_CLI_COMMANDS_H_

namespace optrec {

// optrec cache warm: encodes a catalog's item segments through the lower
// layers of a model and writes them to a state file (cache/state_file.h).
int RunCache(int argc, char** argv);

}  // namespace optrec

#endif  // OPTREC_CACHE_CLI_COMMANDS_H_
