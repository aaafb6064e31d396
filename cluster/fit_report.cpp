// shoal plan's output: the JSON object of docs/plan.md ("JSON output") and the text form.
#include <cstdio>
#include <sstream>

#include "cluster/fit.h"

namespace shoal::cluster {
namespace {
using nlohmann::ordered_json;

std::string fixed(double v, int digits) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// "3-5, 9" from ascending layer indices.
std::string ranges(const std::vector<int64_t>& v) {
  std::string out;
  for (size_t i = 0; i < v.size();) {
    size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    out += (out.empty() ? "" : ", ") + std::to_string(v[i]) + (j > i ? "-" + std::to_string(v[j]) : "");
    i = j + 1;
  }
  return out.empty() ? "-" : out;
}

// "4K", "160K", or the number when it is not a whole number of 1024s: a context of "serves".
std::string context_name(int64_t ctx) { return ctx % 1024 == 0 ? std::to_string(ctx / 1024) + "K" : std::to_string(ctx); }

}  // namespace

ordered_json fit_to_json(const FitResult& r, const ClusterSpec& s) {
  const FitOptions& o = r.options;
  ordered_json ranks = ordered_json::array();
  for (const RankFit& f : r.ranks) {
    ordered_json host_ranges = ordered_json::array();
    for (const ExpertRange& e : f.host_ranges) host_ranges.push_back({{"layer", e.layer}, {"first", e.first}, {"last", e.last}});
    ranks.push_back({{"rank", f.slot.rank},
                     {"node", s.nodes[f.slot.node].name},
                     {"device", f.slot.device},
                     {"layers", f.layers},
                     {"embed", f.embed},
                     {"head", f.head},
                     {"experts", f.experts},
                     {"weight_bytes", f.weight_bytes},
                     {"kv_bytes", f.kv_bytes},
                     {"kv_bytes_per_token", f.kv_bytes_per_token},
                     {"kv_free_bytes", f.kv_free_bytes},
                     {"kv_free_tokens", f.kv_free_tokens},
                     {"kv_tokens", f.kv_tokens},
                     {"workspace_bytes", f.workspace_bytes},
                     {"total_bytes", f.total_bytes},
                     {"capacity_bytes", f.slot.capacity_bytes},
                     {"host_experts", f.host_experts},
                     {"host_expert_ranges", host_ranges},
                     {"host_weight_bytes", f.host_weight_bytes},
                     {"host_capacity_bytes", f.slot.host_capacity_bytes},
                     {"bandwidth_gbs", f.slot.bandwidth_gbs},
                     {"efficiency", f.slot.efficiency}});
  }
  ordered_json serves = ordered_json::array();
  for (const KvServes& k : r.kv_serves) serves.push_back({{"context", k.context}, {"sequences", k.sequences}});
  const Prediction& p = r.prediction;
  ordered_json j = {
      {"fits", r.fits},
      {"weights", format_name(r.weights)},
      {"total_params", r.params.total},
      {"mtp_params", r.params.mtp},
      {"active_params", r.params.active},
      // The checkpoint as published (what a user downloads), MTP layers included; the ranks hold
      // placed_weight_bytes (the runtime does not load the MTP layers).
      {"weight_bytes", r.weight_bytes + r.mtp_weight_bytes},
      {"placed_weight_bytes", r.weight_bytes},
      {"mtp_weight_bytes", r.mtp_weight_bytes},
      {"gpu_only", o.gpu_only},
      {"expert_scatter", o.expert_scatter},
      {"context", o.context},
      {"concurrency", o.concurrency},
      {"kv_dtype", kv_dtype_name(o.kv_dtype)},
      {"kv_bytes_per_layer", r.kv_bytes_per_layer},
      {"kv_block_tokens", kKvBlockTokens},
      {"kv_bytes_per_token", r.kv_bytes_per_token},
      {"kv_tokens", r.kv_tokens},
      {"kv_free_tokens", r.kv_free_tokens},
      {"kv_rank", r.kv_rank},
      {"serves", serves},
      {"world_size", r.ranks.size()},
      {"host_fraction", r.host_fraction},
      {"ranks", ranks},
      {"hop_bytes_per_token", p.hop_bytes_per_token},
      {"hops_per_token", p.hops},
      {"expert_exchange_bytes_per_token", p.expert_bytes_per_token},
      {"prediction",
       {{"one_sequence_tokens_per_s", p.one_sequence_tokens_per_s},
        {"full_pipeline_tokens_per_s", p.full_pipeline_tokens_per_s},
        {"pipeline_stages", p.pipeline_stages},
        {"pipeline_sequences", p.pipeline_sequences},
        {"one_sequence_ms", {{"weights", p.weight_ms}, {"kv_cache", p.kv_ms}, {"links", p.link_ms}}}}},
      {"reasons", r.reasons},
      {"suggestions", r.suggestions},
      {"warnings", r.warnings},
      {"notes", r.notes},
  };
  if (r.fits) j["plan"] = plan_to_json(r.plan);
  return j;
}

std::string fit_text(const FitResult& r, const ClusterSpec& s) {
  const FitOptions& o = r.options;
  std::ostringstream out;
  const bool moe = r.has_experts;
  out << "model: " << r.params.total << " parameters (" << r.params.active << " active per token";
  if (r.mla) out << "; MTP " << r.params.mtp << ", not placed";
  out << "), " << gb(r.weight_bytes) << " of " << format_name(r.weights) << " weights";
  if (r.mla) out << " (MTP layers " << gb(r.mtp_weight_bytes) << ")";
  out << (moe ? "" : "; no routed experts") << "\n";
  out << "KV cache: " << o.context << " positions x " << o.concurrency << " sequence(s), "
      << kv_dtype_name(o.kv_dtype) << (r.mla ? " latent, " : " keys and values, ") << gb(r.kv_bytes_per_layer)
      << " per layer\n";
  out << (r.fits ? "fits" : "does not fit") << (o.gpu_only ? " on the GPUs alone" : "");
  if (r.spilled && r.fits) out << (moe ? ", with experts in host memory" : ", with layers on CPU ranks");
  out << "\n\n";
  // A dense model has no expert columns: nothing of it can sit in a GPU rank's host memory.
  out << "rank  node              device  layers       " << (moe ? "experts  " : "")
      << "weights     KV          workspace   total / capacity" << (moe ? "           host memory (experts, bytes / capacity)" : "")
      << "\n";
  for (const RankFit& f : r.ranks) {
    char line[512];
    std::string lay = ranges(f.layers);
    if (f.embed) lay = "embed " + lay;
    if (f.head) lay += " head";
    const std::string experts = moe ? std::to_string(f.experts) : "";
    std::snprintf(line, sizeof line, moe ? "%-5d %-17s %-7s %-12s %-8s %-11s %-11s %-11s %s / %s%s"
                                         : "%-5d %-17s %-7s %-12s %s%-11s %-11s %-11s %s / %s%s",
                  f.slot.rank, s.nodes[f.slot.node].name.c_str(), f.slot.device.c_str(), lay.c_str(), experts.c_str(),
                  gb(f.weight_bytes).c_str(), gb(f.kv_bytes).c_str(), gb(f.workspace_bytes).c_str(),
                  gb(f.total_bytes).c_str(), gb(f.slot.capacity_bytes).c_str(),
                  f.total_bytes > f.slot.capacity_bytes ? " OVER" : "");
    out << line;
    if (moe && (f.slot.host_capacity_bytes > 0 || f.host_experts > 0))
      out << "   " << f.host_experts << ", " << gb(f.host_weight_bytes) << " / " << gb(f.slot.host_capacity_bytes);
    out << "\n";
    for (const ExpertRange& e : f.host_ranges)
      out << "      in host memory: layer " << e.layer << " experts " << e.first << "-" << e.last << "\n";
  }
  for (const auto& w : r.notes) out << "note: " << w << "\n";
  for (const auto& w : r.warnings) out << "warning: " << w << "\n";
  if (!r.fits) {
    for (const auto& w : r.reasons) out << "why: " << w << "\n";
    for (const auto& w : r.suggestions) out << "would fit: " << w << "\n";
    if (r.suggestions.empty()) out << "would fit: nothing tried here (more memory)\n";
    return out.str();
  }
  // The KV pools: each attention rank's leftover in whole blocks of its layers; the cluster holds
  // the least of them, since every position of a sequence takes a slot on each.
  out << "\nKV cache pool (" << kv_dtype_name(o.kv_dtype) << ", blocks of " << kKvBlockTokens
      << " positions; a position takes a slot on every rank below):\n"
      << "rank  device  layers       per token   left over   free tokens   tokens in all\n";
  for (const RankFit& f : r.ranks) {
    if (f.layers.empty()) continue;
    char line[256];
    std::snprintf(line, sizeof line, "%-5d %-7s %-12s %-11s %-11s %-13lld %lld\n", f.slot.rank, f.slot.device.c_str(),
                  ranges(f.layers).c_str(), gb(f.kv_bytes_per_token).c_str(), gb(f.kv_free_bytes).c_str(),
                  (long long)f.kv_free_tokens, (long long)f.kv_tokens);
    out << line;
  }
  out << "KV tokens: " << r.kv_tokens << " for the cluster (the least of the ranks above: rank " << r.kv_rank << "), "
      << r.kv_tokens - r.kv_free_tokens << " reserved (--context " << o.context << " x --concurrency " << o.concurrency
      << ") and " << r.kv_free_tokens << " in the leftover; " << gb(r.kv_bytes_per_token) << " a position over all "
      << r.plan.attn.size() << " layers\n";
  out << "serves: ";
  for (size_t k = 0; k < r.kv_serves.size(); ++k)
    out << (k ? ", " : "") << r.kv_serves[k].sequences << (k ? " of " : " sequences of ")
        << context_name(r.kv_serves[k].context);
  out << "\n";
  const Prediction& p = r.prediction;
  out << "\ntraffic per decoded token: " << fixed(p.hop_bytes_per_token, 0) << " B per pipeline hop x " << p.hops
      << " hops";
  if (moe) out << "; expert exchange " << fixed(p.expert_bytes_per_token, 0) << " B";
  out << "\n";
  out << "predicted decode: " << fixed(p.one_sequence_tokens_per_s, 1) << " tokens/s for one sequence (weights "
      << fixed(p.weight_ms, 2) << " ms, KV cache " << fixed(p.kv_ms, 2) << " ms, links " << fixed(p.link_ms, 2)
      << " ms per token); " << fixed(p.full_pipeline_tokens_per_s, 1) << " tokens/s with the pipeline full ("
      << p.pipeline_sequences << " sequences in " << p.pipeline_stages << " micro-batches)\n";
  return out.str();
}

}  // namespace shoal::cluster
