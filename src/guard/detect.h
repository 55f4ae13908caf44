// distill — watermark detection in a token sequence (docs/guard.md). Every position i >= h is a
// tuple (ids[i-h .. i-1], ids[i]); each distinct tuple is scored once (repeated text would
// otherwise count the same evidence again and again: false alarms); S of the T scored tuples are
// green; the text knows nothing of the key when S ~ Bin(T, gamma).
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <unordered_set>
#include <vector>

#include "guard/stats.h"
#include "guard/watermark.h"

namespace distill {

struct DetectResult {
    int64_t tokens = 0;  // ids in the text
    int64_t scored = 0;  // T: distinct (context, token) tuples
    int64_t green = 0;   // S
    // Fewer than h + 1 tokens: nothing to score, no z and no p; `reason` says so.
    bool enough = false;
    std::string reason;
    double z = 0;
    BinomialTail tail;
};

// Counts green tuples, each distinct (context, token) once: what detection and radioactivity share.
class GreenTally {
public:
    explicit GreenTally(const WatermarkOptions& o);
    // Scores token after the h = o.context ids at context (context[0] the oldest) unless that
    // tuple was scored before; returns whether it was new.
    bool add(const int64_t* context, int64_t token);
    int64_t scored() const { return scored_; }
    int64_t green() const { return green_; }
    // T, S, z and the binomial tail; `tokens` is reported as it is. No tuple scored: not enough
    // (reason `why_none`).
    DetectResult result(int64_t tokens, const std::string& why_none) const;

private:
    WatermarkOptions o_;
    std::unordered_set<std::string> seen_;  // a tuple's ids as u32-LE bytes, as the test hashes them
    int64_t scored_ = 0, green_ = 0;
};

DetectResult watermark_detect(const WatermarkOptions& o, const std::vector<int64_t>& ids);

// {tokens, scored, green, z, p, log10_p, gamma, context, key_hash}; z, p and log10_p are null
// (and `reason` is there) when there were not enough tokens.
nlohmann::ordered_json detect_result_json(const WatermarkOptions& o, const DetectResult& r);

}  // namespace distill
