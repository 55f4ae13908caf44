// distill — byte-level BPE training (GPT-2 style), incremental pair counts.
//
// Words: the corpus split on special tokens, then by the GPT-2 regex; each distinct word is kept
// once with its count. Pair counts and, per pair, the words it occurs in are updated only for the
// words a merge touches; a max-heap with lazy re-validation picks the next pair (as HF's
// BpeTrainer does). Ties: the smaller (left id, right id) pair wins, so training is deterministic.
#include <algorithm>
#include <deque>
#include <queue>
#include <unordered_set>

#include "tokenizer/tokenizer-impl.h"
#include "util/error.h"

namespace distill {

namespace {

inline uint64_t pair_key(int32_t a, int32_t b) {
    return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
}

struct HeapEntry {
    int64_t count;
    uint64_t pair;
    bool operator<(const HeapEntry& o) const {  // top: highest count, then smallest pair
        return count != o.count ? count < o.count : pair > o.pair;
    }
};

struct TrainWord {
    std::vector<int32_t> sym;
    int64_t count;
};

}  // namespace

Tokenizer Tokenizer::train(std::string_view corpus, const TokenizerTrainOptions& opts) {
    const auto& alpha = ByteAlphabet::get();
    const int n_special = int(opts.special_tokens.size());
    DISTILL_CHECK(opts.vocab_size >= 256 + n_special, "tokenizer vocab_size ", opts.vocab_size,
                  " is too small: it must hold the 256 byte tokens and ", n_special,
                  " special tokens (at least ", 256 + n_special, ")");
    DISTILL_CHECK(opts.vocab_size <= (1 << 24), "tokenizer vocab_size ", opts.vocab_size,
                  " is too large (at most ", 1 << 24, ")");
    std::unordered_set<std::string> seen;
    for (const auto& s : opts.special_tokens) {
        DISTILL_CHECK(!s.empty(), "special tokens must not be empty");
        DISTILL_CHECK(utf8_valid(s), "special token ", s, " is not valid UTF-8");
        DISTILL_CHECK(seen.insert(s).second, "special token ", s, " is listed twice");
    }

    auto impl = std::make_unique<Impl>();
    Impl& m = *impl;
    impl_set_default_pipeline(m);
    // Ids: special tokens first (0, 1, 2, ...), then byte b at n_special + b, then merges.
    for (int i = 0; i < n_special; ++i) {
        AddedToken t;
        t.id = i;
        t.content = opts.special_tokens[i];
        m.added.push_back(t);
        m.id_to_token.push_back(t.content);
    }
    for (int b = 0; b < 256; ++b) m.id_to_token.push_back(alpha.byte_to_str[b]);
    for (size_t i = 0; i < m.id_to_token.size(); ++i) {
        bool fresh = m.vocab.emplace(m.id_to_token[i], int32_t(i)).second;
        DISTILL_CHECK(fresh, "special token ", m.id_to_token[i],
                      " collides with a byte token; choose another name");
    }
    m.finalize("trained tokenizer");

    // 1. Distinct words and their counts.
    std::string clean;
    if (!utf8_valid(corpus)) {
        clean = utf8_lossy(corpus);
        corpus = clean;
    }
    std::unordered_map<std::string_view, int64_t> counts;
    {
        std::string storage;
        std::deque<std::string> kept;  // only used if the pipeline rewrites pieces
        std::vector<std::string_view> words;
        m.split_added(
            corpus,
            [&](std::string_view seg) {
                words.clear();
                storage.clear();
                m.pre_tokenize(seg, storage, words);
                if (!storage.empty()) {
                    kept.push_back(storage);
                    for (auto& w : words)
                        w = std::string_view(kept.back())
                                .substr(w.data() - storage.data(), w.size());
                }
                for (auto w : words) ++counts[w];
            },
            [](int32_t) {});
    }
    std::vector<TrainWord> words;
    words.reserve(counts.size());
    {
        // Sorted, so that the word order (and everything after) does not depend on hashing.
        std::vector<std::pair<std::string_view, int64_t>> sorted(counts.begin(), counts.end());
        std::sort(sorted.begin(), sorted.end());
        for (auto& [w, c] : sorted) {
            TrainWord tw;
            tw.count = c;
            tw.sym.reserve(w.size());
            for (unsigned char b : w) tw.sym.push_back(n_special + b);
            words.push_back(std::move(tw));
        }
    }

    // 2. Pair counts and where each pair occurs.
    std::unordered_map<uint64_t, int64_t> pair_count;
    std::unordered_map<uint64_t, std::vector<int32_t>> where;
    for (size_t w = 0; w < words.size(); ++w) {
        const auto& s = words[w].sym;
        for (size_t i = 0; i + 1 < s.size(); ++i) {
            uint64_t p = pair_key(s[i], s[i + 1]);
            pair_count[p] += words[w].count;
            auto& list = where[p];
            if (list.empty() || list.back() != int32_t(w)) list.push_back(int32_t(w));
        }
    }
    std::vector<HeapEntry> init;
    init.reserve(pair_count.size());
    for (auto& [p, c] : pair_count) init.push_back({c, p});
    std::priority_queue<HeapEntry> heap(std::less<HeapEntry>(), std::move(init));

    // 3. Merge until the vocabulary is full or no pair is frequent enough.
    const int64_t min_freq = std::max(1, opts.min_frequency);
    std::unordered_map<uint64_t, int64_t> delta;
    std::vector<int32_t> merged;
    while (int(m.id_to_token.size()) < opts.vocab_size && !heap.empty()) {
        HeapEntry top = heap.top();
        heap.pop();
        auto pc = pair_count.find(top.pair);
        int64_t cur = pc == pair_count.end() ? 0 : pc->second;
        if (cur != top.count) {  // stale entry
            if (cur > 0) heap.push({cur, top.pair});
            continue;
        }
        if (cur < min_freq) break;
        const int32_t a = int32_t(top.pair >> 32), b = int32_t(top.pair & 0xFFFFFFFFu);
        std::string tok = m.id_to_token[a] + m.id_to_token[b];
        int32_t new_id;
        if (auto it = m.vocab.find(tok); it != m.vocab.end()) {
            new_id = it->second;  // the same string reached by another merge order
        } else {
            new_id = int32_t(m.id_to_token.size());
            m.vocab.emplace(tok, new_id);
            m.id_to_token.push_back(std::move(tok));
        }
        m.merges.emplace_back(a, b);

        std::vector<int32_t> list = std::move(where[top.pair]);
        where.erase(top.pair);
        std::sort(list.begin(), list.end());
        list.erase(std::unique(list.begin(), list.end()), list.end());
        delta.clear();
        for (int32_t w : list) {
            auto& s = words[w].sym;
            const int64_t c = words[w].count;
            bool has = false;
            for (size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == a && s[i + 1] == b;
            if (!has) continue;  // a stale entry in the where-list
            for (size_t i = 0; i + 1 < s.size(); ++i) delta[pair_key(s[i], s[i + 1])] -= c;
            merged.clear();
            for (size_t i = 0; i < s.size(); ++i) {
                if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
                    merged.push_back(new_id);
                    ++i;
                } else {
                    merged.push_back(s[i]);
                }
            }
            s.swap(merged);
            for (size_t i = 0; i + 1 < s.size(); ++i) {
                uint64_t p = pair_key(s[i], s[i + 1]);
                delta[p] += c;
                if (s[i] == new_id || s[i + 1] == new_id) {
                    auto& wl = where[p];
                    if (wl.empty() || wl.back() != w) wl.push_back(w);
                }
            }
        }
        for (auto& [p, d] : delta) {
            if (d == 0) continue;
            int64_t& c = pair_count[p];
            c += d;
            DISTILL_ASSERT(c >= 0, "negative pair count");
            if (c == 0) {
                pair_count.erase(p);
            } else if (d > 0) {
                heap.push({c, p});
            }
        }
    }

    m.finalize("trained tokenizer");
    Tokenizer t;
    t.impl_ = std::move(impl);
    return t;
}

}  // namespace distill
