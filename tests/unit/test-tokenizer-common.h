// distill — test helpers for the tokenizer tests: a deterministic corpus and string generators.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>
#include <nlohmann/json.hpp>
#include <vector>

#include "util/file.h"

namespace distill::testing_tok {

// SplitMix64: the same numbers on every platform (std distributions are not portable).
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed) {}
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    uint64_t below(uint64_t n) { return n ? next() % n : 0; }
    bool chance(int percent) { return below(100) < uint64_t(percent); }
};

inline void append_cp(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += char(cp);
    } else if (cp < 0x800) {
        out += char(0xC0 | (cp >> 6));
        out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += char(0xE0 | (cp >> 12));
        out += char(0x80 | ((cp >> 6) & 0x3F));
        out += char(0x80 | (cp & 0x3F));
    } else {
        out += char(0xF0 | (cp >> 18));
        out += char(0x80 | ((cp >> 12) & 0x3F));
        out += char(0x80 | ((cp >> 6) & 0x3F));
        out += char(0x80 | (cp & 0x3F));
    }
}

// Words in several scripts; the generated corpus mixes them with English-like prose.
inline const std::vector<std::string>& corpus_words() {
    static const std::vector<std::string> w = {
        "the",        "of",
        "and",        "to",
        "a",          "in",
        "was",        "her",
        "it",         "I",
        "that",       "not",
        "be",         "as",
        "she",        "had",
        "you",        "his",
        "with",       "for",
        "he",         "but",
        "have",       "is",
        "at",         "so",
        "all",        "could",
        "would",      "been",
        "very",       "Mr.",
        "Mrs.",       "Miss",
        "Emma",       "Harriet",
        "Elizabeth",  "Darcy",
        "Bennet",     "Knightley",
        "Elinor",     "Marianne",
        "Anne",       "Wentworth",
        "Catherine",  "must",
        "such",       "much",
        "every",      "which",
        "there",      "they",
        "were",       "more",
        "than",       "only",
        "think",      "nothing",
        "little",     "great",
        "good",       "herself",
        "himself",    "always",
        "never",      "however",
        "happiness",  "acquaintance",
        "attachment", "agreeable",
        "sensible",   "family",
        "sister",     "brother",
        "mother",     "father",
        "daughter",   "letter",
        "house",      "moment",
        "time",       "don't",
        "I'm",        "we've",
        "they're",    "you'll",
        "he'd",       "it's",
        "can't",      "won't",
        "1811",       "1813",
        "42",         "3.14159",
        "10,000",     "2024-01-31",
        "£5,000",     "50%",
        "#1",         "Москва",
        "любовь",     "письмо",
        "сестра",     "Αθήνα",
        "καλημέρα",   "東京",
        "日本語",     "学生",
        "北京",       "中文",
        "العربية",    "مرحبا",
        "كتاب",       "हिन्दी",
        "नमस्ते",       "भारत",
        "한국어",     "안녕하세요",
        "ประเทศไทย",  "עברית",
        "Ελληνικά",   "café",
        "naïve",      "façade",
        "über",       "straße",
        "cœur",       "😀",
        "👍🏽",   "👨‍👩‍👧‍👦",
        "🇫🇷",         "∑x²",
        "→",          "—",
        "…",          "“quoted”",
    };
    return w;
}

// A deterministic multilingual corpus of about `bytes` bytes.
inline std::string generated_corpus(size_t bytes, uint64_t seed = 1) {
    const auto& words = corpus_words();
    Rng r(seed);
    std::string out;
    out.reserve(bytes + 256);
    while (out.size() < bytes) {
        size_t n = 3 + r.below(18);
        for (size_t i = 0; i < n; ++i) {
            // Zipf-like: small indices much more often.
            size_t k = size_t(r.below(words.size()) * r.below(words.size()) / words.size());
            std::string w = words[k];
            if (r.chance(12)) {  // a made-up word, so that the vocabulary keeps growing
                static const char* kSyl[] = {"ka", "ro",  "mi",  "sen", "tu",  "bel", "ar", "wy",
                                             "do", "qua", "lin", "ez",  "pha", "gor", "ul", "ni"};
                w.clear();
                for (size_t s = 1 + r.below(4); s > 0; --s) w += kSyl[r.below(16)];
            }
            if (i == 0 && w[0] >= 'a' && w[0] <= 'z') w[0] = char(w[0] - 'a' + 'A');
            out += w;
            if (i + 1 < n) out += r.chance(8) ? ", " : " ";
        }
        out += r.chance(20) ? "!" : r.chance(20) ? "?" : ".";
        out += r.chance(15) ? "\n\n" : r.chance(10) ? "\n" : "  ";
    }
    return out;
}

// The corpus for tests: DISTILL_TEST_CORPUS (a UTF-8 text file) if set, else generated text.
inline std::string test_corpus(size_t generated_bytes) {
    if (const char* p = std::getenv("DISTILL_TEST_CORPUS"); p && *p) return read_file(p);
    return generated_corpus(generated_bytes);
}

// A random valid UTF-8 string: every plane, combining marks, emoji (ZWJ, modifiers, flags),
// whitespace of all kinds, digits, punctuation, control characters.
inline std::string random_utf8(Rng& r, size_t max_chars) {
    static const uint32_t kSpaces[] = {0x20,   0x09,   0x0A,   0x0D,   0x0B,   0x0C,   0x85,
                                       0xA0,   0x1680, 0x180E, 0x2000, 0x2007, 0x200B, 0x2028,
                                       0x2029, 0x202F, 0x205F, 0x3000, 0xFEFF};
    std::string s;
    size_t n = r.below(max_chars + 1);
    for (size_t i = 0; i < n; ++i) {
        uint32_t cp;
        switch (r.below(12)) {
            case 0:
                cp = 0x20 + uint32_t(r.below(0x5F));
                break;  // ASCII
            case 1:
                cp = 'a' + uint32_t(r.below(26));
                break;
            case 2:
                cp = kSpaces[r.below(sizeof kSpaces / sizeof kSpaces[0])];
                break;
            case 3:
                cp = 0x300 + uint32_t(r.below(0x70));
                break;  // combining
            case 4:
                cp = 0x80 + uint32_t(r.below(0x780));
                break;  // 2-byte
            case 5:
                cp = 0x4E00 + uint32_t(r.below(0x5000));
                break;  // CJK
            case 6:
                cp = 0x1F300 + uint32_t(r.below(0x300));
                break;  // emoji
            case 7:
                cp = r.chance(50) ? 0x200D : 0xFE0F;
                break;  // ZWJ, VS16
            case 8:
                cp = '0' + uint32_t(r.below(10));
                break;
            case 9:
                cp = uint32_t(r.below(0x20));
                break;  // controls
            case 10:
                cp = 0x800 + uint32_t(r.below(0xF800));
                break;  // BMP
            default:
                cp = 0x10000 + uint32_t(r.below(0x100000));
                break;  // planes 1-16
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
        append_cp(s, cp);
        if (r.chance(5)) s.append(r.below(12), r.chance(50) ? ' ' : '\n');  // whitespace runs
    }
    return s;
}

// A tokenizer.json's merges rewritten from "a b" strings to ["a", "b"] pairs (newer HF files).
inline nlohmann::json merges_as_pairs(const nlohmann::json& merges) {
    nlohmann::json pairs = nlohmann::json::array();
    for (const auto& m : merges) {
        std::string s = m;
        size_t sp = s.find(' ');
        pairs.push_back({s.substr(0, sp), s.substr(sp + 1)});
    }
    return pairs;
}

}  // namespace distill::testing_tok
