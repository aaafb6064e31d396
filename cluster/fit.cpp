#include "cluster/fit.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/check.h"
#include "model/tensor_names.h"

namespace shoal::cluster {
namespace {

constexpr int64_t kGiB = int64_t(1) << 30;
constexpr int64_t kGpuOverhead = kGiB;      // CUDA context, library workspaces, allocator slack
// The process, its threads and message buffers beside its weights, KV and activations: measured
// 25-65 MB per rank (`shoal serve` alone and under mpirun -np 2; docs/performance.md, "The KV
// pool"), 32-39 MB for each rank of the real-size 671B layer and 71 MB for a coordinator that
// hosts nothing (bench/real-layer). A prediction, not a reserve: `ram_gib` is what shoal may use.
constexpr int64_t kCpuOverhead = int64_t(64) << 20;
constexpr int64_t kPlanShareScale = 1 << 20;  // budgets given to default_plan as shares (see attempt)

int64_t sum_bytes(const UnitBytes& b) {
  int64_t n = b.embed + b.head;
  for (size_t i = 0; i < b.attn.size(); ++i) {
    n += b.attn[i];
    for (int64_t e : b.experts[i]) n += e;
  }
  return n;
}

int64_t tensor_bytes(const TensorSpec& t, WeightFormat f, int64_t fp8_block) {
  const int64_t n = t.numel();
  const bool bias = t.name.ends_with("e_score_correction_bias");
  switch (f) {
    case WeightFormat::kFp8:
      if (t.quantized) {
        const int64_t b = fp8_block > 0 ? fp8_block : 128;
        return n + ((t.shape[0] + b - 1) / b) * ((t.shape[1] + b - 1) / b) * 4;
      }
      return n * (bias ? 4 : 2);
    case WeightFormat::kBf16: return n * (bias ? 4 : 2);
    case WeightFormat::kQ8_0:
    case WeightFormat::kQ4K: {
      const bool router = t.name.ends_with("mlp.gate.weight");
      if (t.shape.size() != 2 || router) return n * 4;  // F32, as GGUF keeps vectors and the router
      const int64_t cols = t.shape[1];
      if (f == WeightFormat::kQ4K && cols % 256 == 0) return n / 256 * 144;
      if (cols % 32 == 0) return n / 32 * 34;  // q8_0 (also q4_k's fallback for short rows)
      return n * 2;                            // rows no block divides stay 16-bit
    }
    case WeightFormat::kGguf: return 0;  // per tensor: the file's or the recipe's types (stored)
  }
  return 0;
}

// Float32 activations a token of a prefill step keeps at once (docs/plan.md, "Workspace"): the
// residual stream and its norms, the attention's projections, and the MLP's gate and up.
double activation_floats_per_token(const ModelConfig& c) {
  const int64_t mlp = std::max(c.inter_dim, c.moe_inter_dim * (c.n_shared_experts + c.n_activated_experts));
  if (!c.uses_mla())  // GQA: q, k, v and the heads' output
    return double(4 * c.dim + 2 * c.n_heads * c.head_dim + 2 * c.n_kv_heads * c.head_dim + 2 * mlp);
  return double(4 * c.dim + c.n_heads * c.qk_head_dim() + c.q_lora_rank + c.kv_lora_rank + c.qk_rope_head_dim +
                c.n_heads * (c.v_head_dim + c.kv_lora_rank) + 2 * mlp);
}

// A prefill step's activations and `concurrency` rows of float32 logits.
int64_t activation_bytes(const ModelConfig& c, int64_t prefill_chunk, int64_t concurrency) {
  return int64_t(activation_floats_per_token(c) * 4.0 * double(std::max(prefill_chunk, concurrency)) +
                 double(c.vocab_size) * 4.0 * double(concurrency));
}

bool has_experts(const ModelConfig& c) {
  for (int64_t i = 0; i < c.n_layers; ++i)
    if (c.is_moe_layer(i)) return true;
  return false;
}

struct Attempt {
  Plan plan;
  std::vector<RankFit> ranks;
  std::vector<std::vector<bool>> on_host;
  bool fits = false;
  std::vector<std::string> reasons;
};

struct Context {
  const ModelConfig& c;
  const UnitBytes& bytes;
  const std::vector<RankSlot>& slots;
  const std::vector<int64_t>& workspace;
  int64_t kv_layer;
  bool expert_scatter;
};

// The expert placement units of a layer (groups under group-limited routing, else experts).
std::vector<int64_t> unit_starts(const ModelConfig& c) {
  const int64_t E = c.n_routed_experts;
  if (E == 0) return {0};  // a dense model: no units
  const bool grouped = c.n_expert_groups > 1 && c.topk_method != TopkMethod::kGreedy;
  const int64_t n = grouped ? c.n_expert_groups : E;
  std::vector<int64_t> first(size_t(n) + 1);
  for (int64_t u = 0; u <= n; ++u) first[size_t(u)] = u * E / n;
  return first;
}

// Places the units over `ranks` (slot indices) with default_plan in proportion to `shares`,
// then fills each rank's device: embedding, head, attention blocks, KV and workspace first,
// then its routed experts unit by unit in layer order while they fit; with `host`, the rest go
// to host memory. Fits when every rank's device and host memory hold what they were given.
Attempt attempt(const Context& x, const std::vector<size_t>& ranks, const std::vector<long double>& shares, bool host) {
  Attempt a;
  const ModelConfig& c = x.c;
  PlannerOptions po;
  po.expert_scatter = x.expert_scatter;
  UnitBytes with_kv = x.bytes;
  for (auto& b : with_kv.attn) b += x.kv_layer;
  // default_plan splits in proportion to its budgets and refuses loads over them; scaled so
  // that the largest is far above all the bytes, they act as shares only, and the capacities
  // are checked below.
  long double max_share = 0;
  for (long double sh : shares) max_share = std::max(max_share, sh);
  // Every budget is then at least the bytes of the whole model (shares under 1/kPlanShareScale
  // of the largest are raised to that).
  const long double scale = (long double)(sum_bytes(with_kv) + 1) * kPlanShareScale / max_share;
  for (size_t k = 0; k < ranks.size(); ++k) {
    po.ranks.push_back(x.slots[ranks[k]].rank);
    const long double share = std::max(shares[k], max_share / kPlanShareScale);
    po.budget_bytes.push_back(std::max<int64_t>(1, int64_t(std::min(share * scale, 4e18L))));
  }
  auto planned = default_plan(c, with_kv, int(x.slots.size()), po);
  SHOAL_CHECK(planned.ok());
  a.plan = *planned;

  const std::vector<int64_t> first = unit_starts(c);
  a.on_host.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i) a.on_host[size_t(i)].assign(x.bytes.experts[size_t(i)].size(), false);
  a.fits = true;
  for (size_t si = 0; si < x.slots.size(); ++si) {
    const RankSlot& s = x.slots[si];
    RankFit r;
    r.slot = s;
    r.embed = a.plan.embed == s.rank;
    r.head = a.plan.head == s.rank;
    r.layers = a.plan.attn_layers(s.rank);
    const bool used = a.plan.hosts_anything(s.rank);
    r.weight_bytes = (r.embed ? x.bytes.embed : 0) + (r.head ? x.bytes.head : 0);
    for (int64_t i : r.layers) r.weight_bytes += x.bytes.attn[size_t(i)];
    r.kv_bytes = x.kv_layer * int64_t(r.layers.size());
    r.workspace_bytes = used ? x.workspace[si] : 0;
    int64_t room = s.capacity_bytes - r.weight_bytes - r.kv_bytes - r.workspace_bytes;
    const bool may_spill = host && s.gpu >= 0;
    for (int64_t i = 0; i < c.n_layers; ++i) {
      const auto& owners = a.plan.experts[size_t(i)];
      if (owners.empty()) continue;
      for (size_t u = 0; u + 1 < first.size(); ++u) {
        int64_t ub = 0, n = 0;
        for (int64_t e = first[u]; e < first[u + 1]; ++e)
          if (owners[size_t(e)] == s.rank) ub += x.bytes.experts[size_t(i)][size_t(e)], ++n;
        if (n == 0) continue;
        r.experts += n;
        if (!may_spill || ub <= room) {
          r.weight_bytes += ub;
          room -= ub;
          continue;
        }
        r.host_experts += n;
        r.host_weight_bytes += ub;
        int64_t lo = -1, hi = -1;
        for (int64_t e = first[u]; e < first[u + 1]; ++e)
          if (owners[size_t(e)] == s.rank) {
            a.on_host[size_t(i)][size_t(e)] = true;
            lo = lo < 0 ? e : lo;
            hi = e;
          }
        if (!r.host_ranges.empty() && r.host_ranges.back().layer == i && r.host_ranges.back().last + 1 == lo)
          r.host_ranges.back().last = hi;
        else
          r.host_ranges.push_back({i, lo, hi});
      }
    }
    r.total_bytes = r.weight_bytes + r.kv_bytes + r.workspace_bytes;
    const std::string who = "rank " + std::to_string(s.rank) + " (" + s.device + ")";
    if (r.total_bytes > s.capacity_bytes) {
      a.fits = false;
      a.reasons.push_back(who + " needs " + gb(r.total_bytes) + " of its " + gb(s.capacity_bytes) + " (weights " +
                          gb(r.weight_bytes) + ", KV cache " + gb(r.kv_bytes) + ", workspace " +
                          gb(r.workspace_bytes) + "), over by " + gb(r.total_bytes - s.capacity_bytes));
    }
    if (r.host_weight_bytes > s.host_capacity_bytes) {
      a.fits = false;
      a.reasons.push_back(who + " would put " + gb(r.host_weight_bytes) + " of experts in host memory, which has " +
                          gb(s.host_capacity_bytes) + " for it, over by " +
                          gb(r.host_weight_bytes - s.host_capacity_bytes));
    }
    a.ranks.push_back(std::move(r));
  }
  return a;
}

double efficiency_for(const ClusterSpec& s, bool gpu, WeightFormat f) {
  const auto it = s.efficiency.find(gpu ? "gpu" : "cpu");
  if (it != s.efficiency.end()) return it->second;
  if (gpu) return 0.7;
  // Whole-model decode on shoal's CPU kernels, `shoal bench` on dist-2048 (docs/performance.md):
  // BF16 0.77, FP8 0.61 of the read bandwidth; GGUF blocks assumed as BF16.
  return f == WeightFormat::kFp8 ? 0.61 : 0.77;
}

// The KV pools of the placed ranks and the cluster (FitResult's kv_* fields): what each rank
// with attention layers has left on its device after total_bytes, in whole blocks of its layers.
void kv_capacity(const ModelConfig& c, FitResult& res) {
  const DType d = res.options.kv_dtype;
  res.kv_bytes_per_token = kv_token_bytes(c, c.n_layers, d);
  for (RankFit& r : res.ranks) {
    if (r.layers.empty()) continue;
    const int64_t layers = int64_t(r.layers.size());
    const int64_t block = kv_block_bytes(c, layers, d);
    r.kv_bytes_per_token = kv_token_bytes(c, layers, d);
    r.kv_free_bytes = std::max<int64_t>(0, r.slot.capacity_bytes - r.total_bytes);
    r.kv_free_tokens = r.kv_free_bytes / block * kKvBlockTokens;
    r.kv_tokens = (r.kv_bytes + r.kv_free_bytes) / block * kKvBlockTokens;
    const bool first = res.kv_rank < 0;
    if (first || r.kv_tokens < res.kv_tokens) res.kv_tokens = r.kv_tokens, res.kv_rank = r.slot.rank;
    res.kv_free_tokens = first ? r.kv_free_tokens : std::min(res.kv_free_tokens, r.kv_free_tokens);
  }
  for (int64_t ctx : kv_serve_contexts(c)) res.kv_serves.push_back({ctx, kv_sequences(res.kv_tokens, ctx)});
}

// One rank's share of a node's compute rates (each point divided among `ranks`).
std::map<double, double> share_of(const std::map<double, double>& rates, double ranks) {
  std::map<double, double> out;
  for (const auto& [tokens, gflops] : rates) out[tokens] = gflops / ranks;
  return out;
}

}  // namespace

int64_t cpu_workspace_bytes(const ModelConfig& c, int64_t prefill_chunk, int64_t concurrency) {
  return activation_bytes(c, prefill_chunk, concurrency) + kCpuOverhead;
}

int64_t kv_sequences(int64_t tokens, int64_t context) {
  return context < 1 ? 0 : tokens / (kv_blocks_for(context) * kKvBlockTokens);
}

std::vector<int64_t> kv_serve_contexts(const ModelConfig& c) {
  const int64_t max = c.max_position_embeddings;
  std::vector<int64_t> out;
  for (int64_t ctx : {int64_t(4096), int64_t(32768), int64_t(131072)})
    if (max <= 0 || ctx <= max) out.push_back(ctx);
  if (max > 0 && std::find(out.begin(), out.end(), max) == out.end()) out.push_back(max);  // the largest: all are <= max
  return out;
}

// "12.34 GB", "5.67 MB", "8.90 KB" (decimal units, as shoal inspect prints them).
std::string gb(long double bytes) {
  char buf[32];
  const long double a = bytes < 0 ? -bytes : bytes;
  if (a >= 1e9L || a == 0) std::snprintf(buf, sizeof buf, "%.2Lf GB", bytes / 1e9L);
  else if (a >= 1e6L) std::snprintf(buf, sizeof buf, "%.2Lf MB", bytes / 1e6L);
  else std::snprintf(buf, sizeof buf, "%.2Lf KB", bytes / 1e3L);
  return buf;
}

StatusOr<WeightFormat> parse_weight_format(const std::string& name) {
  for (WeightFormat f : {WeightFormat::kFp8, WeightFormat::kBf16, WeightFormat::kQ8_0, WeightFormat::kQ4K})
    if (name == format_name(f)) return f;
  return invalid_argument("--weights '" + name + "' is not fp8, bf16, q8_0 or q4_k");
}

const char* format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::kFp8: return "fp8";
    case WeightFormat::kBf16: return "bf16";
    case WeightFormat::kQ8_0: return "q8_0";
    case WeightFormat::kQ4K: return "q4_k";
    case WeightFormat::kGguf: return "gguf";
  }
  return "?";
}

UnitBytes unit_bytes_in(const ModelConfig& c, WeightFormat f) {
  UnitBytes b;
  b.attn.assign(size_t(c.n_layers), 0);
  b.experts.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i)
    if (c.is_moe_layer(i)) b.experts[size_t(i)].assign(size_t(c.n_routed_experts), 0);
  for (const TensorSpec& t : model_tensors(c, /*with_mtp=*/false)) {
    const int64_t n = tensor_bytes(t, f, c.fp8_block);
    switch (t.unit) {
      case Unit::kEmbed: b.embed += n; break;
      case Unit::kHead: b.head += n; break;
      case Unit::kAttn: b.attn[size_t(t.layer)] += n; break;
      case Unit::kExpert: b.experts[size_t(t.layer)][size_t(t.expert)] += n; break;
      case Unit::kMtp: break;
    }
  }
  return b;
}

int64_t mtp_bytes_in(const ModelConfig& c, WeightFormat f) {
  int64_t n = 0;
  for (int64_t k = 0; k < c.n_mtp_layers; ++k)
    for (const TensorSpec& t : mtp_tensors(c, k)) n += tensor_bytes(t, f, c.fp8_block);
  return n;
}

StatusOr<std::vector<RankSlot>> rank_slots(const ClusterSpec& s, const FitOptions& o) {
  std::map<std::string, double> table = default_bandwidth_table();
  for (const auto& [k, v] : s.bandwidth_gbs) table[k] = v;
  auto lookup = [&](const std::string& kind, size_t node, const std::string& field) -> StatusOr<double> {
    auto it = table.find(kind);
    if (it == table.end())
      return invalid_argument("nodes[" + std::to_string(node) + "]." + field + " = '" + kind +
                              "' is not in the bandwidth table: add \"bandwidth_gbs\": {\"" + kind +
                              "\": GB/s} to the spec");
    return it->second;
  };
  std::vector<RankSlot> out;
  for (size_t ni = 0; ni < s.nodes.size(); ++ni) {
    const NodeSpec& n = s.nodes[ni];
    const int64_t ram = int64_t(std::llround(n.ram_gib * double(kGiB)));
    double ram_bw = n.ram_bandwidth_gbs;
    if (ram_bw <= 0) {
      SHOAL_ASSIGN_OR_RETURN(ram_bw, lookup(n.cpu_kind, ni, "cpu_kind"));
    }
    const double cpu_eff = efficiency_for(s, false, o.weights);
    for (size_t g = 0; g < n.gpus.size(); ++g) {
      RankSlot r;
      r.rank = int(out.size());
      r.node = ni;
      r.gpu = int(g);
      r.device = "gpu:" + std::to_string(g);
      r.capacity_bytes = int64_t(std::llround(n.gpus[g].gib * double(kGiB)));
      r.host_capacity_bytes = o.gpu_only ? 0 : std::max<int64_t>(0, ram / int64_t(n.gpus.size()) - kCpuOverhead);
      r.bandwidth_gbs = n.gpus[g].bandwidth_gbs;
      if (r.bandwidth_gbs <= 0) {
        SHOAL_ASSIGN_OR_RETURN(r.bandwidth_gbs, lookup(n.gpus[g].kind, ni, "gpu_kind"));
      }
      r.efficiency = efficiency_for(s, true, o.weights);
      r.host_bandwidth_gbs = ram_bw;
      r.host_efficiency = cpu_eff;
      r.cpu_gflops = n.cpu_gflops / double(n.gpus.size());
      r.cpu_linear_gflops = share_of(n.cpu_linear_gflops, double(n.gpus.size()));
      out.push_back(r);
    }
    if (!n.gpus.empty()) continue;
    for (int k = 0; k < n.cpu_ranks; ++k) {
      RankSlot r;
      r.rank = int(out.size());
      r.node = ni;
      r.device = n.cpu_ranks > 1 ? "cpu:" + std::to_string(k) : "cpu";
      r.capacity_bytes = ram / n.cpu_ranks;
      r.bandwidth_gbs = r.host_bandwidth_gbs = ram_bw;
      r.efficiency = r.host_efficiency = cpu_eff;
      r.cpu_gflops = n.cpu_gflops / double(n.cpu_ranks);
      r.cpu_linear_gflops = share_of(n.cpu_linear_gflops, double(n.cpu_ranks));
      out.push_back(r);
    }
  }
  return out;
}

StatusOr<FitResult> fit_plan(const ModelConfig& c, const ClusterSpec& s, const FitOptions& o, const UnitBytes* stored) {
  if (o.context < 1) return invalid_argument("--context " + std::to_string(o.context) + " is not positive");
  if (o.concurrency < 1) return invalid_argument("--concurrency " + std::to_string(o.concurrency) + " is not positive");
  if (s.nodes.empty()) return invalid_argument("the cluster spec has no nodes");
  if (c.n_layers < 1) return invalid_argument("the model has no layers");
  if (o.weights == WeightFormat::kGguf && !stored)
    return invalid_argument("gguf weights are sized from a GGUF file or a quant recipe (stored unit bytes)");
  if (o.weights == WeightFormat::kFp8 && !c.uses_mla())
    return invalid_argument("--weights fp8 is DeepSeek's release format (128x128 block scales); a " +
                            std::string(c.model_type == ModelType::kQwen2 ? "qwen2" : "llama") +
                            " model is planned in bf16, q8_0 or q4_k");
  SHOAL_ASSIGN_OR_RETURN(const std::vector<RankSlot> slots, rank_slots(s, o));
  if (slots.empty()) return invalid_argument("the cluster has no ranks (no GPUs and no CPU nodes)");

  FitResult res;
  res.weights = o.weights;
  res.options = o;
  res.has_experts = has_experts(c);
  res.mla = c.uses_mla();
  // Without routed experts there is nothing to scatter: the plan is the pipeline either way.
  if (o.expert_scatter && !res.has_experts) {
    res.options.expert_scatter = false;
    res.notes.push_back("--expert-scatter: the model has no routed experts (every layer is dense); planned as a "
                        "pipeline of layers");
  }
  res.params = count_params(c);
  const UnitBytes bytes = stored ? *stored : unit_bytes_in(c, o.weights);
  res.weight_bytes = sum_bytes(bytes);
  res.mtp_weight_bytes = o.weights == WeightFormat::kGguf ? o.gguf_mtp_bytes : mtp_bytes_in(c, o.weights);
  // The pool gives each sequence whole blocks: concurrency x ceil(context / 64) of them a layer.
  res.kv_bytes_per_layer = o.concurrency * kv_blocks_for(o.context) * kv_block_bytes(c, 1, o.kv_dtype);

  const int64_t act = activation_bytes(c, o.prefill_chunk, o.concurrency);
  std::vector<int64_t> workspace;
  std::vector<size_t> gpu_ranks, cpu_ranks;
  for (size_t i = 0; i < slots.size(); ++i) {
    workspace.push_back(act + (slots[i].gpu >= 0 ? kGpuOverhead : kCpuOverhead));
    const int64_t budget = slots[i].capacity_bytes - workspace.back();
    if (budget <= 0) {
      res.warnings.push_back("rank " + std::to_string(i) + " (" + slots[i].device + " of node '" +
                             s.nodes[slots[i].node].name + "') has no room beyond its workspace of " +
                             gb(workspace.back()) + " and holds nothing");
      continue;
    }
    (slots[i].gpu >= 0 ? gpu_ranks : cpu_ranks).push_back(i);
  }
  if (gpu_ranks.empty() && cpu_ranks.empty()) return invalid_argument("no rank has memory left for weights");
  std::vector<bool> usable(slots.size(), false);
  for (size_t i : gpu_ranks) usable[i] = true;
  for (size_t i : cpu_ranks) usable[i] = true;
  const Context x{c, bytes, slots, workspace, res.kv_bytes_per_layer, res.options.expert_scatter};
  auto budget = [&](size_t i) { return (long double)(slots[i].capacity_bytes - workspace[i]); };

  // GPUs first (or the CPU nodes of a cluster without GPUs), each in proportion to its memory.
  const bool any_gpu = !gpu_ranks.empty();
  if (o.gpu_only && !any_gpu) return invalid_argument("--gpu-only, but no GPU of the cluster has room for weights");
  std::vector<size_t> first_ranks = any_gpu ? gpu_ranks : cpu_ranks;
  std::vector<long double> shares;
  for (size_t i : first_ranks) shares.push_back(budget(i));
  Attempt best = attempt(x, first_ranks, shares, false);
  if (any_gpu && !o.gpu_only && !best.fits) {
    // Spill: shares of device + f * host memory (CPU nodes: f * their memory), the least f that fits.
    // A GPU rank's host memory holds routed experts only: without experts, only CPU nodes help.
    bool have_host = !cpu_ranks.empty();
    for (size_t i : gpu_ranks) have_host = have_host || (res.has_experts && slots[i].host_capacity_bytes > 0);
    for (int step = 0; have_host && step <= 20; ++step) {
      const long double f = step / 20.0L;
      std::vector<size_t> ranks;
      shares.clear();
      for (size_t i = 0; i < slots.size(); ++i) {
        const bool gpu = slots[i].gpu >= 0;
        if (!usable[i] || (!gpu && step == 0)) continue;
        ranks.push_back(i);
        const long double host_share = res.has_experts ? f * (long double)slots[i].host_capacity_bytes : 0.0L;
        shares.push_back(gpu ? budget(i) + host_share : f * budget(i));
      }
      Attempt a = attempt(x, ranks, shares, true);
      if (a.fits || step == 20) {
        best = std::move(a);
        res.host_fraction = double(f);
        if (best.fits) break;
      }
    }
  }
  res.fits = best.fits;
  res.plan = std::move(best.plan);
  res.ranks = std::move(best.ranks);
  res.expert_on_host = std::move(best.on_host);
  res.reasons = std::move(best.reasons);
  kv_capacity(c, res);
  int64_t host_experts = 0, host_bytes = 0;
  std::vector<int> cpu_used;
  for (const RankFit& r : res.ranks) {
    host_experts += r.host_experts;
    host_bytes += r.host_weight_bytes;
    if (r.slot.gpu < 0 && (r.weight_bytes > 0) && any_gpu) cpu_used.push_back(r.slot.rank);
  }
  res.spilled = host_experts > 0 || !cpu_used.empty();
  for (const RankFit& r : res.ranks)
    if (r.slot.gpu < 0 && r.weight_bytes == 0 && any_gpu)
      res.warnings.push_back("rank " + std::to_string(r.slot.rank) + " (" + r.slot.device + " of node '" +
                             s.nodes[r.slot.node].name + "') holds nothing: " +
                             (o.gpu_only ? "--gpu-only" : "the GPUs hold the model"));
  if (!res.fits) {
    int64_t have = 0;
    for (const RankSlot& sl : slots)
      if (sl.gpu >= 0 || !o.gpu_only) have += sl.capacity_bytes + (res.has_experts ? sl.host_capacity_bytes : 0);
    res.reasons.insert(res.reasons.begin(),
                       std::string("the model does not fit") + (o.gpu_only ? " on the GPUs alone (--gpu-only)" : "") +
                           ": " + gb(res.weight_bytes) + " of " + format_name(o.weights) + " weights plus " +
                           gb(res.kv_bytes_per_layer * c.n_layers) + " of KV cache (" + std::to_string(o.context) +
                           " positions x " + std::to_string(o.concurrency) + " sequences) against " + gb(have) +
                           " of " + (o.gpu_only ? "GPU memory" : "memory") + " in all");
  }
  if (res.fits && host_experts > 0) {
    double gpu_bw = 0, host_bw = 0;
    for (const RankSlot& sl : slots)
      if (sl.gpu >= 0) gpu_bw = std::max(gpu_bw, sl.bandwidth_gbs), host_bw = std::max(host_bw, sl.host_bandwidth_gbs);
    char buf[400];
    std::snprintf(buf, sizeof buf,
                  "%lld routed experts (%s) sit in host memory, read at host-memory speed (%.0f GB/s against "
                  "%.0f GB/s on the GPUs): tokens that select them decode that much slower; --gpu-only refuses this",
                  (long long)host_experts, gb(host_bytes).c_str(), host_bw, gpu_bw);
    res.warnings.push_back(buf);
  }
  if (res.fits && !cpu_used.empty())
    res.warnings.push_back(std::to_string(cpu_used.size()) + " CPU rank(s) hold " +
                           (res.has_experts ? "layers or experts" : "layers") +
                           " in host memory: their share decodes at CPU speed");
  if (res.fits) res.prediction = predict(c, s, res, bytes);
  if (res.fits || !o.suggest) return res;

  // What would make it fit.
  auto fits_with = [&](const ClusterSpec& spec, FitOptions opt) {
    opt.suggest = false;
    auto r = fit_plan(c, spec, opt, opt.weights == o.weights ? stored : nullptr);
    return r.ok() && r->fits ? std::optional<FitResult>(std::move(*r)) : std::nullopt;
  };
  if (!stored)
    for (WeightFormat f : {WeightFormat::kBf16, WeightFormat::kQ8_0, WeightFormat::kFp8, WeightFormat::kQ4K}) {
      FitOptions opt = o;
      opt.weights = f;
      if (f == WeightFormat::kFp8 && !c.uses_mla()) continue;  // DeepSeek's format only
      if (f == o.weights || sum_bytes(unit_bytes_in(c, f)) >= res.weight_bytes) continue;
      if (auto r = fits_with(s, opt))
        res.suggestions.push_back("fewer bytes per weight: --weights " + std::string(format_name(f)) + " (" +
                                  gb(r->weight_bytes) + " of weights) fits");
    }
  if (o.gpu_only) {
    FitOptions opt = o;
    opt.gpu_only = false;
    if (fits_with(s, opt))
      res.suggestions.push_back(res.has_experts ? "without --gpu-only (routed experts spill to host memory) it fits"
                                                : "without --gpu-only (CPU nodes take layers) it fits");
  }
  for (int64_t ctx = o.context / 2; ctx >= 256; ctx /= 2) {
    FitOptions opt = o;
    opt.context = ctx;
    if (fits_with(s, opt)) {
      res.suggestions.push_back("a shorter context: --context " + std::to_string(ctx) + " fits");
      break;
    }
  }
  // More nodes like the last one: the least number that fits (binary search up to 256).
  auto grown = [&](int extra) {
    ClusterSpec more = s;
    for (int k = 1; k <= extra; ++k) {
      NodeSpec n = s.nodes.back();
      n.name += "+" + std::to_string(k);
      more.nodes.push_back(n);
    }
    return more;
  };
  if (fits_with(grown(256), o)) {
    int lo = 1, hi = 256;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (fits_with(grown(mid), o)) hi = mid; else lo = mid + 1;
    }
    res.suggestions.push_back("more nodes: " + std::to_string(lo) + " more like '" + s.nodes.back().name + "' (" +
                              std::to_string(s.nodes.size() + size_t(lo)) + " in all) fit");
  }
  return res;
}

}  // namespace shoal::cluster
