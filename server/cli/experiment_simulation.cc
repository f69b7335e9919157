#include "server/cli/experiment_simulation.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/runtime/device.h"
#include "core/util/files.h"
#include "core/util/jsonl.h"
#include "core/util/log.h"
#include "core/util/status_macros.h"
#include "optrec/v1/optrec.grpc.pb.h"
#include "server/index/item_index.h"
#include "server/rpc/server.h"

namespace optrec {
namespace {

using Json = nlohmann::json;

constexpr char kExperiment[] = "simulation";

// One visit: a test example of the next-click split.
struct Visit {
  std::string user;
  std::string profile;
  std::vector<std::string> history;
  std::string target_item;
};

absl::StatusOr<std::vector<Visit>> ReadVisits(const std::string& path,
                                              int64_t max_units) {
  std::vector<Visit> visits;
  std::set<std::string> users;
  RETURN_IF_ERROR(ForEachJsonl(
      path, [&](int64_t line, const Json& j) -> absl::StatusOr<bool> {
        Visit v;
        try {
          v.user = j.at("user_id").get<std::string>();
          v.profile = j.at("segments").at("profile").get<std::string>();
          for (const Json& h : j.at("segments").at("history")) {
            v.history.push_back(h.get<std::string>());
          }
          v.target_item = j.at("target_item_id").get<std::string>();
        } catch (const Json::exception& e) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ":", line, ": not a next-click example (", e.what(), ")"));
        }
        if (users.count(v.user) == 0) {
          if (max_units > 0 &&
              static_cast<int64_t>(users.size()) >= max_units) {
            return true;
          }
          users.insert(v.user);
        }
        visits.push_back(std::move(v));
        return true;
      }));
  if (visits.empty()) {
    return absl::InvalidArgumentError(path + " holds no example");
  }
  return visits;
}

// The (task, version) the server loaded from `path`.
absl::StatusOr<std::pair<std::string, std::string>> LoadedAs(
    ModuleRegistry& registry, const std::string& path) {
  for (const TaskListing& t : registry.List()) {
    for (const auto& [version, meta] : t.versions) {
      if (meta.value("path", "") == path) {
        return std::make_pair(t.task, version);
      }
    }
  }
  return absl::InternalError(absl::StrCat(path, " was not loaded"));
}

absl::Status RpcError(const char* rpc, const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(rpc, ": ", s.error_message()));
}

}  // namespace

absl::StatusOr<SimulationResult> SimulateExperiment(
    const SimulationOptions& o) {
  if (o.k < 1 || o.k > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("k: ", o.k, " is outside [1, 1000]"));
  }
  if (o.threads < 1 || o.threads > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads: ", o.threads, " is outside [1, 256]"));
  }
  if (!(o.traffic > 0 && o.traffic <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("traffic: ", o.traffic, " is outside (0, 1]"));
  }
  if (o.units < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("units: ", o.units, " is negative"));
  }
  std::error_code unchecked;  // a path that cannot be checked counts as absent
  if (std::filesystem::exists(o.out_dir, unchecked)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "out: ", o.out_dir,
        " exists; a simulation writes a fresh folder so that its log holds "
        "one run"));
  }
  ASSIGN_OR_RETURN(
      std::vector<Visit> visits,
      ReadVisits(o.world_dir + "/tasks/next_click/test.jsonl", o.units));
  RETURN_IF_ERROR(MakeDirs(o.out_dir + "/indexes"));

  // The arms' retrieval indexes over the world's catalog.
  std::vector<std::string> indexes;
  {
    LoadOptions load;
    ASSIGN_OR_RETURN(load.device, ResolveDevice("auto"));
    ASSIGN_OR_RETURN(std::shared_ptr<const TransformerLM> model,
                     TransformerLM::Load(o.model_dir, load));
    for (const auto& [name, module] :
         {std::make_pair("control", o.control_module),
          std::make_pair("treatment", o.treatment_module)}) {
      IndexBuildOptions index;
      index.module_path = module;
      index.catalog_path = o.world_dir + "/catalog.jsonl";
      index.out_dir = absl::StrCat(o.out_dir, "/indexes/", name);
      RETURN_IF_ERROR(ItemIndex::Build(*model, index));
      indexes.push_back(index.out_dir);
    }
  }

  ServeOptions serve;
  serve.listen = "127.0.0.1:0";
  serve.model_dir = o.model_dir;
  serve.modules = {o.control_module, o.treatment_module};
  serve.indexes = indexes;
  serve.experiments.dir = o.out_dir + "/experiment";
  ASSIGN_OR_RETURN(std::unique_ptr<Server> server, Server::Start(serve));
  ASSIGN_OR_RETURN(auto control,
                   LoadedAs(server->registry(), o.control_module));
  ASSIGN_OR_RETURN(auto treatment,
                   LoadedAs(server->registry(), o.treatment_module));
  if (control.first != treatment.first || control.second == treatment.second) {
    return absl::InvalidArgumentError(
        absl::StrCat("control and treatment must be versions of one task, not ",
                     control.first, "/", control.second, " and ",
                     treatment.first, "/", treatment.second));
  }
  const std::string task = control.first;

  // The experiment, defined and started through the admin service.
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server->port()),
                                     grpc::InsecureChannelCredentials());
  auto admin = v1::Experiments::NewStub(channel);
  v1::Experiment experiment;
  experiment.set_name(kExperiment);
  experiment.set_task(task);
  experiment.set_salt(o.salt);
  experiment.set_traffic(o.traffic);
  for (const auto& [arm, version] :
       {std::make_pair("control", control.second),
        std::make_pair("treatment", treatment.second)}) {
    v1::ExperimentArm* a = experiment.add_arms();
    a->set_name(arm);
    a->set_version(version);
    a->set_weight(1);
  }
  {
    grpc::ClientContext context;
    v1::Experiment stored;
    grpc::Status s = admin->DefineExperiment(&context, experiment, &stored);
    if (!s.ok()) return RpcError("DefineExperiment", s);
  }
  {
    grpc::ClientContext context;
    v1::ExperimentRequest start;
    start.set_name(kExperiment);
    v1::Experiment started;
    grpc::Status s = admin->StartExperiment(&context, start, &started);
    if (!s.ok()) return RpcError("StartExperiment", s);
  }

  // The visits, from several client threads.
  auto stub = v1::Recommender::NewStub(channel);
  std::atomic<int64_t> next{0}, exposed{0}, clicks{0};
  absl::Mutex error_mu;
  absl::Status error;  // the first failure
  auto visit_all = [&] {
    for (int64_t i = next++; i < static_cast<int64_t>(visits.size());
         i = next++) {
      const Visit& v = visits[i];
      v1::RetrieveRequest request;
      request.set_task(task);
      request.set_k(static_cast<int32_t>(o.k));
      request.set_unit_id(v.user);
      (*request.mutable_context())["profile"].set_text(v.profile);
      v1::TextList* history =
          (*request.mutable_context())["history"].mutable_list();
      for (const std::string& h : v.history) history->add_items(h);
      v1::RetrieveResponse response;
      grpc::ClientContext context;
      grpc::Status s = stub->Retrieve(&context, request, &response);
      bool clicked = false;
      for (const v1::RetrievedItem& item : response.items()) {
        clicked = clicked || item.id() == v.target_item;
      }
      if (s.ok() && response.has_experiment()) ++exposed;
      // Units outside the experiment's traffic click too, but their
      // requests were no exposure: no event to report.
      if (s.ok() && clicked && response.has_experiment()) {
        v1::RecordEventsRequest events;
        v1::Event* e = events.add_events();
        e->set_request_id(response.request_id());
        e->set_kind("click");
        v1::RecordEventsResponse recorded;
        grpc::ClientContext event_context;
        s = stub->RecordEvents(&event_context, events, &recorded);
        if (s.ok() && recorded.accepted() != 1) {
          s = grpc::Status(grpc::StatusCode::INTERNAL,
                           "the click event was not accepted");
        }
        ++clicks;
      }
      if (!s.ok()) {
        absl::MutexLock lock(&error_mu);
        if (error.ok()) error = RpcError("Retrieve or RecordEvents", s);
        return;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < o.threads; ++t) threads.emplace_back(visit_all);
  for (std::thread& t : threads) t.join();
  RETURN_IF_ERROR(error);
  server->Shutdown();  // the log made durable

  SimulationResult result;
  result.visits = static_cast<int64_t>(visits.size());
  result.exposed_visits = exposed;
  result.clicks = clicks;
  ReportOptions report;
  report.experiment = kExperiment;
  ASSIGN_OR_RETURN(
      result.report,
      BuildExperimentReport({serve.experiments.dir + "/log"}, report));
  RETURN_IF_ERROR(WriteFileAtomic(o.out_dir + "/report.json",
                                  result.report.ToJson().dump(2) + "\n"));
  RETURN_IF_ERROR(
      WriteFileAtomic(o.out_dir + "/report.txt", result.report.ToText()));
  RETURN_IF_ERROR(
      WriteFileAtomic(o.out_dir + "/lift.svg", result.report.LiftSvg()));
  return result;
}

}  // namespace optrec
