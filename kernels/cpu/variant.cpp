#include "kernels/cpu/variant.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "kernels/cpu/cpu.h"

namespace shoal::kernels::cpu {
namespace {

bool cpu_can_run(Variant v) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  switch (v) {
    case Variant::kBaseline: return true;
    case Variant::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Variant::kAvx512:
      return cpu_can_run(Variant::kAvx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
#else
  return v == Variant::kBaseline;
#endif
}

Variant choose() {
  const std::vector<Variant> ok = supported_variants();
  const char* forced = std::getenv("SHOAL_CPU");
  if (forced == nullptr || *forced == '\0') return ok.back();
  const std::string want = forced;
  for (Variant v : {Variant::kBaseline, Variant::kAvx2, Variant::kAvx512}) {
    if (variant_name(v) != want) continue;
    for (Variant s : ok)
      if (s == v) return v;
    std::fprintf(stderr, "shoal: SHOAL_CPU=%s: this CPU (or this build) cannot run the %s kernels; it can run:",
                 forced, forced);
    for (Variant s : ok) std::fprintf(stderr, " %s", std::string(variant_name(s)).c_str());
    std::fprintf(stderr, "\n");
    std::exit(2);
  }
  std::fprintf(stderr, "shoal: SHOAL_CPU=%s is not a kernel variant (baseline, avx2, avx512)\n", forced);
  std::exit(2);
}

std::atomic<int> g_active{-1};

}  // namespace

std::string_view variant_name(Variant v) {
  switch (v) {
    case Variant::kBaseline: return "baseline";
    case Variant::kAvx2: return "avx2";
    case Variant::kAvx512: return "avx512";
  }
  return "?";
}

std::vector<Variant> supported_variants() {
  std::vector<Variant> out;
  for (Variant v : {Variant::kBaseline, Variant::kAvx2, Variant::kAvx512})
    if (cpu_can_run(v)) out.push_back(v);
  return out;
}

Variant active_variant() {
  int v = g_active.load(std::memory_order_acquire);
  if (v < 0) {
    v = int(choose());
    g_active.store(v, std::memory_order_release);
  }
  return Variant(v);
}

void set_variant(Variant v) {
  if (!cpu_can_run(v)) {
    std::fprintf(stderr, "shoal: this CPU cannot run the %s kernels\n", std::string(variant_name(v)).c_str());
    std::exit(2);
  }
  g_active.store(int(v), std::memory_order_release);
}

namespace {
const VariantKernels& active_kernels() {
  switch (active_variant()) {
#if defined(__x86_64__)
    case Variant::kAvx512: return kAvx512Kernels;
    case Variant::kAvx2: return kAvx2Kernels;
#endif
    default: return kBaselineKernels;
  }
}
}  // namespace

float read_pass(const float* p, int64_t n, int kernel) { return active_kernels().read_pass(p, n, kernel); }
float fma_pass(int64_t iters) { return active_kernels().fma_pass(iters); }
float int8_pass(int64_t iters) { return active_kernels().int8_pass(iters); }
int64_t int8_pass_macs() { return active_kernels().int8_pass_macs(); }
void linear(float* out, const float* x, const Matrix& w, int64_t n, const Context&) { active_kernels().linear(out, x, w, n); }
void linear_t(float* out, const float* x, const Matrix& w, int64_t n, const Context&) {
  active_kernels().linear_t(out, x, w, n);
}
void attention(const AttentionParams& p, const Context&) { active_kernels().attention(p); }

}  // namespace shoal::kernels::cpu
