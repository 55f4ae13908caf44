// distill — byte-level BPE tokenizer: HF tokenizer.json load/save, encode, decode.
// Training is in bpe-train.cpp; shared internals in tokenizer-impl.h. Format and behaviour are
// described in docs/tokenizer.md.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <deque>
#include <mutex>
#include <queue>

#include "tokenizer/tokenizer-impl.h"
#include "util/error.h"
#include "util/file.h"

namespace distill {

using json = nlohmann::json;

namespace {

constexpr int64_t kMaxVocab = int64_t(1) << 24;  // ids must lie below this
constexpr size_t kCacheMaxEntries = 1 << 18;
constexpr size_t kCacheMaxWordBytes = 256;

inline uint64_t pair_key(int32_t a, int32_t b) {
    return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
}

}  // namespace

// ---- GPT-2 byte alphabet -------------------------------------------------------------------

ByteAlphabet::ByteAlphabet() {
    std::fill(std::begin(cp_to_byte), std::end(cp_to_byte), int16_t(-1));
    bool printable[256] = {};
    for (int b = 33; b <= 126; ++b) printable[b] = true;
    for (int b = 161; b <= 172; ++b) printable[b] = true;
    for (int b = 174; b <= 255; ++b) printable[b] = true;
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
        byte_to_cp[b] = printable[b] ? uint32_t(b) : next++;
        cp_to_byte[byte_to_cp[b]] = int16_t(b);
        utf8_append(byte_to_str[b], byte_to_cp[b]);
    }
}

const ByteAlphabet& ByteAlphabet::get() {
    static const ByteAlphabet a;
    return a;
}

std::string ByteAlphabet::encode(std::string_view bytes) const {
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char b : bytes) out += byte_to_str[b];
    return out;
}

bool ByteAlphabet::decode(std::string_view token, std::string& out) const {
    out.clear();
    for (uint32_t cp : utf8_code_points(token)) {
        if (cp >= 324 || cp_to_byte[cp] < 0) return false;
        out += char(cp_to_byte[cp]);
    }
    return true;
}

// ---- Regex ---------------------------------------------------------------------------------

namespace {
struct MatchData {
    pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
    ~MatchData() { pcre2_match_data_free(md); }
};
std::string pcre2_message(int code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(code, buf, sizeof buf);
    return reinterpret_cast<const char*>(buf);
}
}  // namespace

Regex::Regex(const std::string& pattern, const std::string& what) : pattern_(pattern) {
    DISTILL_CHECK(utf8_valid(pattern), what, ": the regex is not valid UTF-8");
    std::string p = regex_onig_to_pcre2(pattern);
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(),
                                     PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    DISTILL_CHECK(code, what, ": cannot compile the regex ", json(pattern).dump(), " (at offset ",
                  off, "): ", pcre2_message(err));
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if it fails
    code_ = code;
}

Regex::~Regex() {
    pcre2_code_free(static_cast<pcre2_code*>(code_));
}

void Regex::find_all(const char* s, size_t n, std::vector<std::pair<size_t, size_t>>& out) const {
    thread_local MatchData tl;
    auto* code = static_cast<pcre2_code*>(code_);
    auto subject = reinterpret_cast<PCRE2_SPTR>(s);
    size_t pos = 0;
    while (pos < n) {
        int rc = pcre2_match(code, subject, n, pos, PCRE2_NO_UTF_CHECK, tl.md, nullptr);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // very long runs: the interpreter uses the heap
            rc = pcre2_match(code, subject, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, tl.md,
                             nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        DISTILL_CHECK(rc >= 0, "tokenizer regex ", json(pattern_).dump(), " failed on a ", n,
                      "-byte piece: ", pcre2_message(rc));
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(tl.md);
        size_t a = ov[0], b = ov[1];
        if (b <= a) {  // empty match: step over one character
            if (a >= n) break;
            pos = a + utf8_char_len(static_cast<unsigned char>(s[a]));
            continue;
        }
        out.emplace_back(a, b);
        pos = b;
    }
}

std::string regex_onig_to_pcre2(const std::string& p) {
    // Onig's \s: U+0009-000D, U+0085 and General_Category Z. PCRE2 (UCP) adds U+180E.
    // (\S inside a class is left alone: rare, and it differs only at U+180E.)
    static const char* kSpace = "\\t-\\r\\x{85}\\p{Z}";
    std::string out;
    out.reserve(p.size() + 16);
    bool in_class = false;
    for (size_t i = 0; i < p.size(); ++i) {
        char c = p[i];
        if (c == '\\' && i + 1 < p.size()) {
            char e = p[i + 1];
            if (e == 's') {
                out += in_class ? std::string(kSpace) : str_cat("[", kSpace, "]");
            } else if (e == 'S' && !in_class) {
                out += str_cat("[^", kSpace, "]");
            } else {
                out += c;
                out += e;
            }
            ++i;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            out += c;
            if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
            if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // literal ] first
            continue;
        }
        if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
            size_t end = p.find(":]", i + 2);
            if (end != std::string::npos) {
                out.append(p, i, end + 2 - i);
                i = end + 1;
                continue;
            }
        }
        if (in_class && c == ']') in_class = false;
        out += c;
    }
    return out;
}

// ---- Impl ----------------------------------------------------------------------------------

Tokenizer::Impl::Impl() {
    std::fill(std::begin(byte_ids), std::end(byte_ids), -1);
    std::fill(std::begin(fallback_ids), std::end(fallback_ids), -1);
}

Tokenizer::Impl::Impl(const Impl& o)
    : id_to_token(o.id_to_token),
      id_bytes(o.id_bytes),
      id_kind(o.id_kind),
      vocab(o.vocab),
      token_ids(o.token_ids),
      merges(o.merges),
      merge_map(o.merge_map),
      ignore_merges(o.ignore_merges),
      unk_id(o.unk_id),
      unk_token(o.unk_token),
      fuse_unk(o.fuse_unk),
      byte_fallback(o.byte_fallback),
      byte_level(o.byte_level),
      added(o.added),
      norm(o.norm),
      pre(o.pre),
      dec(o.dec),
      has_decoder(o.has_decoder),
      normalizer(o.normalizer),
      pre_tokenizer(o.pre_tokenizer),
      post_processor(o.post_processor),
      decoder(o.decoder),
      truncation(o.truncation),
      padding(o.padding),
      version(o.version),
      fingerprint(o.fingerprint),
      raw_by_first_byte(o.raw_by_first_byte),
      norm_by_first_byte(o.norm_by_first_byte),
      added_match(o.added_match),
      any_normalized_added(o.any_normalized_added) {
    std::copy(std::begin(o.byte_ids), std::end(o.byte_ids), std::begin(byte_ids));
    std::copy(std::begin(o.fallback_ids), std::end(o.fallback_ids), std::begin(fallback_ids));
}

static std::string impl_to_json(const Tokenizer::Impl& m);

// True if the decoder is one ByteLevel step: decode() then concatenates precomputed bytes.
static bool byte_level_decoder(const Tokenizer::Impl& m) {
    return m.has_decoder && m.dec.size() == 1 && m.dec[0].kind == DecStep::Kind::kByteLevel;
}

void Tokenizer::Impl::finalize(const std::string& source) {
    const auto& alpha = ByteAlphabet::get();
    const size_t n = id_to_token.size();
    id_kind.assign(n, 0);
    token_ids = vocab;
    for (const auto& [tok, id] : vocab) id_kind[id] = 1;
    for (const AddedToken& t : added) {
        id_kind[t.id] = t.special ? 3 : 2;
        token_ids[t.content] = t.id;
    }
    // What each id decodes to on its own. HF's ByteLevel decoder: a token whose characters are
    // all in the alphabet becomes those bytes; any other token is emitted as its own UTF-8.
    // Other decoders: the decoder run on the token alone (a <0xNN> token: that byte).
    id_bytes.assign(n, std::string());
    const bool bl = byte_level_decoder(*this);
    std::string tmp;
    for (size_t id = 0; id < n; ++id) {
        if (!id_kind[id]) continue;
        const std::string& tok = id_to_token[id];
        if (bl) {
            id_bytes[id] = alpha.decode(tok, tmp) ? tmp : tok;
        } else if (tok.size() == 6 && tok.compare(0, 3, "<0x") == 0 && tok[5] == '>' &&
                   std::isxdigit(static_cast<unsigned char>(tok[3])) &&
                   std::isxdigit(static_cast<unsigned char>(tok[4]))) {
            id_bytes[id] = std::string(1, char(std::stoi(tok.substr(3, 2), nullptr, 16)));
        } else if (has_decoder) {
            std::vector<std::string> one{tok};
            decode_steps(dec, one);
            for (auto& s : one) id_bytes[id] += s;
        } else {
            id_bytes[id] = tok;
        }
    }
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
    char name[8];
    for (int b = 0; b < 256; ++b) {
        auto it = vocab.find(alpha.byte_to_str[b]);
        byte_ids[b] = it == vocab.end() ? -1 : it->second;
        std::snprintf(name, sizeof name, "<0x%02X>", b);  // HF: format!("<{:#04X}>", b)
        it = vocab.find(name);
        fallback_ids[b] = it == vocab.end() ? -1 : it->second;
    }
    unk_id = -1;
    if (!unk_token.empty()) {
        auto it = vocab.find(unk_token);
        DISTILL_CHECK(it != vocab.end(), source, ": model.unk_token ", json(unk_token).dump(),
                      " is not in the vocabulary");
        unk_id = it->second;
    }
    byte_level = !pre.empty() && pre.back().kind == PreTokStep::Kind::kByteLevel;
    // Added tokens: the non-normalized ones are matched in the raw text, the normalized ones
    // (by their normalized content) in the normalized text.
    added_match.assign(added.size(), std::string());
    any_normalized_added = false;
    for (size_t i = 0; i < added.size(); ++i) {
        added_match[i] = added[i].normalized && !norm.empty() ? normalize_text(norm, added[i].content)
                                                              : added[i].content;
        any_normalized_added |= added[i].normalized;
    }
    raw_by_first_byte.assign(256, {});
    norm_by_first_byte.assign(256, {});
    std::vector<int32_t> order(added.size());
    for (size_t i = 0; i < added.size(); ++i) order[i] = int32_t(i);
    std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
        return added_match[x].size() > added_match[y].size();
    });
    for (int32_t k : order) {
        if (added_match[k].empty()) continue;  // normalized away: HF never matches it
        auto& table = added[k].normalized ? norm_by_first_byte : raw_by_first_byte;
        table[static_cast<uint8_t>(added_match[k][0])].push_back(k);
    }
    {
        std::unique_lock<std::shared_mutex> lock(cache_mu);
        cache.clear();
    }
    fingerprint = hash_hex(impl_to_json(*this));
}

void Tokenizer::Impl::find_added(std::string_view text, bool normalized,
                                 std::vector<AddedSpan>& out) const {
    const auto& table = normalized ? norm_by_first_byte : raw_by_first_byte;
    const size_t n = text.size();
    size_t start_offset = 0, i = 0;
    auto cp_before = [&](size_t at) {  // the code point that ends at `at` (> 0)
        size_t b = at - 1;
        while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
        return utf8_code_points(text.substr(b, at - b))[0];
    };
    auto cp_at = [&](size_t at) {
        size_t len = std::min(utf8_char_len(static_cast<unsigned char>(text[at])), n - at);
        return utf8_code_points(text.substr(at, len))[0];
    };
    while (i < n) {
        const auto& cands = table[static_cast<uint8_t>(text[i])];
        int32_t hit = -1;
        for (int32_t k : cands) {
            const std::string& c = added_match[k];
            if (c.size() <= n - i && text.compare(i, c.size(), c) == 0) {
                hit = k;
                break;  // longest first
            }
        }
        if (hit < 0) {
            ++i;
            continue;
        }
        const AddedToken& t = added[hit];
        size_t start = i, stop = i + added_match[hit].size();
        i = stop;  // the next match starts after this one, whatever happens to it below
        if (t.single_word) {
            bool start_space = start == 0 || !is_word_char(cp_before(start));
            bool stop_space = stop == n || !is_word_char(cp_at(stop));
            if (!start_space || !stop_space) continue;
        }
        if (t.lstrip) {
            size_t ns = start;
            while (ns > 0 && is_white_space(cp_before(ns))) {
                --ns;
                while (ns > 0 && (static_cast<unsigned char>(text[ns]) & 0xC0) == 0x80) --ns;
            }
            start = std::max(ns, start_offset);
        }
        if (t.rstrip)
            while (stop < n && is_white_space(cp_at(stop)))
                stop += utf8_char_len(static_cast<unsigned char>(text[stop]));
        if (start_offset < start) out.push_back({start_offset, start, -1});
        out.push_back({start, stop, t.id});
        start_offset = stop;
    }
    if (start_offset < n) out.push_back({start_offset, n, -1});
}

static void split_pieces(const PreTokStep& step, std::string_view p,
                         std::vector<std::string_view>& out) {
    // Segments covering p: (start, end, is_match).
    thread_local std::vector<std::pair<size_t, size_t>> matches;
    matches.clear();
    if (step.regex) {
        step.regex->find_all(p.data(), p.size(), matches);
    } else if (!step.literal.empty()) {
        for (size_t at = p.find(step.literal); at != std::string_view::npos;
             at = p.find(step.literal, at + step.literal.size()))
            matches.emplace_back(at, at + step.literal.size());
    }
    if (step.behavior == SplitBehavior::kIsolated && !step.invert) {  // the common, fast case
        size_t pos = 0;
        for (auto [a, b] : matches) {
            if (a > pos) out.push_back(p.substr(pos, a - pos));
            out.push_back(p.substr(a, b - a));
            pos = b;
        }
        if (pos < p.size()) out.push_back(p.substr(pos));
        return;
    }
    struct Seg {
        size_t a, b;
        bool m;
    };
    std::vector<Seg> segs;
    size_t pos = 0;
    for (auto [a, b] : matches) {
        if (a > pos) segs.push_back({pos, a, false});
        segs.push_back({a, b, true});
        pos = b;
    }
    if (pos < p.size()) segs.push_back({pos, p.size(), false});
    if (step.invert)
        for (auto& s : segs) s.m = !s.m;
    std::vector<Seg> res;  // HF's NormalizedString::split, one behaviour at a time
    bool prev_match = false;
    switch (step.behavior) {
        case SplitBehavior::kIsolated:
            res = segs;
            break;
        case SplitBehavior::kRemoved:
            for (auto& s : segs)
                if (!s.m) res.push_back(s);
            break;
        case SplitBehavior::kMergedWithPrevious:
            for (auto& s : segs) {
                if (s.m && !prev_match && !res.empty())
                    res.back().b = s.b;
                else
                    res.push_back(s);
                prev_match = s.m;
            }
            break;
        case SplitBehavior::kMergedWithNext:
            for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
                if (it->m && !prev_match && !res.empty())
                    res.back().a = it->a;
                else
                    res.push_back(*it);
                prev_match = it->m;
            }
            std::reverse(res.begin(), res.end());
            break;
        case SplitBehavior::kContiguous:
            for (auto& s : segs) {
                if (s.m == prev_match && !res.empty())
                    res.back().b = s.b;
                else
                    res.push_back(s);
                prev_match = s.m;
            }
            break;
    }
    for (auto& s : res)
        if (s.b > s.a) out.push_back(p.substr(s.a, s.b - s.a));
}

void Tokenizer::Impl::pre_tokenize(std::string_view segment, std::string& storage,
                                   std::vector<std::string_view>& words, bool at_start) const {
    if (pre.empty()) {
        if (!segment.empty()) words.push_back(segment);
        return;
    }
    // Pieces, and whether each begins the input (only the first piece of a piece that does).
    std::vector<std::string_view> cur{segment}, next;
    std::vector<uint8_t> first{uint8_t(at_start)}, next_first;
    std::deque<std::string> owned;  // pieces the pipeline rewrote (prefix space, Metaspace)
    for (const PreTokStep& step : pre) {
        next.clear();
        next_first.clear();
        for (size_t k = 0; k < cur.size(); ++k) {
            std::string_view p = cur[k];
            const size_t before = next.size();
            if (step.kind == PreTokStep::Kind::kByteLevel) {
                if (step.add_prefix_space && (p.empty() || p[0] != ' ')) {
                    owned.push_back(str_cat(" ", p));
                    p = owned.back();
                }
                if (!step.use_regex)
                    next.push_back(p);
                else
                    split_pieces(step, p, next);
            } else if (step.kind == PreTokStep::Kind::kMetaspace) {
                const std::string& r = step.replacement;
                // (HF checks for the replacement after replacing the spaces)
                bool starts = (!p.empty() && p[0] == ' ') || p.substr(0, r.size()) == r;
                bool prefix = !starts && (step.prepend == PrependScheme::kAlways ||
                                          (step.prepend == PrependScheme::kFirst && first[k]));
                if (prefix || p.find(' ') != std::string_view::npos) {
                    std::string s = prefix ? r : std::string();
                    for (char c : p) c == ' ' ? s += r : s += c;
                    owned.push_back(std::move(s));
                    p = owned.back();
                }
                if (!step.split) {
                    if (!p.empty()) next.push_back(p);
                } else {
                    split_pieces(step, p, next);
                }
            } else {
                split_pieces(step, p, next);
            }
            for (size_t i = before; i < next.size(); ++i)
                next_first.push_back(first[k] && i == before && next[i].data() == p.data());
        }
        cur.swap(next);
        first.swap(next_first);
    }
    if (owned.empty()) {
        words.insert(words.end(), cur.begin(), cur.end());
        return;
    }
    // Re-home the pieces into `storage` so that the views outlive this call.
    size_t total = 0;
    for (auto w : cur) total += w.size();
    storage.clear();
    storage.reserve(total);
    for (auto w : cur) storage += w;
    size_t off = 0;
    for (auto w : cur) {
        words.push_back(std::string_view(storage).substr(off, w.size()));
        off += w.size();
    }
}

namespace {
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

// ---- JSON writing --------------------------------------------------------------------------

static std::string q(const std::string& s) {
    return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

static std::string impl_to_json(const Tokenizer::Impl& m) {
    std::string o;
    o.reserve(m.id_to_token.size() * 24 + m.merges.size() * 24 + 4096);
    auto dump = [](const json& j) {
        return j.dump(-1, ' ', false, json::error_handler_t::replace);
    };
    o += "{\n  \"version\": " + q(m.version) + ",\n";
    o += "  \"truncation\": " + dump(m.truncation) + ",\n";
    o += "  \"padding\": " + dump(m.padding) + ",\n";
    o += "  \"added_tokens\": [";
    std::vector<const AddedToken*> added;
    for (const auto& t : m.added) added.push_back(&t);
    std::sort(added.begin(), added.end(), [](auto* a, auto* b) { return a->id < b->id; });
    for (size_t i = 0; i < added.size(); ++i) {
        const AddedToken& t = *added[i];
        auto b = [](bool v) { return v ? "true" : "false"; };
        o += i ? ",\n    " : "\n    ";
        o += str_cat("{\"id\": ", t.id, ", \"content\": ", q(t.content),
                     ", \"single_word\": ", b(t.single_word), ", \"lstrip\": ", b(t.lstrip),
                     ", \"rstrip\": ", b(t.rstrip), ", \"normalized\": ", b(t.normalized),
                     ", \"special\": ", b(t.special), "}");
    }
    o += added.empty() ? "],\n" : "\n  ],\n";
    o += "  \"normalizer\": " + dump(m.normalizer) + ",\n";
    o += "  \"pre_tokenizer\": " + dump(m.pre_tokenizer) + ",\n";
    o += "  \"post_processor\": " + dump(m.post_processor) + ",\n";
    o += "  \"decoder\": " + dump(m.decoder) + ",\n";
    o += "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n";
    o += "    \"unk_token\": " + (m.unk_token.empty() ? std::string("null") : q(m.unk_token)) +
         ",\n";
    o += "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n";
    o += str_cat("    \"fuse_unk\": ", m.fuse_unk ? "true" : "false",
                 ",\n    \"byte_fallback\": ", m.byte_fallback ? "true" : "false",
                 ",\n    \"ignore_merges\": ",
                 m.ignore_merges ? "true" : "false", ",\n    \"vocab\": {");
    bool first = true;
    for (size_t id = 0; id < m.id_to_token.size(); ++id) {
        auto it = m.vocab.find(m.id_to_token[id]);  // skips holes and model-less added tokens
        if (it == m.vocab.end() || it->second != int32_t(id)) continue;
        o += first ? "\n      " : ",\n      ";
        first = false;
        o += q(m.id_to_token[id]) + ": " + std::to_string(id);
    }
    o += first ? "},\n" : "\n    },\n";
    // "a b" strings unless a token contains a space; then ["a", "b"] pairs (HF >= 0.20 reads both).
    bool pairs = false;
    for (auto [a, b] : m.merges)
        if (m.id_to_token[a].find(' ') != std::string::npos ||
            m.id_to_token[b].find(' ') != std::string::npos)
            pairs = true;
    o += "    \"merges\": [";
    for (size_t i = 0; i < m.merges.size(); ++i) {
        const std::string& a = m.id_to_token[m.merges[i].first];
        const std::string& b = m.id_to_token[m.merges[i].second];
        o += i ? ",\n      " : "\n      ";
        o += pairs ? "[" + q(a) + ", " + q(b) + "]" : q(a + " " + b);
    }
    o += m.merges.empty() ? "]\n" : "\n    ]\n";
    o += "  }\n}\n";
    return o;
}

// ---- JSON reading --------------------------------------------------------------------------

namespace {

struct Loader {
    std::string source;  // "tokenizer 'path'" or "tokenizer JSON"

    [[noreturn]] void fail(const std::string& where, const std::string& what) const {
        throw Error(str_cat("cannot load ", source, ": ", where, ": ", what));
    }
    const json& field(const json& obj, const char* key, const std::string& where) const {
        auto it = obj.find(key);
        if (it == obj.end()) fail(where, str_cat("missing field \"", key, "\""));
        return *it;
    }
    std::string str(const json& j, const std::string& where) const {
        if (!j.is_string()) fail(where, str_cat("must be a string, not ", j.type_name()));
        return j.get<std::string>();
    }
    bool boolean(const json& obj, const char* key, bool def, const std::string& where) const {
        auto it = obj.find(key);
        if (it == obj.end() || it->is_null()) return def;
        if (!it->is_boolean())
            fail(where + "." + key, str_cat("must be a boolean, not ", it->type_name()));
        return it->get<bool>();
    }
    int32_t id(const json& j, const std::string& where) const {
        if (!j.is_number_integer())
            fail(where, str_cat("the id must be an integer, not ", j.type_name()));
        int64_t v = j.is_number_unsigned() && j.get<uint64_t>() > uint64_t(kMaxVocab)
                        ? kMaxVocab
                        : j.get<int64_t>();
        if (v < 0 || v >= kMaxVocab)
            fail(where, str_cat("id ", j.dump(), " is out of range (0 to ", kMaxVocab - 1, ")"));
        return int32_t(v);
    }
    std::string type_of(const json& j, const std::string& where) const {
        if (!j.is_object()) fail(where, str_cat("must be an object, not ", j.type_name()));
        return str(field(j, "type", where), where + ".type");
    }

    void pre_tokenizer(const json& j, const std::string& where,
                       std::vector<PreTokStep>& out) const {
        if (j.is_null()) return;
        std::string type = type_of(j, where);
        if (type == "Sequence") {
            const json& list = field(j, "pretokenizers", where);
            if (!list.is_array()) fail(where + ".pretokenizers", "must be an array");
            for (size_t i = 0; i < list.size(); ++i)
                pre_tokenizer(list[i], str_cat(where, ".pretokenizers[", i, "]"), out);
            return;
        }
        PreTokStep s;
        if (type == "ByteLevel") {
            s.kind = PreTokStep::Kind::kByteLevel;
            s.add_prefix_space = boolean(j, "add_prefix_space", true, where);
            s.use_regex = boolean(j, "use_regex", true, where);
            if (s.use_regex) s.regex = gpt2_regex();
        } else if (type == "Split") {
            s.kind = PreTokStep::Kind::kSplit;
            pattern(j, where, s.regex, s.literal);
            std::string b = str(field(j, "behavior", where), where + ".behavior");
            if (b == "Removed")
                s.behavior = SplitBehavior::kRemoved;
            else if (b == "Isolated")
                s.behavior = SplitBehavior::kIsolated;
            else if (b == "MergedWithPrevious")
                s.behavior = SplitBehavior::kMergedWithPrevious;
            else if (b == "MergedWithNext")
                s.behavior = SplitBehavior::kMergedWithNext;
            else if (b == "Contiguous")
                s.behavior = SplitBehavior::kContiguous;
            else
                fail(where + ".behavior", str_cat("unknown split behavior ", json(b).dump()));
            s.invert = boolean(j, "invert", false, where);
        } else if (type == "Metaspace") {
            s.kind = PreTokStep::Kind::kMetaspace;
            metaspace(j, where, s.replacement, s.prepend);
            s.split = boolean(j, "split", true, where);
            s.literal = s.replacement;  // the split: before each replacement character
            s.behavior = SplitBehavior::kMergedWithNext;
        } else if (type == "Digits") {
            s.kind = PreTokStep::Kind::kSplit;
            static const auto digits = std::make_shared<const Regex>("\\p{N}", "Digits");
            s.regex = digits;
            s.behavior = boolean(j, "individual_digits", false, where) ? SplitBehavior::kIsolated
                                                                       : SplitBehavior::kContiguous;
        } else {
            fail(where, str_cat("pre-tokenizer type ", json(type).dump(),
                                " is not supported (supported: ByteLevel, Split, Metaspace, "
                                "Digits, Sequence)"));
        }
        out.push_back(std::move(s));
    }

    // Metaspace's replacement character and prepend scheme (HF: "prepend_scheme", or the older
    // "add_prefix_space": false meaning "never").
    void metaspace(const json& j, const std::string& where, std::string& replacement,
                   PrependScheme& prepend) const {
        replacement = str(field(j, "replacement", where), where + ".replacement");
        if (!utf8_valid(replacement) || utf8_code_points(replacement).size() != 1)
            fail(where + ".replacement", "must be exactly one character");
        std::string scheme = "always";
        if (auto it = j.find("prepend_scheme"); it != j.end() && !it->is_null())
            scheme = str(*it, where + ".prepend_scheme");
        if (scheme == "always")
            prepend = PrependScheme::kAlways;
        else if (scheme == "first")
            prepend = PrependScheme::kFirst;
        else if (scheme == "never")
            prepend = PrependScheme::kNever;
        else
            fail(where + ".prepend_scheme",
                 str_cat("unknown prepend scheme ", json(scheme).dump(),
                         " (expected \"first\", \"always\" or \"never\")"));
        if (!boolean(j, "add_prefix_space", true, where)) {
            if (prepend != PrependScheme::kNever && j.contains("prepend_scheme"))
                fail(where, "add_prefix_space false contradicts prepend_scheme");
            prepend = PrependScheme::kNever;
        }
    }

    // A {"String": ...} or {"Regex": ...} pattern (Split, Replace).
    void pattern(const json& j, const std::string& where, std::shared_ptr<const Regex>& regex,
                 std::string& literal) const {
        const json& pat = field(j, "pattern", where);
        if (!pat.is_object() || pat.size() != 1)
            fail(where + ".pattern", "must be {\"Regex\": ...} or {\"String\": ...}");
        if (pat.contains("Regex")) {
            std::string re = str(pat["Regex"], where + ".pattern.Regex");
            regex = std::make_shared<Regex>(re, str_cat("cannot load ", source, ": ", where));
        } else if (pat.contains("String")) {
            literal = str(pat["String"], where + ".pattern.String");
        } else {
            fail(where + ".pattern", "must be {\"Regex\": ...} or {\"String\": ...}");
        }
    }

    void normalizer(const json& j, const std::string& where, std::vector<NormStep>& out) const {
        if (j.is_null()) return;
        std::string type = type_of(j, where);
        if (type == "Sequence") {
            const json& list = field(j, "normalizers", where);
            if (!list.is_array()) fail(where + ".normalizers", "must be an array");
            for (size_t i = 0; i < list.size(); ++i)
                normalizer(list[i], str_cat(where, ".normalizers[", i, "]"), out);
            return;
        }
        NormStep s;
        if (type == "NFC") {
            s.kind = NormStep::Kind::kNFC;
        } else if (type == "NFD") {
            s.kind = NormStep::Kind::kNFD;
        } else if (type == "NFKC") {
            s.kind = NormStep::Kind::kNFKC;
        } else if (type == "NFKD") {
            s.kind = NormStep::Kind::kNFKD;
        } else if (type == "Lowercase") {
            s.kind = NormStep::Kind::kLowercase;
        } else if (type == "Replace") {
            s.kind = NormStep::Kind::kReplace;
            pattern(j, where, s.regex, s.literal);
            s.content = str(field(j, "content", where), where + ".content");
        } else if (type == "Prepend") {
            s.kind = NormStep::Kind::kPrepend;
            s.content = str(field(j, "prepend", where), where + ".prepend");
        } else if (type == "Strip") {
            s.kind = NormStep::Kind::kStrip;
            s.strip_left = boolean(j, "strip_left", false, where);
            s.strip_right = boolean(j, "strip_right", false, where);
        } else {
            fail(where, str_cat("normalizer type ", json(type).dump(),
                                " is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, "
                                "Replace, Prepend, Strip, Sequence)"));
        }
        out.push_back(std::move(s));
    }

    static std::shared_ptr<const Regex> gpt2_regex() {
        static const auto r = std::make_shared<const Regex>(kGpt2SplitRegex, "the GPT-2 regex");
        return r;
    }

    void decoder(const json& j, const std::string& where, std::vector<DecStep>& out) const {
        std::string type = type_of(j, where);
        if (type == "Sequence") {
            const json& list = field(j, "decoders", where);
            if (!list.is_array()) fail(where + ".decoders", "must be an array");
            for (size_t i = 0; i < list.size(); ++i)
                decoder(list[i], str_cat(where, ".decoders[", i, "]"), out);
            return;
        }
        auto one_char = [&](const char* key) {
            std::string c = str(field(j, key, where), str_cat(where, ".", key));
            if (!utf8_valid(c) || utf8_code_points(c).size() != 1)
                fail(str_cat(where, ".", key), "must be exactly one character");
            return utf8_code_points(c)[0];
        };
        auto count = [&](const char* key) {
            const json& v = field(j, key, where);
            if (!v.is_number_unsigned())
                fail(str_cat(where, ".", key), "must be a non-negative integer");
            return size_t(std::min<uint64_t>(v.get<uint64_t>(), uint64_t(1) << 30));
        };
        DecStep s;
        if (type == "ByteLevel") {
            s.kind = DecStep::Kind::kByteLevel;
        } else if (type == "ByteFallback") {
            s.kind = DecStep::Kind::kByteFallback;
        } else if (type == "Fuse") {
            s.kind = DecStep::Kind::kFuse;
        } else if (type == "Strip") {
            s.kind = DecStep::Kind::kStrip;
            s.ch = one_char("content");
            s.start = count("start");
            s.stop = count("stop");
        } else if (type == "Replace") {
            s.kind = DecStep::Kind::kReplace;
            pattern(j, where, s.regex, s.literal);
            s.content = str(field(j, "content", where), where + ".content");
        } else if (type == "Metaspace") {
            s.kind = DecStep::Kind::kMetaspace;
            std::string r;
            PrependScheme p;
            metaspace(j, where, r, p);
            s.ch = utf8_code_points(r)[0];
            s.prepend_never = p == PrependScheme::kNever;
        } else {
            fail(where, str_cat("decoder type ", json(type).dump(),
                                " is not supported (supported: ByteLevel, ByteFallback, Fuse, "
                                "Strip, Replace, Metaspace, Sequence)"));
        }
        out.push_back(std::move(s));
    }

    void load(const json& root, Tokenizer::Impl& m) const {
        if (!root.is_object())
            fail("top level", str_cat("must be an object, not ", root.type_name()));
        if (!root.contains("model")) fail("top level", "missing field \"model\"");
        if (auto it = root.find("version"); it != root.end() && it->is_string())
            m.version = it->get<std::string>();
        m.truncation = root.value("truncation", json());
        m.padding = root.value("padding", json());

        m.normalizer = root.value("normalizer", json());
        m.norm.clear();
        normalizer(m.normalizer, "normalizer", m.norm);
        m.pre_tokenizer = root.value("pre_tokenizer", json());
        pre_tokenizer(m.pre_tokenizer, "pre_tokenizer", m.pre);
        for (size_t i = 0; i + 1 < m.pre.size(); ++i)
            if (m.pre[i].kind == PreTokStep::Kind::kByteLevel)
                fail("pre_tokenizer", "ByteLevel must be the last pre-tokenizer of a Sequence");
        m.post_processor = root.value("post_processor", json());
        m.decoder = root.value("decoder", json());
        m.dec.clear();
        m.has_decoder = !m.decoder.is_null();
        if (m.has_decoder) decoder(m.decoder, "decoder", m.dec);

        // model
        const json& model = field(root, "model", "top level");
        if (!model.is_object())
            fail("model", str_cat("must be an object, not ", model.type_name()));
        if (model.contains("type") && str(model["type"], "model.type") != "BPE")
            fail("model.type", str_cat("model type ", model["type"].dump(),
                                       " is not supported (supported: BPE)"));
        if (model.contains("dropout") && !model["dropout"].is_null() &&
            !(model["dropout"].is_number() && model["dropout"].get<double>() == 0.0))
            fail("model.dropout", "BPE dropout is not supported (must be null)");
        for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
            if (model.contains(k) && !model[k].is_null() &&
                !(model[k].is_string() && model[k].get<std::string>().empty()))
                fail(str_cat("model.", k), "is not supported (must be null)");
        m.byte_fallback = boolean(model, "byte_fallback", false, "model");
        m.fuse_unk = boolean(model, "fuse_unk", false, "model");
        m.ignore_merges = boolean(model, "ignore_merges", false, "model");
        if (model.contains("unk_token") && !model["unk_token"].is_null())
            m.unk_token = str(model["unk_token"], "model.unk_token");

        const json& vocab = field(model, "vocab", "model");
        if (!vocab.is_object())
            fail("model.vocab", str_cat("must be an object, not ", vocab.type_name()));
        int64_t max_id = -1;
        std::vector<std::pair<int32_t, const std::string*>> entries;
        entries.reserve(vocab.size());
        for (auto it = vocab.begin(); it != vocab.end(); ++it) {
            int32_t v = id(it.value(), str_cat("model.vocab[", json(it.key()).dump(), "]"));
            entries.push_back({v, &it.key()});
            max_id = std::max<int64_t>(max_id, v);
        }
        std::vector<AddedToken> added;
        if (auto it = root.find("added_tokens"); it != root.end() && !it->is_null()) {
            if (!it->is_array())
                fail("added_tokens", str_cat("must be an array, not ", it->type_name()));
            for (size_t i = 0; i < it->size(); ++i) {
                const json& a = (*it)[i];
                std::string w = str_cat("added_tokens[", i, "]");
                if (!a.is_object()) fail(w, str_cat("must be an object, not ", a.type_name()));
                AddedToken t;
                t.id = id(field(a, "id", w), w + ".id");
                t.content = str(field(a, "content", w), w + ".content");
                if (t.content.empty()) fail(w + ".content", "must not be empty");
                t.special = boolean(a, "special", false, w);
                t.normalized = boolean(a, "normalized", !t.special, w);
                t.single_word = boolean(a, "single_word", false, w);
                t.lstrip = boolean(a, "lstrip", false, w);
                t.rstrip = boolean(a, "rstrip", false, w);
                max_id = std::max<int64_t>(max_id, t.id);
                added.push_back(std::move(t));
            }
        }
        // Holes are allowed (HF allows them) but not so many that one large id could make us
        // allocate gigabytes.
        const int64_t n_entries = int64_t(entries.size() + added.size());
        if (max_id >= 2 * n_entries + 1024)
            fail("model.vocab", str_cat("id ", max_id, " is out of range: the file has only ",
                                        n_entries, " tokens"));
        m.id_to_token.assign(size_t(max_id + 1), std::string());
        std::vector<uint8_t> used(size_t(max_id + 1), 0);
        for (auto [v, tok] : entries) {
            if (used[v])
                fail("model.vocab", str_cat("duplicate id ", v, ": ", json(m.id_to_token[v]).dump(),
                                            " and ", json(*tok).dump()));
            used[v] = 1;
            m.id_to_token[v] = *tok;
            m.vocab.emplace(*tok, v);
        }
        std::unordered_map<std::string, int32_t> added_seen;
        for (size_t i = 0; i < added.size(); ++i) {
            const AddedToken& t = added[i];
            std::string w = str_cat("added_tokens[", i, "]");
            if (auto s = added_seen.find(t.content); s != added_seen.end())
                fail(w, str_cat("token ", json(t.content).dump(), " is listed twice"));
            added_seen[t.content] = t.id;
            auto vit = m.vocab.find(t.content);
            if (vit != m.vocab.end() && vit->second != t.id)
                fail(w, str_cat("token ", json(t.content).dump(), " has id ", t.id,
                                " but the vocabulary gives it id ", vit->second));
            if (used[t.id] && m.id_to_token[t.id] != t.content)
                fail(w, str_cat("duplicate id ", t.id, ": ", json(m.id_to_token[t.id]).dump(),
                                " and ", json(t.content).dump()));
            if (used[t.id] == 2) fail(w, str_cat("duplicate id ", t.id));
            used[t.id] = 2;
            m.id_to_token[t.id] = t.content;
        }
        m.added = std::move(added);

        const json& merges = field(model, "merges", "model");
        if (!merges.is_array())
            fail("model.merges", str_cat("must be an array, not ", merges.type_name()));
        m.merges.reserve(merges.size());
        for (size_t i = 0; i < merges.size(); ++i) {
            const json& e = merges[i];
            std::string w = str_cat("model.merges[", i, "]");
            std::string a, b;
            if (e.is_string()) {
                std::string s = e.get<std::string>();
                size_t sp = s.find(' ');
                if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
                    fail(w, str_cat(json(s).dump(), " must be two tokens separated by one space"));
                a = s.substr(0, sp);
                b = s.substr(sp + 1);
            } else if (e.is_array() && e.size() == 2) {
                a = str(e[0], w + "[0]");
                b = str(e[1], w + "[1]");
            } else {
                fail(w, "must be a string \"a b\" or a pair [\"a\", \"b\"]");
            }
            auto ia = m.vocab.find(a), ib = m.vocab.find(b);
            if (ia == m.vocab.end())
                fail(w, str_cat("token ", json(a).dump(), " is not in the vocabulary"));
            if (ib == m.vocab.end())
                fail(w, str_cat("token ", json(b).dump(), " is not in the vocabulary"));
            if (m.vocab.find(a + b) == m.vocab.end())
                fail(w,
                     str_cat("the merged token ", json(a + b).dump(), " is not in the vocabulary"));
            m.merges.emplace_back(ia->second, ib->second);
        }
    }
};

Tokenizer::Impl* load_into(Tokenizer::Impl* m, const std::string& text, const std::string& source) {
    Loader L{source};
    json root;
    try {
        root = json::parse(text);
    } catch (const json::exception& e) {
        throw Error(str_cat("cannot load ", source, ": not valid JSON: ", e.what()));
    }
    try {
        L.load(root, *m);
        m->finalize("cannot load " + source);
    } catch (const json::exception& e) {  // a type we did not check; still the file's fault
        throw Error(str_cat("cannot load ", source, ": ", e.what()));
    }
    return m;
}

}  // namespace

// Builds the pipeline distill trains with: ByteLevel pre-tokenizer (GPT-2 regex, no prefix
// space), ByteLevel post-processor and decoder. Used by bpe-train.cpp.
void impl_set_default_pipeline(Tokenizer::Impl& m) {
    json bl = {{"type", "ByteLevel"},
               {"add_prefix_space", false},
               {"trim_offsets", true},
               {"use_regex", true}};
    m.normalizer = nullptr;
    m.pre_tokenizer = bl;
    m.post_processor = bl;
    m.decoder = bl;
    m.norm.clear();
    m.pre.clear();
    m.dec.clear();
    m.has_decoder = true;
    Loader{"default pipeline"}.pre_tokenizer(bl, "pre_tokenizer", m.pre);
    Loader{"default pipeline"}.decoder(bl, "decoder", m.dec);
}

// ---- Tokenizer -----------------------------------------------------------------------------

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {
    impl_set_default_pipeline(*impl_);
    impl_->finalize("empty tokenizer");
}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(const Tokenizer& o) : impl_(std::make_unique<Impl>(*o.impl_)) {}
Tokenizer& Tokenizer::operator=(const Tokenizer& o) {
    if (this != &o) impl_ = std::make_unique<Impl>(*o.impl_);
    return *this;
}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::load(const std::string& path) {
    std::string text = read_file(path);
    Tokenizer t;
    t.impl_ = std::make_unique<Impl>();
    load_into(t.impl_.get(), text, str_cat("tokenizer '", path, "'"));
    return t;
}

Tokenizer Tokenizer::from_json(const std::string& json_text) {
    Tokenizer t;
    t.impl_ = std::make_unique<Impl>();
    load_into(t.impl_.get(), json_text, "tokenizer JSON");
    return t;
}

std::string Tokenizer::to_json() const {
    return impl_to_json(*impl_);
}

void Tokenizer::save(const std::string& path) const {
    write_file_atomic(path, to_json());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
    const Impl& m = *impl_;
    std::string clean;
    if (!utf8_valid(text)) {  // documented: invalid sequences become U+FFFD first
        clean = utf8_lossy(text);
        text = clean;
    }
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    std::string storage, normalized;
    std::vector<std::string_view> words;
    auto encode_piece = [&](std::string_view piece, bool at_start) {
        words.clear();
        m.pre_tokenize(piece, storage, words, at_start);
        for (std::string_view w : words) m.encode_word_cached(w, ids);
    };
    // HF's AddedVocabulary::extract_and_normalize: added tokens that are not normalized are
    // found in the raw text; each piece between them is normalized, and the normalized ones are
    // found in that.
    std::vector<AddedSpan> spans, inner;
    if (m.added.empty())
        spans.push_back({0, text.size(), -1});
    else
        m.find_added(text, false, spans);
    for (const AddedSpan& sp : spans) {
        if (sp.id >= 0) {
            ids.push_back(sp.id);
            continue;
        }
        std::string_view seg = text.substr(sp.a, sp.b - sp.a);
        if (!m.norm.empty()) {
            normalized = normalize_text(m.norm, seg);
            seg = normalized;
        }
        if (!m.any_normalized_added) {
            encode_piece(seg, sp.a == 0);
            continue;
        }
        inner.clear();
        m.find_added(seg, true, inner);
        for (const AddedSpan& s : inner) {
            if (s.id >= 0)
                ids.push_back(s.id);
            else
                encode_piece(seg.substr(s.a, s.b - s.a), sp.a == 0 && s.a == 0);
        }
    }
    return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
    const Impl& m = *impl_;
    for (int32_t id : ids)
        DISTILL_CHECK(id >= 0 && size_t(id) < m.id_kind.size() && m.id_kind[id] != 0, "decode: id ",
                      id, " is not in the vocabulary (size ", m.id_kind.size(), ")");
    if (byte_level_decoder(m)) {  // the common case: concatenate each token's bytes
        std::string out;
        for (int32_t id : ids)
            if (!skip_special || m.id_kind[id] != 3) out += m.id_bytes[id];
        return utf8_valid(out) ? out : utf8_lossy(out);
    }
    // HF's Tokenizer::decode: the token strings (added tokens: their content), through the
    // decoder's steps, joined; with no decoder, joined with spaces.
    std::vector<std::string> tokens;
    for (int32_t id : ids)
        if (!skip_special || m.id_kind[id] != 3) tokens.push_back(m.id_to_token[id]);
    if (m.has_decoder) decode_steps(m.dec, tokens);
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (i && !m.has_decoder) out += ' ';
        out += tokens[i];
    }
    return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
    const Impl& m = *impl_;
    DISTILL_CHECK(id >= 0 && size_t(id) < m.id_kind.size() && m.id_kind[id] != 0, "token id ", id,
                  " is not in the vocabulary (size ", m.id_kind.size(), ")");
    return m.id_bytes[id];
}

std::string Tokenizer::id_to_token(int32_t id) const {
    const Impl& m = *impl_;
    DISTILL_CHECK(id >= 0 && size_t(id) < m.id_kind.size() && m.id_kind[id] != 0, "token id ", id,
                  " is not in the vocabulary (size ", m.id_kind.size(), ")");
    return m.id_to_token[id];
}

int32_t Tokenizer::token_to_id(const std::string& token) const {
    auto it = impl_->token_ids.find(token);
    return it == impl_->token_ids.end() ? -1 : it->second;
}

bool Tokenizer::is_special(int32_t id) const {
    const Impl& m = *impl_;
    return id >= 0 && size_t(id) < m.id_kind.size() && m.id_kind[id] == 3;
}

int Tokenizer::vocab_size() const {
    return int(impl_->id_to_token.size());
}

static int32_t first_special(const Tokenizer::Impl& m, std::initializer_list<const char*> names) {
    for (const char* n : names) {
        auto it = m.token_ids.find(n);
        if (it != m.token_ids.end()) return it->second;
    }
    return -1;
}

int32_t Tokenizer::bos_id() const {
    return first_special(*impl_, {"<|bos|>", "<|begin_of_text|>", "<s>"});
}
int32_t Tokenizer::eos_id() const {
    return first_special(*impl_, {"<|eos|>", "<|end_of_text|>", "</s>", "<|endoftext|>"});
}
int32_t Tokenizer::pad_id() const {
    return first_special(*impl_, {"<|pad|>", "<pad>"});
}

std::string Tokenizer::fingerprint() const {
    return impl_->fingerprint;
}

}  // namespace distill
