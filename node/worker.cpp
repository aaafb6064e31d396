#include "node/worker.h"

#include <algorithm>

#include "comm/wire/wire_io.h"
#include "common/trace.h"
#include "node/block.h"
#include "node/sampling_wire.h"
#include "node/units.h"

namespace shoal {
namespace {

using comm::Clock;
constexpr std::chrono::milliseconds kPoll{200};  // how often idle loops look at stopping_

bool is_poll_timeout(const Status& s) { return s.code() == Code::kDeadlineExceeded; }

// The Batch a MicroBatch describes, checked against what this rank can hold.
StatusOr<Batch> to_batch(const wire::MicroBatch& mb, const ModelConfig& c, int64_t n_slots, int64_t capacity,
                         size_t n_adapters) {
  Batch b;
  if (mb.tokens_size() != mb.positions_size() || mb.seq_count_size() != mb.seq_slot_size() ||
      (mb.seq_adapter_size() != 0 && mb.seq_adapter_size() != mb.seq_count_size()) ||
      (mb.seq_attn_size() != 0 && mb.seq_attn_size() != mb.seq_count_size()))
    return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": inconsistent sizes");
  b.tokens.assign(mb.tokens().begin(), mb.tokens().end());
  b.positions.assign(mb.positions().begin(), mb.positions().end());
  int64_t begin = 0;
  for (int s = 0; s < mb.seq_count_size(); ++s) {
    const int64_t count = mb.seq_count(s);
    const int32_t slot = mb.seq_slot(s);
    if (count <= 0 || begin + count > b.n_tokens() || slot < 0 || slot >= n_slots)
      return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": sequence " + std::to_string(s) +
                              " (slot " + std::to_string(slot) + ", " + std::to_string(count) + " tokens) does not fit");
    for (int64_t t = begin; t < begin + count; ++t) {
      if (b.positions[size_t(t)] != b.positions[size_t(begin)] + (t - begin) || b.positions[size_t(t)] < 0 ||
          b.positions[size_t(t)] >= capacity)
        return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": position " +
                                std::to_string(b.positions[size_t(t)]) + " is outside the context of " +
                                std::to_string(capacity));
      if (b.tokens[size_t(t)] < 0 || b.tokens[size_t(t)] >= c.vocab_size)
        return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": token id " +
                                std::to_string(b.tokens[size_t(t)]) + " is outside the vocabulary");
    }
    const int32_t adapter = mb.seq_adapter_size() ? mb.seq_adapter(s) : 0;
    if (adapter < 0 || size_t(adapter) > n_adapters)
      return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": sequence " + std::to_string(s) +
                              " asks for LoRA adapter " + std::to_string(adapter) + " but this rank serves " +
                              std::to_string(n_adapters));
    const int32_t attn = mb.seq_attn_size() ? mb.seq_attn(s) : 0;
    if (attn < 0 || attn > int32_t(AttnImpl::kAbsorb))
      return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": sequence " + std::to_string(s) +
                              " asks for attention path " + std::to_string(attn));
    b.seqs.push_back({begin, count, slot, b.positions[size_t(begin)], adapter, AttnImpl(attn)});
    begin += count;
  }
  if (begin != b.n_tokens()) return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": stray tokens");
  if (mb.copy_from_size() != mb.copy_to_size() || mb.copy_from_size() != mb.copy_positions_size())
    return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": inconsistent KV copies");
  for (int i = 0; i < mb.copy_from_size(); ++i) {
    const SlotCopy c{mb.copy_from(i), mb.copy_to(i), mb.copy_positions(i)};
    if (c.from < 0 || c.from >= n_slots || c.to < 0 || c.to >= n_slots || c.from == c.to || c.positions < 0 ||
        c.positions > capacity)
      return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": a KV copy of " +
                              std::to_string(c.positions) + " positions from slot " + std::to_string(c.from) +
                              " to slot " + std::to_string(c.to) + " does not fit");
    b.copies.push_back(c);
  }
  if (mb.table_slot_size() != mb.table_keep_size() || mb.table_slot_size() != mb.table_count_size())
    return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": inconsistent KV block tables");
  int64_t next_block = 0;
  for (int i = 0; i < mb.table_slot_size(); ++i) {
    const int32_t count = mb.table_count(i);
    if (count < 0 || next_block + count > mb.table_blocks_size())
      return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": KV block table " + std::to_string(i) +
                              " lists more blocks than it carries");
    TableEdit e{mb.table_slot(i), mb.table_keep(i), {}};
    e.blocks.assign(mb.table_blocks().begin() + next_block, mb.table_blocks().begin() + next_block + count);
    next_block += count;
    b.tables.push_back(std::move(e));
  }
  if (next_block != mb.table_blocks_size())
    return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": stray KV block ids");
  for (int64_t r : mb.logit_rows())
    if (r < 0 || r >= b.n_tokens())
      return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": logit row " + std::to_string(r) +
                              " is not a token row");
  return b;
}

}  // namespace

Worker::Worker(const ModelConfig& c, const cluster::Plan& plan, int rank, const WorkerOptions& o)
    : config_(c), plan_(plan), rank_(rank), options_(o), rope_(make_rope_table(c)) {
  lc_ = {&config_, &rope_, o.attn_impl, kernels::Context{}};
  for (int64_t i = 0; i < c.n_layers; ++i)
    if (c.is_moe_layer(i) && size_t(i) < plan.experts.size()) combine_nodes_[i] = maximal_nodes_by_owner(plan.experts[size_t(i)]);
}

Worker::~Worker() { (void)stop(); }

StatusOr<std::unique_ptr<Worker>> Worker::load(Checkpoint& ck, const cluster::Plan& plan, int rank,
                                               const WorkerOptions& o) {
  const ModelConfig& c = ck.config();
  std::unique_ptr<Worker> w(new Worker(c, plan, rank, o));
  if (plan.embed == rank) { SHOAL_ASSIGN_OR_RETURN(w->embed_, load_embedding(ck)); }
  if (plan.head == rank) { SHOAL_ASSIGN_OR_RETURN(w->head_, load_head(ck)); }
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::vector<bool> mine = plan.expert_filter(rank, i);
    const bool any_expert = std::find(mine.begin(), mine.end(), true) != mine.end();
    if (plan.attn[size_t(i)] == rank) {
      SHOAL_ASSIGN_OR_RETURN(LayerWeights l, load_layer(ck, i, mine, o.lora));
      if (any_expert) w->experts_[i] = std::move(l.experts);
      l.experts.clear();
      w->cache_index_[i] = int64_t(w->cache_index_.size());
      w->layers_.emplace(i, std::move(l));
    } else if (any_expert) {
      SHOAL_RETURN_IF_ERROR(load_routed_experts(ck, i, mine, w->experts_[i], o.lora));
    }
  }
  for (const std::string& name : hosted_tensors(ck, plan, rank)) {
    SHOAL_ASSIGN_OR_RETURN(int64_t bytes, ck.prefault(name));
    w->weight_bytes_ += bytes;
  }
  if (!w->layers_.empty() && !o.kv_deferred)
    w->cache_ = std::make_unique<KvCache>(c, int64_t(w->layers_.size()), o.n_slots, o.max_seq_len, o.kv_blocks,
                                          o.kv_dtype);
  return w;
}

int64_t Worker::kv_block_bytes() const {
  return layers_.empty() ? 0 : shoal::kv_block_bytes(config_, int64_t(layers_.size()), options_.kv_dtype);
}

void Worker::make_kv_pool(int64_t blocks, int64_t max_seq_len) {
  if (cache_ && cache_->paged() && cache_->n_blocks() == blocks && options_.max_seq_len == max_seq_len) return;
  options_.kv_blocks = blocks;
  options_.max_seq_len = max_seq_len;
  cache_.reset();  // the old pool's memory goes first
  if (!layers_.empty())
    cache_ = std::make_unique<KvCache>(config_, int64_t(layers_.size()), options_.n_slots, max_seq_len, blocks,
                                       options_.kv_dtype);
}

Status Worker::send(int dst, uint32_t tag, const google::protobuf::MessageLite& m, int64_t tokens, bool chain_step) {
  std::string bytes;
  if (!m.SerializeToString(&bytes)) return internal_error("cannot serialise a " + m.GetTypeName());
  SHOAL_RETURN_IF_ERROR(t_->send(dst, tag, comm::as_bytes_of(bytes), Clock::now() + options_.peer_timeout));
  if (tag == wire::kExpertRequest || tag == wire::kExpertReply) {
    expert_messages_ += 1;
    expert_bytes_ += int64_t(bytes.size());
  } else if (tag == wire::kResult || chain_step) {
    result_messages_ += 1;
    result_bytes_ += int64_t(bytes.size());
  } else {
    hidden_messages_ += 1;
    hidden_bytes_ += int64_t(bytes.size());
    hidden_tokens_ += tokens;
  }
  return {};
}

wire::WorkerStats Worker::stats() const {
  wire::WorkerStats s;
  s.set_hidden_messages(hidden_messages_);
  s.set_hidden_bytes(hidden_bytes_);
  s.set_hidden_tokens(hidden_tokens_);
  s.set_expert_messages(expert_messages_);
  s.set_expert_bytes(expert_bytes_);
  s.set_result_messages(result_messages_);
  s.set_result_bytes(result_bytes_);
  return s;
}

void Worker::start(comm::Transport& t) {
  t_ = &t;
  stopping_ = false;
  pipeline_ = std::thread([this] { pipeline_loop(); });
  experts_thread_ = std::thread([this] { expert_loop(); });
}

Status Worker::stop() {
  stopping_ = true;
  if (pipeline_.joinable()) pipeline_.join();
  if (experts_thread_.joinable()) experts_thread_.join();
  trace::write();
  return error();
}

void Worker::reset() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = Status();
  }
  for (auto* c : {&hidden_messages_, &hidden_bytes_, &hidden_tokens_, &expert_messages_, &expert_bytes_,
                  &result_messages_, &result_bytes_})
    c->store(0);
}

Status Worker::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void Worker::record(const Status& s) {
  std::lock_guard<std::mutex> lock(mu_);
  if (error_.ok() && !stopping_) error_ = s;  // once stopping, peers going away is expected
}

void Worker::pipeline_loop() {
  trace::set_thread(rank_, "pipeline");
  auto idle_since = Clock::now();
  while (!stopping_) {
    auto m = t_->recv(comm::kAnySource, wire::kHidden, Clock::now() + kPoll);
    if (!m.ok()) {
      if (is_poll_timeout(m.status())) continue;
      return record(m.status());
    }
    trace::record("waiting for a micro-batch", idle_since, Clock::now(), -1, m->src);
    Status s = advance(m->payload);
    idle_since = Clock::now();
    if (!s.ok()) {
      if (s.code() == Code::kUnavailable || s.code() == Code::kDeadlineExceeded) return record(s);
      // A bad micro-batch fails that batch only: tell the coordinator.
      wire::Result r;
      r.set_error("rank " + std::to_string(rank_) + ": " + s.to_string());
      if (Status sent = wire::send(*t_, 0, wire::kResult, r, Clock::now() + options_.peer_timeout); !sent.ok())
        return record(sent);
    }
  }
}

void Worker::expert_loop() {
  trace::set_thread(rank_, "experts");
  while (!stopping_) {
    auto m = t_->recv(comm::kAnySource, wire::kExpertRequest, Clock::now() + kPoll);
    if (!m.ok()) {
      if (is_poll_timeout(m.status())) continue;
      return record(m.status());
    }
    if (Status s = serve_expert_request(*m); !s.ok()) return record(s);
  }
}

Status Worker::advance(const std::vector<std::byte>& payload) {
  SHOAL_ASSIGN_OR_RETURN(wire::MicroBatch mb, wire::parse<wire::MicroBatch>(*t_, comm::Message{-1, 0, payload}));
  const int64_t dim = config_.dim, L = config_.n_layers;
  const int64_t capacity = cache_ ? cache_->capacity() : options_.max_seq_len;
  SHOAL_ASSIGN_OR_RETURN(Batch b, to_batch(mb, config_, options_.n_slots, capacity, options_.lora.size()));
  const int64_t n = b.n_tokens();
  std::vector<float> x;
  int64_t next = mb.next_layer();
  if (next < 0) {
    if (!embed_) return internal_error("micro-batch " + std::to_string(mb.id()) + " came to unembedded");
    x.resize(static_cast<size_t>(n * dim));
    trace::Span span("embed", int64_t(mb.id()));
    kernels::embedding(x.data(), b.tokens.data(), *embed_, n, lc_.kernels);
    next = 0;
  } else if (next > L || !wire::decode_rows(mb.hidden(), size_t(n * dim), x, options_.wire_dtype)) {
    return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": layer " + std::to_string(next) +
                            " or hidden size " + std::to_string(mb.hidden().size()) + " B is wrong");
  }
  if (next < L && plan_.attn[size_t(next)] == rank_) {
    if (!cache_) return internal_error("micro-batch " + std::to_string(mb.id()) + " came to a rank without a KV cache");
    SHOAL_RETURN_IF_ERROR(cache_->prepare(b));  // once per visit: the edits are the same at every layer
  }
  while (next < L && plan_.attn[size_t(next)] == rank_) {
    trace::Span span("layer", int64_t(mb.id()), -1, int(next));
    SHOAL_RETURN_IF_ERROR(layer_forward(x.data(), b, next, mb.id()));
    ++next;
  }
  const std::vector<int64_t> rows(mb.logit_rows().begin(), mb.logit_rows().end());
  if (next == L && plan_.head == rank_) return head(x.data(), b, rows, mb);
  const int dst = next < L ? plan_.attn[size_t(next)] : plan_.head;
  trace::Span span("send", int64_t(mb.id()), dst);
  mb.set_next_layer(int32_t(next));
  mb.set_hidden(wire::encode_rows(x.data(), x.size(), options_.wire_dtype));
  return send(dst, wire::kHidden, mb, n);
}

Status Worker::layer_forward(float* x, const Batch& b, int64_t layer, uint64_t batch_id) {
  const LayerWeights& l = layers_.at(layer);
  for (const SlotCopy& c : b.copies) cache_->copy(cache_index_.at(layer), c.from, c.to, c.positions);
  std::vector<SeqKv> kv;
  for (const SeqRange& s : b.seqs) kv.push_back(cache_->view(cache_index_.at(layer), s.slot));
  return block_forward(x, b, l, kv, lc_,
                       [&](float* routed, const float* h, RowAdapters adapters, const std::vector<int32_t>& idx,
                           const std::vector<float>& weight, int64_t n) {
                         return routed_experts(routed, h, adapters, idx, weight, n, layer, batch_id);
                       });
}

// The gate chose idx and weight [n, k]. Rows go to the owners of their experts (each row once per
// owner, with its experts there in ascending id and their weights); each owner answers one partial
// sum per maximal combine node that holds some of the row's experts, this rank computes its own
// the same way meanwhile, and the partials of each token are added up the combine tree
// (model/expert_combine.h): the same bits as one process, whatever the placement.
Status Worker::routed_experts(float* routed, const float* h, RowAdapters adapters, const std::vector<int32_t>& idx,
                              const std::vector<float>& weight, int64_t n, int64_t layer, uint64_t batch_id) {
  const int64_t k = config_.n_activated_experts, dim = config_.dim;
  const std::vector<int>& owner = plan_.experts[size_t(layer)];
  const auto& nodes = combine_nodes_.at(layer);
  // Each token's experts in ascending id with their weights, grouped by owner.
  std::vector<std::map<int, std::vector<std::pair<int32_t, float>>>> by_owner(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = idx[size_t(t * k + j)];
      by_owner[size_t(t)][owner[size_t(e)]].push_back({e, weight[size_t(t * k + j)]});
    }
  std::map<int, wire::ExpertRequest> requests;
  std::map<int, std::vector<int64_t>> request_rows;  // owner -> tokens, in request order
  std::vector<int32_t> local_rows, local_experts;
  for (int64_t t = 0; t < n; ++t)
    for (auto& [o, list] : by_owner[size_t(t)]) {
      std::sort(list.begin(), list.end());
      if (o == rank_) {
        for (const auto& [e, w] : list) local_rows.push_back(int32_t(t)), local_experts.push_back(e);
        continue;
      }
      wire::ExpertRequest& r = requests[o];
      for (const auto& [e, w] : list) r.add_experts(e), r.add_weights(w);
      r.mutable_x()->append(wire::encode_rows(h + t * dim, size_t(dim), options_.wire_dtype));
      r.add_expert_count(int32_t(list.size()));
      if (!adapters.empty()) r.add_row_adapter(adapters[size_t(t)]);
      r.set_n_rows(r.n_rows() + 1);
      request_rows[o].push_back(t);
    }
  const auto deadline = Clock::now() + options_.peer_timeout;
  for (auto& [o, r] : requests) {
    r.set_batch_id(batch_id);
    r.set_layer(int32_t(layer));
    SHOAL_RETURN_IF_ERROR(send(o, wire::kExpertRequest, r, 0));
  }
  // Terms of each token: (node, partial) from this rank and from every owner.
  std::vector<std::vector<CombineTerm>> terms(static_cast<size_t>(n));
  std::vector<float> local_partials;
  if (!local_rows.empty()) {
    std::vector<float> y(local_rows.size() * size_t(dim));
    trace::Span span("experts here", int64_t(batch_id), -1, int(layer));
    run_expert_pairs(y.data(), h, adapters, local_rows, local_experts, experts_.at(layer), lc_);
    local_partials.resize(y.size());  // at most one partial per expert
    std::vector<std::pair<int64_t, CombineNode>> made;  // token, node of each partial
    for (size_t p = 0; p < local_rows.size();) {
      const int64_t t = local_rows[p];
      const auto& list = by_owner[size_t(t)].at(rank_);  // this token's local experts, ascending
      std::vector<int32_t> ids;
      std::vector<const float*> outputs;
      std::vector<float> weights;
      for (size_t j = 0; j < list.size(); ++j, ++p) {
        ids.push_back(list[j].first);
        outputs.push_back(y.data() + p * size_t(dim));
        weights.push_back(list[j].second);
      }
      for (const CombineNode& node :
           weighted_partials(local_partials.data() + int64_t(made.size()) * dim, nodes.at(rank_), ids, outputs, weights, dim))
        made.push_back({t, node});
    }
    for (size_t i = 0; i < made.size(); ++i)
      terms[size_t(made[i].first)].push_back({made[i].second, local_partials.data() + int64_t(i) * dim});
  }
  std::map<int, std::vector<float>> replies;
  for (auto& [o, rows] : request_rows) {
    const auto waiting = Clock::now();
    SHOAL_ASSIGN_OR_RETURN(wire::ExpertReply reply, wire::recv<wire::ExpertReply>(*t_, o, wire::kExpertReply, deadline));
    trace::record("waiting for experts", waiting, Clock::now(), int64_t(batch_id), o, int(layer));
    if (!reply.error().empty()) return internal_error(t_->peer_name(o) + ": " + reply.error());
    // The partials the owner must have sent: per row, its maximal nodes holding the row's experts.
    std::vector<std::pair<int64_t, CombineNode>> want;
    for (int64_t t : rows)
      for (const CombineNode& node : nodes.at(o))
        if (std::any_of(by_owner[size_t(t)].at(o).begin(), by_owner[size_t(t)].at(o).end(),
                        [&](const auto& ew) { return node.contains(ew.first); }))
          want.push_back({t, node});
    std::vector<float>& y = replies[o];
    if (reply.batch_id() != batch_id || reply.layer() != layer ||
        !wire::decode_rows(reply.y(), want.size() * size_t(dim), y, options_.wire_dtype))
      return internal_error(t_->peer_name(o) + " answered expert request (batch " + std::to_string(batch_id) +
                            ", layer " + std::to_string(layer) + ") with a reply that does not match it");
    for (size_t i = 0; i < want.size(); ++i)
      terms[size_t(want[i].first)].push_back({want[i].second, y.data() + i * size_t(dim)});
  }
  const CombineNode root{0, combine_width(config_.n_routed_experts)};
  for (int64_t t = 0; t < n; ++t) {
    std::vector<CombineTerm>& tt = terms[size_t(t)];
    std::sort(tt.begin(), tt.end(), [](const CombineTerm& a, const CombineTerm& b) { return a.node.lo < b.node.lo; });
    combine_sum(routed + t * dim, root, tt, dim);
  }
  return {};
}

// An owner's side: run the requested experts on their rows and answer, per row, one partial sum
// per maximal combine node of this rank that holds some of the row's experts.
Status Worker::serve_expert_request(const comm::Message& m) {
  SHOAL_ASSIGN_OR_RETURN(wire::ExpertRequest r, wire::parse<wire::ExpertRequest>(*t_, m));
  trace::Span span("serving experts", int64_t(r.batch_id()), m.src, r.layer());
  const int64_t dim = config_.dim;
  wire::ExpertReply reply;
  reply.set_batch_id(r.batch_id());
  reply.set_layer(r.layer());
  std::vector<float> x;
  std::vector<int32_t> rows;
  auto it = experts_.find(r.layer());
  auto nodes = combine_nodes_.find(r.layer());
  for (int i = 0; i < r.expert_count_size(); ++i)  // rows[p]: the row of pair p
    rows.insert(rows.end(), size_t(std::clamp(r.expert_count(i), 0, int(config_.n_activated_experts))), i);
  const int64_t total = int64_t(rows.size());
  const std::vector<int32_t> experts(r.experts().begin(), r.experts().end());
  const std::vector<int32_t> adapters(r.row_adapter().begin(), r.row_adapter().end());
  bool ok = it != experts_.end() && nodes != combine_nodes_.end() && nodes->second.count(rank_) &&
            r.n_rows() == r.expert_count_size() && total == int64_t(experts.size()) &&
            (adapters.empty() || int64_t(adapters.size()) == r.n_rows()) &&
            std::all_of(adapters.begin(), adapters.end(), [&](int32_t a) { return a >= 0 && size_t(a) <= options_.lora.size(); }) &&
            r.weights_size() == r.experts_size() &&
            wire::decode_rows(r.x(), size_t(r.n_rows()) * size_t(dim), x, options_.wire_dtype);
  for (size_t p = 0; ok && p < experts.size(); ++p) {
    const int32_t e = experts[p];
    ok = e >= 0 && size_t(e) < it->second.size() && it->second[size_t(e)].has_value() &&
         (p == 0 || rows[p] != rows[p - 1] || experts[p - 1] < e);  // ascending within a row
  }
  if (!ok) {
    reply.set_error("rank " + std::to_string(rank_) + " got an expert request for layer " + std::to_string(r.layer()) +
                    " that it cannot serve (experts it does not own, adapters it does not have, or sizes that do not "
                    "match)");
    return send(m.src, wire::kExpertReply, reply, 0);
  }
  std::vector<float> y(experts.size() * size_t(dim)), partials(experts.size() * size_t(dim));
  run_expert_pairs(y.data(), x.data(), adapters, rows, experts, it->second, lc_);
  const std::vector<float> weights(r.weights().begin(), r.weights().end());
  int64_t used = 0;
  for (size_t p = 0; p < experts.size();) {
    size_t q = p;
    while (q < experts.size() && rows[q] == rows[p]) ++q;
    std::vector<const float*> outputs;
    for (size_t j = p; j < q; ++j) outputs.push_back(y.data() + j * size_t(dim));
    used += int64_t(weighted_partials(partials.data() + used * dim, nodes->second.at(rank_),
                                      std::span(experts).subspan(p, q - p), outputs,
                                      std::span(weights).subspan(p, q - p), dim)
                        .size());
    p = q;
  }
  reply.set_y(wire::encode_rows(partials.data(), size_t(used * dim), options_.wire_dtype));
  return send(m.src, wire::kExpertReply, reply, 0);
}

Status Worker::head(const float* x, const Batch& b, const std::vector<int64_t>& rows, const wire::MicroBatch& mb) {
  const int64_t dim = config_.dim, V = config_.vocab_size, m = int64_t(rows.size());
  const auto started = Clock::now();  // the head's span ends before the Result goes out
  std::vector<RowSampler> samplers;
  if (mb.sampling_size() != 0 && mb.sampling_size() != m)
    return invalid_argument("micro-batch " + std::to_string(mb.id()) + " has " + std::to_string(mb.sampling_size()) +
                            " samplers for " + std::to_string(m) + " logit rows");
  for (const wire::RowSampling& w : mb.sampling()) {
    auto s = from_wire(w, V);
    if (!s.ok()) return invalid_argument("micro-batch " + std::to_string(mb.id()) + ": " + s.status().message());
    samplers.push_back(std::move(*s));
  }
  std::vector<float> h(static_cast<size_t>(m * dim)), logits(static_cast<size_t>(m * V));
  for (int64_t r = 0; r < m; ++r) std::copy_n(x + rows[size_t(r)] * dim, dim, h.data() + r * dim);
  if (m > 0) {  // a prefill chunk may choose no token
    kernels::rms_norm(h.data(), h.data(), head_->norm, m, float(config_.rms_norm_eps), lc_.kernels);
    kernels::linear(logits.data(), h.data(), head_->lm_head, m, lc_.kernels);
  }
  wire::Result result;
  result.set_id(mb.id());
  const std::vector<SampleResult> picks = choose_tokens(logits.data(), m, V, samplers);
  for (const SampleResult& p : picks) result.add_ids(p.id);
  logprobs_to_wire(picks, result);
  if (mb.want_logits()) result.set_logits(wire::float_bytes(logits.data(), logits.size()));
  trace::record("head", started, Clock::now(), int64_t(mb.id()));
  if (mb.more_steps() != 0) {  // a decode chain: the next step first, straight to the embedding rank
    SHOAL_ASSIGN_OR_RETURN(std::optional<wire::MicroBatch> next, next_chain_step(mb, b, rows, picks));
    if (next) {
      trace::Span span("send", int64_t(next->id()), plan_.embed);
      SHOAL_RETURN_IF_ERROR(send(plan_.embed, wire::kHidden, *next, next->tokens_size(), /*chain_step=*/true));
      result.set_continued(true);
    }
  }
  return send(0, wire::kResult, result, m);
}

StatusOr<std::optional<wire::MicroBatch>> Worker::next_chain_step(const wire::MicroBatch& mb, const Batch& b,
                                                                  const std::vector<int64_t>& rows,
                                                                  const std::vector<SampleResult>& picks) const {
  const std::string what = "micro-batch " + std::to_string(mb.id()) + ": a decode chain ";
  if (mb.more_steps() < 0) return invalid_argument(what + "of " + std::to_string(mb.more_steps()) + " more steps");
  if (rows.size() != b.seqs.size() || mb.sampling_size() != 0)
    return invalid_argument(what + "needs one greedy row per sequence");
  wire::MicroBatch next;
  next.set_id(mb.id() + 1);
  next.set_next_layer(-1);
  next.set_want_logits(mb.want_logits());
  next.set_more_steps(mb.more_steps() - 1);
  *next.mutable_stop_ids() = mb.stop_ids();
  const auto& stops = mb.stop_ids();
  for (size_t i = 0; i < b.seqs.size(); ++i) {
    const SeqRange& s = b.seqs[i];
    if (rows[i] != s.begin + s.count - 1) return invalid_argument(what + "row is not its sequence's last token");
    const int32_t token = picks[i].id;
    if (std::find(stops.begin(), stops.end(), token) != stops.end()) continue;
    next.add_logit_rows(next.tokens_size());
    next.add_tokens(token);
    next.add_positions(s.start_pos + int32_t(s.count));
    next.add_seq_count(1);
    next.add_seq_slot(s.slot);
    if (mb.seq_adapter_size() != 0) next.add_seq_adapter(mb.seq_adapter(int(i)));
    if (mb.seq_attn_size() != 0) next.add_seq_attn(mb.seq_attn(int(i)));
  }
  if (next.tokens_size() == 0) return std::optional<wire::MicroBatch>();
  return std::optional<wire::MicroBatch>(std::move(next));
}

}  // namespace shoal
