#include "guard/detect.h"

#include <nlohmann/json.hpp>
#include <unordered_set>

#include "util/error.h"

namespace distill {

DetectResult watermark_detect(const WatermarkOptions& o, const std::vector<int64_t>& ids) {
    watermark_check(o);
    DetectResult r;
    const int64_t h = o.context, n = static_cast<int64_t>(ids.size());
    r.tokens = n;
    if (n < h + 1) {
        r.reason = str_cat("not enough tokens: the text has ", n, ", and a context of ", h,
                           " needs at least ", h + 1);
        return r;
    }
    r.enough = true;
    // a tuple's identity: its ids as u32-LE bytes, the very bytes the green test hashes
    std::unordered_set<std::string> seen;
    seen.reserve(static_cast<size_t>(n));
    for (int64_t i = h; i < n; ++i) {
        std::string key(static_cast<size_t>(4 * (h + 1)), '\0');
        for (int64_t j = 0; j <= h; ++j) {
            const int64_t id = ids[i - h + j];
            DISTILL_CHECK(id >= 0 && id <= 0xFFFFFFFFll, "token id ", id,
                          " does not fit the watermark's u32 encoding");
            for (int b = 0; b < 4; ++b)
                key[4 * j + b] = static_cast<char>((static_cast<uint64_t>(id) >> (8 * b)) & 0xFF);
        }
        if (!seen.insert(std::move(key)).second) continue;
        ++r.scored;
        if (watermark_green(o, ids.data() + i - h, ids[i])) ++r.green;
    }
    r.z = binomial_z(r.scored, r.green, o.gamma);
    r.tail = binomial_tail(r.scored, r.green, o.gamma);
    return r;
}

nlohmann::ordered_json detect_result_json(const WatermarkOptions& o, const DetectResult& r) {
    nlohmann::ordered_json j;
    j["tokens"] = r.tokens;
    j["scored"] = r.scored;
    j["green"] = r.green;
    if (r.enough) {
        j["z"] = r.z;
        j["p"] = r.tail.p;
        j["log10_p"] = r.tail.log10_p;
    } else {
        j["z"] = nullptr;
        j["p"] = nullptr;
        j["log10_p"] = nullptr;
        j["reason"] = r.reason;
    }
    j["gamma"] = o.gamma;
    j["context"] = o.context;
    j["key_hash"] = watermark_key_id_hex(o.key);
    return j;
}

}  // namespace distill
