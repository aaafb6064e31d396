// The sampling fields of a micro-batch and its result on the wire (wire.proto RowSampling,
// RowLogprobs): what the coordinator sends the head rank per row and what comes back.
#pragma once

#include <vector>

#include "comm/wire/wire.pb.h"
#include "common/status.h"
#include "node/sampling.h"

namespace shoal {

void to_wire(const RowSampler& s, wire::RowSampling& out);
// Checks what a peer sent: the parameters (SamplingParams::validate), n_prompt within the
// history, history ids within the vocabulary, an allowed-token mask of the vocabulary's size that
// allows some token.
StatusOr<RowSampler> from_wire(const wire::RowSampling& w, int64_t vocab);

// The logprobs of each row into a Result (only when some row asked for them), and back.
void logprobs_to_wire(const std::vector<SampleResult>& rows, wire::Result& out);
// False when the result carries logprobs for another number of rows.
bool logprobs_from_wire(const wire::Result& r, std::vector<SampleResult>& rows);

}  // namespace shoal
