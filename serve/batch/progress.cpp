#include "serve/batch/progress.h"

#include <algorithm>
#include <cmath>

namespace shoal::batch {
namespace {

using Clock = std::chrono::steady_clock;

std::string clock_text(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  const int64_t t = int64_t(s + 0.5);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(t / 3600), (long long)(t / 60 % 60), (long long)(t % 60));
  else std::snprintf(buf, sizeof buf, "%lld:%02lld", (long long)(t / 60), (long long)(t % 60));
  return buf;
}

}  // namespace

Progress::Progress(std::FILE* out, bool tty, double interval_s, int64_t total, int64_t done_before)
    : out_(out),
      tty_(tty),
      interval_(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(tty ? 0.25 : interval_s))),
      total_(total),
      done_before_(done_before),
      start_(Clock::now()),
      last_(start_) {}

std::string Progress::describe(int64_t done, int64_t total, double tokens_per_s, double eta_s) {
  char buf[160];
  const double pct = total > 0 ? 100.0 * double(done) / double(total) : 100.0;
  std::snprintf(buf, sizeof buf, "%lld/%lld records (%.0f%%), %.1f tokens/s, ETA %s", (long long)done,
                (long long)total, pct, tokens_per_s, clock_text(eta_s).c_str());
  return buf;
}

void Progress::update(int64_t written, int64_t tokens) {
  if (Clock::now() - last_ < interval_) return;
  print(written, tokens, false);
}

void Progress::note(const std::string& text) {
  if (tty_ && drawn_) std::fputs("\r\033[K", out_);
  drawn_ = false;
  std::fprintf(out_, "%s\n", text.c_str());
  std::fflush(out_);
}

void Progress::finish(int64_t written, int64_t tokens) { print(written, tokens, true); }

void Progress::print(int64_t written, int64_t tokens, bool last) {
  const auto now = Clock::now();
  last_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const int64_t done = done_before_ + written, left = std::max<int64_t>(total_ - done, 0);
  const double tps = elapsed > 0 ? double(tokens) / elapsed : 0.0;
  const double eta = left == 0 ? 0.0 : written > 0 ? double(left) * elapsed / double(written) : NAN;
  const std::string text = describe(done, total_, tps, eta);
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled = total_ > 0 ? int(double(kWidth) * double(done) / double(total_)) : kWidth;
    std::string bar(size_t(std::clamp(filled, 0, kWidth)), '#');
    bar.resize(kWidth, '-');
    std::fprintf(out_, "\r\033[K[%s] %s%s", bar.c_str(), text.c_str(), last ? "\n" : "");
    drawn_ = !last;
  } else {
    std::fprintf(out_, "shoal batch: %s\n", text.c_str());
  }
  std::fflush(out_);
}

}  // namespace shoal::batch
