// The CPU kernels (linear, linear_t, attention, the probes' loops) compiled for the avx2 variant
// (target flags in kernels/CMakeLists.txt).
#include "kernels/cpu/attention_impl.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/linear_t.h"
#include "kernels/cpu/probe.h"
#include "kernels/cpu/qlinear.h"
#include "kernels/cpu/variant.h"

namespace shoal::kernels::cpu {
extern const VariantKernels kAvx2Kernels = {linear_any_variant, linear_t_variant, attention_variant, read_pass_variant,
                                        fma_pass_variant, int8_pass_variant, int8_pass_macs_variant};
}  // namespace shoal::kernels::cpu
