// distill — a logit cache captured through an OpenAI-compatible API: the black-box counterpart of
// `capture --teacher` (distill/capture.h). Every aligned window of a token shard is sent as token
// ids to /v1/completions with echo, max_tokens 0 and logprobs K; the teacher's top-K at each
// position comes back, is mapped onto token ids (exactly where the endpoint names tokens by id,
// vLLM's return_tokens_as_token_ids; by their text otherwise) and stored in the same compact,
// resumable cache a local capture writes, so `train --cache` distills from it unchanged.
// The endpoint's model must share the shard's tokenizer.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "eval/scorer.h"
#include "io/shards.h"
#include "tokenizer/tokenizer.h"

namespace distill {

struct ApiCacheOptions {
    RemoteOptions remote;            // url, key, model, retries, timeout, back-off
    int top_k = 20;                  // log-probs asked for and stored per position (the OpenAI API's cap)
    int64_t window = 128;            // T: positions per window (= the students' --seq-len)
    int64_t windows_per_request = 4; // prompts in one request
    int64_t concurrency = 4;         // requests in flight
    int64_t max_windows = 0;         // 0 = every aligned window of the shard
    bool progress = true;
};

struct ApiCacheResult {
    int64_t windows = 0, new_windows = 0, positions = 0;
    int64_t requests = 0;                   // HTTP requests, retries included
    std::map<std::string, int64_t> errors;  // failed attempts by kind (all retried)
    int64_t teacher_tokens = 0;             // prompt tokens the API reported for this run's requests
    double mapped_fraction = 1;             // returned entries that named a token of the tokenizer
    bool token_ids = false;                 // the endpoint named tokens by id
    double bytes_per_token = 0;
    double seconds = 0;
    nlohmann::json to_json() const;
};

ApiCacheResult capture_cache_from_api(const Tokenizer& tok, const TokenShard& shard, const std::string& cache_dir,
                                      const ApiCacheOptions& opts);

}  // namespace distill
