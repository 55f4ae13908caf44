// distill — one scoring interface for every model eval sees (lm-evaluation-harness's LM): the
// log-likelihood of a continuation given a context, and the rolling log-likelihood of a text.
// A local model (HF directory or .gguf) runs its own forward pass; a remote one is asked through
// an OpenAI-compatible POST /v1/completions with echo: true, max_tokens: 0, logprobs: 1, the
// prompt sent as token ids, as lm-eval's local-completions model does. docs/eval.md.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/eval.h"
#include "model/checkpoint.h"
#include "tokenizer/tokenizer.h"

namespace distill {

// Token ids of a (context, continuation) pair; the context starts with BOS when the tokenizer has
// one, the continuation is never empty.
struct LoglikRequest {
    std::vector<int64_t> context, continuation;
};
struct LoglikResult {
    double logprob = 0;   // sum of log q over the continuation's tokens, nats
    bool greedy = false;  // every continuation token is the model's argmax
};
struct RollingResult {
    double nats = 0;     // -sum log q over every token of the text
    int64_t tokens = 0;  // tokens charged
};

class Scorer {
public:
    explicit Scorer(Tokenizer tok, WindowOptions window) : tok_(std::move(tok)), window_(window) {}
    virtual ~Scorer() = default;
    const Tokenizer& tokenizer() const { return tok_; }
    const WindowOptions& window() const { return window_; }
    // Scores each request. A request longer than the window keeps its last window().context
    // tokens (the context is cut from the left, as lm-eval does); a continuation that alone does
    // not fit is an Error.
    virtual std::vector<LoglikResult> loglikelihood(const std::vector<LoglikRequest>& reqs) = 0;
    // Every token of `text` scored once in sliding windows (eval_bpb's plan); without a BOS the
    // first token is charged log V.
    virtual RollingResult loglikelihood_rolling(const std::string& text) = 0;
    // lm-eval's _encode_pair: whitespace at the end of the context moves to the front of the
    // continuation, then encode(context + continuation) is split at len(encode(context)).
    LoglikRequest encode_pair(const std::string& context, const std::string& continuation) const;

    int64_t scored_tokens = 0;   // tokens the model was run over while scoring
    double scoring_seconds = 0;  // wall time of those runs

protected:
    Tokenizer tok_;
    WindowOptions window_;
};

// A loaded local model (the scorer keeps a reference: `m` must outlive it).
std::unique_ptr<Scorer> make_local_scorer(LoadedModel& m, const WindowOptions& window);

struct RemoteOptions {
    std::string url;      // the API's base, e.g. http://127.0.0.1:8000/v1
    std::string api_key;  // sent as a Bearer token when not empty
    std::string model;    // empty: the first model GET /models lists
    int retries = 5;      // attempts after the first, on 429, 5xx, timeouts and refused connections
    double timeout_s = 120, backoff_s = 0.5, backoff_max_s = 20;  // exponential back-off with jitter
    int64_t prompts_per_request = 8;
    // Optional: told of every attempt, "" when it succeeded, else the kind of its failure
    // (status_429, status_5xx, timeout, transport, malformed); called from the requesting thread.
    std::function<void(const std::string& kind)> on_attempt;
    // Optional: an answer that parses as JSON but fails this check counts as malformed and is retried.
    std::function<bool(const nlohmann::json&)> valid;
};

// A remote model; `tok` must be the endpoint model's tokenizer (ids are sent, as lm-eval does).
std::unique_ptr<Scorer> make_remote_scorer(const RemoteOptions& o, Tokenizer tok, const WindowOptions& window);
// The model id the endpoint serves (o.model if set, else the first of GET /models).
std::string remote_model_name(const RemoteOptions& o);
// One JSON request to the endpoint (path relative to o.url, e.g. "/completions"), with o's retries:
// 429, 5xx, timeouts and connection errors are retried with back-off and jitter, Retry-After
// honoured; anything else is an Error.
nlohmann::json remote_request(const RemoteOptions& o, const std::string& method, const std::string& path,
                              const nlohmann::json& body);

}  // namespace distill
