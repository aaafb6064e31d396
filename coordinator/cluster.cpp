#include "coordinator/cluster.h"

#include <algorithm>
#include <set>

#include "cluster/fit.h"
#include "comm/wire/wire_io.h"
#include "common/trace.h"
#include "coordinator/engine.h"
#include "node/sampling_wire.h"
#include "node/session.h"
#include "node/units.h"
#include "node/worker.h"

namespace shoal {
namespace {

using comm::Clock;
constexpr std::chrono::milliseconds kPoll{250};
// The workspace a fraction of memory leaves for: a prefill step of the scheduler's default
// --max-batch-tokens (coordinator/scheduler.h), as shoal plan counts it.
constexpr int64_t kWorkspaceTokens = 512;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

StatusOr<std::unique_ptr<Cluster>> Cluster::start(std::unique_ptr<comm::Transport> t, const ClusterOptions& o) {
  std::unique_ptr<Cluster> c(new Cluster());
  c->options_ = o;
  if (c->options_.build_id.empty()) c->options_.build_id = build_id();
  c->t_ = std::move(t);
  SHOAL_ASSIGN_OR_RETURN(c->ck_, Checkpoint::open(o.model_dir));
  if (o.exact) c->ck_->set_numerics(kernels::Numerics::kExact);
  if (!c->ck_->has_weights()) return not_found(o.model_dir.string() + ": no *.safetensors weights (only a config)");
  const ModelConfig& cfg = c->ck_->config();
  SHOAL_ASSIGN_OR_RETURN(c->loras_, load_loras(o.loras, cfg, o.merge_lora, o.merge_into));
  const int world = c->t_->size();
  const bool by_fraction = o.kv_memory_fraction > 0;
  c->max_seq_len_ = o.max_seq_len > 0 ? o.max_seq_len
                    : o.kv_memory != 0 || by_fraction ? cfg.max_position_embeddings  // a pool: as far as the model and the pool reach
                                                      : std::min(cfg.max_position_embeddings, kDefaultMaxSeqLen);
  if (!o.plan_file.empty()) {
    SHOAL_ASSIGN_OR_RETURN(c->plan_, cluster::read_plan_file(o.plan_file, cfg, world));
  } else {
    SHOAL_ASSIGN_OR_RETURN(cluster::UnitBytes bytes, cluster::unit_bytes(*c->ck_));
    cluster::PlannerOptions po;
    for (int r = (o.coordinator_hosts || world == 1) ? 0 : 1; r < world; ++r) po.ranks.push_back(r);
    po.expert_scatter = o.expert_scatter;
    SHOAL_ASSIGN_OR_RETURN(c->plan_, cluster::default_plan(cfg, bytes, world, po));
  }
  int64_t most_layers = 0;  // the pool has as many blocks on every rank: the fullest rank sizes it
  for (int r = 0; r < world; ++r)
    most_layers = std::max<int64_t>(most_layers, int64_t(c->plan_.attn_layers(r).size()));
  if (!by_fraction) {  // else sized once every rank has loaded (size_pool_by_fraction)
    SHOAL_ASSIGN_OR_RETURN(c->kv_blocks_, kv_pool_blocks(cfg, most_layers, o.kv_memory, o.kv_dtype));
  }
  if (c->kv_blocks_ > 0) c->max_seq_len_ = std::min(c->max_seq_len_, c->kv_blocks_ * kKvBlockTokens);
  c->loaded_.resize(size_t(world));
  c->last_heard_.assign(size_t(world), Clock::now());
  c->last_beat_.resize(size_t(world));
  c->heartbeats_ = std::thread([p = c.get()] { p->heartbeat_loop(); });
  SHOAL_RETURN_IF_ERROR(c->hello_all());
  {
    std::lock_guard<std::mutex> lock(c->mu_);  // heartbeats start once a node has loaded
    c->last_heard_.assign(size_t(world), Clock::now());
  }
  if (c->plan_.hosts_anything(0)) {
    WorkerOptions wo;
    wo.n_slots = o.n_slots;
    wo.max_seq_len = c->max_seq_len_;
    wo.kv_blocks = c->kv_blocks_;
    wo.kv_deferred = by_fraction;
    wo.kv_dtype = o.kv_dtype;
    wo.attn_impl = o.attn_impl;
    wo.wire_dtype = o.wire_dtype;
    wo.lora = lora_views(c->loras_);
    c->ck_->set_copy_weights(o.copy_weights);
    SHOAL_ASSIGN_OR_RETURN(c->local_, Worker::load(*c->ck_, c->plan_, 0, wo));
    wire::Loaded& l = c->loaded_[0];
    l.set_ok(true);
    l.set_host(host_name());
    l.set_weight_bytes(c->local_->weight_bytes());
    l.set_memory_capacity_bytes(memory_capacity_bytes());
  }
  if (by_fraction) SHOAL_RETURN_IF_ERROR(c->size_pool_by_fraction());
  if (c->local_) {
    c->loaded_[0].set_kv_bytes(c->local_->kv_bytes());
    c->local_->start(*c->t_);
  }
  return c;
}

// --kv-memory as a fraction: every rank has loaded and said its host's memory; the pool is the
// most blocks every host holds (kv_pool_blocks_of_fraction), sent to each node as a KvPool.
Status Cluster::size_pool_by_fraction() {
  const int world = t_->size();
  const ModelConfig& cfg = ck_->config();
  std::vector<KvRoom> rooms;
  for (int r = 0; r < world; ++r) {
    KvRoom room;
    room.rank = r;
    room.host = r == 0 ? host_name() : loaded_[size_t(r)].host();
    room.capacity_bytes = r == 0 ? memory_capacity_bytes() : loaded_[size_t(r)].memory_capacity_bytes();
    room.weight_bytes = r == 0 ? (local_ ? local_->weight_bytes() : 0) : loaded_[size_t(r)].weight_bytes();
    room.workspace_bytes = cluster::cpu_workspace_bytes(cfg, kWorkspaceTokens, options_.n_slots);
    room.layers = int64_t(plan_.attn_layers(r).size());
    rooms.push_back(room);
  }
  SHOAL_ASSIGN_OR_RETURN(kv_blocks_, kv_pool_blocks_of_fraction(cfg, rooms, options_.kv_memory_fraction, options_.kv_dtype));
  if (kv_blocks_ < 1) return internal_error("no rank hosts an attention layer: nothing to size a KV pool for");
  max_seq_len_ = std::min(max_seq_len_, kv_blocks_ * kKvBlockTokens);
  const auto deadline = Clock::now() + std::chrono::seconds(30) + options_.load_timeout / 10;
  wire::Control ctl;
  ctl.mutable_kv_pool()->set_blocks(kv_blocks_);
  ctl.mutable_kv_pool()->set_max_seq_len(max_seq_len_);
  for (int r = 1; r < world; ++r) SHOAL_RETURN_IF_ERROR(wire::send(*t_, r, wire::kControl, ctl, deadline));
  SHOAL_RETURN_IF_ERROR(collect_loaded("the KvPool", "refused the KV pool", deadline));
  if (local_) local_->make_kv_pool(kv_blocks_, max_seq_len_);
  return {};
}

Cluster::~Cluster() { (void)shutdown(); }

Status Cluster::hello_all() {
  const int world = t_->size();
  const std::string plan_json = cluster::plan_to_json(plan_).dump();
  const auto deadline = Clock::now() + options_.load_timeout;
  for (int r = 1; r < world; ++r) {
    wire::Control ctl;
    wire::Hello* h = ctl.mutable_hello();
    h->set_protocol_version(wire::kWireVersion);
    h->set_build_id(options_.build_id);
    h->set_plan_json(plan_json);
    h->set_model_dir(std::filesystem::absolute(options_.model_dir).string());
    SHOAL_ASSIGN_OR_RETURN(std::string fp, weights_fingerprint(*ck_, hosted_tensors(*ck_, plan_, r)));
    h->set_weights_fingerprint(fp);
    h->set_n_slots(options_.n_slots);
    h->set_max_seq_len(max_seq_len_);
    h->set_kv_blocks(kv_blocks_);
    h->set_kv_memory_fraction(options_.kv_memory_fraction);
    h->set_kv_dtype(options_.kv_dtype == DType::kBF16 ? 1 : options_.kv_dtype == DType::kF8E4M3 ? 2 : 0);
    h->set_attn_impl(int32_t(options_.attn_impl));
    h->set_exact_numerics(options_.exact);
    h->set_copy_weights(options_.copy_weights);
    h->set_wire_dtype(int32_t(options_.wire_dtype));
    h->set_merge_lora(options_.merge_lora);
    h->set_merge_into(int32_t(options_.merge_into));
    for (const auto& a : loras_) {
      wire::LoraSpec* spec = h->add_adapters();
      spec->set_name(a->name);
      spec->set_dir(std::filesystem::absolute(a->dir).string());
      SHOAL_ASSIGN_OR_RETURN(std::string lfp, lora_fingerprint(*a, hosted_tensors(*ck_, plan_, r)));
      spec->set_fingerprint(lfp);
    }
    h->set_coordinator_host(host_name());
    SHOAL_RETURN_IF_ERROR(wire::send(*t_, r, wire::kControl, ctl, deadline));
  }
  return collect_loaded("the Hello", "refused the coordinator", deadline);
}

// Every node's Loaded answer to `asked` into loaded_; the first error (a refusal names why).
Status Cluster::collect_loaded(const std::string& asked, const std::string& refused, Clock::time_point deadline) {
  Status first;
  for (int r = 1; r < t_->size(); ++r) {
    auto reply = wire::recv<wire::Control>(*t_, r, wire::kControl, deadline);
    Status s = reply.ok() ? Status{} : reply.status();
    if (s.ok() && !reply->has_loaded()) s = internal_error(t_->peer_name(r) + " answered " + asked + " with something else");
    if (s.ok() && !reply->loaded().ok())
      s = Status(Code::kInvalidArgument, t_->peer_name(r) + " " + refused + ": " + reply->loaded().error());
    if (s.ok()) loaded_[size_t(r)] = reply->loaded();
    if (!s.ok() && first.ok()) first = s;
  }
  return first;
}

int64_t Cluster::pipeline_depth() const {
  std::set<int> stages(plan_.attn.begin(), plan_.attn.end());
  return int64_t(stages.size());
}

StatusOr<uint64_t> Cluster::submit(const Batch& asked, const std::vector<int64_t>& rows, bool want_logits,
                                   const std::vector<RowSampler>& samplers) {
  return send_micro_batch(asked, rows, want_logits, samplers, 0, {});
}

StatusOr<uint64_t> Cluster::submit_chain(const Batch& batch, const std::vector<int64_t>& rows, bool want_logits,
                                         int64_t more_steps, const std::vector<int32_t>& stop_ids) {
  if (more_steps < 0) return invalid_argument("a decode chain of " + std::to_string(more_steps) + " more steps");
  if (rows.size() != batch.seqs.size())
    return invalid_argument("a decode chain needs one row per sequence, not " + std::to_string(rows.size()) + " for " +
                            std::to_string(batch.seqs.size()));
  for (size_t i = 0; i < rows.size(); ++i) {
    const SeqRange& s = batch.seqs[i];
    if (rows[i] != s.begin + s.count - 1)
      return invalid_argument("a decode chain's row " + std::to_string(i) + " is not its sequence's last token");
    if (s.start_pos + s.count + more_steps > max_seq_len())
      return invalid_argument("a decode chain of " + std::to_string(more_steps) + " more steps from position " +
                              std::to_string(s.start_pos + s.count - 1) + " passes the context of " +
                              std::to_string(max_seq_len()));
  }
  return send_micro_batch(batch, rows, want_logits, {}, more_steps, stop_ids);
}

StatusOr<uint64_t> Cluster::send_micro_batch(const Batch& asked, const std::vector<int64_t>& rows, bool want_logits,
                                             const std::vector<RowSampler>& samplers, int64_t more_steps,
                                             const std::vector<int32_t>& stop_ids) {
  const std::vector<std::string> adapters = adapter_names();
  SHOAL_RETURN_IF_ERROR(check_batch(asked, config(), n_slots(), max_seq_len(), adapters, kv_blocks()));
  const Batch batch = with_served_adapters(asked, adapters);
  if (!samplers.empty() && samplers.size() != rows.size())
    return invalid_argument(std::to_string(samplers.size()) + " samplers for " + std::to_string(rows.size()) + " rows");
  wire::MicroBatch mb;
  const uint64_t id = next_id_++;
  mb.set_id(id);
  mb.mutable_tokens()->Add(batch.tokens.begin(), batch.tokens.end());
  mb.mutable_positions()->Add(batch.positions.begin(), batch.positions.end());
  for (const SeqRange& s : batch.seqs) {
    mb.add_seq_count(int32_t(s.count));
    mb.add_seq_slot(s.slot);
  }
  if (!batch.row_adapters().empty())
    for (const SeqRange& s : batch.seqs) mb.add_seq_adapter(s.adapter);
  if (std::any_of(batch.seqs.begin(), batch.seqs.end(), [](const SeqRange& s) { return s.attn != AttnImpl::kAuto; }))
    for (const SeqRange& s : batch.seqs) mb.add_seq_attn(int32_t(s.attn));
  for (const TableEdit& e : batch.tables) {
    mb.add_table_slot(e.slot);
    mb.add_table_keep(e.keep);
    mb.add_table_count(int32_t(e.blocks.size()));
    mb.mutable_table_blocks()->Add(e.blocks.begin(), e.blocks.end());
  }
  for (const SlotCopy& c : batch.copies) {
    mb.add_copy_from(c.from);
    mb.add_copy_to(c.to);
    mb.add_copy_positions(c.positions);
  }
  mb.mutable_logit_rows()->Add(rows.begin(), rows.end());
  mb.set_want_logits(want_logits);
  for (const RowSampler& s : samplers) to_wire(s, *mb.add_sampling());
  mb.set_next_layer(-1);
  mb.set_more_steps(int32_t(more_steps));
  mb.mutable_stop_ids()->Add(stop_ids.begin(), stop_ids.end());
  next_id_ += uint64_t(more_steps);  // the chain's ids, id + 1 .. id + more_steps
  trace::set_thread(0, "coordinator");
  trace::Span span("submit", int64_t(id), plan_.embed);
  SHOAL_RETURN_IF_ERROR(wire::send(*t_, plan_.embed, wire::kHidden, mb, Clock::now() + options_.step_timeout));
  in_flight_[id] = {want_logits, !samplers.empty()};
  return id;
}

StatusOr<StepResult> Cluster::next_result() {
  const auto waiting = Clock::now();
  const auto deadline = waiting + options_.step_timeout;
  while (true) {
    auto m = t_->recv(comm::kAnySource, wire::kResult, std::min(deadline, Clock::now() + kPoll));
    if (m.ok()) {
      SHOAL_ASSIGN_OR_RETURN(wire::Result r, wire::parse<wire::Result>(*t_, *m));
      trace::set_thread(0, "coordinator");
      trace::record("waiting for a result", waiting, Clock::now(), int64_t(r.id()), m->src);
      if (!r.error().empty()) return internal_error(r.error());
      auto it = in_flight_.find(r.id());
      if (it == in_flight_.end()) return internal_error(t_->peer_name(m->src) + " sent a result for an unknown micro-batch");
      StepResult out;
      out.id = r.id();
      out.ids.assign(r.ids().begin(), r.ids().end());
      const size_t want = it->second.logits ? out.ids.size() * size_t(config().vocab_size) : 0;
      if (!wire::read_floats(r.logits(), want, out.logits))
        return internal_error(t_->peer_name(m->src) + " sent logits of the wrong size");
      if (it->second.sampled) {
        out.picks.resize(out.ids.size());
        for (size_t i = 0; i < out.ids.size(); ++i) out.picks[i].id = out.ids[i];
        if (!logprobs_from_wire(r, out.picks))
          return internal_error(t_->peer_name(m->src) + " sent logprobs for the wrong number of rows");
      }
      if (r.continued()) {
        out.continued = true;
        in_flight_[r.id() + 1] = it->second;
      }
      in_flight_.erase(it);
      return out;
    }
    if (m.status().code() != Code::kDeadlineExceeded) return m.status();
    SHOAL_RETURN_IF_ERROR(silent_rank());
    if (local_) SHOAL_RETURN_IF_ERROR(local_->error());
    if (Clock::now() >= deadline)
      return Status(Code::kDeadlineExceeded, "no result within " + std::to_string(seconds(options_.step_timeout)) +
                                                 " s (--step-timeout)");
  }
}

void Cluster::heartbeat_loop() {
  while (!stopping_) {
    auto m = t_->recv(comm::kAnySource, wire::kHeartbeat, Clock::now() + kPoll);
    std::lock_guard<std::mutex> lock(mu_);
    if (m.ok()) {
      last_heard_[size_t(m->src)] = Clock::now();
      auto beat = wire::parse<wire::Heartbeat>(*t_, *m);
      if (beat.ok()) last_beat_[size_t(m->src)] = *beat;
    } else if (m.status().code() != Code::kDeadlineExceeded) {
      heartbeat_error_ = m.status();
      return;
    }
  }
}

std::vector<wire::Heartbeat> Cluster::rank_stats() const {
  std::vector<wire::Heartbeat> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    out = last_beat_;
  }
  out[0].set_rss_bytes(resident_bytes());
  if (local_) *out[0].mutable_stats() = local_->stats();
  return out;
}

Status Cluster::silent_rank() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!heartbeat_error_.ok()) return heartbeat_error_;
  const auto now = Clock::now();
  for (int r = 1; r < t_->size(); ++r)
    if (now - last_heard_[size_t(r)] > options_.heartbeat_timeout)
      return Status(Code::kUnavailable, t_->peer_name(r) + " stopped answering: no heartbeat for " +
                                            std::to_string(int(seconds(now - last_heard_[size_t(r)]))) + " s");
  return {};
}

Status Cluster::shutdown() {
  if (shut_down_) return {};
  shut_down_ = true;
  Status s;
  if (local_) s = local_->stop();  // first: the nodes' leaving is no error for it
  wire::Control ctl;
  ctl.mutable_shutdown()->set_exit_process(options_.nodes_exit);
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  for (int r = 1; r < t_->size(); ++r) (void)wire::send(*t_, r, wire::kControl, ctl, deadline);
  stopping_ = true;
  if (heartbeats_.joinable()) heartbeats_.join();
  if (after_shutdown_) after_shutdown_();
  trace::write();
  return s;
}

}  // namespace shoal
