#include "guard/radioactivity.h"

#include <torch/torch.h>

#include <set>

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
