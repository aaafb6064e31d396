// The AVX2 unpacking of the ggml block types that dominate the usual files, as parts that both
// users of a unit share (included by kernels/cpu/qlinear.h inside its namespace, AVX2 only):
// Unit<T>::take stores them for a batch of tokens, the path for one or two tokens uses them in
// registers.
//
// Every weight comes out in maddubs' form (form_of(T) in qlinear.h: q as is, q + offset, or |q|
// with q kept for its signs), 32 columns at a time ("chunk" c: columns 32c .. 32c + 31, i.e.
// sub-blocks 2c and 2c + 1); sub-block scales and mins come out as floats in lane order P, two
// halves of 8 lanes.
//
// 256-weight types (none in the sign form): Avx2Unit<T>::chunks(b, fn) calls fn(c, qa) for
// c = 0 .. 7, in that order, of the block at b; Avx2Unit<T>::scalars(b) gives d, dmin and the
// scale and min lanes. 32-weight types: Avx2Block<T>::chunk(b, q) gives a block's 32 weights (q:
// its signed values, sign form only) and Avx2Block<T>::d(b) its scale.

inline __m256i load256(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline float f16_at(const uint8_t* p) {  // the F16C conversion: exact, as f16_to_float
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// 8 bytes of a grid row as one integer, for a vector built in registers (a vector loaded from
// four 8-byte stores would wait for them: no store forwarding).
inline int64_t grid8(const void* row) {
  int64_t v;
  std::memcpy(&v, row, 8);
  return v;
}

// Scales (or mins) of 16-weight sub-blocks given in column order (int8 or uint8 s[16]) as floats
// in lane order P.
inline void lanes_of16(__m256* out, __m128i s16_epi8, bool is_signed) {
  const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const __m128i hi = _mm_srli_si128(s16_epi8, 8);
  const __m256i a = is_signed ? _mm256_cvtepi8_epi32(s16_epi8) : _mm256_cvtepu8_epi32(s16_epi8);
  const __m256i c = is_signed ? _mm256_cvtepi8_epi32(hi) : _mm256_cvtepu8_epi32(hi);
  out[0] = _mm256_cvtepi32_ps(_mm256_permutevar8x32_epi32(a, order));
  out[1] = _mm256_cvtepi32_ps(_mm256_permutevar8x32_epi32(c, order));
}
// Scales of 32-weight sub-blocks (8 bytes): sub-blocks 2j, 2j + 1 share byte j. In order P, half
// h's lanes are bytes 4h .. 4h + 3, twice.
inline void lanes_of32(__m256* out, const uint8_t* s8) {
  uint32_t lo, hi;
  std::memcpy(&lo, s8, 4);
  std::memcpy(&hi, s8 + 4, 4);
  out[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set1_epi32(int32_t(lo))));
  out[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set1_epi32(int32_t(hi))));
}

// Scales 2 s + 1 of the 16 sub-blocks where the two of each 32 weights share s = code(g) (IQ2_XXS,
// IQ1_S), in lane order P.
template <class Code>
inline void odd_scales_per32(__m256* out, Code&& code) {
  alignas(16) uint8_t s8[16];
  for (int g = 0; g < 8; ++g) s8[2 * g] = s8[2 * g + 1] = uint8_t(2 * code(g) + 1);
  lanes_of16(out, _mm_load_si128(reinterpret_cast<const __m128i*>(s8)), false);
}

// A 256-weight block's scalars: d and dmin for every lane, scales and mins per lane (mins 0 where
// the type has none).
struct UnitScalars {
  float d = 0.0f, dmin = 0.0f;
  __m256 sc[2], mn[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
};

template <DType T>
struct Avx2Unit;

template <>
struct Avx2Unit<DType::kQ4_K> {  // d, dmin f16 @0, @2; scales[12] @4; qs[128] @16
  template <class Fn>
  static void chunks(const uint8_t* b, Fn&& fn) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    for (int p = 0; p < 4; ++p) {
      const __m256i v = load256(b + 16 + 32 * p);
      fn(2 * p, _mm256_and_si256(v, low4));
      fn(2 * p + 1, _mm256_and_si256(_mm256_srli_epi16(v, 4), low4));
    }
  }
  static UnitScalars scalars(const uint8_t* b) {
    UnitScalars s;
    s.d = f16_at(b), s.dmin = f16_at(b + 2);
    // The 8 six-bit scales and mins (k_scale_min) as bytes, four per 32-bit word.
    uint32_t u[3];
    std::memcpy(u, b + 4, 12);
    const uint32_t six = 0x3F3F3F3F, four = 0x0F0F0F0F, two = 0x03030303;
    const uint32_t sc8[2] = {u[0] & six, (u[2] & four) | (((u[0] >> 6) & two) << 4)};
    const uint32_t mn8[2] = {u[1] & six, ((u[2] >> 4) & four) | (((u[1] >> 6) & two) << 4)};
    lanes_of32(s.sc, reinterpret_cast<const uint8_t*>(sc8));
    lanes_of32(s.mn, reinterpret_cast<const uint8_t*>(mn8));
    return s;
  }
};

template <>
struct Avx2Unit<DType::kQ6_K> {  // ql[128] @0, qh[64] @128, scales int8[16] @192, d f16 @208
  template <class Fn>
  static void chunks(const uint8_t* b, Fn&& fn) {
    const __m256i low4 = _mm256_set1_epi8(0x0F), low2 = _mm256_set1_epi8(0x03);
    for (int h = 0; h < 2; ++h) {
      const __m256i hi = load256(b + 128 + 32 * h);
      for (int r = 0; r < 4; ++r) {
        __m256i lo = load256(b + 64 * h + 32 * (r & 1));
        if (r >= 2) lo = _mm256_srli_epi16(lo, 4);
        lo = _mm256_and_si256(lo, low4);
        const __m256i top = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hi, 2 * r), low2), 4);
        fn(4 * h + r, _mm256_or_si256(lo, top));  // q + 32 (0..63)
      }
    }
  }
  static UnitScalars scalars(const uint8_t* b) {
    UnitScalars s;
    s.d = f16_at(b + 208);
    lanes_of16(s.sc, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)), true);
    return s;
  }
};

template <>
struct Avx2Unit<DType::kQ2_K> {  // scales[16] @0 (low: scale, high: min), qs[64] @16, d, dmin @80, @82
  template <class Fn>
  static void chunks(const uint8_t* b, Fn&& fn) {
    const __m256i low2 = _mm256_set1_epi8(0x03);
    for (int h = 0; h < 2; ++h) {
      const __m256i q = load256(b + 16 + 32 * h);
      for (int r = 0; r < 4; ++r) fn(4 * h + r, _mm256_and_si256(_mm256_srli_epi16(q, 2 * r), low2));
    }
  }
  static UnitScalars scalars(const uint8_t* b) {
    UnitScalars s;
    s.d = f16_at(b + 80), s.dmin = f16_at(b + 82);
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
    lanes_of16(s.sc, _mm_and_si128(v, _mm_set1_epi8(0x0F)), false);
    lanes_of16(s.mn, _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(0x0F)), false);
    return s;
  }
};

template <>
struct Avx2Unit<DType::kQ3_K> {  // hmask[32] @0, qs[64] @32, scales[12] @96, d @108
  template <class Fn>
  static void chunks(const uint8_t* b, Fn&& fn) {
    const __m256i low2 = _mm256_set1_epi8(0x03);
    const __m256i m = load256(b);
    for (int h = 0; h < 2; ++h) {
      const __m256i q = load256(b + 32 + 32 * h);
      for (int r = 0; r < 4; ++r) {
        // q + 4 = low two bits + 4 * (hmask bit 4h + r)
        const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(q, 2 * r), low2);
        const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(m, 4 * h + r), _mm256_set1_epi8(1));
        fn(4 * h + r, _mm256_or_si256(lo, _mm256_slli_epi16(hb, 2)));
      }
    }
  }
  static UnitScalars scalars(const uint8_t* b) {
    UnitScalars s;
    s.d = f16_at(b + 108);
    uint32_t u[3];
    std::memcpy(u, b + 96, 12);
    const uint32_t four = 0x0F0F0F0F, two = 0x03030303;
    // Sixteen 6-bit scales - 32: low nibbles from bytes 0..7 (i < 8) and their high nibbles
    // (i >= 8), top two bits from bytes 8..11 at bits 2(i / 4).
    const uint32_t v[4] = {(u[0] & four) | ((u[2] & two) << 4), (u[1] & four) | (((u[2] >> 2) & two) << 4),
                           ((u[0] >> 4) & four) | (((u[2] >> 4) & two) << 4), ((u[1] >> 4) & four) | (((u[2] >> 6) & two) << 4)};
    lanes_of16(s.sc, _mm_sub_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v)), _mm_set1_epi8(32)), true);
    return s;
  }
};

// The IQ2 sign codes (7 stored bits, parity for the 8th) as byte masks: 0xFF where negative.
constexpr std::array<uint64_t, 128> kSignBytes = [] {
  std::array<uint64_t, 128> t{};
  for (uint32_t c = 0; c < 128; ++c) {
    const uint8_t s = ggml::iq_signs(c);
    for (int j = 0; j < 8; ++j)
      if ((s >> j) & 1) t[c] |= uint64_t(0xFF) << (8 * j);
  }
  return t;
}();

template <>
struct Avx2Unit<DType::kIQ2_XXS> {  // d @0; per 32: 4 grid indices, u32 of signs and scale
  template <class Fn>
  static void chunks(const uint8_t* b, Fn&& fn) {
    const __m256i off = _mm256_set1_epi8(43);
    for (int g = 0; g < 8; ++g) {
      const uint8_t* q = b + 2 + 8 * g;
      uint32_t aux;
      std::memcpy(&aux, q + 4, 4);
      const __m256i gv = _mm256_setr_epi64x(grid8(ggml::kIq2xxsGrid[q[0]].data()), grid8(ggml::kIq2xxsGrid[q[1]].data()),
                                            grid8(ggml::kIq2xxsGrid[q[2]].data()), grid8(ggml::kIq2xxsGrid[q[3]].data()));
      const __m256i nv = _mm256_setr_epi64x(int64_t(kSignBytes[aux & 127]), int64_t(kSignBytes[(aux >> 7) & 127]),
                                            int64_t(kSignBytes[(aux >> 14) & 127]), int64_t(kSignBytes[(aux >> 21) & 127]));
      // Negate where the sign is set, then the offset form (+ 43).
      fn(g, _mm256_add_epi8(_mm256_sub_epi8(_mm256_xor_si256(gv, nv), nv), off));
    }
  }
  static UnitScalars scalars(const uint8_t* b) {
    UnitScalars s;
    s.d = f16_at(b) * 0.125f;
    odd_scales_per32(s.sc, [&](int g) {
      uint32_t aux;
      std::memcpy(&aux, b + 2 + 8 * g + 4, 4);
      return aux >> 28;
    });
    return s;
  }
};

template <>
struct Avx2Unit<DType::kIQ1_S> {  // d @0; qs[32] @2; qh u16[8] @34
  template <class Fn>
  static void chunks(const uint8_t* b, Fn&& fn) {
    const __m256i eight = _mm256_set1_epi8(8);
    for (int g = 0; g < 8; ++g) {
      uint16_t qh;
      std::memcpy(&qh, b + 34 + 2 * g, 2);
      const uint8_t* q = b + 2 + 4 * g;
      const __m256i gv = _mm256_setr_epi64x(grid8(ggml::kIq1sGrid[q[0] | ((qh & 7) << 8)].data()),
                                            grid8(ggml::kIq1sGrid[q[1] | (((qh >> 3) & 7) << 8)].data()),
                                            grid8(ggml::kIq1sGrid[q[2] | (((qh >> 6) & 7) << 8)].data()),
                                            grid8(ggml::kIq1sGrid[q[3] | (((qh >> 9) & 7) << 8)].data()));
      // q + 9 = 8 grid + delta + 9 (grid in -1, 0, 1; delta -1 or 1), with no branch
      fn(g, _mm256_add_epi8(_mm256_sign_epi8(eight, gv), _mm256_set1_epi8(int8_t(10 - 2 * (qh >> 15)))));
    }
  }
  static UnitScalars scalars(const uint8_t* b) {
    UnitScalars s;
    s.d = f16_at(b) * 0.125f;
    odd_scales_per32(s.sc, [&](int g) {
      uint16_t qh;
      std::memcpy(&qh, b + 34 + 2 * g, 2);
      return uint32_t(qh >> 12) & 7;
    });
    return s;
  }
};

template <DType T>
struct Avx2Block;

template <>
struct Avx2Block<DType::kQ8_0> {  // d f16 @0, qs int8[32] @2
  static __m256i chunk(const uint8_t* b, __m256i& q) {
    q = load256(b + 2);
    return _mm256_sign_epi8(q, q);  // |q|; |-128| stays 0x80, read as u8 128
  }
  static float d(const uint8_t* b) { return f16_at(b); }
};

// Q4_0, IQ4_NL: qs[16] @2; Q5_0: qh u32 @2, qs[16] @6; d f16 @0. Byte j of qs holds weight j
// (low nibble) and j + 16 (high nibble).
template <DType T>
struct Avx2Nibbles {
  static __m256i chunk(const uint8_t* b, __m256i& signed_q) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + (T == DType::kQ5_0 ? 6 : 2)));
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m256i nib = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4));
    if constexpr (T == DType::kQ5_0) {  // fifth bit j of qh above weight j: q + 16 = nibble | bit << 4
      uint32_t qh;
      std::memcpy(&qh, b + 2, 4);
      const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(int32_t(qh)),
                                                _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202,
                                                                   0x0303030303030303));
      const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
      const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
      nib = _mm256_or_si256(nib, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
    }
    if constexpr (T == DType::kIQ4_NL) {  // the 16 levels, then the sign form
      const __m128i lv = _mm_setr_epi8(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);
      signed_q = _mm256_shuffle_epi8(_mm256_set_m128i(lv, lv), nib);
      return _mm256_sign_epi8(signed_q, signed_q);
    }
    return nib;  // q + 8 (Q4_0), q + 16 (Q5_0): the offset form
  }
  static float d(const uint8_t* b) { return f16_at(b); }
};
template <>
struct Avx2Block<DType::kQ4_0> : Avx2Nibbles<DType::kQ4_0> {};
template <>
struct Avx2Block<DType::kQ5_0> : Avx2Nibbles<DType::kQ5_0> {};
template <>
struct Avx2Block<DType::kIQ4_NL> : Avx2Nibbles<DType::kIQ4_NL> {};

template <DType T>
constexpr bool kAvx2Unit = T == DType::kQ4_K || T == DType::kQ6_K || T == DType::kQ2_K || T == DType::kQ3_K ||
                           T == DType::kIQ2_XXS || T == DType::kIQ1_S;
template <DType T>
constexpr bool kAvx2Block = T == DType::kQ8_0 || T == DType::kQ4_0 || T == DType::kQ5_0 || T == DType::kIQ4_NL;
