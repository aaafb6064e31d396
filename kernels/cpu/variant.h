// The instruction-set variants of the CPU kernels in this binary and the one in use: the best
// the CPU supports, or a lower one forced with SHOAL_CPU=baseline|avx2|avx512 (or set_variant).
// Every variant computes bitwise the same results (kernels/cpu/gemm.h), only faster.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "kernels/kernels.h"

namespace shoal::kernels::cpu {

enum class Variant { kBaseline, kAvx2, kAvx512 };

std::string_view variant_name(Variant v);
// Variants built into this binary that this CPU can run, lowest first.
std::vector<Variant> supported_variants();
// The variant linear uses. Chosen once, at first use, from SHOAL_CPU or the CPU; a SHOAL_CPU
// naming an unknown variant or one this CPU cannot run stops the process with a clear message.
Variant active_variant();
// For tests and benchmarks: use v from now on (must be supported).
void set_variant(Variant v);

// The active variant's read kernel over n floats (the bandwidth probe's inner loop).
float read_pass(const float* p, int64_t n, int kernel);
// The active variant's FMA loop: iters x 12 x 16 fused multiply-adds.
float fma_pass(int64_t iters);
// The active variant's int8 dot-product loop (maddubs + madd): iters x 12 x int8_pass_macs() MACs.
float int8_pass(int64_t iters);
int64_t int8_pass_macs();

// The kernels one variant TU (kernels/cpu/variants/) compiles; variant.cpp calls the active one's.
struct VariantKernels {
  void (*linear)(float* out, const float* x, const Matrix& w, int64_t n);
  void (*linear_t)(float* out, const float* x, const Matrix& w, int64_t n);
  void (*attention)(const AttentionParams& p);
  float (*read_pass)(const float* p, int64_t n, int kernel);
  float (*fma_pass)(int64_t iters);
  float (*int8_pass)(int64_t iters);  // iters x 12 x int8_pass_macs() int8 multiply-adds
  int64_t (*int8_pass_macs)();
};
extern const VariantKernels kBaselineKernels;
#if defined(__x86_64__)
extern const VariantKernels kAvx2Kernels;
extern const VariantKernels kAvx512Kernels;
#endif

}  // namespace shoal::kernels::cpu
