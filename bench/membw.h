// The read bandwidth every bench figure is a fraction of: kernels::measure_read_bandwidth (the
// kernels' own vector loads, 1 and 2 read kernels, every thread count, best of repeated runs),
// measured beside each bench rather than once, and printed with every figure.
#pragma once

#include <cstdio>

#include "kernels/system.h"

namespace shoal::bench {

inline kernels::ReadBandwidth read_bandwidth() { return kernels::measure_read_bandwidth(); }
inline double read_bandwidth_gbs() { return read_bandwidth().gbs; }

// A fraction of a real ceiling cannot pass 1: if it does, the probe missed the machine's peak.
inline void warn_if_over_ceiling(double fraction, const char* what) {
  if (fraction > 1.0)
    std::fprintf(stderr, "bench: %s is %.2f of the measured read bandwidth: the probe is wrong (a bug)\n", what,
                 fraction);
}

}  // namespace shoal::bench
