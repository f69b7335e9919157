// The optrec subcommands of the core. Each returns the process exit code:
// 0 success, 1 the job failed (bad model, bad input text or ids, I/O), 2 the
// command line was wrong (unknown or missing flags). Messages go to stderr.
#ifndef OPTREC_CORE_CLI_COMMANDS_H_
#define OPTREC_CORE_CLI_COMMANDS_H_

namespace optrec {

// optrec generate: streams a continuation of --prompt (or --ids).
int RunGenerate(int argc, char** argv);
// optrec score: ranks --option texts after --context by length-normalised
// log-likelihood (zero-shot scoring).
int RunScore(int argc, char** argv);
// optrec tokenize: one JSON string per stdin line to one JSON id array per
// stdout line.
int RunTokenize(int argc, char** argv);
// optrec random-model: writes a random-weight checkpoint (for benchmarks and
// smoke tests of a deployment; its output is noise).
int RunRandomModel(int argc, char** argv);

}  // namespace optrec

#endif  // OPTREC_CORE_CLI_COMMANDS_H_
