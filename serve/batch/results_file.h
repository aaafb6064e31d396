// The output file of a batch, which is also its journal (docs/batch.md, "Resuming"): one
// record per line, each appended with a single write() of the whole line and its '\n'. A record
// is done exactly when its complete line is in the file, so a rerun keeps the valid lines and
// cuts the file at the first line that is torn (no '\n' after a kill -9 mid-write) or not a
// record (zeros or garbage after a machine crash), and redoes everything after it.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>

#include "common/status.h"

namespace shoal::batch {

class ResultsFile {
 public:
  struct Recovered {
    std::unordered_set<std::string> keys;  // record_key of every kept record
    int64_t records = 0;                   // lines kept
    int64_t duplicates = 0;                // kept lines whose key an earlier line already had
    int64_t dropped_bytes = 0;             // cut from the end
    std::string dropped_start;             // the first bytes of what was cut (for the message)
    bool unlocked = false;                 // the filesystem has no flock (then nothing guards it)
  };

  // Opens or creates `path`, takes an exclusive lock on it (a second runner on the same file is
  // refused), reads its records and cuts it after the last valid one (fsynced).
  static StatusOr<std::unique_ptr<ResultsFile>> open(const std::filesystem::path& path, Recovered& recovered);
  ~ResultsFile();
  ResultsFile(const ResultsFile&) = delete;
  ResultsFile& operator=(const ResultsFile&) = delete;

  // Appends `line` and '\n' with one write (retried on a short write).
  Status append(std::string_view line);
  // fdatasync when anything was appended since the last sync.
  Status sync();
  const std::filesystem::path& path() const { return path_; }

 private:
  ResultsFile(std::filesystem::path path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::filesystem::path path_;
  int fd_ = -1;
  bool dirty_ = false;
  std::string buf_;
};

}  // namespace shoal::batch
