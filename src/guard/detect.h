// distill — watermark detection in a token sequence (docs/guard.md). Every position i >= h is a
// tuple (ids[i-h .. i-1], ids[i]); each distinct tuple is scored once (repeated text would
// otherwise count the same evidence again and again: false alarms); S of the T scored tuples are
// green; the text knows nothing of the key when S ~ Bin(T, gamma).
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
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

DetectResult watermark_detect(const WatermarkOptions& o, const std::vector<int64_t>& ids);

// {tokens, scored, green, z, p, log10_p, gamma, context, key_hash}; z, p and log10_p are null
// (and `reason` is there) when there were not enough tokens.
nlohmann::ordered_json detect_result_json(const WatermarkOptions& o, const DetectResult& r);

}  // namespace distill
