// The embedded default model: DeepSeek-V3's architecture (MLA with q/kv LoRA, YaRN, noaux_tc
// sigmoid routing over expert groups, shared expert, dense first layer, FP8-ready shapes) at a
// size that synthesizes in seconds and decodes quickly on a laptop: hidden 1024, 4 layers,
// 32 routed experts (8 active), about 0.25B parameters. `shoal synth` without --config uses it.
#pragma once

#include <string_view>

namespace shoal {

std::string_view default_config_json();

}  // namespace shoal
