// distill — added (special) tokens: the matching tables and HF's AddedVocabulary::find_matches
// (leftmost-longest, then single_word, lstrip, rstrip). encode() in tokenizer.cpp uses them.
#include <algorithm>

#include "tokenizer/tokenizer-impl.h"

namespace distill {

void Tokenizer::Impl::build_added_tables() {
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

}  // namespace distill
