#include "eval/agreement.h"

#include <torch/torch.h>

#include <cmath>
#include <map>

#include "util/error.h"

namespace distill {

nlohmann::json AgreementResult::to_json() const {
    return {{"top1_agreement", top1_agreement},
            {"kl_to_teacher", kl_to_teacher},
            {"positions", positions},
            {"method", same_tokenizer ? "same-tokenizer" : "byte-boundaries"}};
}

TokenScores score_tokens(Llama& model, const std::vector<int64_t>& ids, const WindowOptions& opts) {
    TokenScores s;
    const size_t N = ids.size();
    s.logprob.assign(N, 0.0);
    s.argmax.assign(N, -1);
    for_each_window(model, ids, opts, [&](int64_t first, const torch::Tensor& lp, const torch::Tensor& targets) {
        auto got = lp.gather(1, targets.unsqueeze(1)).squeeze(1).to(torch::kFloat64).cpu();
        auto am = lp.argmax(-1).cpu();
        for (int64_t i = 0; i < got.size(0); ++i) {
            s.logprob[first + i] = got[i].item<double>();
            s.argmax[first + i] = am[i].item<int64_t>();
        }
    });
    return s;
}

namespace {

// byte offset at which each token of `ids` starts (the BOS, if any, takes no bytes)
std::vector<int64_t> token_starts(const Tokenizer& tok, const std::vector<int64_t>& ids, size_t first, int64_t* end) {
    std::vector<int64_t> off(ids.size(), 0);
    int64_t b = 0;
    for (size_t t = first; t < ids.size(); ++t) {
        off[t] = b;
        b += static_cast<int64_t>(tok.token_bytes(static_cast<int32_t>(ids[t])).size());
    }
    *end = b;
    return off;
}

}  // namespace

AgreementResult compare_across_tokenizers(const Tokenizer& ttok, const std::vector<int64_t>& tids,
                                          const TokenScores& ts, const Tokenizer& stok,
                                          const std::vector<int64_t>& sids, const TokenScores& ss) {
    AgreementResult r;
    const size_t tf = ttok.bos_id() >= 0 ? 1 : 0, sf = stok.bos_id() >= 0 ? 1 : 0;
    int64_t tend = 0, send = 0;
    auto toff = token_starts(ttok, tids, tf, &tend);
    auto soff = token_starts(stok, sids, sf, &send);
    DISTILL_CHECK(tend == send, "the two tokenizations cover different bytes (", tend, " vs ", send,
                  "): cross-tokenizer agreement needs tokenizers whose tokens spell the text");
    // byte offset -> token index, for the tokens each model predicts (index >= 1)
    std::map<int64_t, size_t> tat, sat;
    for (size_t t = tf; t < tids.size(); ++t) tat[toff[t]] = t;
    for (size_t t = sf; t < sids.size(); ++t) sat[soff[t]] = t;
    std::vector<int64_t> common;
    for (const auto& [b, t] : tat)
        if (sat.count(b)) common.push_back(b);
    common.push_back(tend);
    double agree = 0, kl = 0;
    auto span = [](const TokenScores& s, size_t from, size_t to) {
        double x = 0;
        for (size_t t = from; t < to; ++t) x += s.logprob[t];
        return x;
    };
    for (size_t k = 0; k + 1 < common.size(); ++k) {
        const size_t ti = tat[common[k]], si = sat[common[k]];
        if (ti < 1 || si < 1) continue;  // the first token without BOS has no prediction
        const size_t tj = k + 2 < common.size() ? tat[common[k + 1]] : tids.size();
        const size_t sj = k + 2 < common.size() ? sat[common[k + 1]] : sids.size();
        const double lp = span(ts, ti, tj), lq = span(ss, si, sj);
        // KL(Bern(p) || Bern(q)) with p, q the probabilities of the span's bytes
        const double p = std::exp(lp), q = std::exp(lq);
        double d = p * (lp - lq);
        if (p < 1) d += (1 - p) * (std::log1p(-p) - std::log1p(-std::min(q, 1 - 1e-12)));
        kl += d;
        agree += ttok.token_bytes(static_cast<int32_t>(ts.argmax[ti])) ==
                 stok.token_bytes(static_cast<int32_t>(ss.argmax[si]));
        ++r.positions;
    }
    r.top1_agreement = r.positions ? agree / double(r.positions) : 0;
    r.kl_to_teacher = r.positions ? kl / double(r.positions) : 0;
    return r;
}

AgreementResult eval_agreement(LoadedModel& teacher, LoadedModel& student, const std::string& text,
                               const WindowOptions& opts) {
    DISTILL_CHECK(teacher.has_tokenizer && student.has_tokenizer, "agreement needs both models' tokenizers");
    if (teacher.tokenizer.fingerprint() == student.tokenizer.fingerprint()) {
        auto c = eval_compare(teacher.model, student.model, encode_for_eval(student.tokenizer, text), opts);
        AgreementResult r;
        r.top1_agreement = c.top1_agreement;
        r.kl_to_teacher = c.kl_to_teacher;
        r.positions = c.positions;
        r.same_tokenizer = true;
        return r;
    }
    auto tids = encode_for_eval(teacher.tokenizer, text), sids = encode_for_eval(student.tokenizer, text);
    auto ts = score_tokens(teacher.model, tids, opts), ss = score_tokens(student.model, sids, opts);
    return compare_across_tokenizers(teacher.tokenizer, tids, ts, student.tokenizer, sids, ss);
}

}  // namespace distill
