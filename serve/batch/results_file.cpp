#include "serve/batch/results_file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "serve/batch/format.h"

namespace shoal::batch {
namespace {

Status io_error(const std::filesystem::path& path, const std::string& what) {
  return Status(Code::kUnavailable, what + " " + path.string() + ": " + std::strerror(errno));
}

// fsync of the folder, so that a file just created survives a crash of the machine.
void sync_parent(const std::filesystem::path& path) {
  std::filesystem::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

}  // namespace

StatusOr<std::unique_ptr<ResultsFile>> ResultsFile::open(const std::filesystem::path& path, Recovered& rec) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return io_error(path, "cannot open");
  std::unique_ptr<ResultsFile> f(new ResultsFile(path, fd));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      return Status(Code::kUnavailable, "another shoal batch is writing " + path.string() + " (it holds its lock)");
    if (errno != ENOLCK && errno != EOPNOTSUPP && errno != ENOSYS) return io_error(path, "cannot lock");
    rec.unlocked = true;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) return io_error(path, "cannot stat");
  if (!S_ISREG(st.st_mode)) return invalid_argument(path.string() + " is not a regular file");

  // Keep the longest prefix of whole, valid records.
  int64_t kept = 0, offset = 0;  // end of the last kept line; bytes read so far
  std::string pending;            // the line being read
  bool bad = false;
  char chunk[1 << 16];
  while (!bad) {
    const ssize_t got = ::pread(fd, chunk, sizeof chunk, offset);
    if (got < 0) {
      if (errno == EINTR) continue;
      return io_error(path, "cannot read");
    }
    if (got == 0) break;
    offset += got;
    size_t start = 0;
    for (size_t i = 0; i < size_t(got) && !bad; ++i) {
      if (chunk[i] != '\n') continue;
      pending.append(chunk + start, i - start);
      start = i + 1;
      const nlohmann::json j = nlohmann::json::parse(pending, nullptr, /*allow_exceptions=*/false);
      const std::optional<std::string> key = j.is_discarded() ? std::nullopt : record_key(j);
      if (!key) {
        bad = true;
        break;
      }
      if (!rec.keys.insert(*key).second) ++rec.duplicates;
      ++rec.records;
      kept += int64_t(pending.size()) + 1;
      pending.clear();
    }
    if (!bad) pending.append(chunk + start, size_t(got) - start);
  }
  if (kept < int64_t(st.st_size)) {  // a torn or invalid tail
    rec.dropped_bytes = int64_t(st.st_size) - kept;
    char head[120];
    const ssize_t n = ::pread(fd, head, sizeof head, kept);
    if (n > 0) rec.dropped_start.assign(head, size_t(n));
    if (::ftruncate(fd, kept) != 0) return io_error(path, "cannot truncate");
    if (::fsync(fd) != 0) return io_error(path, "cannot fsync");
  }
  sync_parent(path);
  return f;
}

ResultsFile::~ResultsFile() {
  if (fd_ >= 0) {
    (void)sync();
    ::close(fd_);  // releases the lock
  }
}

Status ResultsFile::append(std::string_view line) {
  buf_.assign(line);
  buf_ += '\n';
  const off_t end = ::lseek(fd_, 0, SEEK_END);
  if (end < 0) return io_error(path_, "cannot seek");
  size_t done = 0;
  while (done < buf_.size()) {
    const ssize_t n = ::write(fd_, buf_.data() + done, buf_.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const Status s = io_error(path_, "cannot write");
      (void)::ftruncate(fd_, end);  // leave no torn line behind (a rerun would cut it anyway)
      return s;
    }
    done += size_t(n);
  }
  dirty_ = true;
  return {};
}

Status ResultsFile::sync() {
  if (!dirty_) return {};
  if (::fdatasync(fd_) != 0) return io_error(path_, "cannot fdatasync");
  dirty_ = false;
  return {};
}

}  // namespace shoal::batch
