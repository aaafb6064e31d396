// Unicode NFC, the one normalizer a tokenizer.json may name besides the identity (Qwen2.5's and
// so R1-Distill-Qwen's). It gives what the reference's normalizer gives: the standard
// decompose / reorder / compose algorithm over the Unicode 9.0 data its crate
// (unicode-normalization-alignments) carries, generated into nfc_tables.inc by
// tools/gen_nfc_tables.py. Text that is certainly NFC already (the usual case) is recognised by
// a quick check and left alone. Thread-safe: the tables are built once and only read.
#pragma once

#include <string>
#include <string_view>

namespace shoal {

// True when `text` (valid UTF-8) has no character whose NFC could differ from it in context:
// every character is a starter (canonical class 0) that neither decomposes under NFC nor
// combines with a character before it. Then NFC(text) == text.
bool nfc_quick_check(std::string_view text);

// Appends NFC(text) to `out` (`text`: valid UTF-8, not a view into `out`). Only the stretches
// around characters that fail the quick check go through the algorithm.
void nfc_append(std::string_view text, std::string& out);
// The same, the algorithm run over all of `text` (for checking nfc_append).
void nfc_append_whole(std::string_view text, std::string& out);

}  // namespace shoal
