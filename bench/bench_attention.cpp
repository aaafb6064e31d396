// Decode attention over a long latent cache (issue 18): one query token of MLA's absorbed path
// against a paged cache of N positions, as a decode step runs it per layer, per sequence.
//   OMP_NUM_THREADS=T bench_attention [--contexts 4096,32768,131072] [--dtypes f32,bf16,fp8]
//                                     [--shape 671b|kv-long]
// Shapes: 671b = DeepSeek-V3's (128 heads, kv_lora_rank 512, rope 64); kv-long = the bench model
// of bench/configs/kv-long.json (8 heads, 256, 32). The step reads every cached row once at best:
// bytes = positions x (kv_lora_rank + rope) x element size (+ fp8's two scales per row). Caches
// cycle through 2 GiB so that no call finds its rows in the CPU's caches. Prints the time per
// call (median of 3 passes), the cache bytes read per second as a fraction of the measured read
// bandwidth, and the multiply-adds per second as a fraction of the float32 FMA peak (at 128
// heads a step is compute-bound: 2 x 128 x (2 x 512 + 64) flops per cached position).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/args.h"
#include "bench/membw.h"
#include "kernels/kernels.h"
#include "model/kv_layout.h"

using namespace shoal;

namespace {

struct Shape {
  const char* name;
  int64_t heads, C, dr;
};

// One paged cache of n positions laid out as the pool does (model/kv_layout.h): each block holds
// kKvBlockTokens latent rows then as many rope rows; the blocks in an order a pool hands out.
struct Cache {
  std::vector<uint8_t> data;
  std::vector<float> scales;
  std::vector<int32_t> blocks;
};

Cache make_cache(int64_t n, const Shape& s, DType dt, std::mt19937& rng) {
  const int64_t bt = kKvBlockTokens, nb = (n + bt - 1) / bt, es = kv_value_bytes(dt);
  Cache c;
  c.data.resize(size_t(nb * bt * (s.C + s.dr) * es));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);  // values of a trained cache's size
  if (dt == DType::kF32) {
    float* f = reinterpret_cast<float*>(c.data.data());
    for (size_t i = 0; i < c.data.size() / 4; ++i) f[i] = u(rng);
  } else if (dt == DType::kBF16) {
    uint16_t* h = reinterpret_cast<uint16_t*>(c.data.data());
    for (size_t i = 0; i < c.data.size() / 2; ++i) {
      const float x = u(rng);
      uint32_t bits;
      std::memcpy(&bits, &x, 4);
      h[i] = uint16_t(bits >> 16);
    }
  } else {
    for (auto& x : c.data) x = uint8_t(rng() & 0xf7);  // finite e4m3 codes (no NaN), both signs
    c.scales.assign(size_t(nb * bt * 2), 1.0f / 64);
  }
  c.blocks.resize(size_t(nb));
  for (int64_t b = 0; b < nb; ++b) c.blocks[size_t(b)] = int32_t(nb - 1 - b);
  return c;
}

void run(const Shape& s, int64_t n, DType dt, double bw, double peak) {
  std::mt19937 rng(7);
  const int64_t es = kv_value_bytes(dt), row_bytes = (s.C + s.dr) * es + (dt == DType::kF8E4M3 ? 8 : 0);
  const int64_t bytes = n * row_bytes;
  const int64_t copies = std::max<int64_t>(1, (int64_t(2) << 30) / bytes);
  std::vector<Cache> caches;
  for (int64_t i = 0; i < copies; ++i) caches.push_back(make_cache(n, s, dt, rng));
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> q_lat(size_t(s.heads * s.C)), q_pe(size_t(s.heads * s.dr)), out(size_t(s.heads * s.C));
  for (auto& x : q_lat) x = g(rng) * 0.05f;
  for (auto& x : q_pe) x = g(rng) * 0.05f;
  const int32_t pos = int32_t(n - 1);
  kernels::Context ctx;
  auto call = [&](const Cache& c) {
    const uint8_t* base = c.data.data();
    kernels::AttentionParams p{};
    p.out = out.data();
    p.q_a = q_lat.data(); p.q_token_stride = s.heads * s.C; p.q_head_stride = s.C;
    p.q_b = q_pe.data(); p.q_b_token_stride = s.heads * s.dr; p.q_b_head_stride = s.dr;
    p.k_a = base; p.k_a_token_stride = s.C; p.k_a_head_stride = 0;
    p.k_b = base + kKvBlockTokens * s.C * es; p.k_b_token_stride = s.dr; p.k_b_head_stride = 0;
    p.v = base; p.v_token_stride = s.C; p.v_head_stride = 0;
    p.kv_dtype = dt;
    p.kv_blocks = c.blocks.data();
    p.kv_block_tokens = kKvBlockTokens;
    p.kv_block_stride = kKvBlockTokens * (s.C + s.dr);
    p.kv_scales = c.scales.empty() ? nullptr : c.scales.data();
    p.kv_scale_block_stride = kKvBlockTokens * 2;
    p.q_pos = &pos;
    p.n_q = 1; p.n_kv = n; p.n_heads = s.heads; p.da = s.C; p.db = s.dr; p.dv = s.C;
    p.scale = 0.1f;
    return p;
  };
  std::vector<double> passes;
  for (int pass = 0; pass < 3; ++pass) {
    int64_t calls = 0;
    const auto t0 = std::chrono::steady_clock::now();
    double el = 0;
    do {
      const auto p = call(caches[size_t(calls % copies)]);
      kernels::attention(p, ctx);
      ++calls;
      el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } while (el < 1.0 || calls < 3);
    passes.push_back(el / double(calls));
  }
  std::sort(passes.begin(), passes.end());
  const double t = passes[1], gbs = double(bytes) / t / 1e9;
  // Multiply-adds per call: every head dots every row (C + dr) and sums C of its values.
  const double gflops = 2.0 * double(s.heads) * double(n) * double(2 * s.C + s.dr) / t / 1e9;
  std::printf("| %s | %s | %lld | %d | %.3f ms | %.1f GB/s | %.2f | %.0f GFLOP/s | %.2f |\n", s.name,
              kv_dtype_name(dt), static_cast<long long>(n), omp_get_max_threads(), t * 1e3, gbs, gbs / bw, gflops,
              gflops / peak);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> contexts = {4096, 32768, 131072};
  std::vector<std::string> dtypes = {"f32", "bf16", "fp8"};
  std::string shape = "671b";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--contexts") {
      contexts.clear();
      for (const auto& c : bench::split_commas(v)) contexts.push_back(std::stoll(c));
    } else if (a == "--dtypes") dtypes = bench::split_commas(v);
    else if (a == "--shape") shape = v;
    else {
      std::fprintf(stderr, "usage: bench_attention [--contexts N,N] [--dtypes f32,bf16,fp8] [--shape 671b|kv-long]\n");
      return 2;
    }
  }
  const Shape s = shape == "kv-long" ? Shape{"kv-long", 8, 256, 32} : Shape{"671b", 128, 512, 64};
  const double bw = bench::read_bandwidth_gbs(), peak = kernels::measure_fma_peak_gflops();
  std::printf("read bandwidth %.1f GB/s, float32 FMA peak %.0f GFLOP/s, %d threads, %s\n", bw, peak,
              omp_get_max_threads(), kernels::cpu_variant().c_str());
  std::printf("| shape | cache | positions | threads | per call | cache read | of bandwidth | compute | of FMA peak |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const auto& d : dtypes) {
    const auto dt = parse_kv_dtype(d);
    if (!dt) {
      std::fprintf(stderr, "bench_attention: unknown cache dtype '%s' (f32, bf16 or fp8)\n", d.c_str());
      return 2;
    }
    for (int64_t n : contexts) run(s, n, *dt, bw, peak);
  }
}
