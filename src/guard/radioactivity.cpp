#include "guard/radioactivity.h"

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <set>

#include "distill/api-logprobs.h"
#include "util/error.h"

namespace distill {

namespace {

std::vector<int64_t> text_ids(const Tokenizer& tok, const std::string& text) {
    std::vector<int64_t> ids;
    for (int32_t t : tok.encode(text)) ids.push_back(t);
    return ids;
}

std::string ids_key(const int64_t* ids, int64_t n) {
    std::string key(static_cast<size_t>(4 * n), '\0');
    for (int64_t j = 0; j < n; ++j)
        for (int b = 0; b < 4; ++b)
            key[4 * j + b] = static_cast<char>((static_cast<uint64_t>(ids[j]) >> (8 * b)) & 0xFF);
    return key;
}

}  // namespace

RadioactivityResult radioactivity_open(Llama& suspect, const Tokenizer& tok, const std::vector<std::string>& texts,
                                       const WatermarkOptions& o, const WindowOptions& w, int64_t top_k) {
    DISTILL_CHECK(top_k >= 1 && top_k <= suspect->config().vocab_size, "--top-k must be in 1 .. ",
                  suspect->config().vocab_size, ", not ", top_k);
    DISTILL_CHECK(suspect->config().vocab_size == tok.vocab_size(), "the suspect's vocabulary (",
                  suspect->config().vocab_size, ") is not the tokenizer's (", tok.vocab_size(),
                  "): open mode reads our texts with the suspect's own tokens; use --suspect-url (closed "
                  "mode) for a model with another tokenizer");
    GreenTally tally(o);
    RadioactivityResult r;
    const int64_t h = o.context;
    int64_t tokens = 0;
    torch::NoGradGuard ng;
    for (const std::string& text : texts) {
        ++r.texts;
        const std::vector<int64_t> ids = encode_for_eval(tok, text);
        const int64_t offset = tok.bos_id() >= 0 ? 1 : 0;  // the text's first token in ids
        tokens += static_cast<int64_t>(ids.size()) - offset;
        if (static_cast<int64_t>(ids.size()) < offset + h + 1) continue;
        for_each_window(suspect, ids, w, [&](int64_t first, const torch::Tensor& lp, const torch::Tensor&) {
            // (positions, top_k): the suspect's top guesses for each position, best first
            const torch::Tensor pred = (top_k == 1 ? lp.argmax(-1, /*keepdim=*/true)
                                                   : std::get<1>(lp.topk(top_k, -1)))
                                           .to(torch::kCPU, torch::kInt64)
                                           .contiguous();
            const int64_t* p = pred.data_ptr<int64_t>();
            for (int64_t k = 0; k < pred.size(0); ++k) {
                const int64_t pos = first + k;  // the suspect's guesses for ids[pos]
                if (pos - h < offset) continue;  // the context must be the text's own tokens
                ++r.positions;
                for (int64_t j = 0; j < top_k; ++j) tally.add(ids.data() + pos - h, p[k * top_k + j]);
            }
        });
    }
    r.detect = tally.result(tokens, str_cat("nothing to score: no text has more than ", h, " tokens"));
    return r;
}

ContextCounts watermark_context_counts(const Tokenizer& tok, const std::vector<std::string>& texts, int64_t h) {
    ContextCounts counts;
    for (const std::string& text : texts) {
        const std::vector<int64_t> ids = text_ids(tok, text);
        for (int64_t i = h; i <= static_cast<int64_t>(ids.size()); ++i) ++counts[ids_key(ids.data() + i - h, h)];
    }
    return counts;
}

RadioactivityResult radioactivity_closed(const Tokenizer& tok, const std::vector<SuspectSample>& samples,
                                         const WatermarkOptions& o, const ContextCounts* frequent,
                                         int64_t min_count) {
    GreenTally tally(o);
    RadioactivityResult r;
    const int64_t h = o.context;
    int64_t tokens = 0;
    for (const SuspectSample& s : samples) {
        ++r.texts;
        std::vector<int64_t> ids = text_ids(tok, s.prompt);
        const int64_t from = static_cast<int64_t>(ids.size());
        // the prompt's own (h+1)-grams: a suspect repeating them shows nothing of its training
        std::set<std::string> in_prompt;
        for (int64_t i = h; i < from; ++i) in_prompt.insert(ids_key(ids.data() + i - h, h + 1));
        for (int64_t t : text_ids(tok, s.completion)) ids.push_back(t);
        tokens += static_cast<int64_t>(ids.size()) - from;
        for (int64_t i = std::max(from, h); i < static_cast<int64_t>(ids.size()); ++i) {
            ++r.positions;
            if (in_prompt.count(ids_key(ids.data() + i - h, h + 1))) {
                ++r.in_prompt;
                continue;
            }
            if (frequent) {
                const auto it = frequent->find(ids_key(ids.data() + i - h, h));
                if (it == frequent->end() || it->second < min_count) {
                    ++r.filtered_out;
                    continue;
                }
            }
            tally.add(ids.data() + i - h, ids[i]);
        }
    }
    r.detect = tally.result(tokens, "nothing to score: the completions left no tuple (too short, all in their "
                                    "prompts, or all filtered out)");
    return r;
}

}  // namespace distill

// ---- the soft test --------------------------------------------------------------------------

namespace distill {

SoftTally::SoftTally(const WatermarkOptions& o) : o_(o) { watermark_check(o); }

void SoftTally::add(const int64_t* context, const int64_t* ids, const float* probs, int64_t m) {
    const int64_t h = o_.context;
    Context& c = contexts_[ids_key(context, h)];
    if (c.ids.empty()) c.ids.assign(context, context + h);
    ++c.count;
    for (int64_t j = 0; j < m; ++j)
        if (probs[j] > 0) c.mass[ids[j]] += probs[j];
    ++positions_;
}

double chernoff_log10_tail(const std::vector<double>& w, double gamma, double s) {
    double mean = 0, total = 0;
    for (double x : w) {
        mean += gamma * x;
        total += x;
    }
    if (s <= mean) return 0;
    // f(l) = -l s + sum log(1 - gamma + gamma e^{l w}); convex, f(0) = 0, f'(0) = mean - s < 0
    auto log_mgf = [&](double l, double x) {  // log(1 - gamma + gamma e^{l x}), stable for large l x
        const double a = l * x;
        return a > 0 ? a + std::log(gamma + (1 - gamma) * std::exp(-a)) : std::log1p(gamma * std::expm1(a));
    };
    auto f = [&](double l) {
        double v = -l * s;
        for (double x : w) v += log_mgf(l, x);
        return v;
    };
    auto df = [&](double l) {  // f'(l) = -s + sum w sigma(l w), increasing from mean - s to total - s
        double v = -s;
        for (double x : w) {
            const double a = l * x;
            v += x * (a > 0 ? gamma / (gamma + (1 - gamma) * std::exp(-a)) : gamma * std::exp(a) / (1 - gamma + gamma * std::exp(a)));
        }
        return v;
    };
    if (s >= total) {  // every pair green: the bound's limit as l grows, prod gamma over the w > 0
        double v = 0;
        for (double x : w)
            if (x > 0) v += std::log(gamma);
        return v / std::log(10.0);
    }
    double lo = 0, hi = 1;
    while (df(hi) < 0 && hi < 1e12) {
        lo = hi;
        hi *= 2;
    }
    for (int it = 0; it < 200 && hi - lo > 1e-12 * hi; ++it) {
        const double mid = 0.5 * (lo + hi);
        (df(mid) < 0 ? lo : hi) = mid;
    }
    return std::min(0.0, f(0.5 * (lo + hi))) / std::log(10.0);
}

SoftRadioactivityResult SoftTally::result(const WatermarkOptions& o) const {
    DISTILL_CHECK(o.context == o_.context, "the soft tally was built for contexts of ", o_.context, " tokens, not ",
                  o.context);
    watermark_check(o);
    SoftRadioactivityResult r;
    r.positions = positions_;
    r.contexts = static_cast<int64_t>(contexts_.size());
    std::vector<double> w;
    double sum_w = 0, sum_w2 = 0;
    const double gamma = o.gamma;
    const int64_t h = o.context;
    std::vector<int64_t> tuple(static_cast<size_t>(h + 1));
    for (const auto& [key, c] : contexts_) {
        std::copy(c.ids.begin(), c.ids.end(), tuple.begin());
        for (const auto& [id, mass] : c.mass) {
            const double x = mass / double(c.count);  // q_c(id)
            w.push_back(x);
            sum_w += x;
            sum_w2 += x * x;
            tuple[size_t(h)] = id;
            if (watermark_green(o, tuple.data(), id)) r.score += x;
        }
    }
    r.pairs = static_cast<int64_t>(w.size());
    r.mean = gamma * sum_w;
    r.sd = std::sqrt(gamma * (1 - gamma) * sum_w2);
    r.z = r.sd > 0 ? (r.score - r.mean) / r.sd : 0;
    r.green_mass = sum_w > 0 ? r.score / sum_w : 0;
    r.log10_p = chernoff_log10_tail(w, gamma, r.score);
    r.p = std::pow(10.0, r.log10_p);
    return r;
}

SoftTally soft_tally_open(Llama& suspect, const Tokenizer& tok, const std::string& text, const WatermarkOptions& o,
                          const WindowOptions& w, int64_t top_m) {
    const int64_t V = suspect->config().vocab_size;
    DISTILL_CHECK(top_m >= 1 && top_m <= V, "--top-m must be in 1 .. ", V, ", not ", top_m);
    DISTILL_CHECK(V == tok.vocab_size(), "the suspect's vocabulary (", V, ") is not the tokenizer's (", tok.vocab_size(),
                  "): the soft test reads the text with the suspect's own tokens");
    SoftTally tally(o);
    const int64_t h = o.context;
    const std::vector<int64_t> ids = encode_for_eval(tok, text);
    const int64_t offset = tok.bos_id() >= 0 ? 1 : 0;  // the text's first token in ids
    DISTILL_CHECK(static_cast<int64_t>(ids.size()) >= offset + h + 1, "the text has ",
                  static_cast<int64_t>(ids.size()) - offset, " tokens: the soft test needs more than the context's ", h);
    for_each_window_top(suspect, ids, w, top_m,
                        [&](int64_t first, const torch::Tensor&, const torch::Tensor& top_lp, const torch::Tensor& top_ids,
                            const torch::Tensor&) {
                            const auto p = top_lp.to(torch::kCPU, torch::kFloat32).exp().contiguous();
                            const auto i = top_ids.to(torch::kCPU, torch::kInt64).contiguous();
                            const float* pp = p.data_ptr<float>();
                            const int64_t* ip = i.data_ptr<int64_t>();
                            for (int64_t k = 0; k < p.size(0); ++k) {
                                const int64_t pos = first + k;  // the distribution of ids[pos]
                                if (pos - h < offset) continue;  // the context must be the text's own tokens
                                tally.add(ids.data() + pos - h, ip + k * top_m, pp + k * top_m, top_m);
                            }
                        });
    return tally;
}

SoftRadioactivityResult radioactivity_soft_open(Llama& suspect, const Tokenizer& tok, const std::string& text,
                                                const WatermarkOptions& o, const WindowOptions& w, int64_t top_m) {
    return soft_tally_open(suspect, tok, text, o, w, top_m).result();
}

SoftRadioactivityResult radioactivity_soft_closed(const RemoteOptions& remote_in, const Tokenizer& tok,
                                                  const std::string& text, const WatermarkOptions& o,
                                                  const WindowOptions& w, int64_t top_m) {
    DISTILL_CHECK(top_m >= 1, "--top-m must be at least 1");
    RemoteOptions remote = remote_in;
    remote.model = remote_model_name(remote);
    SoftTally tally(o);
    const int64_t h = o.context;
    const std::vector<int64_t> ids = encode_for_eval(tok, text);
    const int64_t offset = tok.bos_id() >= 0 ? 1 : 0;
    DISTILL_CHECK(static_cast<int64_t>(ids.size()) >= offset + h + 1, "the text has ",
                  static_cast<int64_t>(ids.size()) - offset, " tokens: the soft test needs more than the context's ", h);
    const ApiTokenMap map(tok);
    std::atomic<bool> as_ids{true};
    std::vector<int64_t> top_ids(static_cast<size_t>(top_m));
    std::vector<float> top_p(static_cast<size_t>(top_m));
    for (const EvalWindow& win : plan_eval_windows(static_cast<int64_t>(ids.size()), w)) {
        const std::vector<int64_t> prompt(ids.begin() + win.begin, ids.begin() + win.end);
        const nlohmann::json body = {{"model", remote.model}, {"prompt", prompt}, {"echo", true},
                                     {"max_tokens", 0},       {"logprobs", top_m}, {"temperature", 0}};
        const nlohmann::json answer = remote_scoring_request(remote, body, as_ids);
        DISTILL_CHECK(answer.contains("choices") && answer["choices"].is_array() && answer["choices"].size() == 1,
                      remote.url, "/completions did not return one choice for one prompt");
        const auto rows = remote_top_targets(answer["choices"][0].value("logprobs", nlohmann::json()), map,
                                             static_cast<size_t>(win.score_from - win.begin),
                                             static_cast<size_t>(win.end - win.begin));
        for (size_t r = 0; r < rows.size(); ++r) {
            const int64_t pos = win.score_from + static_cast<int64_t>(r);  // the distribution of ids[pos]
            if (pos - h < offset) continue;
            const int64_t m = std::min<int64_t>(top_m, static_cast<int64_t>(rows[r].size()));  // most likely first
            for (int64_t j = 0; j < m; ++j) {
                top_ids[size_t(j)] = rows[r][size_t(j)].first;
                top_p[size_t(j)] = std::exp(rows[r][size_t(j)].second);
            }
            tally.add(ids.data() + pos - h, top_ids.data(), top_p.data(), m);
        }
    }
    return tally.result();
}

nlohmann::ordered_json soft_result_json(const WatermarkOptions& o, const SoftRadioactivityResult& r) {
    nlohmann::ordered_json j;
    j["score"] = "soft";
    j["positions"] = r.positions;
    j["contexts"] = r.contexts;
    j["pairs"] = r.pairs;
    j["S"] = r.score;
    j["mean"] = r.mean;
    j["sd"] = r.sd;
    j["green_mass"] = r.green_mass;
    if (r.pairs > 0) {
        j["z"] = r.z;
        j["p"] = r.p;
        j["log10_p"] = r.log10_p;
    } else {
        j["z"] = nullptr;
        j["p"] = nullptr;
        j["log10_p"] = nullptr;
        j["reason"] = "nothing to score: the text left no position after a context of its own tokens";
    }
    j["gamma"] = o.gamma;
    j["context"] = o.context;
    j["key_hash"] = watermark_key_id_hex(o.key);
    return j;
}

}  // namespace distill
