// ggml block dequantization (kernels/cpu/formats/ggml/) against ggml's reference C code, bit for
// bit: tests/fixtures/ggml-blocks/<TYPE>.bin holds random and real (GGUF fixture) blocks of each
// type with the float32 values ggml's dequantize_row_* gives for them
// (tools/gen_ggml_block_vectors.py). Both the templated and the runtime-dispatch functions must
// reproduce every value's bits.
#include <catch2/catch.hpp>

#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <type_traits>
#include <vector>

#include "common/dtype.h"
#include "kernels/cpu/formats/ggml/block.h"

namespace {

using shoal::DType;
namespace ggml = shoal::kernels::cpu::ggml;

struct Vectors {
  uint32_t ggml_id = 0, block_bytes = 0, block_weights = 0, n_random = 0, n_real = 0;
  std::vector<uint8_t> blocks;     // (n_random + n_real) * block_bytes
  std::vector<uint32_t> expected;  // (n_random + n_real) * block_weights float32 bit patterns
  uint32_t n() const { return n_random + n_real; }
};

uint32_t read_u32(const std::vector<uint8_t>& f, size_t off) {
  uint32_t v;
  std::memcpy(&v, f.data() + off, 4);
  return v;
}

Vectors load(DType t) {
  const std::string path = std::string(SHOAL_FIXTURES) + "/ggml-blocks/" + std::string(shoal::dtype_name(t)) + ".bin";
  std::ifstream in(path, std::ios::binary);
  INFO(path);
  REQUIRE(in.good());
  const std::vector<uint8_t> f((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(f.size() >= 24);
  REQUIRE(std::memcmp(f.data(), "SGB1", 4) == 0);
  Vectors v;
  v.ggml_id = read_u32(f, 4);
  v.block_bytes = read_u32(f, 8);
  v.block_weights = read_u32(f, 12);
  v.n_random = read_u32(f, 16);
  v.n_real = read_u32(f, 20);
  REQUIRE(int64_t(v.ggml_id) == shoal::dtype_info(t).ggml_id);
  REQUIRE(int64_t(v.block_bytes) == shoal::dtype_bytes(t));
  REQUIRE(int64_t(v.block_weights) == shoal::dtype_block(t));
  REQUIRE(v.n() > 0);
  const size_t nb = size_t(v.n()) * v.block_bytes, nw = size_t(v.n()) * v.block_weights;
  REQUIRE(f.size() == 24 + nb + 4 * nw);
  v.blocks.assign(f.begin() + 24, f.begin() + 24 + nb);
  v.expected.resize(nw);
  std::memcpy(v.expected.data(), f.data() + 24 + nb, 4 * nw);
  return v;
}

// Dequantizes every block with `dequant` and requires each value's bits to equal ggml's; reports
// the first few differences by type, block and index.
template <class F>
void check(DType t, const Vectors& v, const char* which, F dequant) {
  std::vector<float> y(v.block_weights);
  int64_t bad = 0;
  for (uint32_t i = 0; i < v.n(); ++i) {
    std::fill(y.begin(), y.end(), std::bit_cast<float>(0x7FC0DEADu));  // a NaN nothing computes
    dequant(v.blocks.data() + size_t(i) * v.block_bytes, y.data());
    for (uint32_t j = 0; j < v.block_weights; ++j) {
      const uint32_t got = std::bit_cast<uint32_t>(y[j]);
      const uint32_t want = v.expected[size_t(i) * v.block_weights + j];
      if (got == want) continue;
      if (++bad <= 8) {
        char msg[256];
        std::snprintf(msg, sizeof msg, "%s (%s): block %u (%s) index %u: got 0x%08x (%.9g), ggml 0x%08x (%.9g)",
                      std::string(shoal::dtype_name(t)).c_str(), which, i, i < v.n_random ? "random" : "gguf", j,
                      got, double(y[j]), want, double(std::bit_cast<float>(want)));
        FAIL_CHECK(msg);
      }
    }
  }
  INFO(shoal::dtype_name(t) << " (" << which << "): " << bad << " of " << v.expected.size() << " values differ");
  REQUIRE(bad == 0);
}

template <DType T>
using Type = std::integral_constant<DType, T>;

}  // namespace

TEMPLATE_TEST_CASE("ggml blocks dequantize bit for bit as ggml", "[ggml]", Type<DType::kQ4_0>, Type<DType::kQ4_1>,
                   Type<DType::kQ5_0>, Type<DType::kQ5_1>, Type<DType::kQ8_0>, Type<DType::kQ2_K>, Type<DType::kQ3_K>,
                   Type<DType::kQ4_K>, Type<DType::kQ5_K>, Type<DType::kQ6_K>, Type<DType::kQ8_K>,
                   Type<DType::kIQ2_XXS>, Type<DType::kIQ2_XS>, Type<DType::kIQ3_XXS>, Type<DType::kIQ1_S>,
                   Type<DType::kIQ4_NL>, Type<DType::kIQ3_S>, Type<DType::kIQ2_S>, Type<DType::kIQ4_XS>,
                   Type<DType::kIQ1_M>) {
  constexpr DType t = TestType::value;
  const Vectors v = load(t);
  check(t, v, "template", [](const uint8_t* b, float* y) { ggml::dequantize_block<t>(b, y); });
  check(t, v, "runtime", [](const uint8_t* b, float* y) { ggml::dequantize_block(t, b, y); });
}

TEST_CASE("every ggml block type has vectors", "[ggml]") {
  int types = 0;
  for (const auto& info : shoal::kDTypes) {
    if (!shoal::dtype_is_block(info.dtype)) continue;
    ++types;
    const Vectors v = load(info.dtype);
    CHECK(v.n_random > 0);
  }
  CHECK(types == 20);
}

// ---- the integer forms and fast numerics (kernels/cpu/qlinear.h) -------------------------------

#include <cmath>

#include "kernels/cpu/variant.h"
#include "kernels/kernels.h"

TEMPLATE_TEST_CASE("integer forms equal the dequantized values", "[ggml][fast]", Type<DType::kQ4_0>, Type<DType::kQ4_1>,
                   Type<DType::kQ5_0>, Type<DType::kQ5_1>, Type<DType::kQ8_0>, Type<DType::kQ2_K>, Type<DType::kQ3_K>,
                   Type<DType::kQ4_K>, Type<DType::kQ5_K>, Type<DType::kQ6_K>, Type<DType::kQ8_K>,
                   Type<DType::kIQ2_XXS>, Type<DType::kIQ2_XS>, Type<DType::kIQ3_XXS>, Type<DType::kIQ1_S>,
                   Type<DType::kIQ4_NL>, Type<DType::kIQ3_S>, Type<DType::kIQ2_S>, Type<DType::kIQ4_XS>,
                   Type<DType::kIQ1_M>) {
  constexpr DType t = TestType::value;
  const Vectors v = load(t);
  std::vector<float> y(v.block_weights);
  int64_t bad = 0;
  for (uint32_t i = 0; i < v.n(); ++i) {
    const uint8_t* b = v.blocks.data() + size_t(i) * v.block_bytes;
    ggml::dequantize_block<t>(b, y.data());
    ggml::IntBlock w;
    ggml::unpack_block<t>(b, w);
    for (uint32_t j = 0; j < v.block_weights; ++j) {
      // d * sc * q - dmin * mn in double: the real number the block encodes; ggml rounds twice.
      const double real = double(w.d) * w.sc[j / 16] * w.q[j] - double(w.dmin) * w.mn[j / 16];
      if (std::fabs(real - y[j]) > 1e-6 * std::fabs(real) + 1e-30 && ++bad <= 4)
        FAIL_CHECK(shoal::dtype_name(t) << " block " << i << " index " << j << ": integer form " << real
                                        << ", dequantized " << y[j]);
    }
  }
  REQUIRE(bad == 0);
}

namespace {

// Rows of blocks from the type's vectors: 2 of the 256-weight types, 10 of the 32-weight ones (one
// whole 256-column unit and 2 single blocks after it).
shoal::kernels::Matrix rows_of(const Vectors& v, DType t, int64_t rows, std::vector<uint8_t>& storage) {
  const int64_t bw = v.block_weights, per_row = bw == 32 ? 10 : 2;
  storage.resize(size_t(rows * per_row) * v.block_bytes);
  for (int64_t k = 0; k < rows * per_row; ++k)
    std::memcpy(storage.data() + k * v.block_bytes, v.blocks.data() + size_t(k % v.n()) * v.block_bytes, v.block_bytes);
  shoal::kernels::Matrix m;
  m.data = storage.data();
  m.dtype = t;
  m.rows = rows;
  m.cols = per_row * bw;
  return m;
}

}  // namespace

TEMPLATE_TEST_CASE("fast linear: exact integer dots, same bits in any batch and variant", "[ggml][fast]",
                   Type<DType::kQ4_0>, Type<DType::kQ4_1>, Type<DType::kQ5_0>, Type<DType::kQ5_1>, Type<DType::kQ8_0>,
                   Type<DType::kQ2_K>, Type<DType::kQ3_K>, Type<DType::kQ4_K>, Type<DType::kQ5_K>, Type<DType::kQ6_K>,
                   Type<DType::kQ8_K>, Type<DType::kIQ2_XXS>, Type<DType::kIQ2_XS>, Type<DType::kIQ3_XXS>,
                   Type<DType::kIQ1_S>, Type<DType::kIQ4_NL>, Type<DType::kIQ3_S>, Type<DType::kIQ2_S>,
                   Type<DType::kIQ4_XS>, Type<DType::kIQ1_M>) {
  namespace k = shoal::kernels;
  constexpr DType t = TestType::value;
  const Vectors v = load(t);
  std::vector<uint8_t> storage;
  const int64_t R = 21, n = 7;
  k::Matrix w = rows_of(v, t, R, storage);
  const int64_t K = w.cols;
  // Whole-number activations whose every 16 reach 127: the quantized activations are the values
  // themselves (scale 1), so the fast result is the exact dot of the integer forms.
  std::vector<float> x(size_t(n * K));
  uint32_t seed = 12345;
  for (size_t i = 0; i < x.size(); ++i) {
    seed = seed * 1664525u + 1013904223u;
    x[i] = float(int(seed >> 24) % 255 - 127);
  }
  for (int64_t i = 0; i < n * K; i += 16) x[size_t(i + (i / 16) % 16)] = (i / 16) & 1 ? 127.f : -127.f;
  k::Context ctx;
  w.numerics = k::Numerics::kFast;
  std::vector<float> fast(static_cast<size_t>(n * R)), one(static_cast<size_t>(R));
  k::linear(fast.data(), x.data(), w, n, ctx);
  std::vector<float> row(static_cast<size_t>(K));
  for (int64_t r = 0; r < R; ++r) {
    k::dequantize_row(row.data(), w, r);
    for (int64_t tok = 0; tok < n; ++tok) {
      double ref = 0, mag = 0;
      for (int64_t c = 0; c < K; ++c) {
        ref += double(row[size_t(c)]) * x[size_t(tok * K + c)];
        mag += std::fabs(double(row[size_t(c)]) * x[size_t(tok * K + c)]);
      }
      INFO(shoal::dtype_name(t) << " row " << r << " token " << tok);
      CHECK(std::fabs(fast[size_t(tok * R + r)] - ref) <= 1e-5 * mag + 1e-30);
    }
  }
  // Each token alone, and the batch again under every variant: the same bits.
  for (int64_t tok = 0; tok < n; ++tok) {
    k::linear(one.data(), x.data() + tok * K, w, 1, ctx);
    for (int64_t r = 0; r < R; ++r) CHECK(std::bit_cast<uint32_t>(one[size_t(r)]) == std::bit_cast<uint32_t>(fast[size_t(tok * R + r)]));
  }
  const auto active = shoal::kernels::cpu::active_variant();
  for (auto variant : shoal::kernels::cpu::supported_variants()) {
    shoal::kernels::cpu::set_variant(variant);
    std::vector<float> again(fast.size());
    k::linear(again.data(), x.data(), w, n, ctx);
    INFO(shoal::dtype_name(t) << " variant " << shoal::kernels::cpu::variant_name(variant));
    CHECK(std::memcmp(again.data(), fast.data(), fast.size() * sizeof(float)) == 0);
  }
  // Activations of every magnitude, whose per-16 scales and products round: every variant, in a
  // batch or a token at a time, gives the portable baseline's bits (its scalar order is the
  // definition of the canonical sum).
  std::vector<float> y(x.size());
  for (size_t i = 0; i < y.size(); ++i) {
    seed = seed * 1664525u + 1013904223u;
    y[i] = std::ldexp(float(int32_t(seed >> 8) - (1 << 23)) / float(1 << 23), int(seed % 7) - 3);
  }
  shoal::kernels::cpu::set_variant(shoal::kernels::cpu::Variant::kBaseline);
  std::vector<float> reference(fast.size());
  k::linear(reference.data(), y.data(), w, n, ctx);
  for (auto variant : shoal::kernels::cpu::supported_variants()) {
    shoal::kernels::cpu::set_variant(variant);
    std::vector<float> batch(fast.size());
    k::linear(batch.data(), y.data(), w, n, ctx);
    INFO(shoal::dtype_name(t) << " variant " << shoal::kernels::cpu::variant_name(variant));
    CHECK(std::memcmp(batch.data(), reference.data(), reference.size() * sizeof(float)) == 0);
    for (int64_t tok = 0; tok < n; ++tok) {
      k::linear(one.data(), y.data() + tok * K, w, 1, ctx);
      CHECK(std::memcmp(one.data(), reference.data() + tok * R, size_t(R) * sizeof(float)) == 0);
    }
    for (int64_t m : {2, 3}) {  // the few-token paths
      std::vector<float> few(static_cast<size_t>(m * R));
      k::linear(few.data(), y.data() + K, w, m, ctx);
      CHECK(std::memcmp(few.data(), reference.data() + R, few.size() * sizeof(float)) == 0);
    }
  }
  shoal::kernels::cpu::set_variant(active);
}
