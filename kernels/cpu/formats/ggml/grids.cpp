// The IQ grids, expanded at compile time from the level-index lists of grids_data.inc (generated
// by tools/gen_ggml_grids.py from ggml-common.h, which also checks that this expansion reproduces
// ggml's tables). constinit: static data, ready before any code runs.
#include "kernels/cpu/formats/ggml/grids.h"

#include <cstddef>

namespace shoal::kernels::cpu::ggml {
namespace {

#include "kernels/cpu/formats/ggml/grids_data.inc"

// Entry i, value j: levels[(packed[i] >> bits*j) & (2^bits - 1)].
template <class V, int kEntries, int kWidth, std::size_t kLevels>
constexpr Grid<V, kEntries, kWidth> expand(const uint16_t (&packed)[kEntries], const V (&levels)[kLevels],
                                           int bits) {
  Grid<V, kEntries, kWidth> grid{};
  for (int i = 0; i < kEntries; ++i)
    for (int j = 0; j < kWidth; ++j) grid[i][j] = levels[(packed[i] >> (bits * j)) & ((1u << bits) - 1)];
  return grid;
}

}  // namespace

constinit const Grid<uint8_t, 256, 8> kIq2xxsGrid = expand<uint8_t, 256, 8>(kIq2xxsPacked, kIq2xxsLevels, kIq2xxsBits);
constinit const Grid<uint8_t, 512, 8> kIq2xsGrid = expand<uint8_t, 512, 8>(kIq2xsPacked, kIq2xsLevels, kIq2xsBits);
constinit const Grid<uint8_t, 1024, 8> kIq2sGrid = expand<uint8_t, 1024, 8>(kIq2sPacked, kIq2sLevels, kIq2sBits);
constinit const Grid<uint8_t, 256, 4> kIq3xxsGrid = expand<uint8_t, 256, 4>(kIq3xxsPacked, kIq3xxsLevels, kIq3xxsBits);
constinit const Grid<uint8_t, 512, 4> kIq3sGrid = expand<uint8_t, 512, 4>(kIq3sPacked, kIq3sLevels, kIq3sBits);
constinit const Grid<int8_t, 2048, 8> kIq1sGrid = expand<int8_t, 2048, 8>(kIq1sPacked, kIq1sLevels, kIq1sBits);

}  // namespace shoal::kernels::cpu::ggml
