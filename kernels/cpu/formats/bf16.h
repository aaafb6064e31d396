// BF16 weights: the float's high half, widened exactly.
#pragma once

#include "kernels/cpu/formats/widened.h"

namespace shoal::kernels::cpu {
namespace {

using Bf16Rows = WidenedRows<uint16_t, bf16x16, bf16_one>;

}  // namespace
}  // namespace shoal::kernels::cpu
