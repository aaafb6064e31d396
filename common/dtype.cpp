#include "common/dtype.h"

namespace shoal {

uint8_t float_to_fp8_e4m3(float f) {
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (std::isnan(f)) return 0x7F;
  if (a >= 448.0f) return sign | 0x7E;
  // Candidates are monotone in their bit pattern: binary search the largest code <= a, then
  // choose between it and the next one by distance (ties to the even code).
  int lo = 0, hi = 0x7E;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (fp8_e4m3_to_float(uint8_t(mid)) <= a) lo = mid; else hi = mid - 1;
  }
  if (lo == 0x7E) return sign | 0x7E;
  const float below = fp8_e4m3_to_float(uint8_t(lo));
  const float above = fp8_e4m3_to_float(uint8_t(lo + 1));
  const float dl = a - below, da = above - a;
  const int code = (dl < da || (dl == da && (lo & 1) == 0)) ? lo : lo + 1;
  return sign | uint8_t(code);
}

}  // namespace shoal
