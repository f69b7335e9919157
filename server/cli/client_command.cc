// optrec client: a small gRPC client of a running optrec serve. For one
// test user of the shop world it calls Score (click probabilities of items
// shown to the user), Retrieve (the user's top catalog items) and Generate
// (why the user bought an item), and prints what comes back.
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/cli/args.h"
#include "core/util/jsonl.h"
#include "core/util/status_macros.h"
#include "optrec/v1/optrec.grpc.pb.h"
#include "server/cli/commands.h"

namespace optrec {
namespace {

Args ClientArgs() {
  return Args(
      "client",
      "Calls a running optrec serve for one test user of the shop world: "
      "Score, Retrieve and Generate, printing the answers.",
      {
          {"address", "the server, host:port", true, false, "127.0.0.1:50051"},
          {"world", "the world's directory"},
          {"ctr-task", "the click-scoring task", true, false, "ctr"},
          {"retrieve-task", "the retrieval task", true, false, "next_click"},
          {"generate-task", "the explanation task", true, false, "explanation"},
          {"example", "which test example (0-based)", true, false, "0"},
          {"help", "print this help", false},
      });
}

// The `n`-th line of a JSONL file.
absl::StatusOr<nlohmann::json> Line(const std::string& path, int64_t n) {
  nlohmann::json found;
  int64_t seen = 0;
  RETURN_IF_ERROR(ForEachJsonl(
      path, [&](int64_t, const nlohmann::json& j) -> absl::StatusOr<bool> {
        if (seen++ == n) {
          found = j;
          return false;
        }
        return true;
      }));
  if (found.is_null()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " has fewer than ", n + 1, " examples"));
  }
  return found;
}

void SetContext(const nlohmann::json& segments,
                google::protobuf::Map<std::string, v1::Field>* context) {
  (*context)["profile"].set_text(segments["profile"].get<std::string>());
  v1::TextList* history = (*context)["history"].mutable_list();
  for (const auto& h : segments["history"]) {
    history->add_items(h.get<std::string>());
  }
}

absl::Status RpcFailed(const char* rpc, const grpc::Status& s) {
  return absl::UnavailableError(
      absl::StrCat(rpc, " failed: ", s.error_message()));
}

absl::Status Run(const Args& args) {
  ASSIGN_OR_RETURN(int64_t example, args.GetInt("example"));
  const std::string world = args.Get("world");
  auto channel = grpc::CreateChannel(args.Get("address"),
                                     grpc::InsecureChannelCredentials());
  auto stub = v1::Recommender::NewStub(channel);

  // Score: the items of one of the user's pages (direct candidates).
  ASSIGN_OR_RETURN(nlohmann::json direct,
                   Line(world + "/tasks/direct/test.jsonl", example));
  const nlohmann::json& segments = direct["segments"];
  std::printf("User %s: %s\n", direct["user_id"].get<std::string>().c_str(),
              segments["profile"].get<std::string>().c_str());
  for (const auto& h : segments["history"]) {
    std::printf("  %s\n", h.get<std::string>().c_str());
  }
  v1::ScoreRequest score;
  score.set_task(args.Get("ctr-task"));
  SetContext(segments, score.mutable_context());
  const int64_t positive = direct["positive_index"].get<int64_t>();
  for (int64_t i = 0; i < 10; ++i) {
    // The real next click first, then nine items the user never touched.
    const int64_t c = i == 0 ? positive : (i <= positive ? i - 1 : i);
    v1::Candidate* candidate = score.add_candidates();
    candidate->set_id(direct["candidate_item_ids"][c].get<std::string>());
    (*candidate->mutable_fields())["candidate"].set_text(
        segments["candidates"][c].get<std::string>());
  }
  grpc::ClientContext score_context;
  v1::ScoreResponse scored;
  grpc::Status s = stub->Score(&score_context, score, &scored);
  if (!s.ok()) return RpcFailed("Score", s);
  std::printf("\nScore (task %s, version %s): click probabilities\n",
              scored.task().c_str(), scored.version().c_str());
  for (int i = 0; i < scored.scores_size(); ++i) {
    std::printf("  %.3f  %s%s\n", scored.scores(i).score(),
                score.candidates(i).fields().at("candidate").text().c_str(),
                i == 0 ? "   <- clicked next" : "");
  }

  // Retrieve: the top catalog items for the same user.
  v1::RetrieveRequest retrieve;
  retrieve.set_task(args.Get("retrieve-task"));
  retrieve.set_k(5);
  SetContext(segments, retrieve.mutable_context());
  grpc::ClientContext retrieve_context;
  v1::RetrieveResponse retrieved;
  s = stub->Retrieve(&retrieve_context, retrieve, &retrieved);
  if (!s.ok()) return RpcFailed("Retrieve", s);
  std::map<std::string, std::string> titles;
  RETURN_IF_ERROR(ForEachJsonl(
      world + "/catalog.jsonl",
      [&](int64_t, const nlohmann::json& j) -> absl::StatusOr<bool> {
        titles[j.value("item_id", "")] = j.value("text", "");
        return true;
      }));
  std::printf("\nRetrieve (task %s, version %s): top 5 of the catalog\n",
              retrieved.task().c_str(), retrieved.version().c_str());
  for (const v1::RetrievedItem& item : retrieved.items()) {
    std::printf("  %.3f  %s  %s\n", item.score(), item.id().c_str(),
                titles[item.id()].c_str());
  }

  // Generate: why a shopper bought an item, streamed.
  ASSIGN_OR_RETURN(nlohmann::json bought,
                   Line(world + "/tasks/explanation/test.jsonl", example));
  v1::GenerateRequest generate;
  generate.set_task(args.Get("generate-task"));
  SetContext(bought["segments"], generate.mutable_context());
  (*generate.mutable_context())["candidate"].set_text(
      bought["segments"]["candidate"].get<std::string>());
  grpc::ClientContext generate_context;
  auto reader = stub->Generate(&generate_context, generate);
  std::printf("\nGenerate: why %s bought %s\n  ",
              bought["user_id"].get<std::string>().c_str(),
              bought["segments"]["candidate"].get<std::string>().c_str());
  v1::GenerateResponse piece;
  std::string finish;
  while (reader->Read(&piece)) {
    std::printf("%s", piece.text().c_str());
    std::fflush(stdout);
    if (!piece.finish_reason().empty()) finish = piece.finish_reason();
  }
  s = reader->Finish();
  if (!s.ok()) return RpcFailed("Generate", s);
  std::printf("\n  (%s; the shopper wrote: %s)\n", finish.c_str(),
              bought["target"].get<std::string>().c_str());
  return absl::OkStatus();
}

}  // namespace

int RunClient(int argc, char** argv) {
  Args args = ClientArgs();
  if (int code = ParseOrExit(args, argc, argv, 2, {"world"}); code >= 0) {
    return code;
  }
  absl::Status status;
  try {
    status = Run(args);
  } catch (const nlohmann::json::exception& e) {
    status = absl::InvalidArgumentError(
        absl::StrCat("the world's test files are not as expected: ", e.what()));
  }
  if (!status.ok()) return Fail(status);
  return 0;
}

}  // namespace optrec
