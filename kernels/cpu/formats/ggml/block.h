// Dequantization of one block of each ggml block type (Q4_0 ... IQ1_M, common/dtype.h), equal bit
// for bit to ggml's reference dequantize_row_* (ggml-quants.c): the same float operations in the
// same order, fp16 scales widened exactly. The specialisations live in one header per type family
// (included at the end). Byte offsets are those of the GGUF block layouts; multi-byte fields are
// little-endian and read with memcpy.
//
// Plain scalar C++, so that the per-instruction-set translation units that include this header
// may vectorise it. All of it has internal linkage (the function template is static, helpers sit
// in an unnamed namespace), so copies built for different instruction sets never merge at link
// time. Products and sums must round separately: compile with -ffp-contract=off (shoal_kernels
// does), or an FMA target would fuse `a * q - m`.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

#include "common/dtype.h"

namespace shoal::kernels::cpu::ggml {

// Dequantizes one block of type T (dtype_bytes(T) bytes at b) into dtype_block(T) floats,
// bit-exact with ggml.
template <DType T>
static void dequantize_block(const uint8_t* b, float* y);

// Runtime dispatch (tests, scalar paths): same, by value; t must be a ggml block type.
void dequantize_block(DType t, const uint8_t* b, float* y);

// The integer form of a block, for fast numerics' integer dot products: weight i equals, in
// real numbers, d * sc[i / 16] * q[i] - dmin * mn[i / 16] (sub-blocks of 16 weights; a type
// with 32-weight sub-blocks repeats each scale twice; a 32-weight block uses sc[0..1]). q fits
// int8 and |q| <= 128, so the products of |q| with int8 activations never saturate maddubs.
struct IntBlock {
  alignas(64) int8_t q[256];
  int16_t sc[16];
  int16_t mn[16];
  float d, dmin;
};
template <DType T>
static void unpack_block(const uint8_t* b, IntBlock& w);

namespace {

static_assert(std::endian::native == std::endian::little, "ggml blocks are read as little-endian words");

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline float load_f16(const uint8_t* p) { return f16_to_float(load_u16(p)); }
inline float load_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace
}  // namespace shoal::kernels::cpu::ggml

#include "kernels/cpu/formats/ggml/iq1.h"
#include "kernels/cpu/formats/ggml/iq2.h"
#include "kernels/cpu/formats/ggml/iq3.h"
#include "kernels/cpu/formats/ggml/iq4.h"
#include "kernels/cpu/formats/ggml/k_quants.h"
#include "kernels/cpu/formats/ggml/legacy.h"
