#include "eval/scorer.h"

#include <c10/core/InferenceMode.h>
#include <httplib.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <thread>

#include "util/error.h"
#include "util/url.h"
#include "util/progress.h"

namespace distill {

using json = nlohmann::json;

LoglikRequest Scorer::encode_pair(const std::string& context, const std::string& continuation) const {
    std::string ctx = context, cont = continuation;
    size_t keep = ctx.find_last_not_of(" \t\n\r\v\f");
    keep = keep == std::string::npos ? 0 : keep + 1;
    if (keep < ctx.size()) {
        cont = ctx.substr(keep) + cont;
        ctx.resize(keep);
    }
    DISTILL_CHECK(!cont.empty(), "the continuation is empty");
    auto whole = encode_for_eval(tok_, ctx + cont);
    auto head = encode_for_eval(tok_, ctx);
    LoglikRequest r;
    if (head.empty()) {
        // no BOS and no context: lm-eval would prefix the end-of-text token; the first token of the
        // continuation then has nothing to be predicted from
        DISTILL_CHECK(tok_.eos_id() >= 0, "an empty context needs a tokenizer with a BOS or EOS token");
        r.context = {tok_.eos_id()};
        r.continuation = whole;
        return r;
    }
    DISTILL_CHECK(whole.size() > head.size(), "the continuation '", continuation, "' adds no tokens");
    r.context = head;
    r.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(head.size()), whole.end());
    return r;
}

namespace {

// The last `window` tokens of context + continuation, and how many of them are context.
std::pair<std::vector<int64_t>, size_t> truncated(const LoglikRequest& r, int64_t window) {
    DISTILL_CHECK(static_cast<int64_t>(r.continuation.size()) < window, "a continuation of ",
                  r.continuation.size(), " tokens does not fit the window of ", window,
                  " tokens (raise --seq-len, up to the model's context)");
    std::vector<int64_t> all = r.context;
    all.insert(all.end(), r.continuation.begin(), r.continuation.end());
    const size_t drop = all.size() > static_cast<size_t>(window) ? all.size() - window : 0;
    std::vector<int64_t> kept(all.begin() + static_cast<std::ptrdiff_t>(drop), all.end());
    return {kept, r.context.size() - drop};
}

class LocalScorer : public Scorer {
public:
    LocalScorer(LoadedModel& m, const WindowOptions& w) : Scorer(m.tokenizer, w), m_(m) {
        DISTILL_CHECK(w.context <= m.config.max_position_embeddings, "--seq-len ", w.context,
                      " exceeds the model's max_position_embeddings ", m.config.max_position_embeddings);
    }

    std::vector<LoglikResult> loglikelihood(const std::vector<LoglikRequest>& reqs) override {
        const double t0 = now_seconds();
        std::vector<LoglikResult> out(reqs.size());
        std::vector<std::pair<std::vector<int64_t>, size_t>> seqs;
        for (const auto& r : reqs) seqs.push_back(truncated(r, window_.context));
        // longest first, right-padded: a causal model's outputs before the padding are unchanged
        std::vector<size_t> order(reqs.size());
        std::iota(order.begin(), order.end(), size_t{0});
        std::stable_sort(order.begin(), order.end(),
                         [&](size_t a, size_t b) { return seqs[a].first.size() > seqs[b].first.size(); });
        c10::InferenceMode im;
        const torch::Device dev = m_.model->parameters().front().device();
        torch::Tensor buf;
        for (size_t i = 0; i < order.size(); i += static_cast<size_t>(window_.batch)) {
            const size_t j = std::min(order.size(), i + static_cast<size_t>(window_.batch));
            const int64_t L = static_cast<int64_t>(seqs[order[i]].first.size());
            auto ids = torch::zeros({static_cast<int64_t>(j - i), L}, torch::kInt64);
            auto acc = ids.accessor<int64_t, 2>();
            // the rows (flat into (b, L)) that predict a continuation token, and those tokens
            std::vector<int64_t> rows, tgt, offset;
            for (size_t k = i; k < j; ++k) {
                const auto& [s, ctx] = seqs[order[k]];
                for (size_t t = 0; t < s.size(); ++t) acc[k - i][t] = s[t];
                offset.push_back(static_cast<int64_t>(rows.size()));
                for (size_t t = ctx; t < s.size(); ++t) {
                    rows.push_back(static_cast<int64_t>(k - i) * L + static_cast<int64_t>(t) - 1);
                    tgt.push_back(s[t]);
                }
                scored_tokens += static_cast<int64_t>(s.size());
            }
            offset.push_back(static_cast<int64_t>(rows.size()));
            auto tgt_t = torch::tensor(tgt, torch::kInt64).to(dev);
            auto logits = logits_at(m_.model, ids.to(dev), torch::tensor(rows, torch::kInt64).to(dev), &buf);  // (n, V)
            // one host copy a batch: each row's log q(target) and whether the target is the argmax
            auto lp = target_logprobs(logits, tgt_t).to(torch::kCPU, torch::kFloat64).contiguous();
            auto hit = (logits.argmax(-1) == tgt_t).to(torch::kCPU).contiguous();
            const double* lpa = lp.data_ptr<double>();
            const bool* hita = hit.data_ptr<bool>();
            for (size_t k = i; k < j; ++k) {
                LoglikResult& r = out[order[k]];
                r.greedy = true;
                for (int64_t t = offset[k - i]; t < offset[k - i + 1]; ++t) {
                    r.logprob += lpa[t];
                    r.greedy = r.greedy && hita[t];
                }
            }
        }
        scoring_seconds += now_seconds() - t0;
        return out;
    }

    RollingResult loglikelihood_rolling(const std::string& text) override {
        auto b = eval_bpb(m_.model, tok_, text, window_, "");
        scored_tokens += b.tokens;
        scoring_seconds += b.seconds;
        return {b.nats_per_token * double(b.tokens), b.tokens};
    }

private:
    LoadedModel& m_;
};

// One JSON request with retries: 429, 5xx, timeouts and connection errors are retried with
// exponential back-off and jitter (Retry-After honoured); anything else fails at once.
json request_json(const RemoteOptions& o, const std::string& method, const std::string& path, const json& body) {
    const auto [base, prefix] = split_api_url(o.url, "--model-url");
    httplib::Client c(base);
    const time_t s = static_cast<time_t>(o.timeout_s);
    const time_t us = static_cast<time_t>((o.timeout_s - double(s)) * 1e6);
    c.set_connection_timeout(s, us);
    c.set_read_timeout(s, us);
    c.set_write_timeout(s, us);
    if (!o.api_key.empty()) c.set_bearer_token_auth(o.api_key);
    std::mt19937_64 rng(std::random_device{}());
    std::string last;
    auto told = [&](const std::string& kind) {
        if (o.on_attempt) o.on_attempt(kind);
    };
    for (int attempt = 0; attempt <= o.retries; ++attempt) {
        double wait = std::min(o.backoff_max_s, o.backoff_s * std::pow(2.0, attempt));
        wait *= 0.5 + std::uniform_real_distribution<double>(0, 1)(rng);
        const auto start = std::chrono::steady_clock::now();
        auto r = method == "GET" ? c.Get(prefix + path) : c.Post(prefix + path, body.dump(), "application/json");
        if (!r) {
            last = str_cat("no answer (", httplib::to_string(r.error()), ")");
            const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            told(took >= 0.95 * o.timeout_s ? "timeout" : "transport");
        } else if (r->status == 200) {
            json j = json::parse(r->body, nullptr, false);
            if (!j.is_discarded() && (!o.valid || o.valid(j))) {
                told("");
                return j;
            }
            last = j.is_discarded() ? "an answer that is not JSON" : "an answer that is not the API's JSON";
            told("malformed");
        } else if (r->status == 429 || r->status >= 500) {
            last = str_cat("status ", r->status, ": ", r->body.substr(0, 200));
            told(r->status == 429 ? "status_429" : "status_5xx");
            if (r->has_header("Retry-After")) {
                try {
                    wait = std::min(o.backoff_max_s, std::max(wait, std::stod(r->get_header_value("Retry-After"))));
                } catch (const std::exception&) {
                }
            }
        } else {
            told(str_cat("status_", r->status));
            throw Error(str_cat(o.url, path, " answered ", r->status, ": ", r->body.substr(0, 300)));
        }
        if (attempt < o.retries) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
    }
    throw Error(str_cat("cannot score through ", o.url, path, ": ", o.retries + 1, " attempts, the last got ", last,
                        " (is the server up?)"));
}

class RemoteScorer : public Scorer {
public:
    RemoteScorer(const RemoteOptions& o, Tokenizer tok, const WindowOptions& w)
        : Scorer(std::move(tok), w), o_(o) {
        o_.model = remote_model_name(o);
    }

    // (prompt ids, first scored index) -> log-probs of prompt[first..] and whether each was the top-1
    std::vector<std::pair<std::vector<double>, std::vector<bool>>> ask(
        const std::vector<std::pair<std::vector<int64_t>, size_t>>& prompts) {
        std::vector<std::pair<std::vector<double>, std::vector<bool>>> out(prompts.size());
        const size_t per = static_cast<size_t>(std::max<int64_t>(1, o_.prompts_per_request));
        for (size_t i = 0; i < prompts.size(); i += per) {
            const size_t j = std::min(prompts.size(), i + per);
            json plist = json::array();
            for (size_t k = i; k < j; ++k) plist.push_back(prompts[k].first);
            json body = {{"model", o_.model},   {"prompt", plist},    {"echo", true},
                         {"max_tokens", 0},     {"logprobs", 1},      {"temperature", 0}};
            const double t0 = now_seconds();
            json r = request_json(o_, "POST", "/completions", body);
            scoring_seconds += now_seconds() - t0;
            DISTILL_CHECK(r.contains("choices") && r["choices"].is_array() && r["choices"].size() == j - i, o_.url,
                          "/completions returned ", r.contains("choices") ? r["choices"].size() : 0,
                          " choices for ", j - i, " prompts");
            for (const json& ch : r["choices"]) {
                const size_t idx = ch.value("index", size_t{0});
                DISTILL_CHECK(idx < j - i, o_.url, "/completions returned choice index ", idx);
                const auto& [ids, first] = prompts[i + idx];
                const json lp = ch.value("logprobs", json(nullptr));
                DISTILL_CHECK(lp.is_object() && lp.contains("token_logprobs") && lp["token_logprobs"].is_array() &&
                                  lp["token_logprobs"].size() >= ids.size(),
                              o_.url, "/completions gave no prompt log-probs (echo + logprobs are needed)");
                const json& tl = lp["token_logprobs"];
                const json& tops = lp.value("top_logprobs", json::array());
                const json& toks = lp.value("tokens", json::array());
                auto& [lps, greedy] = out[i + idx];
                for (size_t t = first; t < ids.size(); ++t) {
                    DISTILL_CHECK(tl[t].is_number(), o_.url, "/completions gave no log-prob for prompt token ", t);
                    lps.push_back(tl[t].get<double>());
                    // greedy: the top-1 entry is the token itself
                    bool g = false;
                    if (t < tops.size() && tops[t].is_object() && t < toks.size() && toks[t].is_string()) {
                        double best = -INFINITY;
                        std::string arg;
                        for (auto& [k, v] : tops[t].items())
                            if (v.is_number() && v.get<double>() > best) best = v.get<double>(), arg = k;
                        g = arg == toks[t].get<std::string>();
                    }
                    greedy.push_back(g);
                }
                scored_tokens += static_cast<int64_t>(ids.size());
            }
        }
        return out;
    }

    std::vector<LoglikResult> loglikelihood(const std::vector<LoglikRequest>& reqs) override {
        std::vector<std::pair<std::vector<int64_t>, size_t>> prompts;
        for (const auto& r : reqs) prompts.push_back(truncated(r, window_.context));
        auto got = ask(prompts);
        std::vector<LoglikResult> out(reqs.size());
        for (size_t i = 0; i < reqs.size(); ++i) {
            for (double x : got[i].first) out[i].logprob += x;
            out[i].greedy = std::all_of(got[i].second.begin(), got[i].second.end(), [](bool b) { return b; });
        }
        return out;
    }

    RollingResult loglikelihood_rolling(const std::string& text) override {
        DISTILL_CHECK(!text.empty(), "cannot evaluate bits per byte on empty text");
        auto ids = encode_for_eval(tok_, text);
        std::vector<std::pair<std::vector<int64_t>, size_t>> prompts;
        for (const auto& w : plan_eval_windows(static_cast<int64_t>(ids.size()), window_))
            prompts.push_back({std::vector<int64_t>(ids.begin() + w.begin, ids.begin() + w.end),
                               static_cast<size_t>(w.score_from - w.begin)});
        RollingResult r;
        for (const auto& [lps, g] : ask(prompts)) {
            for (double x : lps) r.nats -= x;
            r.tokens += static_cast<int64_t>(lps.size());
        }
        if (tok_.bos_id() < 0 && !ids.empty()) {
            r.nats += std::log(double(tok_.vocab_size()));
            r.tokens += 1;
        }
        return r;
    }

private:
    RemoteOptions o_;
};

}  // namespace

json remote_request(const RemoteOptions& o, const std::string& method, const std::string& path, const json& body) {
    return request_json(o, method, path, body);
}

std::string remote_model_name(const RemoteOptions& o) {
    if (!o.model.empty()) return o.model;
    json j = request_json(o, "GET", "/models", nullptr);
    DISTILL_CHECK(j.is_object() && j.contains("data") && j["data"].is_array() && !j["data"].empty() &&
                      j["data"][0].contains("id") && j["data"][0]["id"].is_string(),
                  o.url, "/models lists no model");
    return j["data"][0]["id"].get<std::string>();
}

std::unique_ptr<Scorer> make_local_scorer(LoadedModel& m, const WindowOptions& window) {
    DISTILL_CHECK(m.has_tokenizer, m.path, " has no tokenizer");
    return std::make_unique<LocalScorer>(m, window);
}

std::unique_ptr<Scorer> make_remote_scorer(const RemoteOptions& o, Tokenizer tok, const WindowOptions& window) {
    return std::make_unique<RemoteScorer>(o, std::move(tok), window);
}

}  // namespace distill
