#include "common/dtype.h"

#include <cstring>

namespace shoal {

// Nearest e4m3fn value, ties to even, saturating at +-448. Normal range: keep the float's
// exponent (rebias 127 -> 7) and round its 23-bit mantissa to 3 bits; a carry out of the
// mantissa moves into the exponent, which is exactly the next binade. Below 2^-6 the
// representable values are the subnormals m * 2^-9.
uint8_t float_to_fp8_e4m3(float f) {
  if (std::isnan(f)) return 0x7F;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7E;
  if (a < 0x1p-6f) {
    // a * 2^9 is exact; nearbyint rounds half to even in the default rounding mode.
    return sign | uint8_t(std::nearbyint(a * 0x1p9f));
  }
  const uint32_t bits = std::bit_cast<uint32_t>(a);
  const uint32_t exponent = (bits >> 23) - 127 + 7;  // 1..8 here
  const uint32_t mantissa = bits & 0x7FFFFF;
  uint32_t code = (exponent << 3) | (mantissa >> 20);
  const uint32_t rest = mantissa & 0xFFFFF, half = 0x80000;
  if (rest > half || (rest == half && (code & 1))) ++code;
  return sign | uint8_t(code > 0x7E ? 0x7E : code);
}

}  // namespace shoal
