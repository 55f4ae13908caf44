#include "guard/detect.h"

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace distill {

GreenTally::GreenTally(const WatermarkOptions& o) : o_(o) { watermark_check(o); }

bool GreenTally::add(const int64_t* context, int64_t token) {
    const int64_t h = o_.context;
    std::string key(static_cast<size_t>(4 * (h + 1)), '\0');
    for (int64_t j = 0; j <= h; ++j) {
        const int64_t id = j < h ? context[j] : token;
        DISTILL_CHECK(id >= 0 && id <= 0xFFFFFFFFll, "token id ", id, " does not fit the watermark's u32 encoding");
        for (int b = 0; b < 4; ++b)
            key[4 * j + b] = static_cast<char>((static_cast<uint64_t>(id) >> (8 * b)) & 0xFF);
    }
    if (!seen_.insert(std::move(key)).second) return false;
    ++scored_;
    if (watermark_green(o_, context, token)) ++green_;
    return true;
}

DetectResult GreenTally::result(int64_t tokens, const std::string& why_none) const {
    DetectResult r;
    r.tokens = tokens;
    r.scored = scored_;
    r.green = green_;
    if (scored_ == 0) {
        r.reason = why_none;
        return r;
    }
    r.enough = true;
    r.z = binomial_z(r.scored, r.green, o_.gamma);
    r.tail = binomial_tail(r.scored, r.green, o_.gamma);
    return r;
}

DetectResult watermark_detect(const WatermarkOptions& o, const std::vector<int64_t>& ids) {
    GreenTally tally(o);
    const int64_t h = o.context, n = static_cast<int64_t>(ids.size());
    for (int64_t i = h; i < n; ++i) tally.add(ids.data() + i - h, ids[i]);
    return tally.result(n, str_cat("not enough tokens: the text has ", n, ", and a context of ", h,
                                   " needs at least ", h + 1));
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
