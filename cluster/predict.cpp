// The decode model of docs/plan.md ("Predicted tokens/s"): decode streams every weight it
// uses once per step from the memory that holds it, at the device's bandwidth times the
// kernels' efficiency; routed experts are used with probability 1 - (1 - k/E)^b by a step of b
// tokens (uniform routing), and a layer whose experts live on several ranks waits for the
// slowest of them under routings drawn that way; the KV cache (MLA's latent, GQA's keys and values) is read in full at
// the end of the context; each message costs the link's latency plus its bytes over the link's
// speed. A dense model (Qwen2, Llama) has no expert term: every layer is read in full.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>

#include "cluster/fit.h"
#include "model/expert_combine.h"

namespace shoal::cluster {
namespace {

constexpr double kHeaderBytes = 12;  // token id, position and framing per row (docs/performance.md)
constexpr double kResultBytes = 16;  // the head's token id back to rank 0
// The fraction of the float32 FMA peak shoal's CPU kernels reach once a matrix serves several
// tokens, where the spec gives cpu_gflops but not the measured cpu_linear_gflops: bench_gemm
// 0.49-0.55 (prefill), bench_linear 0.49-0.66 at 8-32 tokens on the AVX-512 machine
// (docs/performance.md).
constexpr double kCpuComputeEfficiency = 0.5;

}  // namespace

double cpu_compute_gflops(const RankSlot& slot, double tokens) {
  const auto& curve = slot.cpu_linear_gflops;
  if (curve.empty()) return slot.cpu_gflops * kCpuComputeEfficiency;
  const auto hi = curve.lower_bound(tokens);
  if (hi == curve.begin()) return hi->second;
  if (hi == curve.end()) return std::prev(hi)->second;
  const auto lo = std::prev(hi);
  const double f = std::log2(tokens / lo->first) / std::log2(hi->first / lo->first);
  return lo->second + f * (hi->second - lo->second);
}

namespace {

struct Model {
  const ModelConfig& c;
  const ClusterSpec& s;
  const FitResult& r;
  const UnitBytes& bytes;
  double hop_bytes, kv_read;  // per token; per layer and sequence
  double attention_flops;     // per layer and token, at the end of the context

  const RankSlot& slot(int rank) const { return r.ranks[size_t(rank)].slot; }
  static double rate(double gbs, double eff) { return gbs * eff * 1e9; }
  double bytes_per_param;  // the model's stored bytes over its parameters
  double device_rate(int rank) const { return rate(slot(rank).bandwidth_gbs, slot(rank).efficiency); }
  double host_rate(int rank) const { return rate(slot(rank).host_bandwidth_gbs, slot(rank).host_efficiency); }

  // Seconds for rank q's kernels to apply `n` weight bytes (from its device, or from host memory)
  // to `uses` token rows in all (a matrix that serves 8 tokens of a step: n bytes, 8n uses): the
  // bytes streamed, or, on a CPU whose compute the spec gives, the multiply-adds if slower.
  double apply(int q, double n, double uses, bool host = false) const {
    const double streaming = n > 0 ? n / (host ? host_rate(q) : device_rate(q)) : 0;
    const RankSlot& sq = slot(q);
    if (n <= 0 || (sq.gpu >= 0 && !host)) return streaming;
    return std::max(streaming, cpu_seconds(sq, 2 * uses / bytes_per_param, uses / n));
  }

  // Seconds for rank a to read its cache for b tokens in one layer: the cache's bytes, or on a CPU
  // whose compute the spec gives, the attention's multiply-adds if slower (each sequence attends
  // over its own cache, so they run at the rate of one token).
  double attend(int a, double b) const {
    const double streaming = b * kv_read / device_rate(a);
    const RankSlot& sa = slot(a);
    return sa.gpu >= 0 ? streaming : std::max(streaming, cpu_seconds(sa, b * attention_flops, 1));
  }

  // Seconds of `flops` on a CPU rank at its rate for `tokens` tokens a weight; 0 where the spec
  // gives no compute rate.
  static double cpu_seconds(const RankSlot& sq, double flops, double tokens) {
    const double gflops = cpu_compute_gflops(sq, tokens);
    return gflops > 0 ? flops / (gflops * 1e9) : 0;
  }

  // Seconds for one message of `n` bytes from rank a to rank b.
  double message(int a, int b, double n) const {
    const NodeSpec& na = s.nodes[slot(a).node];
    const NodeSpec& nb = s.nodes[slot(b).node];
    if (slot(a).node == slot(b).node) return na.local_latency_us * 1e-6 + n * 8 / (na.local_gbps * 1e9);
    return std::max(na.latency_us, nb.latency_us) * 1e-6 + n * 8 / (std::min(na.link_gbps, nb.link_gbps) * 1e9);
  }
};

// The chance that a token's k experts include one of the n a rank holds. Under group-limited
// routing the rank holds whole groups and a token picks topk_group of the n_group groups.
double reach_probability(const ModelConfig& c, double n) {
  const double E = double(c.n_routed_experts), k = double(c.n_activated_experts);
  const bool grouped = c.n_expert_groups > 1 && c.topk_method != TopkMethod::kGreedy;
  if (!grouped) return 1 - std::pow(1 - n / E, k);
  const int64_t G = c.n_expert_groups, pick = std::min(c.n_limited_groups, G);
  const int64_t held = std::llround(n * double(G) / E);
  double miss = 1;  // C(G - held, pick) / C(G, pick)
  for (int64_t t = 0; t < pick; ++t) miss *= double(G - held - t) / double(G - t);
  return 1 - std::max(0.0, miss);
}

int64_t owners_count(const std::vector<int>& owners, int q) { return std::count(owners.begin(), owners.end(), q); }

// How long a layer waits for its routed experts in a step of b tokens: the slowest expert rank,
// its own experts' bytes plus, for another rank, the rows there and the partial sums back. The
// routing is drawn as the model states it (uniform: under group-limited routing topk_group of the
// groups, then k of their experts), kRoutingDraws times with a fixed seed, and the wait is the
// mean over draws of the maximum over ranks, not the maximum of their means: a token's experts
// seldom split evenly (on dist-2048 over two ranks, 6 experts split 3/3 in about a third of
// tokens, and the layer waits for the larger share).
struct ExpertWait {
  double seconds = 0, link_s = 0;
};

ExpertWait expert_wait(const Model& m, int64_t layer, int a, double b, const std::map<int, std::vector<CombineNode>>& nodes) {
  const ModelConfig& c = m.c;
  const auto& owners = m.r.plan.experts[size_t(layer)];
  const auto& bytes = m.bytes.experts[size_t(layer)];
  const auto& on_host = m.r.expert_on_host[size_t(layer)];
  const int64_t E = int64_t(owners.size()), k = std::min<int64_t>(c.n_activated_experts, E);
  const bool grouped = c.n_expert_groups > 1 && c.topk_method != TopkMethod::kGreedy && E % c.n_expert_groups == 0;
  const int64_t G = grouped ? c.n_expert_groups : 1, per_group = E / G;
  const int64_t pick = grouped ? std::min(c.n_limited_groups, G) : 1;
  const int64_t tokens = std::max<int64_t>(1, std::llround(b));
  const int draws = int(std::clamp<int64_t>(8192 / tokens, 32, 512));
  std::mt19937_64 rng(0x5eed0000u + uint64_t(layer));
  std::vector<int32_t> groups(static_cast<size_t>(G)), candidates;
  std::vector<char> used(static_cast<size_t>(E));
  std::map<int, double> rows, partials, uses;
  ExpertWait sum;
  for (int d = 0; d < draws; ++d) {
    std::fill(used.begin(), used.end(), 0);
    rows.clear();
    partials.clear();
    uses.clear();
    for (int64_t t = 0; t < tokens; ++t) {
      std::iota(groups.begin(), groups.end(), 0);
      for (int64_t g = 0; g < pick; ++g) std::swap(groups[size_t(g)], groups[size_t(g + int64_t(rng() % uint64_t(G - g)))]);
      candidates.clear();
      for (int64_t g = 0; g < pick; ++g)
        for (int64_t e = 0; e < per_group; ++e) candidates.push_back(int32_t(groups[size_t(g)] * per_group + e));
      const int64_t n = int64_t(candidates.size()), take = std::min(k, n);
      for (int64_t j = 0; j < take; ++j) std::swap(candidates[size_t(j)], candidates[size_t(j + int64_t(rng() % uint64_t(n - j)))]);
      for (const auto& [q, qn] : nodes) {
        if (q == a) continue;
        bool reached = false;
        for (const CombineNode& node : qn) {
          bool in = false;
          for (int64_t j = 0; j < take; ++j) in = in || node.contains(candidates[size_t(j)]);
          partials[q] += in ? 1 : 0;
          reached = reached || in;
        }
        rows[q] += reached ? 1 : 0;
      }
      for (int64_t j = 0; j < take; ++j) {
        const int32_t e = candidates[size_t(j)];
        used[size_t(e)] = 1;
        uses[owners[size_t(e)]] += double(bytes[size_t(e)]);  // this token's rows through expert e
      }
    }
    double worst = 0, worst_link = 0;
    for (const auto& [q, qn] : nodes) {
      double d_bytes = 0, h_bytes = 0;
      for (int64_t e = 0; e < E; ++e)
        if (used[size_t(e)] && owners[size_t(e)] == q) (on_host[size_t(e)] ? h_bytes : d_bytes) += double(bytes[size_t(e)]);
      const double all = d_bytes + h_bytes, u = uses[q];  // the uses split as the bytes do
      const double t = all <= 0 ? 0 : m.apply(q, d_bytes, u * d_bytes / all) + m.apply(q, h_bytes, u * h_bytes / all, true);
      const double link = q == a || rows[q] == 0 ? 0
                          : m.message(a, q, rows[q] * m.hop_bytes) + m.message(q, a, partials[q] * m.hop_bytes);
      if (t + link > worst) {
        worst = t + link;
        worst_link = link;
      }
    }
    sum.seconds += worst;
    sum.link_s += worst_link;
  }
  return {sum.seconds / draws, sum.link_s / draws};
}

// Where one step of b tokens spends its time in layer i, and what each memory streams.
struct LayerCost {
  double seconds = 0, weight_s = 0, kv_s = 0, link_s = 0, expert_bytes = 0;
};

// What a step asks of each shared resource. Memories: a GPU (node, gpu) or a node's host memory
// (node, -1), seconds of streaming each. Served: each rank's seconds of computing routed experts
// for the tokens of layers another rank runs (expert scatter), which its cores do beside their
// own stage's work.
using Memories = std::map<std::pair<size_t, int>, double>;
struct Load {
  Memories mem;
  std::map<int, double> served;
};

LayerCost layer_cost(const Model& m, int64_t i, double b, Load& load) {
  Memories& mem = load.mem;
  const ModelConfig& c = m.c;
  const int a = m.r.plan.attn[size_t(i)];
  const RankSlot& sa = m.slot(a);
  LayerCost out;
  const double attn = double(m.bytes.attn[size_t(i)]);
  out.weight_s = m.apply(a, attn, b * attn);
  out.kv_s = m.attend(a, b);
  mem[{sa.node, sa.gpu}] += (attn + b * m.kv_read) / m.device_rate(a);
  const auto& owners = m.r.plan.experts[size_t(i)];
  if (!owners.empty()) {
    const double E = double(c.n_routed_experts), k = double(c.n_activated_experts);
    const double used = 1 - std::pow(1 - k / E, b);  // an expert's chance of serving a step of b tokens
    const std::map<int, std::vector<CombineNode>> nodes = maximal_nodes_by_owner(owners);
    std::map<int, double> dev, host, dev_uses, host_uses;  // expected bytes streamed; token rows through them
    for (size_t e = 0; e < owners.size(); ++e) {
      const double n = double(m.bytes.experts[size_t(i)][e]);
      const bool on_host = m.r.expert_on_host[size_t(i)][e];
      (on_host ? host : dev)[owners[e]] += n * used;
      (on_host ? host_uses : dev_uses)[owners[e]] += n * b * k / E;
    }
    for (const auto& [q, n] : nodes) {  // what each memory streams and each rank computes: expectations add up
      const RankSlot& sq = m.slot(q);
      mem[{sq.node, sq.gpu}] += dev[q] / m.device_rate(q);
      mem[{sq.node, -1}] += sq.gpu >= 0 ? host[q] / m.host_rate(q) : 0;
      if (q == a) continue;
      load.served[q] += m.apply(q, dev[q], dev_uses[q]) + m.apply(q, host[q], host_uses[q], true);
      // The token's row goes to q when one of its k experts is there; q answers one partial sum
      // per maximal combine node of its experts that the token reaches (model/expert_combine.h).
      double partials = 0;
      for (const CombineNode& node : n) partials += reach_probability(c, double(node.size));
      out.expert_bytes += (reach_probability(c, double(owners_count(owners, q))) + partials) * m.hop_bytes;
    }
    const ExpertWait w = expert_wait(m, i, a, b, nodes);
    out.weight_s += w.seconds - w.link_s;
    out.link_s = w.link_s;
  }
  out.seconds = out.weight_s + out.kv_s + out.link_s;
  return out;
}

}  // namespace

Prediction predict(const ModelConfig& c, const ClusterSpec& s, const FitResult& r, const UnitBytes& bytes) {
  Prediction p;
  const FitOptions& o = r.options;
  // Attention's multiply-adds per cached position: MLA's absorbed scores (latent and rope key) and
  // output (latent) per head; GQA's keys and values per head.
  const double attention_width = c.uses_mla() ? double(2 * c.kv_lora_rank + c.qk_rope_head_dim) : 2.0 * double(c.head_dim);
  const Model m{c, s, r, bytes, double(c.dim) * double(o.wire_value_bytes) + kHeaderBytes,
                double(o.context) * double(kv_token_bytes(c, 1, o.kv_dtype)),
                2 * double(o.context) * double(c.n_heads) * attention_width,
                r.params.total > 0 && r.weight_bytes > 0 ? double(r.weight_bytes) / double(r.params.total) : 2.0};
  p.hop_bytes_per_token = m.hop_bytes;
  const Plan& plan = r.plan;

  // The path of a token: embed rank, each layer's attention rank, head rank; stages are runs.
  std::vector<int> path = {plan.embed};
  for (int a : plan.attn) path.push_back(a);
  path.push_back(plan.head);
  std::vector<int> stage_of(path.size());
  std::vector<int> stage_rank = {path[0]};
  for (size_t j = 1; j < path.size(); ++j) {
    if (path[j] != path[j - 1]) {
      ++p.hops;
      stage_rank.push_back(path[j]);
    }
    stage_of[j] = int(stage_rank.size()) - 1;
  }
  p.pipeline_stages = int64_t(stage_rank.size());

  // One step of b tokens per stage: its own seconds, and what each memory streams.
  auto step = [&](double b, std::vector<double>& stage_s, Load& load, Prediction* detail) {
    Memories& mem = load.mem;
    stage_s.assign(stage_rank.size(), 0);
    const double embed_s = b * double(bytes.embed) / double(std::max<int64_t>(1, c.vocab_size)) / m.device_rate(plan.embed);
    const double head_s = m.apply(plan.head, double(bytes.head), b * double(bytes.head));
    stage_s.front() += embed_s;
    stage_s.back() += head_s;
    mem[{m.slot(plan.head).node, m.slot(plan.head).gpu}] += double(bytes.head) / m.device_rate(plan.head);
    if (detail) detail->weight_ms += (embed_s + head_s) * 1e3;
    for (int64_t i = 0; i < c.n_layers; ++i) {
      const LayerCost lc = layer_cost(m, i, b, load);
      stage_s[size_t(stage_of[size_t(i) + 1])] += lc.seconds;
      if (detail) {
        detail->weight_ms += lc.weight_s * 1e3;
        detail->kv_ms += lc.kv_s * 1e3;
        detail->link_ms += lc.link_s * 1e3;
        detail->expert_bytes_per_token += lc.expert_bytes;
      }
    }
    for (size_t k = 0; k + 1 < stage_rank.size(); ++k) {
      const double t = m.message(stage_rank[k], stage_rank[k + 1], b * m.hop_bytes);
      stage_s[k] += t;
      if (detail) detail->link_ms += t * 1e3;
    }
    const double result = m.message(plan.head, 0, b * kResultBytes);
    stage_s.back() += result;
    if (detail) detail->link_ms += result * 1e3;
  };

  std::vector<double> stage_s;
  Load load;
  step(1, stage_s, load, &p);
  double one = 0;
  for (double t : stage_s) one += t;
  p.one_sequence_tokens_per_s = one > 0 ? 1 / one : 0;

  // Every stage busy: `stages` micro-batches of b sequences; a cycle lasts as long as the slowest
  // stage, the busiest memory (ranks sharing a node's host memory stream one after another) or
  // the busiest rank: its stages' time and the experts it runs for the other stages' tokens, one
  // after the other (a rank serving experts while it waits for another's is not counted as
  // overlap: against that, its requests queue behind the other rank's own work, which the
  // expert wait above does not count either).
  const int64_t P = p.pipeline_stages;
  const int64_t b = (std::max(o.concurrency, P) + P - 1) / P;
  p.pipeline_sequences = b * P;
  load = Load{};
  step(double(b), stage_s, load, nullptr);
  double cycle = *std::max_element(stage_s.begin(), stage_s.end());
  for (const auto& [where, seconds] : load.mem) cycle = std::max(cycle, seconds);
  std::map<int, double> busy = load.served;
  for (size_t k = 0; k < stage_rank.size(); ++k) busy[stage_rank[k]] += stage_s[k];
  for (const auto& [rank, seconds] : busy) cycle = std::max(cycle, seconds);
  p.full_pipeline_tokens_per_s = cycle > 0 ? double(b) / cycle : 0;
  return p;
}

}  // namespace shoal::cluster
