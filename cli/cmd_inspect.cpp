// shoal inspect: architecture, parameter counts, bytes per dtype, MTP and license of a folder or
// GGUF model (then also its types, file type, parts and general.name).
#include <omp.h>
#include <sched.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>
#include <memory>

#include "cli/commands.h"
#include "kernels/kernels.h"
#include "kernels/system.h"
#include "model/checkpoint.h"
#include "model/inspect.h"
#include "model/lora.h"

namespace shoal::cli {
namespace {

struct Options {
  std::string model, lora;
  bool json = false, system = false;
};

// A LoRA adapter: its rank, scale, targets, parameters and bytes; checked against --model when
// given (every module present in the base with the shape the adapter implies).
int inspect_lora(const Options& o) {
  std::unique_ptr<Checkpoint> base;
  if (!o.model.empty()) {
    auto ck = Checkpoint::open(o.model);
    if (!ck.ok()) return fail(ck.status());
    base = std::move(*ck);
  }
  auto a = load_lora(o.lora, base ? &base->config() : nullptr);
  if (!a.ok()) return fail(a.status());
  const LoraAdapter& l = **a;
  std::map<int64_t, int64_t> ranks;
  std::map<float, int64_t> scales;
  for (const auto& [name, m] : l.modules) ++ranks[m.rank], ++scales[m.scale];
  nlohmann::json j = {{"lora", l.dir.string()},
                      {"r", l.r},
                      {"lora_alpha", l.alpha},
                      {"use_rslora", l.rslora},
                      {"target_modules", l.targets},
                      {"modules", l.modules.size()},
                      {"parameters", l.parameters()},
                      {"bytes", l.bytes()},
                      {"base", base ? nlohmann::json(o.model) : nlohmann::json(nullptr)},
                      {"matches_base", base != nullptr}};
  nlohmann::json rj = nlohmann::json::object(), sj = nlohmann::json::object();
  for (const auto& [r, n] : ranks) rj[std::to_string(r)] = n;
  for (const auto& [s, n] : scales) sj[std::to_string(s)] = n;
  j["modules_by_rank"] = rj;
  j["modules_by_scale"] = sj;
  if (o.json) {
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("lora          %s\n", l.dir.string().c_str());
  std::printf("rank          %lld (lora_alpha %g%s)\n", (long long)l.r, l.alpha, l.rslora ? ", rsLoRA" : "");
  std::string scale_text;
  for (const auto& [s, n] : scales) scale_text += (scale_text.empty() ? "" : ", ") + std::to_string(s) + " (" + std::to_string(n) + " modules)";
  std::printf("scale         %s\n", scale_text.c_str());
  std::printf("targets       %s\n", l.targets.c_str());
  std::printf("modules       %zu adapted\n", l.modules.size());
  std::printf("parameters    %lld (%llu bytes as stored)\n", (long long)l.parameters(), (unsigned long long)l.bytes());
  std::printf("base          %s\n", base ? ("matches " + o.model).c_str() : "not checked (give --model BASE)");
  return 0;
}

// This machine as the kernels see it: the CPU variant chosen, cores, read bandwidth, FMA peak.
int inspect_system(const Options& o) {
  const kernels::ReadBandwidth bw = kernels::measure_read_bandwidth();
  const double peak = kernels::measure_fma_peak_gflops();
  nlohmann::json linear = nlohmann::json::object();  // tokens -> GFLOP/s, the spec's cpu_linear_gflops
  std::string rates;
  for (int64_t t : {1, 2, 4, 8, 16}) {
    const double g = std::round(kernels::measure_linear_gflops(t) * 10) / 10;
    linear[std::to_string(t)] = g;
    char text[48];
    std::snprintf(text, sizeof text, "%s%lld: %.1f", rates.empty() ? "" : ", ", (long long)t, g);
    rates += text;
  }
  cpu_set_t set;
  const int affinity = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
  nlohmann::json j = {{"cpu_variant", kernels::cpu_variant()},
                      {"cpu_variants_supported", kernels::cpu_variants_supported()},
                      {"online_cpus", std::thread::hardware_concurrency()},
                      {"affinity_cpus", affinity},
                      {"threads", omp_get_max_threads()},
                      {"read_bandwidth_gbs", bw.gbs},
                      {"read_bandwidth_threads", bw.threads},
                      {"fma_peak_gflops", peak},
                      {"linear_gflops", linear},
                      {"cuda_devices", kernels::cuda_device_count()}};
  if (o.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("cpu kernels:     %s (this CPU runs: %s; SHOAL_CPU forces a lower one)\n", kernels::cpu_variant().c_str(),
                kernels::cpu_variants_supported().c_str());
    std::printf("cores:           %u online, %d in this process's affinity mask, %d OpenMP threads\n",
                std::thread::hardware_concurrency(), affinity, omp_get_max_threads());
    std::printf("read bandwidth:  %.1f GB/s (best of 3 read kernels, 1..%d threads; best: %s, %d threads)\n", bw.gbs,
                omp_get_max_threads(), bw.kernel, bw.threads);
    std::printf("fp32 FMA peak:   %.1f GFLOP/s\n", peak);
    std::printf("linear (BF16):   %s GFLOP/s by tokens (shoal plan's cpu_linear_gflops)\n", rates.c_str());
    std::printf("cuda devices:    %d\n", kernels::cuda_device_count());
  }
  return 0;
}

int inspect(const Options& o) {
  if (o.system) return inspect_system(o);
  if (!o.lora.empty()) return inspect_lora(o);
  if (o.model.empty()) return fail(invalid_argument("inspect: give --model DIR, or --system"));
  auto s = inspect_model(o.model);
  if (!s.ok()) return fail(s.status());
  const std::string text = o.json ? summary_json(*s) : summary_text(*s);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

}  // namespace

void add_inspect(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("inspect", "Describe a checkpoint folder (config.json alone is enough) or a GGUF model");
  sub->add_option("--model", o->model, "Checkpoint folder, or GGUF model (a .gguf file, part 1 of a split one, or a folder)");
  sub->add_flag("--system", o->system, "Describe this machine instead: CPU kernel variant, cores, read bandwidth, FMA peak");
  sub->add_option("--lora", o->lora, "A LoRA adapter folder (PEFT): rank, scale, targets, size; with --model, checked against that base");
  sub->add_flag("--json", o->json, "Print one JSON object instead of text");
  sub->callback([o, &rc] { rc = inspect(*o); });
}

}  // namespace shoal::cli
