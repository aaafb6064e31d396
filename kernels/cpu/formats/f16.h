// F16 weights: widened exactly (F16C or the portable conversion of simd.h).
#pragma once

#include "kernels/cpu/formats/widened.h"

namespace shoal::kernels::cpu {
namespace {

using F16Rows = WidenedRows<uint16_t, f16x16, f16_one>;

}  // namespace
}  // namespace shoal::kernels::cpu
