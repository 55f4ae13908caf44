#include "distill/api-logprobs.h"

#include <algorithm>
#include <cmath>

#include "eval/scorer.h"
#include "util/error.h"
#include "util/utf8.h"

namespace distill {

ApiTokenMap::ApiTokenMap(const Tokenizer& tok) : vocab_(tok.vocab_size()) {
    for (int32_t id = 0; id < tok.vocab_size(); ++id) {
        if (tok.is_special(id)) continue;
        auto [it, fresh] = by_text_.emplace(utf8_lossy(tok.token_bytes(id)), id);
        if (!fresh) it->second = -1;
    }
}

int64_t ApiTokenMap::id(const std::string& key) const {
    static const std::string kPrefix = "token_id:";
    if (key.size() > kPrefix.size() && key.compare(0, kPrefix.size(), kPrefix) == 0 && key.size() <= kPrefix.size() + 9 &&
        key.find_first_not_of("0123456789", kPrefix.size()) == std::string::npos) {
        const int64_t id = std::stoll(key.substr(kPrefix.size()));
        return id < vocab_ ? id : -1;
    }
    const auto f = by_text_.find(key);
    return f == by_text_.end() ? -1 : f->second;
}

std::vector<std::vector<std::pair<int64_t, float>>> remote_top_targets(const nlohmann::json& lp,
                                                                       const ApiTokenMap& map, size_t from,
                                                                       size_t len) {
    DISTILL_CHECK(lp.is_object() && lp.contains("top_logprobs") && lp["top_logprobs"].is_array() &&
                      lp["top_logprobs"].size() >= len,
                  "the teacher API gave no top log-probs for the prompt (it needs echo with logprobs; ",
                  "llama.cpp's server refuses max_tokens 0: use distill serve or vLLM)");
    const nlohmann::json& tops = lp["top_logprobs"];
    std::vector<std::vector<std::pair<int64_t, float>>> out;
    for (size_t t = from; t < len; ++t) {
        std::vector<std::pair<int64_t, float>> row;
        const nlohmann::json& d = tops[t];
        DISTILL_CHECK(d.is_object(), "the teacher API gave no top log-probs at prompt position ", t);
        for (auto it = d.begin(); it != d.end(); ++it) {
            DISTILL_CHECK(it.value().is_number(), "the teacher API's top log-prob for '", it.key(), "' is not a number");
            const int64_t id = map.id(it.key());
            if (id < 0) continue;  // not one token: the rest bucket
            const double v = it.value().get<double>();
            if (!std::isfinite(v)) continue;
            row.emplace_back(id, static_cast<float>(std::min(0.0, v)));
        }
        std::sort(row.begin(), row.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
        out.push_back(std::move(row));
    }
    return out;
}

nlohmann::json remote_scoring_request(const RemoteOptions& o, nlohmann::json body, std::atomic<bool>& as_ids) {
    if (as_ids) {
        body["return_tokens_as_token_ids"] = true;
        try {
            return remote_request(o, "POST", "/completions", body);
        } catch (const Error& e) {
            if (std::string(e.what()).find("return_tokens_as_token_ids") == std::string::npos) throw;
            as_ids = false;
            body.erase("return_tokens_as_token_ids");
        }
    }
    return remote_request(o, "POST", "/completions", body);
}

}  // namespace distill
