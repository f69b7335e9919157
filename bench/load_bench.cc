// Load generator for optrec serve, in one process over loopback: an
// in-process server on a GPT-2-small-shaped random backbone (12 layers,
// width 768, 12 heads; the default model's 2048-piece SentencePiece
// vocabulary, since Score reads no LM head) with eight task modules, and
// client threads calling it. In the same run it measures:
//   single   closed-loop Score load on one task
//   one-task each client cycles through eight calls: six Score, one
//            Retrieve, one short Generate, every Score on the same task
//   mixed    the same cycle over eight tasks: the six Score calls go to
//            six different score tasks (each with its own prompts, options
//            and adapters), so batches mix tasks row by row
//   nobatch  the single-task load on a server that runs every row alone
//            (max_batch_rows 1)
//   half     open-loop (Poisson) single-task Score arrivals at half the
//            single-task saturation throughput, for the latency spread
// and prints throughput and p50/p99 latency per RPC, with the ratios the
// targets name. Candidates, tokens and durations are flags, so that a run
// fits the machine.
//
// usage: load_bench [--candidates 32] [--clients 4] [--seconds 20]
//                   [--history 6] [--model DIR]
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/model/random_model.h"
#include "core/runtime/process.h"
#include "core/util/files.h"
#include "core/util/status_macros.h"
#include "optrec/v1/optrec.grpc.pb.h"
#include "server/index/item_index.h"
#include "server/rpc/server.h"
#include "tuning/tasks/task_spec.h"
#include "tuning/tune/task_batch.h"

namespace optrec {
namespace {

using Json = nlohmann::json;

struct Flags {
  int candidates = 32;
  int clients = 4;
  double seconds = 20;
  int history = 6;
  std::string model;  // "" = write the random GPT-2-small-shaped model
};

Json SpecFor(const std::string& kind, const std::string& name) {
  Json s = {{"task", name},        {"kind", kind},      {"data", "unused"},
            {"prompt_length", 16}, {"adapter_rank", 8}, {"max_tokens", 120},
            {"max_history", 6}};
  if (kind == "score") {
    s["options"] = {{{"label", 0}, {"text", "no"}},
                    {{"label", 1}, {"text", "yes"}}};
    s["templates"] = {
        {{"name", "t"},
         {"input",
          {"{profile}", "{history}", "Shown: {candidate}", "Clicked it"}}}};
  } else if (kind == "retrieve") {
    s["catalog"] = "catalog.jsonl";
    s["templates"] = {{{"name", "t"}, {"input", {"{profile}", "{history}"}}}};
    s["item_template"] = {{"input", {"{text}"}}};
  } else {
    s["max_new_tokens"] = 8;
    s["templates"] = {{{"name", "t"}, {"input", {"{history}", "Reason:"}}}};
  }
  return s;
}

// Writes the backbone, eight modules, a small catalog and its index.
absl::StatusOr<ServeOptions> Prepare(const Flags& f, const std::string& dir) {
  ServeOptions o;
  o.listen = "127.0.0.1:0";
  o.model_dir = f.model;
  if (o.model_dir.empty()) {
    o.model_dir = dir + "/model";
    RandomModelSpec spec = Gpt2SmallSpec();
    spec.vocab = 2048;
    spec.max_positions = 512;
    RETURN_IF_ERROR(WriteRandomModel(o.model_dir, spec));
    std::filesystem::copy_file(
        std::string(OPTREC_SOURCE_DIR) + "/models/default/tokenizer.model",
        o.model_dir + "/tokenizer.model");
  }
  ASSIGN_OR_RETURN(auto model, TransformerLM::Load(o.model_dir));
  std::string catalog;
  for (int i = 0; i < 200; ++i) {
    absl::StrAppend(&catalog,
                    Json({{"item_id", absl::StrCat("i", i)},
                          {"text", absl::StrCat("Brand", i % 17, " item ", i,
                                                " | Home > Kitchen | budget")}})
                        .dump(),
                    "\n");
  }
  RETURN_IF_ERROR(WriteFileAtomic(dir + "/catalog.jsonl", catalog));
  const std::vector<std::pair<std::string, std::string>> tasks = {
      {"score", "s0"}, {"score", "s1"}, {"score", "s2"},   {"score", "s3"},
      {"score", "s4"}, {"score", "s5"}, {"retrieve", "r"}, {"generate", "g"}};
  for (size_t i = 0; i < tasks.size(); ++i) {
    Json j = SpecFor(tasks[i].first, tasks[i].second);
    if (tasks[i].first == "retrieve") j["catalog"] = dir + "/catalog.jsonl";
    ASSIGN_OR_RETURN(TaskSpec spec, ParseTaskSpec(j, "load_bench"));
    ASSIGN_OR_RETURN(auto task, MakeTaskContext(spec, *model, dir));
    ASSIGN_OR_RETURN(auto module,
                     PromptModule::Create(spec, TuningMethod::kOptionAdapter,
                                          *model, *task->encoder, 10 + i));
    module->info()["version"] = "bench";
    const std::string path = absl::StrCat(dir, "/", spec.task, ".safetensors");
    RETURN_IF_ERROR(module->Save(path));
    o.modules.push_back(path);
    if (tasks[i].first == "retrieve") {
      IndexBuildOptions index;
      index.module_path = path;
      index.catalog_path = dir + "/catalog.jsonl";
      index.out_dir = dir + "/index";
      RETURN_IF_ERROR(ItemIndex::Build(*model, index));
      o.indexes.push_back(index.out_dir);
    }
  }
  o.scheduler.max_batch_rows = 128;
  o.scheduler.max_batch_tokens = 128 * 160;
  o.scheduler.max_queue_delay_us = 5000;
  o.scheduler.max_queued_rows = 1 << 16;
  o.limits.max_candidates = 1000;
  return o;
}

void Context(google::protobuf::Map<std::string, v1::Field>* c, int user,
             int history) {
  (*c)["profile"].set_text(absl::StrCat(
      "Shopper aged 25-34 from the North, member for ", user % 40, " months"));
  v1::TextList* h = (*c)["history"].mutable_list();
  for (int i = 0; i < history; ++i) {
    h->add_items(absl::StrCat("Clicked: Brand", (user + i) % 17, " item ",
                              (user * 7 + i) % 200));
  }
}

// Latencies (seconds) by RPC name.
struct Samples {
  absl::Mutex mu;
  std::map<std::string, std::vector<double>> latency;
  std::atomic<int64_t> errors{0};
  void Add(const std::string& rpc, double s) {
    absl::MutexLock lock(&mu);
    latency[rpc].push_back(s);
  }
};

// Call `which` of the eight-call cycle: 0-5 Score, 6 Retrieve, 7
// Generate. Score calls go to task s<which>, or all to s0 when `one_task`.
void Call(v1::Recommender::Stub& stub, int which, bool one_task, int user,
          const Flags& f, Samples& out) {
  const auto start = std::chrono::steady_clock::now();
  grpc::ClientContext context;
  grpc::Status status;
  std::string rpc;
  if (which < 6) {
    rpc = "Score";
    v1::ScoreRequest r;
    r.set_task(absl::StrCat("s", one_task ? 0 : which));
    Context(r.mutable_context(), user, f.history);
    for (int c = 0; c < f.candidates; ++c) {
      (*r.add_candidates()->mutable_fields())["candidate"].set_text(
          absl::StrCat("Brand", c % 17, " item ", (user + c) % 200,
                       " | Home > Kitchen | budget"));
    }
    v1::ScoreResponse response;
    status = stub.Score(&context, r, &response);
  } else if (which == 6) {
    rpc = "Retrieve";
    v1::RetrieveRequest r;
    r.set_task("r");
    r.set_k(10);
    Context(r.mutable_context(), user, f.history);
    v1::RetrieveResponse response;
    status = stub.Retrieve(&context, r, &response);
  } else {
    rpc = "Generate";
    v1::GenerateRequest r;
    r.set_task("g");
    Context(r.mutable_context(), user, f.history);
    auto reader = stub.Generate(&context, r);
    v1::GenerateResponse m;
    while (reader->Read(&m)) {
    }
    status = reader->Finish();
  }
  if (!status.ok()) ++out.errors;
  out.Add(rpc, std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                             start)
                   .count());
}

struct Phase {
  double seconds = 0;
  int64_t calls = 0;
  Samples samples;
};

// One call of every task, untimed: the first passes pay for page faults on
// the weights and LibTorch's first-use set-up.
void WarmUp(const std::string& address, const Flags& f) {
  auto stub = v1::Recommender::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  Samples ignored;
  for (int which = 0; which < 8; ++which) {
    Call(*stub, which, false, 1, f, ignored);
  }
}

enum class Workload {
  kScore,    // Score calls on task s0 only
  kOneTask,  // the eight-call cycle, every Score on s0
  kMixed,    // the eight-call cycle, Score on s0..s5
};

// Closed loop: `clients` threads calling back to back for f.seconds.
void ClosedLoop(const std::string& address, const Flags& f, Workload w,
                Phase& p) {
  std::atomic<bool> stop{false};
  std::atomic<int64_t> calls{0};
  std::vector<std::thread> threads;
  const auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < f.clients; ++t) {
    threads.emplace_back([&, t] {
      auto stub = v1::Recommender::NewStub(
          grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
      for (int n = 0; !stop.load(); ++n) {
        const int which = w == Workload::kScore ? 0 : (t + n) % 8;
        Call(*stub, which, w == Workload::kOneTask, t * 1000 + n, f, p.samples);
        ++calls;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(f.seconds));
  stop = true;
  for (std::thread& t : threads) t.join();
  p.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  p.calls = calls.load();
}

// Open loop: Poisson arrivals of single-task Score calls at `rate` per s.
void OpenLoop(const std::string& address, const Flags& f, double rate,
              Phase& p) {
  std::mt19937 rng(5);  // any fixed arrival pattern will do
  std::exponential_distribution<double> gap(rate);
  std::vector<std::thread> calls;
  const auto start = std::chrono::steady_clock::now();
  auto next = start;
  auto stub = v1::Recommender::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  for (int n = 0;; ++n) {
    next += std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(gap(rng)));
    if (next - start > std::chrono::duration<double>(f.seconds)) break;
    std::this_thread::sleep_until(next);
    calls.emplace_back(
        [&, n] { Call(*stub, 0, true, 50000 + n, f, p.samples); });
  }
  for (std::thread& t : calls) t.join();
  p.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  p.calls = static_cast<int64_t>(calls.size());
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
}

void Print(const char* name, Phase& p) {
  absl::MutexLock lock(&p.samples.mu);
  std::printf("%-8s %6.2f calls/s over %5.1f s (%lld calls, %lld errors)\n",
              name, p.calls / p.seconds, p.seconds,
              static_cast<long long>(p.calls),
              static_cast<long long>(p.samples.errors.load()));
  for (const auto& [rpc, v] : p.samples.latency) {
    std::printf("           %-9s p50 %8.1f ms  p99 %8.1f ms  (%zu)\n",
                rpc.c_str(), 1e3 * Percentile(v, 0.5),
                1e3 * Percentile(v, 0.99), v.size());
  }
}

int Run(const Flags& f) {
  const std::string dir = (std::filesystem::temp_directory_path() /
                           absl::StrCat("optrec-load-bench-", getpid()))
                              .string();
  std::filesystem::create_directories(dir);
  absl::StatusOr<ServeOptions> options = Prepare(f, dir);
  if (!options.ok()) {
    std::fprintf(stderr, "load_bench: %s\n",
                 options.status().ToString().c_str());
    return 1;
  }
  ServeOptions nobatch = *options;
  nobatch.scheduler.max_batch_rows = 1;
  nobatch.scheduler.max_queue_delay_us = 0;
  nobatch.scheduler.max_queued_rows = 1 << 16;
  Phase single, one_task, mixed, unbatched, half;
  {
    auto server = Server::Start(*options);
    if (!server.ok()) {
      std::fprintf(stderr, "load_bench: %s\n",
                   server.status().ToString().c_str());
      return 1;
    }
    const std::string address = absl::StrCat("127.0.0.1:", (*server)->port());
    std::printf("%d clients, %d candidates per Score, %d history segments\n\n",
                f.clients, f.candidates, f.history);
    WarmUp(address, f);
    ClosedLoop(address, f, Workload::kScore, single);
    Print("single", single);
    ClosedLoop(address, f, Workload::kOneTask, one_task);
    Print("one-task", one_task);
    ClosedLoop(address, f, Workload::kMixed, mixed);
    Print("mixed", mixed);
    OpenLoop(address, f, 0.5 * single.calls / single.seconds, half);
    Print("half", half);
  }
  {
    auto server = Server::Start(nobatch);
    if (!server.ok()) return 1;
    WarmUp(absl::StrCat("127.0.0.1:", (*server)->port()), f);
    ClosedLoop(absl::StrCat("127.0.0.1:", (*server)->port()), f,
               Workload::kScore, unbatched);
    Print("nobatch", unbatched);
  }
  const double single_rate = single.calls / single.seconds;
  std::printf(
      "\nmixed (8 tasks) / one-task throughput, same call cycle: %.2f "
      "(target >= 0.9)\n"
      "single / nobatch Score throughput: %.2f (target >= 5)\n",
      (mixed.calls / mixed.seconds) / (one_task.calls / one_task.seconds),
      single_rate / (unbatched.calls / unbatched.seconds));
  {
    absl::MutexLock lock(&half.samples.mu);
    const auto& v = half.samples.latency["Score"];
    std::printf("half load p99 / p50: %.2f (target < 2)\n",
                Percentile(v, 0.99) / std::max(1e-9, Percentile(v, 0.5)));
  }
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return 0;
}

}  // namespace
}  // namespace optrec

int main(int argc, char** argv) {
  absl::Status started = optrec::InitProcess(argc, argv);
  if (!started.ok()) return 1;
  optrec::Flags f;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--candidates") {
      f.candidates = std::atoi(argv[i + 1]);
    } else if (flag == "--clients") {
      f.clients = std::atoi(argv[i + 1]);
    } else if (flag == "--seconds") {
      f.seconds = std::atof(argv[i + 1]);
    } else if (flag == "--history") {
      f.history = std::atoi(argv[i + 1]);
    } else if (flag == "--model") {
      f.model = argv[i + 1];
    } else {
      std::fprintf(stderr,
                   "usage: load_bench [--candidates N] [--clients N] "
                   "[--seconds S] [--history N] [--model DIR]\n");
      return 2;
    }
  }
  if (f.candidates < 1 || f.clients < 1 || !(f.seconds > 0) || f.history < 0) {
    std::fprintf(stderr, "load_bench: sizes must be positive\n");
    return 2;
  }
  return optrec::Run(f);
}
