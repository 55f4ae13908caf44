#include "serve/server.h"

#include <httplib.h>
#include <pthread.h>
#include <signal.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <cstring>
#include <random>
#include <unordered_map>

#include <xxhash.h>

#include "eval/eval.h"
#include "io/gguf.h"
#include "model/checkpoint.h"
#include "model/gguf-model.h"
#include "pipeline/pipeline.h"
#include "serve/engine.h"
#include "serve/openai.h"
#include "tokenizer/chat-template.h"
#include "util/error.h"
#include "util/file.h"
#include "util/utf8.h"

namespace distill {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using api::ApiError;

double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string random_hex(size_t n) {
    static std::mutex mu;
    static std::mt19937_64 rng{std::random_device{}()};
    std::lock_guard<std::mutex> lk(mu);
    static const char* digits = "0123456789abcdef";
    std::string s(n, '0');
    for (auto& c : s) c = digits[rng() % 16];
    return s;
}

uint64_t random_seed() {
    static std::mutex mu;
    static std::mt19937_64 rng{std::random_device{}()};
    std::lock_guard<std::mutex> lk(mu);
    return rng();
}


// ---- metrics (Prometheus text format) --------------------------------------------------------

struct Histogram {
    std::vector<double> bounds;
    std::vector<uint64_t> counts;
    double sum = 0;
    uint64_t n = 0;
    explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size(), 0) {}
    void observe(double x) {
        for (size_t i = 0; i < bounds.size(); ++i)
            if (x <= bounds[i]) ++counts[i];
        sum += x;
        ++n;
    }
    void write(std::string& out, const std::string& name, const std::string& help) const {
        out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
        char buf[64];
        for (size_t i = 0; i < bounds.size(); ++i) {
            std::snprintf(buf, sizeof buf, "%g", bounds[i]);
            out += name + "_bucket{le=\"" + buf + "\"} " + std::to_string(counts[i]) + "\n";
        }
        out += name + "_bucket{le=\"+Inf\"} " + std::to_string(n) + "\n";
        std::snprintf(buf, sizeof buf, "%.9g", sum);
        out += name + "_sum " + buf + "\n" + name + "_count " + std::to_string(n) + "\n";
    }
};

class Metrics {
public:
    void request(const std::string& endpoint, int status) {
        std::lock_guard<std::mutex> lk(mu_);
        ++requests_[{endpoint, status}];
    }
    void fault(const std::string& kind) {
        std::lock_guard<std::mutex> lk(mu_);
        ++faults_[kind];
    }
    std::map<std::string, int64_t> faults() const {
        std::lock_guard<std::mutex> lk(mu_);
        return {faults_.begin(), faults_.end()};
    }
    void tokens(int64_t prompt, int64_t completion) {
        std::lock_guard<std::mutex> lk(mu_);
        prompt_tokens_ += prompt;
        completion_tokens_ += completion;
    }
    // Volume per key (its label, never the key itself), to spot bulk extraction.
    void key_usage(const std::string& label, int64_t requests, int64_t tokens) {
        std::lock_guard<std::mutex> lk(mu_);
        auto& u = keys_[label];
        u.first += requests;
        u.second += tokens;
    }
    void first_token(double s) {
        std::lock_guard<std::mutex> lk(mu_);
        ttft_.observe(s);
    }
    void next_token(double s) {
        std::lock_guard<std::mutex> lk(mu_);
        tpot_.observe(s);
    }
    std::string render(const EngineStats& e, int64_t inflight) const {
        std::lock_guard<std::mutex> lk(mu_);
        std::string out;
        out += "# HELP distill_requests_total HTTP requests by endpoint and status.\n";
        out += "# TYPE distill_requests_total counter\n";
        for (const auto& [k, v] : requests_)
            out += "distill_requests_total{endpoint=\"" + k.first + "\",status=\"" + std::to_string(k.second) +
                   "\"} " + std::to_string(v) + "\n";
        if (!faults_.empty()) {
            out += "# HELP distill_faults_injected_total Faults injected by --inject-faults, by kind.\n";
            out += "# TYPE distill_faults_injected_total counter\n";
            for (const auto& [k, v] : faults_)
                out += "distill_faults_injected_total{kind=\"" + k + "\"} " + std::to_string(v) + "\n";
        }
        auto scalar = [&](const char* name, const char* type, const char* help, double v) {
            char buf[64];
            std::snprintf(buf, sizeof buf, "%.17g", v);
            out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " +
                   buf + "\n";
        };
        scalar("distill_prompt_tokens_total", "counter", "Prompt tokens processed.", double(prompt_tokens_));
        scalar("distill_completion_tokens_total", "counter", "Tokens generated.", double(completion_tokens_));
        scalar("distill_queue_depth", "gauge", "Requests waiting for a slot.", double(e.queued));
        scalar("distill_slots_busy", "gauge", "Slots decoding now.", double(e.active));
        scalar("distill_slots", "gauge", "Slots (--parallel).", double(e.slots));
        scalar("distill_requests_in_flight", "gauge", "HTTP requests being served.", double(inflight));
        scalar("distill_decode_steps_total", "counter", "Batched decoding steps.", double(e.steps));
        scalar("distill_decode_tokens_total", "counter", "Tokens produced by batched steps.", double(e.batched_tokens));
        scalar("distill_prefills_total", "counter", "Prompts prefilled.", double(e.prefills));
        scalar("distill_prefill_forwards_total", "counter", "Prefill forwards (prompts of similar length share one).",
               double(e.prefill_forwards));
        if (!keys_.empty()) {
            out += "# HELP distill_key_requests_total Completed requests by API key (key-N: the N-th key of "
                   "--api-key-file) or, without keys, by client address.\n# TYPE distill_key_requests_total counter\n";
            for (const auto& [k, v] : keys_)
                out += "distill_key_requests_total{key=\"" + k + "\"} " + std::to_string(v.first) + "\n";
            out += "# HELP distill_key_tokens_total Prompt + completion tokens by API key or client address.\n"
                   "# TYPE distill_key_tokens_total counter\n";
            for (const auto& [k, v] : keys_)
                out += "distill_key_tokens_total{key=\"" + k + "\"} " + std::to_string(v.second) + "\n";
        }
        ttft_.write(out, "distill_time_to_first_token_seconds", "From request to its first generated token.");
        tpot_.write(out, "distill_time_per_output_token_seconds", "Between consecutive generated tokens of a choice.");
        return out;
    }

private:
    mutable std::mutex mu_;
    std::map<std::pair<std::string, int>, uint64_t> requests_;
    std::map<std::string, uint64_t> faults_;
    int64_t prompt_tokens_ = 0, completion_tokens_ = 0;
    std::map<std::string, std::pair<int64_t, int64_t>> keys_;  // label -> (requests, tokens)
    Histogram ttft_{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
    Histogram tpot_{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}};
};

// ---- access ----------------------------------------------------------------------------------

// Compares without an early exit, so the time taken does not tell how much of a key matched.
bool same_key(const std::string& a, const std::string& b) {
    unsigned char diff = a.size() != b.size();
    const size_t n = std::max(a.size(), b.size());
    for (size_t i = 0; i < n; ++i) {
        unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
        unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
        diff |= x ^ y;
    }
    return diff == 0;
}

std::vector<std::string> read_keys(const std::string& path) {
    std::vector<std::string> keys;
    std::istringstream in(read_file(path));
    std::string line;
    while (std::getline(in, line)) {
        while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
        size_t b = line.find_first_not_of(" \t");
        if (b == std::string::npos || line[b] == '#') continue;
        keys.push_back(line.substr(b));
    }
    DISTILL_CHECK(!keys.empty(), path, " holds no API keys (one per line; '#' starts a comment)");
    return keys;
}

// Token buckets per key: `rpm` requests and `tpm` tokens per minute, refilled continuously.
class RateLimiter {
public:
    RateLimiter(double rpm, double tpm) : rpm_(rpm), tpm_(tpm) {}
    // 0 when the request may go ahead (a request is charged), else the seconds to wait.
    double admit(const std::string& key) {
        if (rpm_ <= 0 && tpm_ <= 0) return 0;
        std::lock_guard<std::mutex> lk(mu_);
        Bucket& b = refill(key);
        if (rpm_ > 0 && b.requests < 1) return (1 - b.requests) * 60.0 / rpm_;
        if (tpm_ > 0 && b.tokens <= 0) return -b.tokens * 60.0 / tpm_ + 1e-3;
        if (rpm_ > 0) b.requests -= 1;
        return 0;
    }
    void charge(const std::string& key, int64_t tokens) {
        if (tpm_ <= 0) return;
        std::lock_guard<std::mutex> lk(mu_);
        refill(key).tokens -= double(tokens);
    }

private:
    struct Bucket {
        double requests = 0, tokens = 0;
        Clock::time_point t;
    };
    Bucket& refill(const std::string& key) {
        auto now = Clock::now();
        auto [it, fresh] = buckets_.try_emplace(key);
        Bucket& b = it->second;
        if (fresh) {
            b.requests = rpm_;
            b.tokens = tpm_;
        } else {
            double dt = std::chrono::duration<double>(now - b.t).count();
            b.requests = std::min(rpm_, b.requests + dt * rpm_ / 60.0);
            b.tokens = std::min(tpm_, b.tokens + dt * tpm_ / 60.0);
        }
        b.t = now;
        return b;
    }
    double rpm_, tpm_;
    std::mutex mu_;
    std::unordered_map<std::string, Bucket> buckets_;
};

// ---- one HTTP request's choices, fed by the engine, drained by the HTTP thread -----------------

struct Pending {
    TokenLogprob t;
    Clock::time_point at;
};

struct Choice {
    int index = 0;
    size_t prompt = 0;  // which prompt of the request
    std::shared_ptr<GenRequest> req;
    // filled on the engine thread (under Call::mu)
    std::deque<Pending> pending;
    std::vector<TokenLogprob> prompt_lps;
    bool done = false;
    FinishReason why = FinishReason::Stop;
    std::string error;
    // the HTTP thread's view
    std::vector<int32_t> ids;  // visible generated ids (no EOS)
    struct Tok {
        TokenLogprob t;
        int64_t offset;  // byte offset of the token's text in `text` when it was added
    };
    std::vector<Tok> toks;
    std::string text;    // decoded visible text, cut at a stop sequence
    size_t sent = 0;     // bytes of `text` already streamed
    size_t sent_toks = 0;
    bool stopped = false;  // a stop string or an EOS id ended it
    bool finished = false; // the final state was reported
    int64_t completion_tokens = 0;
    Clock::time_point last;
    bool first = true;
};

struct Call {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<Choice> choices;
    Clock::time_point start = Clock::now();
};

struct PromptInfo {
    std::vector<int64_t> ids;
    std::string text;   // for echo
    bool bos_added = false;
};

class Server {
public:
    explicit Server(const ServeOptions& o)
        : o_(o), limiter_(o.rate_rpm, o.rate_tpm), noise_key_(o.logprob_noise_seed ? o.logprob_noise_seed : random_seed()) {
        if (!o.api_key_file.empty()) keys_ = read_keys(o.api_key_file);
        for (size_t i = 0; i < keys_.size(); ++i) key_labels_.emplace(keys_[i], "key-" + std::to_string(i + 1));
        alias_ = o.alias;
        if (alias_.empty()) {
            std::filesystem::path p(o.model);
            if (!p.has_filename()) p = p.parent_path();
            alias_ = p.filename().string();
        }
    }

    // Sets up the routes and binds the port (o.port 0: a free one); returns the port.
    int bind();
    // Loads the model and serves until shutdown(); throws when the model cannot be loaded.
    void listen();
    // New requests get 503; waits (up to shutdown_timeout_s) for those in flight, then stops.
    void shutdown();
    bool ready() const { return ready_; }
    int64_t inflight() const { return inflight_; }
    std::map<std::string, int64_t> faults_injected() const { return metrics_.faults(); }
    bool failed() const { return failed_; }

private:
    void load();
    std::string system_fingerprint(const std::string& model_fingerprint, const Antidistill* ad) const;
    void routes();
    // --inject-faults: true when this request got a fault instead of (or after) its answer
    bool inject_fault(const httplib::Request& req, httplib::Response& res,
                      const std::function<void(const httplib::Request&, httplib::Response&)>& f);
    // checks that every /v1 request passes: ready, not draining, key, rate
    std::string admit(const httplib::Request& req);
    void completions(const httplib::Request& req, httplib::Response& res);
    void chat(const httplib::Request& req, httplib::Response& res);
    void check_model(const std::string& m) const {
        if (!m.empty() && m != alias_)
            throw ApiError(404, "The model '" + m + "' does not exist; this server serves '" + alias_ + "'",
                           "invalid_request_error", "model", "model_not_found");
    }
    PromptInfo tokenize_prompt(const api::Prompt& p) const;
    void check_prompt(const std::vector<int64_t>& ids, int64_t max_tokens, bool echo_only) const;
    std::shared_ptr<Call> start(const std::vector<PromptInfo>& prompts, const api::Sampling& s, bool logprobs,
                                int64_t top, bool prompt_lps);
    // Moves what the engine produced into each choice's text; true when every choice is done.
    bool drain(Call& call, const api::Sampling& s, std::unique_lock<std::mutex>& lk);
    void finish_choice(Choice& c);
    json legacy_logprobs(const Choice& c, const PromptInfo* echo, size_t from_tok, bool with_prompt, bool as_ids,
                         int64_t top) const;
    json chat_logprobs(const Choice& c, size_t from_tok, size_t to_tok, bool as_ids) const;
    // A token as logprobs name it: its text (invalid UTF-8 replaced), or "token_id:<id>" when the
    // request asked for return_tokens_as_token_ids (vLLM's convention).
    std::string token_text(int64_t id, bool as_ids = false) const {
        return as_ids ? "token_id:" + std::to_string(id) : utf8_lossy(tok_.token_bytes(static_cast<int32_t>(id)));
    }
    static const char* finish_name(const Choice& c) {
        if (c.stopped) return "stop";
        return c.why == FinishReason::Length ? "length" : "stop";
    }
    void usage_and_charge(const std::string& key, int64_t prompt_tokens, const Call& call, json& usage);
    // A log-prob as the API returns it: rounded to --logprob-decimals when set.
    double shown(double lp) const {
        if (o_.logprob_decimals < 0) return lp;
        const double scale = std::pow(10.0, o_.logprob_decimals);
        return std::round(lp * scale) / scale;
    }
    // Waits until every choice is done; a failed one is an ApiError (500).
    void wait_all(Call& call, const api::Sampling& s, std::unique_lock<std::mutex>& lk);
    // Streams the choices as they grow: `chunks(choice, i, final)` gives the events for what is new
    // (called under the call's lock, which writing does not hold). False when the client left.
    bool stream_choices(Call& call, const api::Sampling& s, httplib::DataSink& sink,
                        const std::function<std::vector<std::string>(Choice&, size_t, bool)>& chunks);
    // A stream's end: the usage chunk (with include_usage, `head` gives its id, object, ...) and [DONE].
    void end_stream(httplib::DataSink& sink, const std::string& key, int64_t prompt_tokens, Call& call,
                    bool include_usage, json head);

    ServeOptions o_;
    std::string alias_;
    // OpenAI's system_fingerprint: what the answers depend on (the weights and the settings that
    // change what is sampled or shown), so a client can tell one backend from another
    std::string system_fingerprint_;
    std::vector<std::string> keys_;
    std::map<std::string, std::string> key_labels_;  // a key -> "key-N", what /metrics shows
    std::mutex quota_mu_;
    std::unordered_map<std::string, int64_t> key_tokens_;  // tokens charged per key (the quota)
    RateLimiter limiter_;
    uint64_t noise_key_;  // --logprob-noise: the key of the noise (the same numbers for the same context)
    Metrics metrics_;
    httplib::Server http_;
    std::atomic<bool> ready_{false}, draining_{false}, failed_{false};
    std::atomic<int64_t> inflight_{0};
    std::atomic<uint64_t> posts_{0};
    std::string load_error_;
    std::unique_ptr<Engine> engine_;
    Tokenizer tok_;
    std::optional<ChatTemplate> chat_;
    std::vector<int64_t> stop_ids_;
    int64_t context_ = 0, vocab_ = 0;
    std::time_t created_ = std::time(nullptr);
};

void Server::load() {
    try {
        LoadedModel m = load_model_for_inference(o_.model);
        DISTILL_CHECK(m.has_tokenizer, o_.model, " has no tokenizer; serve needs one to read and write text");
        tok_ = m.tokenizer;
        stop_ids_ = m.config.stop_ids();
        if (stop_ids_.empty() && tok_.eos_id() >= 0) stop_ids_ = {tok_.eos_id()};
        context_ = m.config.max_position_embeddings;
        vocab_ = m.config.vocab_size;
        const std::string tc = (std::filesystem::path(o_.model) / "tokenizer_config.json").string();
        if (std::filesystem::is_directory(o_.model) && std::filesystem::exists(tc)) {
            chat_ = ChatTemplate::from_tokenizer_config(tc, /*chatml_fallback=*/true);
        } else if (is_gguf_path(o_.model) && GgufFile(o_.model).has("tokenizer.chat_template")) {
            // where llama.cpp reads it; the special tokens are the tokenizer's own
            auto special = [&](int32_t id) { return id >= 0 ? tok_.token_bytes(id) : std::string(); };
            const std::string text = GgufFile(o_.model).get_string("tokenizer.chat_template");
            chat_ = ChatTemplate::from_text(text, special(tok_.bos_id()), special(tok_.eos_id()), /*chatml_fallback=*/true);
        } else {
            chat_ = ChatTemplate::distill_chatml();
        }
        std::shared_ptr<Antidistill> ad;
        if (o_.antidistill) {
            const auto t0 = std::chrono::steady_clock::now();
            auto made = make_antidistill(*o_.antidistill, tok_, vocab_, context_, m.model->parameters().front().device());
            std::fprintf(stderr,
                         "serve: antidistillation sampling with proxy %s (lambda %g, eps %g): gradient of its "
                         "loss %.4f nats on %lld windows of %lld tokens, |g| %.4g, in %.1f s\n",
                         o_.antidistill->proxy.c_str(), made->lambda, made->eps, made->data_loss,
                         static_cast<long long>(made->windows), static_cast<long long>(made->window), made->grad_norm,
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
            ad = std::move(made);
        }
        system_fingerprint_ = system_fingerprint(m.fingerprint, ad.get());
        engine_ = std::make_unique<Engine>(m.model, o_.parallel, std::move(ad));
        ready_ = true;
        std::fprintf(stderr, "serve: %s ready as '%s' (context %lld, %lld slots, chat template %s)\n",
                     o_.model.c_str(), alias_.c_str(), static_cast<long long>(context_),
                     static_cast<long long>(o_.parallel), chat_->name().c_str());
    } catch (const std::exception& e) {
        load_error_ = e.what();
        failed_ = true;
        std::fprintf(stderr, "serve: cannot load %s: %s\n", o_.model.c_str(), e.what());
        while (!http_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        http_.stop();
    }
}

std::string Server::system_fingerprint(const std::string& model_fingerprint, const Antidistill* ad) const {
    auto exact = [](double x) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.17g", x);
        return std::string(buf);
    };
    std::string what = "model " + model_fingerprint;
    // chat completions also depend on the chat template: its renderer and the BOS it writes
    if (chat_) what += str_cat(" chat ", chat_->name(), " ", chat_->bos_token());
    if (o_.watermark)
        what += str_cat(" watermark ", watermark_key_id_hex(o_.watermark->key), " ", exact(o_.watermark->gamma), " ",
                        exact(o_.watermark->delta), " ", o_.watermark->context);
    // the proxy and its text, through what they gave: the loss and the gradient's norm
    if (ad)
        what += str_cat(" antidistill ", exact(ad->lambda), " ", exact(ad->eps), " ", ad->windows, " ", ad->window, " ",
                        exact(ad->data_loss), " ", exact(ad->grad_norm));
    if (o_.logprob_decimals >= 0) what += str_cat(" decimals ", o_.logprob_decimals);
    if (o_.logprob_noise > 0) what += str_cat(" noise ", exact(o_.logprob_noise), " ", noise_key_);
    return "fp_" + hash_hex(what).substr(0, 10);
}

std::string Server::admit(const httplib::Request& req) {
    if (draining_) throw ApiError(503, "the server is shutting down", "server_error", "", "shutting_down");
    if (!ready_) throw ApiError(503, "the model is still loading; retry shortly", "server_error", "", "loading");
    std::string key = req.remote_addr;
    if (!keys_.empty()) {
        std::string auth = req.get_header_value("Authorization");
        const std::string bearer = "Bearer ";
        std::string given = auth.compare(0, bearer.size(), bearer) == 0 ? auth.substr(bearer.size()) : "";
        bool ok = false;
        for (const auto& k : keys_) ok |= same_key(k, given);  // every key compared, no early exit
        if (!ok)
            throw ApiError(401, given.empty() ? "no API key given: send 'Authorization: Bearer KEY'"
                                              : "incorrect API key provided",
                           "invalid_request_error", "", "invalid_api_key");
        key = given;
    }
    if (o_.key_token_quota > 0) {
        std::lock_guard<std::mutex> lk(quota_mu_);
        if (key_tokens_[key] >= o_.key_token_quota)
            throw ApiError(429, str_cat("this key's token quota (", o_.key_token_quota,
                                        " prompt + completion tokens) is used up"),
                           "insufficient_quota", "", "insufficient_quota");
    }
    if (double wait = limiter_.admit(key); wait > 0) {
        ApiError e(429, "rate limit reached for this key; retry after the time in Retry-After", "requests", "",
                   "rate_limit_exceeded");
        throw std::make_pair(e, wait);
    }
    return key;
}

PromptInfo Server::tokenize_prompt(const api::Prompt& p) const {
    PromptInfo info;
    if (p.is_ids) {
        for (int64_t id : p.ids)
            if (id >= vocab_)
                throw ApiError(400, "token id " + std::to_string(id) + " is outside the vocabulary (" +
                                        std::to_string(vocab_) + ")", "invalid_request_error", "prompt");
        info.ids = p.ids;
        std::vector<int32_t> v(p.ids.begin(), p.ids.end());
        info.text = tok_.decode(v, false);
        return info;
    }
    if (!utf8_valid(p.text)) throw ApiError(400, "the prompt is not valid UTF-8", "invalid_request_error", "prompt");
    info.ids = encode_for_eval(tok_, p.text);
    info.bos_added = tok_.bos_id() >= 0;
    info.text = p.text;
    if (info.ids.empty()) throw ApiError(400, "the prompt is empty", "invalid_request_error", "prompt");
    return info;
}

void Server::check_prompt(const std::vector<int64_t>& ids, int64_t max_tokens, bool echo_only) const {
    const int64_t T = static_cast<int64_t>(ids.size());
    const int64_t cap = o_.max_prompt_tokens > 0 ? std::min(o_.max_prompt_tokens, context_) : context_;
    if (T > cap || (T == context_ && !echo_only))
        throw ApiError(400, "the prompt has " + std::to_string(T) + " tokens; this server takes at most " +
                                std::to_string(echo_only ? cap : std::min(cap, context_ - 1)),
                       "invalid_request_error", "prompt", "context_length_exceeded");
    (void)max_tokens;
}

std::shared_ptr<Call> Server::start(const std::vector<PromptInfo>& prompts, const api::Sampling& s, bool logprobs,
                                    int64_t top, bool prompt_lps) {
    if (engine_->stats().queued >= o_.max_queue)
        throw ApiError(503, "the server is busy (" + std::to_string(o_.max_queue) + " requests waiting); retry later",
                       "server_error", "", "queue_full");
    auto call = std::make_shared<Call>();
    const uint64_t base_seed = s.seed ? *s.seed : random_seed();
    int index = 0;
    for (size_t p = 0; p < prompts.size(); ++p)
        for (int64_t j = 0; j < s.n; ++j) {
            Choice c;
            c.index = index++;
            c.prompt = p;
            call->choices.push_back(std::move(c));
        }
    for (size_t i = 0; i < call->choices.size(); ++i) {
        Choice& c = call->choices[i];
        const PromptInfo& p = prompts[c.prompt];
        auto r = std::make_shared<GenRequest>();
        r->prompt = p.ids;
        r->sampling.temperature = s.temperature;
        r->sampling.top_p = s.top_p;
        r->sampling.top_k = s.top_k;
        r->sampling.seed = base_seed + static_cast<uint64_t>(c.index);
        // never past the context: the engine ends a full slot with "length"
        r->sampling.max_new_tokens = std::min<int64_t>(s.max_tokens, context_ - static_cast<int64_t>(p.ids.size()));
        r->sampling.stop_ids = stop_ids_;
        r->sampling.vocab_limit = tok_.vocab_size();
        r->sampling.watermark = o_.watermark;
        r->logprobs = logprobs;
        r->top_logprobs = top;
        r->prompt_logprobs = prompt_lps;
        r->logprob_noise = o_.logprob_noise;
        r->noise_key = noise_key_;
        std::weak_ptr<Call> weak = call;
        r->on_prompt = [weak, i](std::vector<TokenLogprob> lps) {
            if (auto cl = weak.lock()) {
                std::lock_guard<std::mutex> lk(cl->mu);
                cl->choices[i].prompt_lps = std::move(lps);
            }
        };
        r->on_token = [weak, i](const TokenLogprob& t) {
            auto cl = weak.lock();
            if (!cl) return false;
            {
                std::lock_guard<std::mutex> lk(cl->mu);
                cl->choices[i].pending.push_back({t, Clock::now()});
            }
            cl->cv.notify_all();
            return true;
        };
        r->on_done = [weak, i](FinishReason why, const std::string& err) {
            if (auto cl = weak.lock()) {
                {
                    std::lock_guard<std::mutex> lk(cl->mu);
                    cl->choices[i].done = true;
                    cl->choices[i].why = why;
                    cl->choices[i].error = err;
                }
                cl->cv.notify_all();
            }
        };
        c.req = r;
    }
    std::vector<std::shared_ptr<GenRequest>> reqs;
    for (auto& c : call->choices) reqs.push_back(c.req);
    engine_->submit(std::move(reqs));
    return call;
}

// The longest suffix of `text` that is a proper prefix of a stop string: it may yet become one.
size_t holdback(const std::string& text, const std::vector<std::string>& stops) {
    size_t keep = 0;
    for (const auto& s : stops)
        for (size_t k = std::min(s.size() - 1, text.size()); k > keep; --k)
            if (text.compare(text.size() - k, k, s, 0, k) == 0) {
                keep = k;
                break;
            }
    return keep;
}

// How much of a choice's text may be streamed now: all of it at the end; before that, not a
// character whose bytes are still arriving, nor what may be the start of a stop string.
size_t streamable(const Choice& c, const std::vector<std::string>& stops, bool final) {
    if (final) return c.text.size();
    size_t safe = utf8_complete_prefix(c.text);
    if (c.text.size() >= 3 && c.text.compare(c.text.size() - 3, 3, "\xEF\xBF\xBD") == 0)
        safe = std::min(safe, c.text.size() - 3);  // a replacement for bytes that may complete
    if (!c.stopped) safe -= std::min(safe, holdback(c.text.substr(0, safe), stops));
    return safe;
}

bool Server::drain(Call& call, const api::Sampling& s, std::unique_lock<std::mutex>& lk) {
    bool all = true;
    for (Choice& c : call.choices) {
        while (!c.pending.empty()) {
            Pending p = std::move(c.pending.front());
            c.pending.pop_front();
            if (c.stopped) continue;  // tokens the engine made before it saw the cancel
            ++c.completion_tokens;
            if (c.first) metrics_.first_token(std::chrono::duration<double>(p.at - call.start).count());
            else metrics_.next_token(std::chrono::duration<double>(p.at - c.last).count());
            c.first = false;
            c.last = p.at;
            if (std::find(stop_ids_.begin(), stop_ids_.end(), p.t.id) != stop_ids_.end()) {
                c.stopped = true;
                continue;
            }
            const int64_t offset = static_cast<int64_t>(c.text.size());
            c.ids.push_back(static_cast<int32_t>(p.t.id));
            c.toks.push_back({std::move(p.t), offset});
            lk.unlock();
            std::string text = tok_.decode(c.ids, true);
            lk.lock();
            // a stop string ends the text where it begins (searched from where it could start)
            size_t from = c.text.size();
            size_t cut = std::string::npos;
            for (const auto& st : s.stop) {
                size_t start = from >= st.size() ? from - st.size() + 1 : 0;
                size_t at = text.find(st, std::min(start, text.size()));
                if (at != std::string::npos && at < cut) cut = at;
            }
            if (cut != std::string::npos) {
                text.resize(cut);
                c.stopped = true;
                c.req->cancelled = true;
                // tokens that begin inside the stop string are not part of the answer
                while (!c.toks.empty() && c.toks.back().offset >= static_cast<int64_t>(cut)) c.toks.pop_back();
            }
            c.text = std::move(text);
        }
        all = all && c.done && c.pending.empty();
    }
    return all;
}

json Server::legacy_logprobs(const Choice& c, const PromptInfo* echo, size_t from_tok, bool with_prompt, bool as_ids,
                             int64_t top) const {
    json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
    int64_t base_chars = 0;
    auto top_dict = [&](const TokenLogprob& t) {
        json d = json::object();
        for (const auto& [id, lp] : t.top) {
            std::string s = token_text(id, as_ids);
            if (!d.contains(s)) d[s] = shown(lp);
        }
        std::string s = token_text(t.id, as_ids);  // the sampled token is always there, as the API does
        if (!d.contains(s)) d[s] = shown(t.logprob);
        return d;
    };
    if (echo && with_prompt) {
        // the prompt's tokens: the first has no prediction (unless a BOS we added precedes it)
        const auto& ids = echo->ids;
        size_t first = echo->bos_added ? 1 : 0;
        int64_t bytes_chars = 0;
        for (size_t i = first; i < ids.size(); ++i) {
            std::string b = tok_.token_bytes(static_cast<int32_t>(ids[i]));
            tokens.push_back(as_ids ? token_text(ids[i], true) : utf8_lossy(b));
            offsets.push_back(bytes_chars);
            bytes_chars += utf8_char_count(b);
            if (i == 0 || c.prompt_lps.size() < i) {
                lps.push_back(nullptr);
                tops.push_back(nullptr);
            } else {
                const TokenLogprob& t = c.prompt_lps[i - 1];
                lps.push_back(shown(t.logprob));
                tops.push_back(top > 0 ? top_dict(t) : json(nullptr));
            }
        }
    }
    if (echo) base_chars = utf8_char_count(echo->text);
    for (size_t k = from_tok; k < c.toks.size(); ++k) {
        const auto& tk = c.toks[k];
        tokens.push_back(token_text(tk.t.id, as_ids));
        lps.push_back(shown(tk.t.logprob));
        tops.push_back(top_dict(tk.t));
        std::string_view before(c.text.data(), std::min<size_t>(tk.offset, c.text.size()));
        offsets.push_back(base_chars + utf8_char_count(before));
    }
    return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

json Server::chat_logprobs(const Choice& c, size_t from, size_t to, bool as_ids) const {
    json content = json::array();
    auto entry = [&](int64_t id, double lp) {
        std::string b = tok_.token_bytes(static_cast<int32_t>(id));
        json bytes = json::array();
        for (unsigned char ch : b) bytes.push_back(int(ch));
        return json{{"token", as_ids ? token_text(id, true) : utf8_lossy(b)}, {"logprob", shown(lp)}, {"bytes", bytes}};
    };
    for (size_t k = from; k < to && k < c.toks.size(); ++k) {
        const auto& t = c.toks[k].t;
        json e = entry(t.id, t.logprob);
        json tops = json::array();
        for (const auto& [id, lp] : t.top) tops.push_back(entry(id, lp));
        e["top_logprobs"] = tops;
        content.push_back(e);
    }
    return {{"content", content}, {"refusal", nullptr}};
}

void Server::usage_and_charge(const std::string& key, int64_t prompt_tokens, const Call& call, json& usage) {
    int64_t completion = 0;
    for (const auto& c : call.choices) completion += c.completion_tokens;
    usage = {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion},
             {"total_tokens", prompt_tokens + completion}};
    metrics_.tokens(prompt_tokens, completion);
    limiter_.charge(key, prompt_tokens + completion);
    const auto label = key_labels_.find(key);
    metrics_.key_usage(label != key_labels_.end() ? label->second : key, 1, prompt_tokens + completion);
    if (o_.key_token_quota > 0) {
        std::lock_guard<std::mutex> lk(quota_mu_);
        key_tokens_[key] += prompt_tokens + completion;
    }
}

// Counts a request in flight until its response is done (streams finish after the handler).
struct InFlight {
    std::atomic<int64_t>& n;
    explicit InFlight(std::atomic<int64_t>& c) : n(c) { ++n; }
    ~InFlight() { --n; }
};

std::string sse(const json& j) {
    return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

void Server::wait_all(Call& call, const api::Sampling& s, std::unique_lock<std::mutex>& lk) {
    while (!drain(call, s, lk)) call.cv.wait_for(lk, std::chrono::milliseconds(50));
    for (const Choice& c : call.choices)
        if (c.why == FinishReason::Error) throw ApiError(500, "generation failed: " + c.error, "server_error");
}

bool Server::stream_choices(Call& call, const api::Sampling& s, httplib::DataSink& sink,
                            const std::function<std::vector<std::string>(Choice&, size_t, bool)>& chunks) {
    std::unique_lock<std::mutex> lk(call.mu);
    for (;;) {
        const bool all = drain(call, s, lk);
        for (size_t i = 0; i < call.choices.size(); ++i) {
            Choice& c = call.choices[i];
            if (c.finished) continue;
            const bool final = c.done && c.pending.empty();
            std::vector<std::string> out;
            if (final && c.why == FinishReason::Error)
                out.push_back(sse(ApiError(500, "generation failed: " + c.error, "server_error").body()));
            else
                out = chunks(c, i, final);
            if (final) c.finished = true;
            if (out.empty()) continue;
            lk.unlock();
            bool ok = true;
            for (const auto& d : out) ok = ok && sink.write(d.data(), d.size());
            lk.lock();
            if (!ok) {  // the client left: stop its generation
                for (auto& ch : call.choices) ch.req->cancelled = true;
                return false;
            }
        }
        if (all) return true;
        call.cv.wait_for(lk, std::chrono::milliseconds(50));
    }
}

void Server::end_stream(httplib::DataSink& sink, const std::string& key, int64_t prompt_tokens, Call& call,
                        bool include_usage, json head) {
    json usage;
    {
        std::lock_guard<std::mutex> lk(call.mu);
        usage_and_charge(key, prompt_tokens, call, usage);
    }
    if (include_usage) {
        head["choices"] = json::array();
        head["usage"] = usage;
        std::string data = sse(head);
        sink.write(data.data(), data.size());
    }
    const char* done = "data: [DONE]\n\n";
    sink.write(done, std::strlen(done));
    sink.done();
}

void Server::completions(const httplib::Request& req, httplib::Response& res) {
    auto guard = std::make_shared<InFlight>(inflight_);
    const std::string key = admit(req);
    api::Limits lim;
    lim.max_top_logprobs = o_.max_top_logprobs;
    lim.max_tokens = o_.max_tokens;
    api::CompletionRequest r = api::parse_completion(req.body, lim);
    check_model(r.model);
    std::vector<PromptInfo> prompts;
    int64_t prompt_tokens = 0;
    for (const auto& p : r.prompts) {
        prompts.push_back(tokenize_prompt(p));
        check_prompt(prompts.back().ids, r.sampling.max_tokens, r.sampling.max_tokens == 0);
        prompt_tokens += static_cast<int64_t>(prompts.back().ids.size());
    }
    const bool want_lp = r.logprobs.has_value();
    const int64_t top = r.logprobs.value_or(0);
    auto call = start(prompts, r.sampling, want_lp, top, r.echo && want_lp);
    const std::string id = "cmpl-" + random_hex(24);
    const std::time_t created = std::time(nullptr);
    const api::Sampling s = r.sampling;
    const bool echo = r.echo, as_ids = r.tokens_as_ids;

    auto choice_json = [this, echo, as_ids, want_lp, top, prompts](const Choice& c, const std::string& text,
                                                                   size_t from_tok, bool first_chunk, const json& finish) {
        json ch = {{"index", c.index}};
        ch["text"] = (echo && first_chunk ? prompts[c.prompt].text : "") + text;
        ch["logprobs"] = want_lp ? legacy_logprobs(c, echo ? &prompts[c.prompt] : nullptr, from_tok, first_chunk,
                                                   as_ids, top)
                                 : json(nullptr);
        ch["finish_reason"] = finish;
        return ch;
    };

    if (!s.stream) {
        std::unique_lock<std::mutex> lk(call->mu);
        wait_all(*call, s, lk);
        json choices = json::array();
        for (const Choice& c : call->choices) {
            choices.push_back(choice_json(c, c.text, 0, true, finish_name(c)));
        }
        json usage;
        usage_and_charge(key, prompt_tokens, *call, usage);
        json out = {{"id", id},       {"object", "text_completion"}, {"created", created},
                    {"model", alias_}, {"system_fingerprint", system_fingerprint_}, {"choices", choices},
                    {"usage", usage}};
        res.set_content(out.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
        return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, call, s, id, created, key, prompt_tokens, choice_json](size_t, httplib::DataSink& sink) {
            std::vector<bool> started(call->choices.size(), false);
            auto chunks = [&](Choice& c, size_t i, bool final) {
                std::vector<std::string> out;
                const size_t safe = streamable(c, s.stop, final);
                if (safe > c.sent || c.toks.size() > c.sent_toks || !started[i] || final) {
                    json chunk = {{"id", id},       {"object", "text_completion"}, {"created", created},
                                  {"model", alias_}, {"system_fingerprint", system_fingerprint_}};
                    std::string delta = safe > c.sent ? c.text.substr(c.sent, safe - c.sent) : "";
                    chunk["choices"] = json::array({choice_json(c, delta, c.sent_toks, !started[i],
                                                                final ? json(finish_name(c)) : json(nullptr))});
                    c.sent = std::max(c.sent, safe);
                    c.sent_toks = c.toks.size();
                    started[i] = true;
                    out.push_back(sse(chunk));
                }
                return out;
            };
            if (!stream_choices(*call, s, sink, chunks)) return false;
            end_stream(sink, key, prompt_tokens, *call, s.include_usage,
                       {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", alias_},
                        {"system_fingerprint", system_fingerprint_}});
            return true;
        },
        [guard](bool) {});
}

void Server::chat(const httplib::Request& req, httplib::Response& res) {
    auto guard = std::make_shared<InFlight>(inflight_);
    const std::string key = admit(req);
    api::Limits lim;
    lim.max_top_logprobs = o_.max_top_logprobs;
    lim.max_tokens = o_.max_tokens;
    api::ChatRequest r = api::parse_chat(req.body, lim);
    check_model(r.model);
    ChatOptions copt;
    copt.add_generation_prompt = true;
    copt.tools = r.tools;
    std::string rendered;
    try {
        rendered = chat_->render(r.messages, copt);
    } catch (const Error& e) {
        throw ApiError(400, std::string("the chat template cannot render these messages: ") + e.what(),
                       "invalid_request_error", "messages");
    }
    if (!utf8_valid(rendered)) throw ApiError(400, "the messages are not valid UTF-8", "invalid_request_error", "messages");
    PromptInfo p;
    const std::string bos = tok_.bos_id() >= 0 ? tok_.id_to_token(tok_.bos_id()) : "";
    if (!bos.empty() && rendered.compare(0, bos.size(), bos) != 0) p.ids.push_back(tok_.bos_id());
    for (int32_t t : tok_.encode(rendered)) p.ids.push_back(t);
    check_prompt(p.ids, r.sampling.max_tokens, false);
    const int64_t prompt_tokens = static_cast<int64_t>(p.ids.size());
    auto call = start({p}, r.sampling, r.logprobs, r.top_logprobs, false);
    const std::string id = "chatcmpl-" + random_hex(24);
    const std::time_t created = std::time(nullptr);
    const api::Sampling s = r.sampling;
    const bool want_lp = r.logprobs, as_ids = r.tokens_as_ids;

    if (!s.stream) {
        std::unique_lock<std::mutex> lk(call->mu);
        wait_all(*call, s, lk);
        json choices = json::array();
        for (const Choice& c : call->choices) {
            json ch = {{"index", c.index},
                       {"message", {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}}},
                       {"logprobs", want_lp ? chat_logprobs(c, 0, c.toks.size(), as_ids) : json(nullptr)},
                       {"finish_reason", finish_name(c)}};
            choices.push_back(ch);
        }
        json usage;
        usage_and_charge(key, prompt_tokens, *call, usage);
        json out = {{"id", id}, {"object", "chat.completion"}, {"created", created}, {"model", alias_},
                    {"system_fingerprint", system_fingerprint_}, {"choices", choices}, {"usage", usage}};
        res.set_content(out.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
        return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, call, s, id, created, key, prompt_tokens, want_lp, as_ids](size_t, httplib::DataSink& sink) {
            std::vector<bool> started(call->choices.size(), false);
            auto chunk_of = [&](const Choice& c, json delta, json lp, json finish) {
                json ch = {{"index", c.index}, {"delta", delta}, {"logprobs", lp}, {"finish_reason", finish}};
                return json{{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", alias_},
                            {"system_fingerprint", system_fingerprint_}, {"choices", json::array({ch})}};
            };
            auto chunks = [&](Choice& c, size_t i, bool final) {
                std::vector<std::string> out;
                if (!started[i]) {
                    out.push_back(sse(chunk_of(c, {{"role", "assistant"}, {"content", ""}}, nullptr, nullptr)));
                    started[i] = true;
                }
                const size_t safe = streamable(c, s.stop, final);
                if (safe > c.sent || c.toks.size() > c.sent_toks) {
                    json delta = json::object();
                    if (safe > c.sent) delta["content"] = c.text.substr(c.sent, safe - c.sent);
                    json lp = want_lp ? chat_logprobs(c, c.sent_toks, c.toks.size(), as_ids) : json(nullptr);
                    out.push_back(sse(chunk_of(c, delta, lp, nullptr)));
                    c.sent = std::max(c.sent, safe);
                    c.sent_toks = c.toks.size();
                }
                if (final) out.push_back(sse(chunk_of(c, json::object(), nullptr, finish_name(c))));
                return out;
            };
            if (!stream_choices(*call, s, sink, chunks)) return false;
            end_stream(sink, key, prompt_tokens, *call, s.include_usage,
                       {{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", alias_},
                        {"system_fingerprint", system_fingerprint_}});
            return true;
        },
        [guard](bool) {});
}

void send_error(httplib::Response& res, const ApiError& e) {
    res.status = e.status;
    res.set_content(e.body().dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

bool Server::inject_fault(const httplib::Request& req, httplib::Response& res,
                          const std::function<void(const httplib::Request&, httplib::Response&)>& f) {
    const uint64_t n = posts_++;
    const uint64_t h = XXH3_64bits_withSeed(&n, sizeof n, o_.fault_seed);
    if (double(h >> 11) * 0x1p-53 >= o_.fault_rate) return false;
    static const char* kinds[] = {"500", "429", "timeout", "reset", "truncated", "malformed"};
    const std::string kind = kinds[XXH3_64bits_withSeed(&n, sizeof n, o_.fault_seed + 1) % 6];
    metrics_.fault(kind);
    if (kind == "500") {
        send_error(res, ApiError(500, "injected fault: internal error", "server_error"));
    } else if (kind == "429") {
        send_error(res, ApiError(429, "injected fault: rate limited", "requests", "", "rate_limit_exceeded"));
        res.set_header("Retry-After", "1");
    } else if (kind == "timeout" || kind == "reset") {
        // a hung request: held past the client's timeout, then closed unanswered (an answer
        // computed for a client that has given up would only take a slot from the others)
        if (kind == "timeout") std::this_thread::sleep_for(std::chrono::duration<double>(o_.fault_delay_s));
        // headers promise a body, then the connection closes
        res.set_content_provider(4096, "application/json", [](size_t, size_t, httplib::DataSink&) { return false; });
    } else {
        f(req, res);
        if ((res.status != -1 && res.status != 200) || res.body.empty()) return true;  // an error or a stream: as it is
        std::string body = res.body.substr(0, res.body.size() / 2);
        if (kind == "malformed") {
            res.body = body;  // a whole HTTP response whose JSON is cut off
        } else {
            const size_t full = res.body.size();
            res.body.clear();
            res.set_content_provider(full, "application/json", [body](size_t off, size_t, httplib::DataSink& sink) {
                if (off == 0) sink.write(body.data(), body.size());
                return false;  // the rest never comes
            });
        }
    }
    return true;
}

void Server::routes() {
    // Each /v1 handler throws ApiError for what the client got wrong; this wraps them.
    auto wrap = [this](const std::string& endpoint, std::function<void(const httplib::Request&, httplib::Response&)> f) {
        return [this, endpoint, f](const httplib::Request& req, httplib::Response& res) {
            try {
                if (req.method == "POST" && o_.fault_rate > 0 && inject_fault(req, res, f)) {
                    metrics_.request(endpoint, res.status == -1 ? 200 : res.status);
                    return;
                }
                f(req, res);
            } catch (const ApiError& e) {
                send_error(res, e);
            } catch (const std::pair<ApiError, double>& limited) {
                send_error(res, limited.first);
                res.set_header("Retry-After", std::to_string(static_cast<int64_t>(std::ceil(limited.second))));
            } catch (const std::exception& e) {
                send_error(res, ApiError(500, std::string("internal error: ") + e.what(), "server_error"));
            }
            metrics_.request(endpoint, res.status == -1 ? 200 : res.status);  // -1: httplib's 200 to come
        };
    };
    http_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
        if (ready_ && !draining_) {
            res.set_content(R"({"status":"ok"})", "application/json");
        } else {
            res.status = 503;
            res.set_content(draining_ ? R"({"status":"shutting down"})" : R"({"status":"loading"})",
                            "application/json");
        }
    });
    http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        EngineStats st = ready_ ? engine_->stats() : EngineStats{};
        res.set_content(metrics_.render(st, inflight_), "text/plain; version=0.0.4");
    });
    auto models = [this](const httplib::Request& req, httplib::Response& res) {
        admit(req);
        json m = {{"id", alias_}, {"object", "model"}, {"created", created_}, {"owned_by", "distill"},
                  {"meta", {{"context_length", context_}, {"vocab_size", vocab_}}}};
        if (req.matches.size() > 1) {
            check_model(req.matches[1]);
            res.set_content(m.dump(), "application/json");
            return;
        }
        res.set_content(json({{"object", "list"}, {"data", json::array({m})}}).dump(), "application/json");
    };
    http_.Get("/v1/models", wrap("/v1/models", models));
    http_.Get(R"(/v1/models/([^/]+))", wrap("/v1/models", models));
    http_.Post("/v1/completions",
               wrap("/v1/completions", [this](const auto& q, auto& r) { completions(q, r); }));
    http_.Post("/v1/chat/completions",
               wrap("/v1/chat/completions", [this](const auto& q, auto& r) { chat(q, r); }));
    // What httplib answers itself (404 unknown path, 413 body too large, 400 unreadable request)
    // gets the API's error object too.
    http_.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req,
                                                                     httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        std::string msg = res.status == 404   ? "no such endpoint: " + req.method + " " + req.path
                          : res.status == 413 ? "the request body is larger than this server accepts (--max-body-bytes)"
                                              : "the request could not be read";
        send_error(res, ApiError(res.status, msg));
        return httplib::Server::HandlerResponse::Handled;
    }));
    http_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        send_error(res, ApiError(500, "internal error", "server_error"));
    });
}

int Server::bind() {
    const int64_t threads = o_.http_threads > 0 ? o_.http_threads : 4 * o_.parallel + 16;
    http_.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
    http_.set_payload_max_length(static_cast<size_t>(o_.max_body_bytes));
    http_.set_read_timeout(30);
    http_.set_write_timeout(30);
    routes();
    int port = o_.port;
    if (port == 0) {
        port = http_.bind_to_any_port(o_.host);
        DISTILL_CHECK(port > 0, "cannot bind to ", o_.host, " on any port");
    } else {
        DISTILL_CHECK(http_.bind_to_port(o_.host, port), "cannot listen on ", o_.host, ":", port,
                      " (in use, or not an address of this machine); choose another with --port");
    }
    return port;
}

void Server::listen() {
    std::thread loader([this] { load(); });
    http_.listen_after_bind();
    loader.join();
    engine_.reset();
    if (failed_) throw Error(str_cat("cannot serve ", o_.model, ": ", load_error_));
}

void Server::shutdown() {
    draining_ = true;
    auto t0 = Clock::now();
    while (inflight_ > 0 && seconds_since(t0) < o_.shutdown_timeout_s)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    while (!http_.is_running() && !failed_ && seconds_since(t0) < 5)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));  // stop() before listen began is lost
    http_.stop();
}

}  // namespace

int serve(const ServeOptions& opts) {
    // SIGTERM / SIGINT are taken by one thread (sigwait), so every other thread inherits a mask
    // that blocks them.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    signal(SIGPIPE, SIG_IGN);
    Server s(opts);
    const int port = s.bind();
    if (opts.announce) {
        std::printf("listening on http://%s:%d\n", opts.host.c_str(), port);
        std::fflush(stdout);
    }
    std::atomic<bool> stopping{false};
    std::thread signals([&] {
        int sig = 0;
        sigwait(&sigs, &sig);
        if (stopping) return;
        std::fprintf(stderr, "serve: signal %d: finishing %lld requests in flight, refusing new ones\n", sig,
                     static_cast<long long>(s.inflight()));
        s.shutdown();
    });
    auto end_signals = [&] {
        stopping = true;
        pthread_kill(signals.native_handle(), SIGTERM);
        signals.join();
    };
    try {
        s.listen();
    } catch (...) {
        end_signals();
        throw;
    }
    if (!stopping) {
        // listen() returned because a signal stopped it: the thread is done, or about to be
        signals.join();
    }
    std::fprintf(stderr, "serve: stopped\n");
    return 0;
}

struct ServerThread::Impl {
    explicit Impl(const ServeOptions& o) : server(o) {}
    Server server;
    std::string host;
    int port = 0;
    std::thread thread;
    std::exception_ptr error;
    bool stopped = false;
};

ServerThread::ServerThread(const ServeOptions& opts) : impl_(std::make_unique<Impl>(opts)) {
    signal(SIGPIPE, SIG_IGN);
    impl_->host = opts.host;
    impl_->port = impl_->server.bind();
    Impl* im = impl_.get();
    im->thread = std::thread([im] {
        try {
            im->server.listen();
        } catch (...) {
            im->error = std::current_exception();
        }
    });
    while (!im->server.ready() && !im->server.failed())
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (im->server.failed()) {
        im->thread.join();
        im->stopped = true;
        std::rethrow_exception(im->error);
    }
}

ServerThread::~ServerThread() {
    try {
        stop();
    } catch (...) {
        // a destructor does not throw; stop() only rethrows what listen() threw
    }
}

int ServerThread::port() const { return impl_->port; }

std::map<std::string, int64_t> ServerThread::faults_injected() const { return impl_->server.faults_injected(); }

std::string ServerThread::base_url() const {
    return "http://" + impl_->host + ":" + std::to_string(impl_->port) + "/v1";
}

void ServerThread::stop() {
    if (impl_->stopped) return;
    impl_->stopped = true;
    impl_->server.shutdown();
    impl_->thread.join();
    if (impl_->error) std::rethrow_exception(impl_->error);
}

}  // namespace distill
