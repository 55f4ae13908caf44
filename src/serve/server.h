// distill — `distill serve`: an OpenAI-compatible HTTP server over the batching engine
// (serve/engine.h), on cpp-httplib. Endpoints, limits and metrics: docs/serve.md.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "guard/antidistill.h"
#include "guard/watermark.h"

namespace distill {

struct ServeOptions {
    std::string model;          // HF directory or .gguf
    std::string alias;          // the id in /v1/models (default: the model's file or folder name)
    std::string host = "127.0.0.1";
    int port = 8000;
    int64_t parallel = 4;       // slots decoded together
    int64_t http_threads = 0;   // connections served at once (0 = 4 x parallel + 16)
    std::string api_key_file;   // one key per line; empty = no authentication
    double rate_rpm = 0;        // requests per minute per key (0 = no limit)
    double rate_tpm = 0;        // prompt + completion tokens per minute per key (0 = no limit)
    int64_t max_body_bytes = 1 << 20;
    int64_t max_prompt_tokens = 0;  // 0 = the model's context
    int64_t max_tokens = 4096;      // cap on max_tokens
    int64_t max_top_logprobs = 20;
    // What the API gives away (docs/guard.md): a lifetime budget of prompt + completion tokens per
    // key (0 = none; beyond it 429 insufficient_quota, until the server restarts), and returned
    // log-probs rounded to this many decimals (-1 = as computed).
    int64_t key_token_quota = 0;
    int logprob_decimals = -1;
    // Noise on returned log-probs (serve/engine.h: GenRequest::logprob_noise), keyed by
    // logprob_noise_seed, or a random key drawn at start when that is 0.
    double logprob_noise = 0;
    uint64_t logprob_noise_seed = 0;
    int64_t max_queue = 1024;       // waiting requests beyond this get 503
    double shutdown_timeout_s = 60; // SIGTERM: how long in-flight requests may take to finish
    // Testing: answer this fraction of POST requests with a fault — a 500, a 429 with
    // Retry-After, a delay of fault_delay_s (a client timeout), a reset connection, a truncated
    // body, a malformed body — chosen by a hash of (fault_seed, request number).
    double fault_rate = 0;
    uint64_t fault_seed = 0;
    double fault_delay_s = 3;
    // Watermark every sampled token (guard/watermark.h, docs/guard.md); none when unset.
    std::optional<WatermarkOptions> watermark;
    // Antidistillation sampling (guard/antidistill.h, docs/guard.md): the proxy's gradient is taken
    // while the model loads (/health says 503 until then); none when unset.
    std::optional<AntidistillOptions> antidistill;
    // Prints "listening on http://HOST:PORT" once the port is bound (with port 0, the one chosen).
    bool announce = true;
};

// Runs until SIGTERM or SIGINT; returns the exit status.
int serve(const ServeOptions& opts);

// A server in this process, on background threads (the demo serves its teacher this way): the
// model is loaded and answering when the constructor returns (it throws when the model cannot be
// loaded); stop() or the destructor lets the requests in flight finish, then stops. No signal
// handling: that stays with the process.
class ServerThread {
public:
    explicit ServerThread(const ServeOptions& opts);  // opts.port 0: a free port
    ~ServerThread();
    ServerThread(const ServerThread&) = delete;
    ServerThread& operator=(const ServerThread&) = delete;
    int port() const;
    std::string base_url() const;  // http://HOST:PORT/v1
    // --inject-faults: the faults answered so far, by kind (500, 429, timeout, reset, ...)
    std::map<std::string, int64_t> faults_injected() const;
    void stop();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace distill
