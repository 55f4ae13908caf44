#include "util/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace distill {

bool Progress::quiet = false;

double now_seconds() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

void log_info(const std::string& msg) {
    if (!Progress::quiet) std::fprintf(stderr, "distill: %s\n", msg.c_str());
}

std::string format_duration(double s) {
    char buf[32];
    if (s < 0 || s != s) return "?";
    long t = static_cast<long>(s + 0.5);
    if (t < 60)
        std::snprintf(buf, sizeof buf, "%lds", t);
    else if (t < 3600)
        std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
    else
        std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
    return buf;
}

std::string format_count(double n) {
    char buf[32];
    const double a = std::fabs(n);
    if (a >= 1e12)
        std::snprintf(buf, sizeof buf, "%.2fT", n / 1e12);
    else if (a >= 1e9)
        std::snprintf(buf, sizeof buf, "%.2fG", n / 1e9);
    else if (a >= 1e6)
        std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
    else if (a >= 1e3)
        std::snprintf(buf, sizeof buf, "%.1fk", n / 1e3);
    else
        std::snprintf(buf, sizeof buf, "%.0f", n);
    return buf;
}

Progress::Progress(std::string label, double every)
    : label_(std::move(label)), every_(every), tty_(::isatty(2)) {
    start_ = last_ = std::chrono::steady_clock::now();
}

void Progress::update(int64_t done, int64_t total, const std::string& detail) {
    if (quiet) return;
    auto now = std::chrono::steady_clock::now();
    if (first_done_ < 0) {
        first_done_ = done;
        start_ = now;
    }
    const double since_last = std::chrono::duration<double>(now - last_).count();
    if (since_last < (tty_ ? 0.2 : every_) && done < total) return;
    last_ = now;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double rate = elapsed > 0 ? double(done - first_done_) / elapsed : 0;
    const std::string eta = rate > 0 ? format_duration(double(total - done) / rate) : "?";
    char head[160];
    std::snprintf(head, sizeof head, "%s %lld/%lld", label_.c_str(), (long long)done,
                  (long long)total);
    std::string line = std::string(head) + "  " + detail + "  ETA " + eta;
    if (tty_) {
        std::string pad = line.size() < last_len_ ? std::string(last_len_ - line.size(), ' ') : "";
        std::fprintf(stderr, "\r%s%s", line.c_str(), pad.c_str());
        last_len_ = line.size();
    } else {
        std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
}

void Progress::finish(const std::string& detail) {
    if (quiet) return;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::string line = label_ + " done  " + detail + "  (" + format_duration(elapsed) + ")";
    if (tty_) {
        std::string pad = line.size() < last_len_ ? std::string(last_len_ - line.size(), ' ') : "";
        std::fprintf(stderr, "\r%s%s\n", line.c_str(), pad.c_str());
    } else {
        std::fprintf(stderr, "%s\n", line.c_str());
    }
    last_len_ = 0;
}

}  // namespace distill
