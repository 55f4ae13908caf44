// distill — the tokenizer's pre-tokenizer: PCRE2 regexes (with Onig's \s) and the ByteLevel,
// Split, Metaspace and Digits steps that cut a segment into words (HF tokenizers semantics; see
// docs/tokenizer.md).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <deque>

#include "tokenizer/tokenizer-impl.h"
#include "util/error.h"

namespace distill {

using json = nlohmann::json;

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

// ---- Pre-tokenizer -------------------------------------------------------------------------

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

}  // namespace distill
