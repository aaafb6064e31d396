// What this machine offers the CPU kernels: the instruction-set variant in use and the read
// bandwidth every decode figure is measured against (shoal inspect --system, the benches, and
// shoal plan's speed prediction for this machine).
#pragma once

#include <cstdint>
#include <string>

namespace shoal::kernels {

struct ReadBandwidth {
  double gbs = 0;          // best observed
  int threads = 0;         // thread count that gave it
  const char* kernel = "";  // read kernel that gave it
  int64_t bytes = 0;       // buffer size
};

// Reads a buffer far larger than the caches with the kernels' own vector loads: three read
// kernels (one stream with 8 accumulators, 4 interleaved streams, 8 streams with linear's
// software prefetch) at every thread count from 1 to the OpenMP maximum, best of `reps` passes
// each. Takes about 3 x reps x threads x bytes / bandwidth seconds. A kernel that streams weights
// faster than this exposes a probe bug.
ReadBandwidth measure_read_bandwidth(int64_t bytes = int64_t(1) << 30, int reps = 3);

// Float32 fused multiply-add peak of the active variant with all OpenMP threads, in GFLOP/s
// (2 flops per FMA), best of `reps` runs of about 0.1 s.
double measure_fma_peak_gflops(int reps = 3);

// GFLOP/s (2 flops per multiply-add) that linear reaches streaming a BF16 matrix of 32-128 MiB
// from memory and applying it to `tokens` tokens, with all OpenMP threads, the median of up to
// `reps` calls (at least 3, about a second at most; kernels/cpu/linear_probe.cpp). At 1 token it
// is the weight stream (BF16: GFLOP/s = GB/s).
double measure_linear_gflops(int64_t tokens, int reps = 5);

// Int8 dot-product peak (the fast numerics' maddubs + madd, int32 accumulation) of the active
// variant with all OpenMP threads, in GOP/s (2 ops per multiply-add), best of `reps` runs.
double measure_int8_peak_gops(int reps = 3);

// The CPU kernel variant in use (baseline, avx2, avx512) and the ones this CPU can run.
std::string cpu_variant();
std::string cpu_variants_supported();

}  // namespace shoal::kernels
