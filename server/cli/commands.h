// The optrec subcommands of the service. Each returns the process exit code
// (0 success, 1 the job failed, 2 the command line was wrong).
#ifndef OPTREC_SERVER_CLI_COMMANDS_H_
#define OPTREC_SERVER_CLI_COMMANDS_H_

namespace optrec {

// optrec serve: the gRPC service until SIGTERM or SIGINT.
int RunServe(int argc, char** argv);
// optrec index build: a FAISS retrieval index of a catalog.
int RunIndex(int argc, char** argv);
// optrec client: Score, Retrieve and Generate for one shop-world user.
int RunClient(int argc, char** argv);
// optrec experiments report | simulate: A/B experiment results.
int RunExperiments(int argc, char** argv);

}  // namespace optrec

#endif  // OPTREC_SERVER_CLI_COMMANDS_H_
