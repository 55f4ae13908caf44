#include "distill/api-cache.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <limits>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

#include "distill/api-logprobs.h"
#include "io/logit-cache.h"
#include "util/error.h"
#include "util/file.h"
#include "util/progress.h"
#include "util/utf8.h"

namespace distill {

using json = nlohmann::json;

json ApiCacheResult::to_json() const {
    return {{"windows", windows},
            {"new_windows", new_windows},
            {"positions", positions},
            {"requests", requests},
            {"errors", errors},
            {"teacher_tokens", teacher_tokens},
            {"mapped_fraction", mapped_fraction},
            {"token_ids", token_ids},
            {"bytes_per_token", bytes_per_token},
            {"seconds", seconds}};
}

namespace {

// The answer to one request: per window, (T, K) ids and log-probs for the cache.
struct Answer {
    std::vector<std::vector<int32_t>> ids;
    std::vector<std::vector<float>> lps;
    int64_t entries = 0, mapped = 0, prompt_tokens = 0;
};

// The answer's system_fingerprint: "" where the server gives none (absent or null).
std::string system_fingerprint_of(const json& answer) {
    const auto it = answer.find("system_fingerprint");
    return it != answer.end() && it->is_string() ? it->get<std::string>() : "";
}

// The prompt tokens the answer's usage reports (0 without one).
int64_t prompt_tokens_of(const json& answer) {
    const auto it = answer.find("usage");
    return it != answer.end() && it->is_object() ? it->value("prompt_tokens", int64_t{0}) : 0;
}

// Checks that a completions answer has one choice per prompt, each with the echoed prompt's
// T + 1 tokens and top log-probs: a body that fails this is retried as malformed.
bool well_formed(const json& r, size_t prompts, size_t len) {
    if (!r.is_object() || !r.contains("choices") || !r["choices"].is_array() || r["choices"].size() != prompts)
        return false;
    for (const json& c : r["choices"]) {
        if (!c.is_object() || !c.contains("index") || !c["index"].is_number_integer()) return false;
        const json& lp = c.value("logprobs", json());
        if (!lp.is_object() || !lp.contains("tokens") || !lp["tokens"].is_array() || lp["tokens"].size() != len ||
            !lp.contains("top_logprobs") || !lp["top_logprobs"].is_array() || lp["top_logprobs"].size() != len)
            return false;
    }
    return true;
}

}  // namespace

ApiCacheResult capture_cache_from_api(const Tokenizer& tok, const TokenShard& shard, const std::string& cache_dir,
                                      const ApiCacheOptions& o_in) {
    const double t0 = now_seconds();
    ApiCacheOptions o = o_in;
    const int64_t T = o.window, K = o.top_k, V = tok.vocab_size();
    DISTILL_CHECK(K >= 1 && K < V, "--top-logprobs must be in 1 .. vocabulary size - 1");
    DISTILL_CHECK(T >= 1, "--seq-len must be at least 1");
    DISTILL_CHECK(o.windows_per_request >= 1 && o.concurrency >= 1, "--batch-size and --concurrency must be at least 1");
    DISTILL_CHECK(shard.info().tokenizer_fingerprint == tok.fingerprint(),
                  "the token shard was made with another tokenizer than --tokenizer; the teacher behind the API ",
                  "must use the shard's tokenizer (re-run `distill prepare` with it)");
    int64_t W = num_aligned_windows(shard.size(), T);
    if (o.max_windows > 0) W = std::min(W, o.max_windows);
    DISTILL_CHECK(W > 0, "the shard has too few tokens for one window of ", T);

    ApiCacheResult res;
    std::mutex mu;
    auto count = [&](const std::string& kind) {
        std::lock_guard<std::mutex> lk(mu);
        ++res.requests;
        if (!kind.empty()) ++res.errors[kind];
    };
    o.remote.on_attempt = count;
    o.remote.model = remote_model_name(o.remote);

    LogitCacheInfo info;
    info.top_k = static_cast<int>(K);
    info.vocab_size = static_cast<int>(V);
    info.window = static_cast<int>(T);
    info.num_windows = W;
    info.tokenizer_fingerprint = tok.fingerprint();
    info.data_fingerprint = shard.info().fingerprint;

    const ApiTokenMap map(tok);
    std::atomic<bool> as_ids{true};
    // The system_fingerprint every answer must carry, once the first one has named it.
    std::string served;

    // windows [w0, w1) in one request: the prompts sent and the answer
    auto request = [&](int64_t w0, int64_t w1, json& prompts) {
        prompts = json::array();
        for (int64_t w = w0; w < w1; ++w) {
            auto ids = shard.slice(w * T, T + 1);
            prompts.push_back(std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + T + 1));
        }
        RemoteOptions ro = o.remote;
        const size_t n = static_cast<size_t>(w1 - w0), len = static_cast<size_t>(T + 1);
        ro.valid = [n, len](const json& j) { return well_formed(j, n, len); };
        const json body = {{"model", ro.model}, {"prompt", prompts}, {"echo", true},
                           {"max_tokens", 0},   {"logprobs", K},     {"temperature", 0}};
        return remote_scoring_request(ro, body, as_ids);
    };
    // the same, decoded for the cache; `learn`: this answer names the fingerprint (`served`)
    auto ask = [&](int64_t w0, int64_t w1, bool learn = false) {
        json prompts;
        const json answer = request(w0, w1, prompts);
        const size_t n = static_cast<size_t>(w1 - w0), len = static_cast<size_t>(T + 1);
        const std::string fp = system_fingerprint_of(answer);
        if (learn) served = fp;
        DISTILL_CHECK(fp == served, o.remote.url, " answered with system_fingerprint ", fp.empty() ? "null" : fp,
                      " where the capture began with ", served.empty() ? "null" : served, ": the weights or settings ",
                      "behind '", o.remote.model, "' changed during the capture, and one cache must not mix two ",
                      "teachers");
        auto a = std::make_unique<Answer>();
        a->ids.resize(n);
        a->lps.resize(n);
        a->prompt_tokens = prompt_tokens_of(answer);
        for (const json& c : answer["choices"]) {
            const int64_t i = c["index"].get<int64_t>();
            DISTILL_CHECK(i >= 0 && i < int64_t(n) && a->ids[size_t(i)].empty(), o.remote.url,
                          "/completions returned choice index ", i, " for ", n, " prompts");
            const json& lp = c["logprobs"];
            // the echoed tokens must be ours: the same ids, or the same texts
            const json& toks = lp["tokens"];
            for (size_t t = 0; t < len; ++t) {
                const int64_t want = prompts[size_t(i)][t].get<int64_t>();
                const int64_t got = toks[t].is_string() ? map.id(toks[t].get<std::string>()) : -2;
                const bool same = got == want ||
                                  (got == -1 && toks[t].is_string() &&
                                   toks[t].get<std::string>() == utf8_lossy(tok.token_bytes(static_cast<int32_t>(want))));
                DISTILL_CHECK(same, o.remote.url, " echoed token ", t, " of window ", w0 + i, " as ", toks[t].dump(),
                              ", not as token ", want, ": the model behind the API does not use --tokenizer");
            }
            auto rows = remote_top_targets(lp, map, 1, len);  // positions 0..T-1 predict tokens 1..T
            auto& ids = a->ids[size_t(i)];
            auto& lps = a->lps[size_t(i)];
            ids.resize(size_t(T * K));
            lps.resize(size_t(T * K));
            const json& tops = lp["top_logprobs"];
            for (int64_t t = 0; t < T; ++t) {
                auto& row = rows[size_t(t)];
                a->entries += static_cast<int64_t>(tops[size_t(t + 1)].size());
                a->mapped += static_cast<int64_t>(row.size());
                // K distinct ids: the K most likely that map; a position where fewer map is
                // padded with unused ids of probability 0 (the rest bucket keeps their mass)
                std::vector<char> used;
                int32_t filler = 0;
                for (int64_t k = 0; k < K; ++k) {
                    int32_t id;
                    float v;
                    if (k < int64_t(row.size())) {
                        id = static_cast<int32_t>(row[size_t(k)].first);
                        v = row[size_t(k)].second;
                    } else {
                        if (used.empty()) {
                            used.assign(size_t(V), 0);
                            for (int64_t j = 0; j < k; ++j) used[size_t(ids[size_t(t * K + j)])] = 1;
                        }
                        while (used[size_t(filler)]) ++filler;
                        id = filler++;
                        v = -std::numeric_limits<float>::infinity();
                    }
                    ids[size_t(t * K + k)] = id;
                    lps[size_t(t * K + k)] = v;
                }
            }
        }
        return a;
    };

    // The teacher is its model name behind an API and the system_fingerprint its server gives: the
    // same model at another address resumes, other weights or settings under the same name do not.
    // A new cache learns the fingerprint from its first request, asked before the others; a
    // finished cache of this model is reused without asking; an unfinished one asks for one
    // window first (one request more) to compare.
    const std::string named = "api:" + o.remote.model;
    const int64_t per = o.windows_per_request;
    info.teacher_fingerprint = named;
    std::unique_ptr<Answer> first;
    if (!file_exists(path_join(cache_dir, "header.json"))) {
        try {
            first = ask(0, std::min(W, per), /*learn=*/true);
        } catch (const Error& e) {
            throw Error(str_cat(e.what(), " (nothing is in the cache yet; run the same command again to start it)"));
        }
    } else {
        try {
            const LogitCacheReader done(cache_dir);
            const std::string& was = done.info().teacher_fingerprint;
            if (done.complete() && (was == named || was.rfind(named + "@", 0) == 0)) info.teacher_fingerprint = was;
        } catch (const std::exception&) {
            // unfinished or damaged: the writer below says what is wrong, or resumes it
        }
        if (info.teacher_fingerprint == named) {
            json prompts;
            const json answer = request(0, 1, prompts);
            served = system_fingerprint_of(answer);
            res.teacher_tokens += prompt_tokens_of(answer);
        }
    }
    if (info.teacher_fingerprint == named && !served.empty()) info.teacher_fingerprint = named + "@" + served;
    LogitCacheWriter writer(cache_dir, info);
    const int64_t start = writer.windows_done();
    const int64_t n_requests = (W - start + per - 1) / per;

    // Workers take requests in order; finished answers wait in `ready` until every earlier one
    // is written, so the cache stays in window order. At most 4 x concurrency answers wait.
    std::vector<std::unique_ptr<Answer>> ready(static_cast<size_t>(std::max<int64_t>(n_requests, 0)));
    int64_t next_request = 0, next_write = 0;
    if (first) {  // a new cache: its first request is answered already
        DISTILL_CHECK(start == 0 && n_requests >= 1, "logit cache '", cache_dir, "' appeared while the capture began");
        ready[0] = std::move(first);
        next_request = 1;
    }
    std::string failure;
    std::condition_variable cv;
    int64_t mapped = 0, entries = 0;

    auto worker = [&] {
        for (;;) {
            int64_t r;
            {
                std::unique_lock<std::mutex> lk(mu);
                cv.wait(lk, [&] {
                    return !failure.empty() || next_request >= n_requests || next_request < next_write + 4 * o.concurrency;
                });
                if (!failure.empty() || next_request >= n_requests) return;
                r = next_request++;
            }
            std::unique_ptr<Answer> a;
            try {
                a = ask(start + r * per, std::min(W, start + (r + 1) * per));
            } catch (const std::exception& e) {
                std::lock_guard<std::mutex> lk(mu);
                if (failure.empty()) failure = e.what();
                cv.notify_all();
                return;
            }
            std::lock_guard<std::mutex> lk(mu);
            ready[size_t(r)] = std::move(a);
            cv.notify_all();
        }
    };

    std::vector<std::thread> workers;
    for (int64_t i = 0; i < std::min(o.concurrency, std::max<int64_t>(n_requests, 1)); ++i) workers.emplace_back(worker);
    Progress progress("capture");
    // this thread writes the answers in order, as they arrive
    {
        std::unique_lock<std::mutex> lk(mu);
        while (next_write < n_requests) {
            cv.wait(lk, [&] { return !failure.empty() || ready[size_t(next_write)]; });
            if (!failure.empty()) break;
            std::unique_ptr<Answer> a = std::move(ready[size_t(next_write)]);
            ++next_write;
            cv.notify_all();
            lk.unlock();
            for (size_t i = 0; i < a->ids.size(); ++i) writer.append_window(a->ids[i].data(), a->lps[i].data());
            res.new_windows += static_cast<int64_t>(a->ids.size());
            lk.lock();
            mapped += a->mapped;
            entries += a->entries;
            res.teacher_tokens += a->prompt_tokens;
            if (o.progress) {
                std::string errs;
                for (const auto& [k, v] : res.errors) errs += " " + k + "=" + std::to_string(v);
                progress.update(start + res.new_windows, W,
                                str_cat(res.requests, " requests, errors:", errs.empty() ? " none" : errs));
            }
        }
    }
    for (auto& t : workers) t.join();
    writer.flush();  // what arrived stays: a re-run continues after it
    DISTILL_CHECK(failure.empty(), failure, " (", writer.windows_done(), " of ", W,
                  " windows are in the cache; run the same command again to continue)");
    writer.finish();
    progress.finish(str_cat(W, " windows"));

    res.windows = W;
    res.positions = W * T;
    res.mapped_fraction = entries > 0 ? double(mapped) / double(entries) : 1.0;
    res.token_ids = as_ids;
    LogitCacheReader reader(cache_dir);
    res.bytes_per_token = reader.bytes_per_position();
    res.seconds = now_seconds() - t0;
    return res;
}

}  // namespace distill
