// distill — the BPE model: the merge table, the merges of one word (HF's Word::merge_all, with
// byte fallback and the unknown token) and encode()'s word -> ids cache.
#include <algorithm>
#include <mutex>
#include <queue>

#include "tokenizer/tokenizer-impl.h"
#include "util/error.h"

namespace distill {

using json = nlohmann::json;

namespace {

constexpr size_t kCacheMaxEntries = 1 << 18;
constexpr size_t kCacheMaxWordBytes = 256;

inline uint64_t pair_key(int32_t a, int32_t b) {
    return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
}

struct Sym {
    int32_t c;
    int32_t prev, next;
    bool live;
};
struct MergeEntry {
    int32_t rank, pos, new_id;
    bool operator<(const MergeEntry& o) const {  // priority_queue top = lowest rank, then pos
        return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
};

}  // namespace

void Tokenizer::Impl::build_merge_map(const std::string& source) {
    merge_map.clear();
    merge_map.reserve(merges.size() * 2);
    for (size_t r = 0; r < merges.size(); ++r) {
        auto [a, b] = merges[r];
        auto it = vocab.find(id_to_token[a] + id_to_token[b]);
        DISTILL_CHECK(it != vocab.end(), source, ": merge #", r, " (", json(id_to_token[a]).dump(),
                      " ", json(id_to_token[b]).dump(),
                      ") makes a token that is not in the vocabulary");
        merge_map[pair_key(a, b)] = {int32_t(r),
                                     it->second};  // a repeated pair: the last wins, as in HF
    }
}

void Tokenizer::Impl::bpe_word(std::string_view word, std::vector<int32_t>& out) const {
    if (ignore_merges) {
        auto it = vocab.find(byte_level ? ByteAlphabet::get().encode(word) : std::string(word));
        if (it != vocab.end()) {
            out.push_back(it->second);
            return;
        }
    }
    std::vector<Sym> sy;
    sy.reserve(word.size());
    auto add = [&](int32_t id) {
        int32_t i = int32_t(sy.size());
        sy.push_back({id, i - 1, i + 1, true});
    };
    // HF's BPE::merge_word: one symbol per character (a byte, for byte-level pipelines); a
    // character not in the vocabulary becomes its <0xNN> tokens (byte_fallback, if all exist),
    // else the unknown token, which is held back until the next known character (fuse_unk: runs
    // of unknown characters share one), else it is dropped.
    int32_t pending_unk = -1;
    auto unknown = [&](std::string_view ch) {
        if (byte_fallback) {
            bool all = true;
            for (unsigned char b : ch) all &= fallback_ids[b] >= 0;
            if (all) {
                for (unsigned char b : ch) add(fallback_ids[b]);
                return;
            }
        }
        if (unk_id < 0) return;
        if (pending_unk >= 0 && !fuse_unk) add(pending_unk);
        pending_unk = unk_id;
    };
    auto known = [&](int32_t id) {
        if (pending_unk >= 0) add(pending_unk);
        pending_unk = -1;
        add(id);
    };
    if (byte_level) {
        const ByteAlphabet& alpha = ByteAlphabet::get();
        for (unsigned char b : word) {
            if (byte_ids[b] >= 0)
                known(byte_ids[b]);
            else
                unknown(alpha.byte_to_str[b]);
        }
    } else {
        size_t i = 0;
        std::string ch;
        while (i < word.size()) {
            size_t len =
                std::min(utf8_char_len(static_cast<unsigned char>(word[i])), word.size() - i);
            ch.assign(word.data() + i, len);
            auto it = vocab.find(ch);
            if (it != vocab.end())
                known(it->second);
            else
                unknown(ch);
            i += len;
        }
    }
    if (pending_unk >= 0) add(pending_unk);
    if (sy.empty()) return;
    sy.back().next = -1;
    if (sy.size() > 1) {
        std::vector<MergeEntry> heap_init;
        heap_init.reserve(sy.size());
        for (size_t i = 0; i + 1 < sy.size(); ++i) {
            auto it = merge_map.find(pair_key(sy[i].c, sy[i + 1].c));
            if (it != merge_map.end())
                heap_init.push_back({it->second.first, int32_t(i), it->second.second});
        }
        std::priority_queue<MergeEntry> q(std::less<MergeEntry>(), std::move(heap_init));
        // HF's Word::merge_all: entries go stale; an entry is used only if the pair at its
        // position still produces the same new id.
        while (!q.empty()) {
            MergeEntry top = q.top();
            q.pop();
            Sym& s = sy[top.pos];
            if (!s.live || s.next < 0) continue;
            int32_t np = s.next;
            auto it = merge_map.find(pair_key(s.c, sy[np].c));
            if (it == merge_map.end() || it->second.second != top.new_id) continue;
            s.c = top.new_id;
            s.next = sy[np].next;
            sy[np].live = false;
            if (s.next >= 0) sy[s.next].prev = top.pos;
            if (s.prev >= 0) {
                auto jt = merge_map.find(pair_key(sy[s.prev].c, s.c));
                if (jt != merge_map.end()) q.push({jt->second.first, s.prev, jt->second.second});
            }
            if (s.next >= 0) {
                auto jt = merge_map.find(pair_key(s.c, sy[s.next].c));
                if (jt != merge_map.end()) q.push({jt->second.first, top.pos, jt->second.second});
            }
        }
    }
    for (const Sym& s : sy)
        if (s.live) out.push_back(s.c);
}

void Tokenizer::Impl::encode_word_cached(std::string_view word, std::vector<int32_t>& out) const {
    if (word.size() == 1 && byte_level && byte_ids[static_cast<uint8_t>(word[0])] >= 0 &&
        !ignore_merges) {
        out.push_back(byte_ids[static_cast<uint8_t>(word[0])]);
        return;
    }
    if (word.size() > kCacheMaxWordBytes) {
        bpe_word(word, out);
        return;
    }
    std::string key(word);
    {
        std::shared_lock<std::shared_mutex> lock(cache_mu);
        auto it = cache.find(key);
        if (it != cache.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    size_t start = out.size();
    bpe_word(word, out);
    std::unique_lock<std::shared_mutex> lock(cache_mu);
    if (cache.size() >= kCacheMaxEntries) cache.clear();
    cache.emplace(std::move(key), std::vector<int32_t>(out.begin() + start, out.end()));
}

}  // namespace distill
