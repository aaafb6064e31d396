// Child processes for the tests: run a command to completion, or start one and read its
// stdout line by line with a deadline, kill it, wait for it. Every wait is bounded.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "files.h"

namespace shoal::test {

// Runs `cmd` through sh; returns stdout; *status is pclose's wait status.
inline std::string run_command(const std::string& cmd, int* status) {
  std::FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    *status = -1;
    return {};
  }
  std::string out;
  char buf[4096];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, got);
  *status = pclose(p);
  return out;
}

// A process started with `sh -c cmd`, its stdout on a pipe (stderr: to `stderr_file` if given).
class Child {
 public:
  explicit Child(const std::string& cmd, const std::string& stderr_file = "") {
    int fds[2];
    if (pipe(fds) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);  // its own group, so kill() reaches what it starts
      dup2(fds[1], 1);
      if (!stderr_file.empty()) {
        const int e = open(stderr_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (e >= 0) dup2(e, 2);
      }
      close(fds[0]);
      close(fds[1]);
      execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    close(fds[1]);
    out_ = fds[0];
  }
  ~Child() {
    kill(SIGKILL);
    wait_exit(std::chrono::seconds(5));
    if (out_ >= 0) close(out_);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }

  // The next line of stdout (without '\n'), or false at EOF or when `timeout` passes.
  bool read_line(std::string& line, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    size_t nl;
    while ((nl = buf_.find('\n')) == std::string::npos)
      if (!read_some(buf_, end)) return false;
    line = buf_.substr(0, nl);
    buf_.erase(0, nl + 1);
    return true;
  }
  // Appends stdout to `seen` until done(seen) holds; false at EOF or when `timeout` passes.
  template <typename Done>
  bool read_until(Done done, std::string& seen, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!done(seen))
      if (!read_some(seen, end)) return false;
    return true;
  }

  void kill(int sig) {
    if (pid_ > 0 && !exited_) ::kill(-pid_, sig);
  }
  // Waits up to `timeout` for the exit; returns the wait status, or -1 if still running.
  int wait_exit(std::chrono::milliseconds timeout) {
    if (pid_ <= 0) return -1;
    if (exited_) return status_;
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (true) {
      const pid_t got = waitpid(pid_, &status_, WNOHANG);
      if (got == pid_) {
        exited_ = true;
        return status_;
      }
      if (std::chrono::steady_clock::now() >= end) return -1;
      usleep(20000);
    }
  }

 private:
  // Appends what stdout has to `out`, waiting for it until `end`; false at EOF or timeout.
  bool read_some(std::string& out, std::chrono::steady_clock::time_point end) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{out_, POLLIN, 0};
    if (poll(&p, 1, int(left.count())) <= 0) return false;
    char chunk[4096];
    const ssize_t got = ::read(out_, chunk, sizeof chunk);
    if (got <= 0) return false;
    out.append(chunk, size_t(got));
    return true;
  }

  pid_t pid_ = -1;
  int out_ = -1;
  std::string buf_;
  bool exited_ = false;
  int status_ = 0;
};

// The shoal binary run with `args` (and `env` before it: "VAR=value ..." or "env -u VAR"): its
// exit status (-1 if it did not exit) and what it wrote to stdout and stderr.
struct CliRun {
  int rc;
  std::string out, err;
};
inline CliRun shoal_cli(const std::string& args, const std::string& env = "") {
  TempDir tmp;
  const std::string cmd = env + " " + std::string(SHOAL_BINARY) + " " + args + " >'" + (tmp.path / "out").string() +
                          "' 2>'" + (tmp.path / "err").string() + "'";
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_file(tmp.path / "out"), read_file(tmp.path / "err")};
}

}  // namespace shoal::test
