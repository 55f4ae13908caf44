// distill — reading an OpenAI-compatible API's log-probs back as token ids.
//
// The legacy completions format names each token by its text: a byte token that is not valid
// UTF-8 reads U+FFFD, and two tokens may share a text, so the map back to ids is partial. vLLM's
// `return_tokens_as_token_ids` (which `distill serve` implements) names them "token_id:<id>"
// instead, and then the map is exact. ApiTokenMap reads both.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

namespace distill {

struct RemoteOptions;  // eval/scorer.h

class ApiTokenMap {
public:
    // The endpoint's model must use `tok` (the ids mean the same thing on both sides).
    explicit ApiTokenMap(const Tokenizer& tok);
    // The id a logprobs key names: "token_id:<id>" (an id below the vocabulary size), or a text
    // that is exactly one token's (not a special token's, and no other token's); -1 otherwise.
    int64_t id(const std::string& key) const;
    // Builds a map from token texts alone (tests): -1 marks a text several ids share.
    explicit ApiTokenMap(std::unordered_map<std::string, int64_t> by_text, int64_t vocab)
        : by_text_(std::move(by_text)), vocab_(vocab) {}

private:
    std::unordered_map<std::string, int64_t> by_text_;
    int64_t vocab_ = 0;
};

// The API's answer for one prompt (a choice's "logprobs", legacy format) -> for each position
// t in [from, len), the (id, log p) of its top_logprobs entries that name a token, most likely
// first. An Error when the answer has no top log-probs there.
std::vector<std::vector<std::pair<int64_t, float>>> remote_top_targets(const nlohmann::json& logprobs,
                                                                       const ApiTokenMap& map, size_t from,
                                                                       size_t len);

// POST /completions with `body` (o's retries), asking for return_tokens_as_token_ids while
// `as_ids` holds; an endpoint that refuses that field (a 400 naming it, as OpenAI's does with
// unknown fields) is asked again without it, and `as_ids` turns false for later calls.
nlohmann::json remote_scoring_request(const RemoteOptions& o, nlohmann::json body, std::atomic<bool>& as_ids);

}  // namespace distill
