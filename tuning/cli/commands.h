// The optrec subcommands of the training side. Each returns the process exit
// code (0 success, 1 the job failed, 2 the command line was wrong) and
// writes its messages to stderr.
#ifndef OPTREC_TUNING_CLI_COMMANDS_H_
#define OPTREC_TUNING_CLI_COMMANDS_H_

namespace optrec {

// optrec world generate: writes the simulated shop (catalog, users, events,
// reviews), its task data sets and its pretraining corpus.
int RunWorld(int argc, char** argv);
// optrec pretrain: trains a SentencePiece tokenizer and a small Llama on a
// JSONL text corpus and writes a Hugging Face-layout model directory.
int RunPretrain(int argc, char** argv);
// optrec demo: loads a model and a world, and shows the model completing a
// test user's behaviour text and ranking candidate items zero-shot.
int RunDemo(int argc, char** argv);
// optrec tune: trains prompt modules of one or more tasks over a frozen
// model in mixed-task batches.
int RunTune(int argc, char** argv);
// optrec eval: a task's metrics with a prompt module or zero-shot.
int RunEval(int argc, char** argv);
// optrec baselines: popularity, logistic regression and the oracle on the
// shop world's task data.
int RunBaselinesCommand(int argc, char** argv);

}  // namespace optrec

#endif  // OPTREC_TUNING_CLI_COMMANDS_H_
