// The codebooks of ggml's IQ block types: a block stores, per group of 8 (or 4) weights, an
// index into a fixed grid of magnitude (or, for IQ1, signed) patterns. The grids are data of the
// format; tools/gen_ggml_grids.py takes them from ggml-common.h in compact form (grids_data.inc)
// and grids.cpp expands them into the tables below, indexed [entry][value].
#pragma once

#include <array>
#include <bit>
#include <cstdint>

namespace shoal::kernels::cpu::ggml {

template <class V, int kEntries, int kWidth>
using Grid = std::array<std::array<V, kWidth>, kEntries>;

extern const Grid<uint8_t, 256, 8> kIq2xxsGrid;  // values 8, 25, 43
extern const Grid<uint8_t, 512, 8> kIq2xsGrid;   // values 8, 25, 43
extern const Grid<uint8_t, 1024, 8> kIq2sGrid;   // values 8, 25, 43
extern const Grid<uint8_t, 256, 4> kIq3xxsGrid;  // values 4, 12, ..., 52, 62
extern const Grid<uint8_t, 512, 4> kIq3sGrid;    // values 1, 3, ..., 15
extern const Grid<int8_t, 2048, 8> kIq1sGrid;    // values -1, 0, 1

// The IQ2/IQ3 sign code: 7 stored bits give the signs of values 0..6 of a group of 8 (bit set:
// negative); the sign of value 7 is implied, making the number of negative values even.
constexpr uint8_t iq_signs(uint32_t code7) {
  return uint8_t(code7 | (uint32_t(std::popcount(code7) & 1) << 7));
}

}  // namespace shoal::kernels::cpu::ggml
