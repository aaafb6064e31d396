// Matrix products against weights in their stored dtype. Rows are dequantized into a small
// thread-local buffer and dotted with many activation rows, so each weight byte is read once
// per tile of tokens: decode (one token) streams the weights at memory speed.
#include <algorithm>
#include <cmath>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu.h"

namespace shoal::kernels::cpu {
namespace {

constexpr int64_t kTokenTile = 32;  // activation rows that share one dequantized weight row
constexpr int64_t kFusedTokens = 4; // up to this many rows, dot straight from the stored bytes

// One summation order for every path: 64 lanes (lane = column % 64, each summing its columns
// in increasing order), then a fixed tree. The fused (decode) and tiled (prefill) paths both use
// it, so a token's result does not depend on how many tokens share its call: batch invariance,
// which makes a sequence's output independent of the batch around it. Products and sums are
// separate roundings (kernels build with -ffp-contract=off), the same in vector and scalar code.
// GCC vector types give AVX-512, AVX2 or SSE code from one source.
using f32x16 = float __attribute__((vector_size(64)));
using u32x16 = uint32_t __attribute__((vector_size(64)));
using u16x16 = uint16_t __attribute__((vector_size(32)));
using u8x16 = uint8_t __attribute__((vector_size(16)));

inline f32x16 load16_f32(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
// Widening loads: 16 bf16 or e4m3 codes -> 16 u32. x86 has single instructions for these;
// elsewhere GCC's generic conversion.
inline u32x16 widen16(const uint16_t* p) {
#if defined(__AVX512F__)
  return reinterpret_cast<u32x16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#else
  u16x16 h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, u32x16);
#endif
}
inline u32x16 widen16(const uint8_t* p) {
#if defined(__AVX512F__)
  return reinterpret_cast<u32x16>(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__AVX2__)
  const __m256i lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m256i hi = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)));
  u32x16 w;
  std::memcpy(&w, &lo, 32);
  std::memcpy(reinterpret_cast<char*>(&w) + 32, &hi, 32);
  return w;
#else
  u8x16 b;
  std::memcpy(&b, p, sizeof b);
  return __builtin_convertvector(b, u32x16);
#endif
}
inline f32x16 load16_bf16(const uint16_t* p) { return reinterpret_cast<f32x16>(widen16(p) << 16); }
inline f32x16 load16_fp8(const uint8_t* p) {  // fp8_e4m3_to_float on 16 bytes
  const u32x16 w = widen16(p);
  const f32x16 mag = reinterpret_cast<f32x16>((w & 0x7F) << 20) * 0x1p120f;
  return reinterpret_cast<f32x16>(reinterpret_cast<u32x16>(mag) | ((w & 0x80) << 24));
}

// 64 lanes in four vectors, so four independent add chains keep the FP units busy.
struct Lanes {
  static constexpr int64_t kWidth = 64;
  f32x16 acc[4] = {};
  void add_one(int64_t c, float product) { acc[(c / 16) % 4][c % 16] += product; }
  float sum() {
    float a[kWidth];
    std::memcpy(a, acc, sizeof a);
    for (int64_t k = kWidth / 2; k > 0; k /= 2)
      for (int64_t j = 0; j < k; ++j) a[j] += a[j + k];
    return a[0];
  }
};

// Adds columns [c0, c1) of R weight rows times x into their lanes; c0 a multiple of 64. Chunk
// of 16 columns k goes to acc[k % 4], the tail column by column: column c always lands in lane
// c % 64 of its row, whatever R is. The R rows share each load of x (x stays in L1 and is read
// once per R rows). load16(k, c): 16 weights of row k from column c; one(k, c): one weight.
template <int R, typename Load16, typename Load1>
void add_rows(Lanes* l, Load16 load16, Load1 one, const float* x, int64_t c0, int64_t c1) {
  int64_t c = c0;
  for (; c + 64 <= c1; c += 64) {
    const f32x16 x0 = load16_f32(x + c), x1 = load16_f32(x + c + 16);
    const f32x16 x2 = load16_f32(x + c + 32), x3 = load16_f32(x + c + 48);
    for (int k = 0; k < R; ++k) {
      l[k].acc[0] += load16(k, c) * x0;
      l[k].acc[1] += load16(k, c + 16) * x1;
      l[k].acc[2] += load16(k, c + 32) * x2;
      l[k].acc[3] += load16(k, c + 48) * x3;
    }
  }
  for (; c + 16 <= c1; c += 16)
    for (int k = 0; k < R; ++k) l[k].acc[(c / 16) % 4] += load16(k, c) * load16_f32(x + c);
  for (; c < c1; ++c)
    for (int k = 0; k < R; ++k) l[k].add_one(c, one(k, c) * x[c]);
}

inline float dot(const float* a, const float* b, int64_t n) {
  Lanes l;
  add_rows<1>(&l, [a](int, int64_t c) { return load16_f32(a + c); }, [a](int, int64_t c) { return a[c]; }, b, 0, n);
  return l.sum();
}

// Rows r .. r+R-1 of w dotted with x[cols], reading the stored dtype directly (decode: one pass
// over the weights, no buffer): out[k * stride]. Each weight is the float dequantize_span gives
// (for FP8 the product e4m3 * block scale), summed in dot's order, so the result is bitwise
// the tiled path's.
template <int R>
void dot_stored(const Matrix& w, int64_t r, const float* x, float* out, int64_t stride) {
  const int64_t cols = w.cols, row = w.row0 + r;
  Lanes l[R];
  switch (w.dtype) {
    case DType::kF32: {
      const float* p = static_cast<const float*>(w.data) + row * cols;
      add_rows<R>(l, [=](int k, int64_t c) { return load16_f32(p + k * cols + c); },
                  [=](int k, int64_t c) { return p[k * cols + c]; }, x, 0, cols);
      break;
    }
    case DType::kBF16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + row * cols;
      add_rows<R>(l, [=](int k, int64_t c) { return load16_bf16(p + k * cols + c); },
                  [=](int k, int64_t c) { return bf16_to_float(p[k * cols + c]); }, x, 0, cols);
      break;
    }
    case DType::kF16: {  // rare in DeepSeek checkpoints: scalar conversion, same lanes
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + row * cols;
      for (int k = 0; k < R; ++k)
        for (int64_t c = 0; c < cols; ++c) l[k].add_one(c, f16_to_float(p[k * cols + c]) * x[c]);
      break;
    }
    case DType::kF8E4M3: {
      const uint8_t* p = static_cast<const uint8_t*>(w.data) + row * cols;
      const int64_t block = w.block;
      const float* scales[R];
      for (int k = 0; k < R; ++k) scales[k] = w.scale_inv + ((row + k) / block) * w.scale_cols();
      if (block % Lanes::kWidth != 0) {  // chunks would straddle blocks: per column, same lanes
        for (int k = 0; k < R; ++k)
          for (int64_t c = 0; c < cols; ++c)
            l[k].add_one(c, fp8_e4m3_to_float(p[k * cols + c]) * scales[k][c / block] * x[c]);
        break;
      }
      for (int64_t b0 = 0; b0 < cols; b0 += block) {
        float s[R];
        for (int k = 0; k < R; ++k) s[k] = scales[k][b0 / block];
        add_rows<R>(l, [&](int k, int64_t c) { return load16_fp8(p + k * cols + c) * s[k]; },
                    [&](int k, int64_t c) { return fp8_e4m3_to_float(p[k * cols + c]) * s[k]; }, x, b0,
                    std::min(cols, b0 + block));
      }
      break;
    }
  }
  for (int k = 0; k < R; ++k) out[k * stride] = l[k].sum();
}

}  // namespace

void dequantize_span(float* out, const Matrix& w, int64_t r, int64_t c0, int64_t c1) {
  const int64_t row = w.row0 + r;
  const int64_t base = row * w.cols;
  switch (w.dtype) {
    case DType::kF32:
      std::memcpy(out, static_cast<const float*>(w.data) + base + c0, sizeof(float) * size_t(c1 - c0));
      return;
    case DType::kBF16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + base;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) out[c - c0] = bf16_to_float(p[c]);
      return;
    }
    case DType::kF16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + base;
      for (int64_t c = c0; c < c1; ++c) out[c - c0] = f16_to_float(p[c]);
      return;
    }
    case DType::kF8E4M3: {
      const uint8_t* p = static_cast<const uint8_t*>(w.data) + base;
      const float* scales = w.scale_inv + (row / w.block) * w.scale_cols();
      for (int64_t b0 = c0; b0 < c1;) {
        const int64_t b1 = std::min(c1, (b0 / w.block + 1) * w.block);
        const float s = scales[b0 / w.block];
#pragma omp simd
        for (int64_t c = b0; c < b1; ++c) out[c - c0] = fp8_e4m3_to_float(p[c]) * s;
        b0 = b1;
      }
      return;
    }
  }
}

void linear(float* out, const float* x, const Matrix& w, int64_t n, const Context&) {
  const int64_t rows = w.rows, cols = w.cols;
  if (n <= kFusedTokens) {
    constexpr int64_t kRows = 4;  // weight rows per step, sharing each load of x
    const int64_t groups = rows / kRows;
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g <= groups; ++g)
      for (int64_t t = 0; t < n; ++t) {
        if (g < groups) dot_stored<kRows>(w, g * kRows, x + t * cols, out + t * rows + g * kRows, 1);
        else
          for (int64_t r = groups * kRows; r < rows; ++r) dot_stored<1>(w, r, x + t * cols, out + t * rows + r, 1);
      }
    return;
  }
  for (int64_t t0 = 0; t0 < n; t0 += kTokenTile) {
    const int64_t t1 = std::min(n, t0 + kTokenTile);
#pragma omp parallel
    {
      std::vector<float> buf(static_cast<size_t>(w.dtype == DType::kF32 ? 0 : cols));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        const float* wr;
        if (w.dtype == DType::kF32) {
          wr = static_cast<const float*>(w.data) + (w.row0 + r) * cols;
        } else {
          dequantize_span(buf.data(), w, r, 0, cols);
          wr = buf.data();
        }
        for (int64_t t = t0; t < t1; ++t) out[t * rows + r] = dot(wr, x + t * cols, cols);
      }
    }
  }
}

void linear_t(float* out, const float* x, const Matrix& w, int64_t n, const Context&) {
  const int64_t rows = w.rows, cols = w.cols;
  constexpr int64_t kColTile = 256;
  const int64_t n_tiles = (cols + kColTile - 1) / kColTile;
#pragma omp parallel
  {
    std::vector<float> buf(kColTile);
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < n_tiles; ++tile) {
      const int64_t c0 = tile * kColTile, c1 = std::min(cols, c0 + kColTile), width = c1 - c0;
      for (int64_t t = 0; t < n; ++t) std::fill(out + t * cols + c0, out + t * cols + c1, 0.0f);
      for (int64_t r = 0; r < rows; ++r) {
        dequantize_span(buf.data(), w, r, c0, c1);
        for (int64_t t = 0; t < n; ++t) {
          const float xr = x[t * rows + r];
          float* o = out + t * cols + c0;
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) o[c] += xr * buf[c];
        }
      }
    }
  }
}

}  // namespace shoal::kernels::cpu
