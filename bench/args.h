// Command-line lists of the benches: "--dtypes F32,BF16", "--contexts 4096,32768".
#pragma once

#include <sstream>
#include <string>
#include <vector>

namespace shoal::bench {

inline std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(item);
  return out;
}

}  // namespace shoal::bench
