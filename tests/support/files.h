// Files for the tests: a temporary folder removed with everything in it, and whole-file reads
// and writes. Shared by the tests that run the shoal binary.
#pragma once

#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>

namespace shoal::test {

// A fresh folder under the system's temporary directory (mkdtemp), removed on destruction.
// `dir / "name"` is the path of a file in it as a string, for command lines.
struct TempDir {
  std::filesystem::path path;

  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "shoal-test-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void write_file(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out << bytes;
  REQUIRE(out.good());
}

// Lines in a file ('\n's).
inline size_t count_lines(const std::filesystem::path& p) {
  const std::string text = read_file(p);
  return size_t(std::count(text.begin(), text.end(), '\n'));
}

// A wait status as an exit code; -1 when the process was killed by a signal.
inline int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

}  // namespace shoal::test
