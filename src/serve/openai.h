// distill — the OpenAI API's request bodies, read strictly: each field's type and range is
// checked and a bad one is an ApiError naming it (status 400, as the OpenAI API answers), so a
// malformed body can never reach the engine. Unknown fields are ignored, as the API does.
// These functions touch no model and no network: the fuzz target (tests/fuzz) drives them.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace distill::api {

// An error as the API returns it: {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::runtime_error {
    int status;
    std::string type, param, code;
    ApiError(int status_, std::string message, std::string type_ = "invalid_request_error",
             std::string param_ = "", std::string code_ = "")
        : std::runtime_error(std::move(message)), status(status_), type(std::move(type_)),
          param(std::move(param_)), code(std::move(code_)) {}
    nlohmann::json body() const;
};

// What the server allows; requests beyond it are refused with a 400 naming the field.
struct Limits {
    int64_t max_top_logprobs = 20;  // as the OpenAI API
    int64_t max_tokens = 4096;      // per choice
    int64_t max_n = 16;
    int64_t max_prompts = 64;       // a completions request may carry a list of prompts
    int64_t max_stop = 4;
};

// The settings the two endpoints share.
struct Sampling {
    double temperature = 1.0;
    double top_p = 1.0;
    int64_t top_k = 0;
    std::optional<uint64_t> seed;
    int64_t max_tokens = 16;
    int64_t n = 1;
    std::vector<std::string> stop;
    bool stream = false, include_usage = false;
};

// One prompt of /v1/completions: text, or token ids (as lm-evaluation-harness sends).
struct Prompt {
    std::string text;
    std::vector<int64_t> ids;
    bool is_ids = false;
};

struct CompletionRequest {
    std::string model;
    std::vector<Prompt> prompts;
    Sampling sampling;
    std::optional<int64_t> logprobs;  // legacy: how many top alternatives (0 = only the chosen)
    bool echo = false;
    // vLLM's `return_tokens_as_token_ids`: tokens in logprobs named "token_id:<id>", so that a
    // client maps them back exactly (a byte token that is not UTF-8 has no text of its own)
    bool tokens_as_ids = false;
};

struct ChatRequest {
    std::string model;
    nlohmann::ordered_json messages;  // validated: [{role, content}, ...]; content made a string
    nlohmann::ordered_json tools;     // null or the array given
    Sampling sampling;
    bool logprobs = false;
    int64_t top_logprobs = 0;
    bool tokens_as_ids = false;  // as in CompletionRequest
};

// Throws ApiError (400) on anything malformed; `body` is the raw request body.
CompletionRequest parse_completion(const std::string& body, const Limits& limits);
ChatRequest parse_chat(const std::string& body, const Limits& limits);

}  // namespace distill::api
