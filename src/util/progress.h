// distill — a live progress line on stderr (carriage-return updates on a terminal, one line per
// update otherwise), and small formatting helpers.
#pragma once

#include <chrono>
#include <string>

namespace distill {

std::string format_duration(double seconds);  // "1m23s", "2h05m"
std::string format_count(double n);           // "12.3k", "4.56M"

class Progress {
public:
    // `every` = minimum seconds between printed updates when stderr is not a terminal.
    explicit Progress(std::string label, double every = 10.0);
    // Shows `done/total` and `detail`; ETA from the rate since construction.
    void update(int64_t done, int64_t total, const std::string& detail);
    void finish(const std::string& detail);  // final line, always printed
    static bool quiet;                       // set by --quiet

private:
    std::string label_;
    double every_;
    bool tty_;
    std::chrono::steady_clock::time_point start_, last_;
    int64_t first_done_ = -1;
    size_t last_len_ = 0;
};

// Seconds since an arbitrary start (steady clock).
double now_seconds();

// One message line on stderr ("distill: ..."), unless quiet.
void log_info(const std::string& msg);

}  // namespace distill
