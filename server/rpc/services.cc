#include "server/rpc/services.h"

#include <atomic>
#include <deque>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/tokenizer/utf8.h"
#include "core/util/files.h"
#include "core/util/status_macros.h"
#include "server/metrics/metrics.h"
#include "server/rpc/call_metrics.h"

namespace optrec {
namespace {

// Request fields as template fields; InvalidArgument naming `where` and the
// field for text that is not UTF-8 (proto3 strings normally are, but the
// wire does not guarantee it to every client's encoder).
absl::Status AddFields(const google::protobuf::Map<std::string, v1::Field>& in,
                       const std::string& where, FieldMap* out) {
  for (const auto& [name, field] : in) {
    FieldValue v;
    auto check = [&](const std::string& text) -> absl::Status {
      absl::Status ok = utf8::CheckEncodable(text);
      if (!ok.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".", name, ": ", ok.message()));
      }
      return absl::OkStatus();
    };
    if (field.has_list()) {
      v.is_list = true;
      for (const std::string& item : field.list().items()) {
        RETURN_IF_ERROR(check(item));
        v.list.push_back(item);
      }
    } else {
      RETURN_IF_ERROR(check(field.text()));
      v.text = field.text();
    }
    (*out)[name] = std::move(v);
  }
  return absl::OkStatus();
}

using Routed = Experimentation::Routed;

// The module serving the request (its unit's experiment arm when one
// applies), checked for the RPC's kind. `experimentation` may be null.
absl::StatusOr<Routed> RouteFor(
    const ModuleRegistry& registry, const Experimentation* experimentation,
    const std::string& task, const std::string& version,
    const std::string& request_id, const std::string& unit_type,
    const std::string& unit_id, TaskKind kind, const char* rpc) {
  if (task.empty()) return absl::InvalidArgumentError("task: required");
  RETURN_IF_ERROR(ValidateRequestKeys(request_id, unit_type, unit_id));
  Routed r;
  if (experimentation != nullptr) {
    ASSIGN_OR_RETURN(r,
                     experimentation->Route(task, version, unit_type, unit_id));
  } else {
    ASSIGN_OR_RETURN(r.module, registry.Resolve(task, version));
  }
  if (r.module.module->spec().kind != kind) {
    return absl::InvalidArgumentError(absl::StrCat(
        "task: ", task, " is a ", TaskKindName(r.module.module->spec().kind),
        " task; ", rpc, " serves ", TaskKindName(kind), " tasks"));
  }
  return r;
}

// What a served request leaves in the experiment log: its exposure, when
// an experiment arm served it.
struct ExposureNote {
  Experimentation* experimentation = nullptr;  // null: nothing to log
  Routed routed;
  std::string request_id, unit_type, unit_id;

  // Logs the exposure (called once the response is complete and OK).
  void Served() const {
    if (experimentation != nullptr) {
      experimentation->RecordExposure(routed, request_id, unit_type, unit_id);
    }
  }
};

// The request's id (made when it has none) and arm, set in `response`,
// and the note to log when it is served.
template <typename Request, typename Response>
ExposureNote Note(Experimentation* experimentation, const Routed& routed,
                  const Request& request, Response* response) {
  ExposureNote note;
  note.request_id =
      request.request_id().empty() ? NewRequestId() : request.request_id();
  response->set_request_id(note.request_id);
  if (routed.arm.has_value()) {
    response->mutable_experiment()->set_experiment(routed.arm->experiment);
    response->mutable_experiment()->set_arm(routed.arm->arm);
    note.experimentation = experimentation;
    note.routed = routed;
    note.unit_type = request.unit_type();
    note.unit_id = request.unit_id();
  }
  return note;
}

// The template a request names (empty = the first training template).
absl::StatusOr<const TaskTemplate*> PickTemplate(const TaskSpec& spec,
                                                 const std::string& name) {
  if (name.empty()) return &spec.templates[spec.TrainingTemplates()[0]];
  absl::StatusOr<size_t> index = spec.TemplateIndex(name);
  if (!index.ok()) {
    return absl::NotFoundError(
        absl::StrCat("template: ", index.status().message()));
  }
  return &spec.templates[*index];
}

absl::Time DeadlineOf(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

absl::Status IndexSet::Load(const std::string& dir,
                            const ModuleRegistry& registry) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(dir + "/meta.json"));
  const nlohmann::json meta = nlohmann::json::parse(text, nullptr, false);
  if (!meta.is_object() || !meta.contains("task") ||
      !meta["task"].is_string() || !meta.contains("version") ||
      !meta["version"].is_string()) {
    return absl::DataLossError(absl::StrCat(dir, "/meta.json is corrupt"));
  }
  const std::string task = meta["task"], version = meta["version"];
  absl::StatusOr<ModuleVersion> module = registry.Resolve(task, version);
  if (!module.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, " belongs to task ", task, " version ", version,
                     ", which is not loaded: ", module.status().message()));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<ItemIndex> index,
                   ItemIndex::Load(dir, version, module->path));
  absl::MutexLock lock(&mu_);
  indexes_[{task, version}] = std::move(index);
  return absl::OkStatus();
}

std::shared_ptr<const ItemIndex> IndexSet::Find(
    const std::string& task, const std::string& version) const {
  absl::MutexLock lock(&mu_);
  auto it = indexes_.find({task, version});
  return it == indexes_.end() ? nullptr : it->second;
}

RecommenderService::RecommenderService(const ModuleRegistry& registry,
                                       BatchScheduler& scheduler,
                                       GenerationLoop& generation,
                                       const IndexSet& indexes,
                                       RequestLimits limits, Metrics* metrics,
                                       Experimentation* experimentation)
    : registry_(registry),
      scheduler_(scheduler),
      generation_(generation),
      indexes_(indexes),
      limits_(limits),
      metrics_(metrics),
      experimentation_(experimentation) {}

grpc::ServerUnaryReactor* RecommenderService::Score(
    grpc::CallbackServerContext* context, const v1::ScoreRequest* request,
    v1::ScoreResponse* response) {
  CallMetrics call{metrics_, "Score", request->task(), request->version()};
  absl::StatusOr<Routed> routed =
      RouteFor(registry_, experimentation_, request->task(), request->version(),
               request->request_id(), request->unit_type(), request->unit_id(),
               TaskKind::kScore, "Score");
  if (!routed.ok()) {
    return FinishNow(context, call, ToGrpcStatus(routed.status()));
  }
  const ModuleVersion* v = &routed->module;
  call.version = v->version;
  const int64_t n = request->candidates_size();
  if (n == 0 || n > limits_.max_candidates) {
    return FinishNow(
        context, call,
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat("candidates: ", n, " given; between 1 and ",
                                  limits_.max_candidates, " are allowed")));
  }
  const TaskSpec& spec = v->module->spec();
  absl::StatusOr<const TaskTemplate*> t =
      PickTemplate(spec, request->template_());
  if (!t.ok()) return FinishNow(context, call, ToGrpcStatus(t.status()));

  // One row per candidate: the context's fields joined by its own.
  FieldMap context_fields;
  absl::Status fields =
      AddFields(request->context(), "context", &context_fields);
  if (!fields.ok()) return FinishNow(context, call, ToGrpcStatus(fields));
  InputEncoder encoder(spec, *registry_.model().tokenizer(), nullptr);
  BatchRequest batch;
  batch.module = v->module;
  batch.output = RowOutput::kOptionProbabilities;
  batch.deadline = DeadlineOf(*context);
  batch.cancelled = [context] { return context->IsCancelled(); };
  for (int64_t i = 0; i < n; ++i) {
    Example e;
    e.fields = context_fields;
    const std::string where = absl::StrCat("candidates[", i, "]");
    absl::Status own =
        AddFields(request->candidates(i).fields(), where, &e.fields);
    absl::StatusOr<EncodedInput> in = own.ok()
                                          ? encoder.EncodeWith(**t, e)
                                          : absl::StatusOr<EncodedInput>(own);
    if (!in.ok()) {
      return FinishNow(
          context, call,
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       absl::StrCat(where, ": ", in.status().message())));
    }
    batch.rows.push_back(*std::move(in));
  }

  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  response->set_task(v->task);
  response->set_version(v->version);
  std::vector<double> labels;
  for (const TaskOption& o : spec.options) {
    response->add_option_labels(o.label);
    labels.push_back(o.label);
  }
  const int positive = spec.OptionIndex(spec.positive_label);
  ExposureNote note = Note(experimentation_, *routed, *request, response);
  scheduler_.Submit(
      std::move(batch), [reactor, response, request, labels, positive, call,
                         note](absl::StatusOr<BatchResult> result) {
        if (!result.ok()) {
          reactor->Finish(call.Done(ToGrpcStatus(result.status())));
          return;
        }
        for (size_t i = 0; i < result->size(); ++i) {
          v1::CandidateScore* s = response->add_scores();
          s->set_id(request->candidates(static_cast<int>(i)).id());
          const std::vector<float>& p = (*result)[i];
          double score = 0;
          for (size_t c = 0; c < p.size(); ++c) {
            s->add_probabilities(p[c]);
            score += p[c] * labels[c];
          }
          // Two options rank by the positive one's probability.
          if (p.size() == 2 && positive >= 0) score = p[positive];
          s->set_score(static_cast<float>(score));
        }
        note.Served();
        reactor->Finish(call.Done(grpc::Status::OK));
      });
  return reactor;
}

grpc::ServerUnaryReactor* RecommenderService::Embed(
    grpc::CallbackServerContext* context, const v1::EmbedRequest* request,
    v1::EmbedResponse* response) {
  CallMetrics call{metrics_, "Embed", request->task(), request->version()};
  absl::StatusOr<Routed> routed =
      RouteFor(registry_, nullptr, request->task(), request->version(), "", "",
               "", TaskKind::kRetrieve, "Embed");
  if (!routed.ok()) {
    return FinishNow(context, call, ToGrpcStatus(routed.status()));
  }
  const ModuleVersion* v = &routed->module;
  call.version = v->version;
  const TaskSpec& spec = v->module->spec();
  const bool item = request->tower() == v1::EmbedRequest::ITEM;
  const TaskTemplate* t = &spec.item_template;
  if (!item) {
    absl::StatusOr<const TaskTemplate*> picked =
        PickTemplate(spec, request->template_());
    if (!picked.ok())
      return FinishNow(context, call, ToGrpcStatus(picked.status()));
    t = *picked;
  }
  Example e;
  absl::Status fields = AddFields(request->fields(), "fields", &e.fields);
  InputEncoder encoder(spec, *registry_.model().tokenizer(), nullptr);
  absl::StatusOr<EncodedInput> in = fields.ok()
                                        ? encoder.EncodeWith(*t, e)
                                        : absl::StatusOr<EncodedInput>(fields);
  if (!in.ok()) {
    return FinishNow(
        context, call,
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat("fields: ", in.status().message())));
  }
  BatchRequest batch;
  batch.module = v->module;
  batch.output = item ? RowOutput::kItemEmbedding : RowOutput::kUserEmbedding;
  batch.deadline = DeadlineOf(*context);
  batch.cancelled = [context] { return context->IsCancelled(); };
  batch.rows.push_back(*std::move(in));
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  response->set_task(v->task);
  response->set_version(v->version);
  scheduler_.Submit(std::move(batch), [reactor, response, call](
                                          absl::StatusOr<BatchResult> result) {
    if (result.ok()) {
      for (float x : (*result)[0]) response->add_embedding(x);
    }
    reactor->Finish(call.Done(ToGrpcStatus(result.status())));
  });
  return reactor;
}

grpc::ServerUnaryReactor* RecommenderService::Retrieve(
    grpc::CallbackServerContext* context, const v1::RetrieveRequest* request,
    v1::RetrieveResponse* response) {
  CallMetrics call{metrics_, "Retrieve", request->task(), request->version()};
  absl::StatusOr<Routed> routed =
      RouteFor(registry_, experimentation_, request->task(), request->version(),
               request->request_id(), request->unit_type(), request->unit_id(),
               TaskKind::kRetrieve, "Retrieve");
  if (!routed.ok()) {
    return FinishNow(context, call, ToGrpcStatus(routed.status()));
  }
  const ModuleVersion* v = &routed->module;
  call.version = v->version;
  if (request->k() < 1 || request->k() > limits_.max_retrieve_k) {
    return FinishNow(
        context, call,
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat("k: ", request->k(), " asked; between 1 and ",
                                  limits_.max_retrieve_k, " are allowed")));
  }
  std::shared_ptr<const ItemIndex> index = indexes_.Find(v->task, v->version);
  if (index == nullptr) {
    return FinishNow(
        context, call,
        grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                     absl::StrCat("task ", v->task, " version ", v->version,
                                  " has no retrieval index loaded")));
  }
  const TaskSpec& spec = v->module->spec();
  absl::StatusOr<const TaskTemplate*> t =
      PickTemplate(spec, request->template_());
  if (!t.ok()) return FinishNow(context, call, ToGrpcStatus(t.status()));
  Example e;
  absl::Status fields = AddFields(request->context(), "context", &e.fields);
  InputEncoder encoder(spec, *registry_.model().tokenizer(), nullptr);
  absl::StatusOr<EncodedInput> in = fields.ok()
                                        ? encoder.EncodeWith(**t, e)
                                        : absl::StatusOr<EncodedInput>(fields);
  if (!in.ok()) {
    return FinishNow(
        context, call,
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat("context: ", in.status().message())));
  }
  BatchRequest batch;
  batch.module = v->module;
  batch.output = RowOutput::kUserEmbedding;
  batch.deadline = DeadlineOf(*context);
  batch.cancelled = [context] { return context->IsCancelled(); };
  batch.rows.push_back(*std::move(in));
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  response->set_task(v->task);
  response->set_version(v->version);
  std::set<std::string> exclude(request->exclude().begin(),
                                request->exclude().end());
  const int64_t k = request->k();
  ExposureNote note = Note(experimentation_, *routed, *request, response);
  scheduler_.Submit(
      std::move(batch), [reactor, response, index, exclude, k, call,
                         note](absl::StatusOr<BatchResult> result) {
        if (!result.ok()) {
          reactor->Finish(call.Done(ToGrpcStatus(result.status())));
          return;
        }
        absl::StatusOr<std::vector<SearchHit>> hits =
            index->Search((*result)[0], k, exclude);
        if (hits.ok()) {
          for (const SearchHit& h : *hits) {
            v1::RetrievedItem* item = response->add_items();
            item->set_id(h.item_id);
            item->set_score(h.score);
          }
          note.Served();
        }
        reactor->Finish(call.Done(ToGrpcStatus(hits.status())));
      });
  return reactor;
}

namespace {

// Streams one generation: messages are written one at a time in order (the
// callback API allows one write in flight), then the final status. Deletes
// itself when gRPC is done with the call.
class GenerateStream : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  // `first` holds what the first message carries (task, version, request
  // id, arm); `note` is logged when the stream ends OK.
  GenerateStream(v1::GenerateResponse first, ExposureNote note,
                 CallMetrics call)
      : first_message_(std::move(first)),
        note_(std::move(note)),
        call_(std::move(call)) {}

  // A message with new text (from the generation loop's thread).
  void Text(const std::string& text) {
    v1::GenerateResponse m;
    m.set_text(text);
    Push(std::move(m));
  }
  // The last message, then the status.
  void End(const absl::Status& status, FinishReason finish, int64_t tokens) {
    if (status.ok()) note_.Served();  // outside mu_: it takes the log's lock
    absl::MutexLock lock(&mu_);
    if (status.ok()) {
      v1::GenerateResponse m;
      m.set_finish_reason(FinishReasonName(finish));
      m.set_tokens(static_cast<int32_t>(tokens));
      PushLocked(std::move(m));
    }
    final_ = call_.Done(ToGrpcStatus(status));
    ended_ = true;
    if (!writing_) Finish(final_);
  }
  bool cancelled() const { return cancelled_.load(); }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    queue_.pop_front();
    if (!ok) cancelled_ = true;  // the client is gone
    if (!queue_.empty() && ok) {
      StartWrite(&queue_.front());
      return;
    }
    writing_ = false;
    if (ended_) Finish(final_);
  }
  void OnCancel() override { cancelled_ = true; }
  void OnDone() override { delete this; }

 private:
  void Push(v1::GenerateResponse m) {
    absl::MutexLock lock(&mu_);
    PushLocked(std::move(m));
  }
  void PushLocked(v1::GenerateResponse m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (first_) {
      m.MergeFrom(first_message_);
      first_ = false;
    }
    queue_.push_back(std::move(m));
    if (!writing_) {
      writing_ = true;
      StartWrite(&queue_.front());
    }
  }

  const v1::GenerateResponse first_message_;
  const ExposureNote note_;
  const CallMetrics call_;
  std::atomic<bool> cancelled_{false};
  absl::Mutex mu_;  // guards the write queue and the end state
  std::deque<v1::GenerateResponse> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool first_ ABSL_GUARDED_BY(mu_) = true;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_ ABSL_GUARDED_BY(mu_);
};

// A stream that fails at once.
class FailedStream : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  explicit FailedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerWriteReactor<v1::GenerateResponse>* RecommenderService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  CallMetrics call{metrics_, "Generate", request->task(), request->version()};
  absl::StatusOr<Routed> routed =
      RouteFor(registry_, experimentation_, request->task(), request->version(),
               request->request_id(), request->unit_type(), request->unit_id(),
               TaskKind::kGenerate, "Generate");
  if (!routed.ok()) {
    return new FailedStream(call.Done(ToGrpcStatus(routed.status())));
  }
  const ModuleVersion* v = &routed->module;
  call.version = v->version;
  const TaskSpec& spec = v->module->spec();
  absl::StatusOr<const TaskTemplate*> t =
      PickTemplate(spec, request->template_());
  if (!t.ok()) return new FailedStream(call.Done(ToGrpcStatus(t.status())));
  Example e;
  absl::Status fields = AddFields(request->context(), "context", &e.fields);
  InputEncoder encoder(spec, *registry_.model().tokenizer(), nullptr);
  absl::StatusOr<EncodedInput> in = fields.ok()
                                        ? encoder.EncodeWith(**t, e)
                                        : absl::StatusOr<EncodedInput>(fields);
  if (!in.ok()) {
    return new FailedStream(call.Done(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat("context: ", in.status().message()))));
  }
  for (const std::string& stop : request->stop()) {
    if (!utf8::CheckEncodable(stop).ok() || stop.empty()) {
      return new FailedStream(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       "stop: every stop sequence must be non-empty UTF-8"));
    }
  }
  GenerationJob job;
  RowInput row = v->module->MakeRow(*in, false);
  job.request.prompt_ids = row.ids;
  job.request.soft_prompt = row.prompt;
  job.request.adapter = row.adapter;
  SamplingParams& p = job.request.params;
  p.max_tokens =
      request->max_tokens() > 0 ? request->max_tokens() : spec.max_new_tokens;
  p.temperature = request->temperature();
  p.top_k = request->top_k();
  p.top_p = request->top_p() > 0 ? request->top_p() : 1.0;
  p.seed = request->seed();
  p.stop.assign(request->stop().begin(), request->stop().end());
  job.deadline = DeadlineOf(*context);

  v1::GenerateResponse first;
  first.set_task(v->task);
  first.set_version(v->version);
  ExposureNote note = Note(experimentation_, *routed, *request, &first);
  auto* stream = new GenerateStream(std::move(first), std::move(note), call);
  job.cancelled = [stream, context] {
    return stream->cancelled() || context->IsCancelled();
  };
  job.on_text = [stream](const std::string& text) { stream->Text(text); };
  job.on_done = [stream](absl::Status status, FinishReason finish,
                         int64_t tokens) {
    stream->End(status, finish, tokens);
  };
  absl::Status queued = generation_.Submit(std::move(job));
  if (!queued.ok()) {
    // The job's callbacks will never run: end the stream here.
    stream->End(queued, FinishReason::kCancelled, 0);
  }
  return stream;
}

grpc::ServerUnaryReactor* RecommenderService::RecordEvents(
    grpc::CallbackServerContext* context,
    const v1::RecordEventsRequest* request,
    v1::RecordEventsResponse* response) {
  const CallMetrics call{metrics_, "RecordEvents", "", ""};
  if (experimentation_ == nullptr) {
    return FinishNow(context, call, NoExperimentsStatus());
  }
  std::vector<FeedbackEvent> events;
  std::vector<int> sent_index;  // events[i] is request->events(sent_index[i])
  for (int i = 0; i < request->events_size(); ++i) {
    const v1::Event& in = request->events(i);
    absl::StatusOr<EventKind> kind = ParseEventKind(in.kind());
    if (!kind.ok()) {
      v1::RejectedEvent* r = response->add_rejected();
      r->set_index(i);
      r->set_error(std::string(kind.status().message()));
      continue;
    }
    FeedbackEvent e;
    e.kind = *kind;
    e.value = in.value() == 0 && e.kind != EventKind::kRating ? 1 : in.value();
    e.time_us = in.time_us();
    e.request_id = in.request_id();
    e.experiment = in.experiment();
    e.unit_type = in.unit_type();
    e.unit = in.unit_id();
    events.push_back(std::move(e));
    sent_index.push_back(i);
  }
  absl::StatusOr<Experimentation::EventsResult> result =
      experimentation_->RecordEvents(std::move(events));
  if (!result.ok()) {
    return FinishNow(context, call, ToGrpcStatus(result.status()));
  }
  for (const auto& [index, error] : result->rejected) {
    v1::RejectedEvent* r = response->add_rejected();
    r->set_index(sent_index[index]);
    r->set_error(error);
  }
  response->set_accepted(result->accepted);
  response->set_unknown_requests(result->unknown_requests);
  return FinishNow(context, call, grpc::Status::OK);
}

TasksService::TasksService(ModuleRegistry& registry, Metrics* metrics)
    : registry_(registry), metrics_(metrics) {}

grpc::ServerUnaryReactor* TasksService::ListTasks(
    grpc::CallbackServerContext* context, const v1::ListTasksRequest*,
    v1::ListTasksResponse* response) {
  const CallMetrics call{metrics_, "ListTasks", "", ""};
  for (const TaskListing& t : registry_.List()) {
    v1::TaskInfo* info = response->add_tasks();
    info->set_task(t.task);
    info->set_kind(TaskKindName(t.kind));
    info->set_default_version(t.default_version);
    for (const auto& [version, meta] : t.versions) {
      v1::ModuleVersionInfo* v = info->add_versions();
      v->set_version(version);
      v->set_method(meta.value("method", ""));
      v->set_path(meta.value("path", ""));
      v->set_parameters(meta.value("parameters", int64_t{0}));
      v->set_metadata_json(meta.dump());
    }
  }
  return FinishNow(context, call, grpc::Status::OK);
}

grpc::ServerUnaryReactor* TasksService::LoadModule(
    grpc::CallbackServerContext* context, const v1::LoadModuleRequest* request,
    v1::LoadModuleResponse* response) {
  CallMetrics call{metrics_, "LoadModule", "", request->version()};
  if (request->path().empty()) {
    return FinishNow(
        context, call,
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "path: required"));
  }
  absl::StatusOr<ModuleVersion> v =
      registry_.Load(request->path(), request->version());
  if (!v.ok()) return FinishNow(context, call, ToGrpcStatus(v.status()));
  call.task = v->task;
  call.version = v->version;
  if (request->make_default()) {
    absl::Status promoted = registry_.SetDefault(v->task, v->version);
    if (!promoted.ok()) return FinishNow(context, call, ToGrpcStatus(promoted));
  }
  response->set_task(v->task);
  response->set_version(v->version);
  absl::StatusOr<ModuleVersion> current = registry_.Resolve(v->task);
  response->set_is_default(current.ok() && current->version == v->version);
  return FinishNow(context, call, grpc::Status::OK);
}

grpc::ServerUnaryReactor* TasksService::SetDefault(
    grpc::CallbackServerContext* context, const v1::SetDefaultRequest* request,
    v1::SetDefaultResponse*) {
  const CallMetrics call{metrics_, "SetDefault", request->task(),
                         request->version()};
  return FinishNow(
      context, call,
      ToGrpcStatus(registry_.SetDefault(request->task(), request->version())));
}

grpc::ServerUnaryReactor* TasksService::UnloadModule(
    grpc::CallbackServerContext* context,
    const v1::UnloadModuleRequest* request, v1::UnloadModuleResponse*) {
  const CallMetrics call{metrics_, "UnloadModule", request->task(),
                         request->version()};
  return FinishNow(
      context, call,
      ToGrpcStatus(registry_.Unload(request->task(), request->version())));
}

}  // namespace optrec
