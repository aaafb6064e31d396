// shoal plan: does the model fit the cluster, how is it spread, how fast will it decode
// (cluster/fit.h, docs/plan.md "shoal plan"). Exit 0 when it fits, 3 when it does not (with the
// reasons and what would make it fit), 1 on errors, 2 on usage errors.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>

#include "kernels/system.h"
#include "cli/commands.h"
#include "cluster/fit.h"
#include "cluster/quant_recipe.h"
#include "model/checkpoint.h"

namespace shoal::cli {
namespace {
namespace fs = std::filesystem;
using namespace shoal::cluster;

constexpr int kDoesNotFit = 3;

struct Options {
  std::string model, cluster, hostfile, out, weights, quant, kv_dtype = "f32", wire_dtype = "f32", gpus_gib,
      gpu_kind = "gpu";
  bool slurm = false, json = false, gpu_only = false, expert_scatter = false;
  int local_nodes = 0;
  double ram_gib = -1, link_gbps = 0, ram_bandwidth_gbs = 0;
  int64_t context = 4096, concurrency = 1, max_batch_tokens = 512;
  std::vector<std::string> bandwidth;
  std::vector<std::string> lora;  // --lora NAME=DIR or DIR, repeatable
};

StatusOr<std::vector<double>> parse_gib_list(const std::string& text) {
  std::vector<double> out;
  std::string word;
  std::istringstream in(text);
  while (std::getline(in, word, ',')) {
    char* end = nullptr;
    const double v = std::strtod(word.c_str(), &end);
    if (word.empty() || *end != '\0' || !(v > 0))
      return invalid_argument("--gpus-gib '" + text + "': '" + word + "' is not a positive number of GiB");
    out.push_back(v);
  }
  return out;
}

double total_ram_gib() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? double(pages) * double(page) / double(int64_t(1) << 30) : 0;
}

StatusOr<ClusterSpec> read_cluster(const Options& o, std::vector<std::string>& notes) {
  const int sources = !o.cluster.empty() + !o.hostfile.empty() + o.slurm + (o.local_nodes > 0);
  if (sources != 1)
    return invalid_argument("give exactly one of --cluster FILE, --hostfile FILE, --slurm or --local-nodes N");
  ClusterSpec spec;
  if (!o.cluster.empty()) {
    SHOAL_ASSIGN_OR_RETURN(spec, read_spec_file(o.cluster));
  } else if (o.local_nodes > 0) {
    // This machine: one CPU node running --local-nodes ranks; its read bandwidth measured here.
    NodeSpec n;
    char host[256] = "local";
    gethostname(host, sizeof host - 1);
    n.name = host;
    n.ram_gib = o.ram_gib >= 0 ? o.ram_gib : total_ram_gib();
    n.link_gbps = n.local_gbps;
    n.cpu_ranks = o.local_nodes;
    n.ram_bandwidth_gbs = o.ram_bandwidth_gbs > 0 ? o.ram_bandwidth_gbs : kernels::measure_read_bandwidth(int64_t(1) << 30, 3).gbs;
    notes.push_back("this machine: " + std::to_string(o.local_nodes) + " rank(s) on one CPU node, read bandwidth " +
                    std::to_string(int(n.ram_bandwidth_gbs + 0.5)) + " GB/s" +
                    (o.ram_bandwidth_gbs > 0 ? " (given)" : " (measured)"));
    spec.nodes.push_back(n);
  } else {
    HostDefaults d;
    SHOAL_ASSIGN_OR_RETURN(d.gpus_gib, o.gpus_gib.empty() ? StatusOr<std::vector<double>>(std::vector<double>{})
                                                          : parse_gib_list(o.gpus_gib));
    if (o.ram_gib >= 0) d.ram_gib = o.ram_gib;
    d.link_gbps = o.link_gbps;
    d.gpu_kind = o.gpu_kind;
    if (!o.hostfile.empty()) {
      SHOAL_ASSIGN_OR_RETURN(spec, spec_from_hostfile(o.hostfile, d));
    } else {
      auto env = [](const std::string& name) -> std::optional<std::string> {
        const char* v = std::getenv(name.c_str());
        return v ? std::optional<std::string>(v) : std::nullopt;
      };
      SHOAL_ASSIGN_OR_RETURN(spec, spec_from_slurm(env, d, notes));
    }
  }
  for (const std::string& kv : o.bandwidth) {
    const size_t eq = kv.find('=');
    char* end = nullptr;
    const double v = eq == std::string::npos ? 0 : std::strtod(kv.c_str() + eq + 1, &end);
    if (eq == 0 || eq == std::string::npos || *end != '\0' || !(v > 0))
      return invalid_argument("--bandwidth '" + kv + "' is not KIND=GB/s (e.g. rtx3090=936)");
    spec.bandwidth_gbs[kv.substr(0, eq)] = v;
  }
  return spec;
}

// "IQ1_S 174 x 117.83 GB, Q4_K 427 x 6.92 GB, ...": GGUF tensors and bytes per ggml type.
std::string types_text(const std::map<DType, std::pair<int64_t, int64_t>>& by_type) {
  std::string t;
  for (const auto& [d, cb] : by_type)
    t += (t.empty() ? "" : ", ") + std::string(dtype_name(d)) + " " + std::to_string(cb.first) + " x " + gb(cb.second);
  return t;
}

// The weights of a GGUF --model (its tensor infos), or of a config with --quant (a recipe, or a
// GGUF whose tensor infos give the types, its data possibly absent), as stored unit bytes.
Status gguf_weights(const Options& o, Checkpoint* ck, const ModelConfig& c, FitOptions& fo, UnitBytes& stored,
                    std::vector<std::string>& notes) {
  if (!o.weights.empty())
    return invalid_argument("--weights converts a Hugging Face checkpoint; " +
                            std::string(ck ? "a GGUF model is sized in its own tensor types" : "give it or --quant, not both"));
  fo.weights = WeightFormat::kGguf;
  if (ck) {
    if (!o.quant.empty()) return invalid_argument("--quant gives a config its types; a GGUF --model has its own");
    SHOAL_ASSIGN_OR_RETURN(stored, unit_bytes(*ck));
    const GgufModel& m = *ck->gguf();
    int64_t tensors = 0;
    for (const auto& p : m.parts()) tensors += int64_t(p->header().tensors.size());
    const GgufValue* ft = m.meta().find("general.file_type");
    notes.push_back("GGUF " + m.first_path().filename().string() + ": " + std::to_string(tensors) + " tensors in " +
                    std::to_string(m.parts().size()) + " part(s)" +
                    (ft && ft->is_integer() ? ", file type " + std::to_string(ft->i) + " " + llama_file_type_name(ft->i) : "") +
                    "; sized from its tensor infos, each in its own type");
    return {};
  }
  std::error_code ec;
  if (o.quant.ends_with(".gguf") || fs::is_regular_file(o.quant, ec)) {
    SHOAL_ASSIGN_OR_RETURN(const GgufHeaders h, read_gguf_headers(o.quant));
    SHOAL_ASSIGN_OR_RETURN(GgufUnitBytes u, gguf_unit_bytes(h, c));
    stored = std::move(u.units);
    fo.gguf_mtp_bytes = u.mtp_bytes;
    notes.push_back("--quant " + fs::path(o.quant).filename().string() + ": the tensor infos of " +
                    std::to_string(h.files.size()) + " GGUF part(s)" +
                    (h.data_present ? "" : " (metadata only, no tensor data)") + ": " + types_text(u.by_type));
    return {};
  }
  SHOAL_ASSIGN_OR_RETURN(const QuantRecipe* r, find_quant_recipe(o.quant));
  const GgufPrediction p = predict_gguf(c, *r);
  stored = p.units;
  std::string published;
  if (r->published_gib > 0) {
    char buf[96];
    std::snprintf(buf, sizeof buf, " (published for DeepSeek-V3/R1: %.0f GiB = %s)", r->published_gib,
                  gb(r->published_gib * double(int64_t(1) << 30)).c_str());
    published = buf;
  }
  notes.push_back("--quant " + r->name + ": " + r->description + "; predicted GGUF " + gb(p.total_bytes) + published +
                  ": " + types_text(p.by_type));
  return {};
}

int plan(const Options& o) {
  std::unique_ptr<Checkpoint> gguf_ck;  // a GGUF --model
  if (is_gguf_path(o.model)) {
    auto ck = Checkpoint::open(o.model);
    if (!ck.ok()) return fail(ck.status());
    gguf_ck = std::move(*ck);
  }
  auto config = gguf_ck ? StatusOr<ModelConfig>(gguf_ck->config()) : load_config(o.model);
  if (!config.ok()) return fail(config.status());
  FitOptions fo;
  fo.gpu_only = o.gpu_only;
  fo.expert_scatter = o.expert_scatter;
  fo.context = o.context;
  fo.concurrency = o.concurrency;
  fo.prefill_chunk = o.max_batch_tokens;
  const std::optional<DType> kv_dtype = parse_kv_dtype(o.kv_dtype);
  if (!kv_dtype) return fail(invalid_argument("--kv-dtype '" + o.kv_dtype + "' is not f32, bf16 or fp8"));
  fo.kv_dtype = *kv_dtype;
  if (o.wire_dtype != "f32" && o.wire_dtype != "bf16")
    return fail(invalid_argument("--wire-dtype '" + o.wire_dtype + "' is not f32 or bf16"));
  fo.wire_value_bytes = o.wire_dtype == "f32" ? 4 : 2;
  std::optional<UnitBytes> stored;
  std::vector<std::string> notes;
  if (gguf_ck || !o.quant.empty()) {
    UnitBytes b;
    if (Status s = gguf_weights(o, gguf_ck.get(), *config, fo, b, notes); !s.ok()) return fail(s);
    stored = std::move(b);
  } else {
    const WeightFormat stored_format = config->fp8 ? WeightFormat::kFp8 : WeightFormat::kBf16;
    if (o.weights.empty()) {
      fo.weights = stored_format;
    } else {
      auto f = parse_weight_format(o.weights);
      if (!f.ok()) return fail(f.status());
      fo.weights = *f;
    }
    // A checkpoint folder in the asked format: its stored bytes, not the config's estimate.
    std::error_code ec;
    if (fs::is_directory(o.model, ec) && fo.weights == stored_format) {
      auto ck = Checkpoint::open(o.model);
      if (!ck.ok()) return fail(ck.status());
      if ((*ck)->has_weights()) {
        auto b = unit_bytes(**ck);
        if (!b.ok()) return fail(b.status());
        stored = *b;
      }
    }
  }
  if (!o.lora.empty()) {  // each adapter's A and B on the ranks that hold its modules (unmerged)
    auto specs = parse_lora_specs(o.lora);
    if (!specs.ok()) return fail(specs.status());
    auto loras = load_loras(*specs, *config, false);
    if (!loras.ok()) return fail(loras.status());
    UnitBytes b = stored ? *stored : unit_bytes_in(*config, fo.weights);
    for (const auto& lora : *loras) {
      add_lora_bytes(b, *lora);
      notes.push_back("--lora " + (lora->name.empty() ? std::string() : lora->name + "=") + lora->dir.string() + ": " +
                      std::to_string(lora->modules.size()) + " modules, " + std::to_string(lora->bytes()) +
                      " bytes of A and B on the units that hold them");
    }
    stored = std::move(b);
  }
  auto spec = read_cluster(o, notes);
  if (!spec.ok()) return fail(spec.status());
  auto r = fit_plan(*config, *spec, fo, stored ? &*stored : nullptr);
  if (!r.ok()) return fail(r.status());
  r->notes.insert(r->notes.begin(), notes.begin(), notes.end());
  if (o.json) {
    std::printf("%s\n", fit_to_json(*r, *spec).dump(2).c_str());
  } else {
    const std::string text = fit_text(*r, *spec);
    std::fwrite(text.data(), 1, text.size(), stdout);
  }
  std::fflush(stdout);
  if (!r->fits) {
    std::fprintf(stderr, "shoal: %s\n", r->reasons.front().c_str());
    return kDoesNotFit;
  }
  if (!o.out.empty()) {
    std::ofstream out(o.out, std::ios::binary);
    out << plan_to_json(r->plan).dump(2) << "\n";
    out.close();  // flushed before it is read back (a small plan stays in the stream's buffer)
    if (!out.good()) return fail(invalid_argument(o.out + ": cannot write the plan file"));
    // What --plan of the other commands will read back.
    auto back = read_plan_file(o.out, *config, int(r->ranks.size()));
    if (!back.ok()) return fail(back.status());
  }
  return 0;
}

}  // namespace

void add_plan(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("plan", "Fit a model to a cluster: placement, memory per rank, predicted tokens/s");
  sub->add_option("--model", o->model, "Checkpoint folder, config.json or GGUF model (file, part 1 or folder)")->required();
  sub->add_option("--cluster", o->cluster, "Cluster spec (JSON, docs/plan.md)");
  sub->add_option("--hostfile", o->hostfile, "Open MPI hostfile; with --gpus-gib, --ram-gib, --link-gbps per host");
  sub->add_flag("--slurm", o->slurm, "The nodes of this Slurm allocation (SLURM_JOB_NODELIST, ...)");
  sub->add_option("--local-nodes", o->local_nodes, "This machine as one CPU node running N ranks")
      ->check(CLI::PositiveNumber);
  sub->add_option("--gpus-gib", o->gpus_gib, "GPU memory per host, one entry per GPU: 24,24");
  sub->add_option("--ram-gib", o->ram_gib, "Host memory per host (GiB)");
  sub->add_option("--link-gbps", o->link_gbps, "Network link per host (Gbit/s)");
  sub->add_option("--gpu-kind", o->gpu_kind, "Kind of the hosts' GPUs (a key of the bandwidth table)");
  sub->add_option("--ram-bandwidth-gbs", o->ram_bandwidth_gbs, "--local-nodes: read bandwidth (default: measured)");
  sub->add_option("--bandwidth", o->bandwidth, "Override the bandwidth table: KIND=GB/s (repeatable)");
  sub->add_option("--weights", o->weights, "fp8, bf16, q8_0 or q4_k (default: as the checkpoint stores them)");
  sub->add_option("--quant", o->quant,
                  "GGUF types for a config: a quant recipe (UD-IQ1_S, UD-IQ1_M, UD-IQ2_XXS, UD-Q2_K_XL, Q8_0) or a GGUF "
                  "whose tensor infos give them (its data may be absent)");
  sub->add_flag("--gpu-only", o->gpu_only, "Weights on GPUs only: no experts in host memory, no CPU nodes");
  sub->add_flag("--expert-scatter", o->expert_scatter, "Spread each layer's experts over all ranks");
  sub->add_option("--context", o->context, "KV cache positions per sequence")->check(CLI::PositiveNumber);
  sub->add_option("--concurrency", o->concurrency, "Sequences with a KV cache each")->check(CLI::PositiveNumber);
  sub->add_option("--max-batch-tokens", o->max_batch_tokens,
                  "Tokens of the largest prefill step (as serve's --max-batch-tokens; default 512): sizes the "
                  "activations in each rank's workspace")
      ->check(CLI::PositiveNumber);
  sub->add_option("--kv-dtype", o->kv_dtype,
                  "KV cache dtype: f32 (default, as the runtime's), bf16 (half the KV bytes) or fp8 (e4m3 with a "
                  "scale per row, about a quarter); both deviate beyond the golden tolerance, docs/serving.md");
  sub->add_option("--lora", o->lora,
                  "A LoRA adapter, NAME=DIR or DIR (repeatable): its A and B counted on the ranks that hold its modules");
  sub->add_option("--wire-dtype", o->wire_dtype, "Hidden rows between ranks: f32 (default) or bf16 (as `--wire-dtype` of the runtime)");
  sub->add_flag("--json", o->json, "Print one JSON object instead of text");
  sub->add_option("--out", o->out, "Write the plan file (the one --plan takes) when it fits");
  sub->callback([o, &rc] { rc = plan(*o); });
}

}  // namespace shoal::cli
