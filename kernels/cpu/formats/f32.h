// F32 weights (and the float32 panels the prefill path dequantizes other formats into).
#pragma once

#include "kernels/cpu/formats/widened.h"

namespace shoal::kernels::cpu {
namespace {

inline float f32_one(float v) { return v; }
using F32Rows = WidenedRows<float, load16, f32_one>;

}  // namespace
}  // namespace shoal::kernels::cpu
