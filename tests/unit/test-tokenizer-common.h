// distill — test helpers for the tokenizer tests: a deterministic corpus and string generators.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "test-util.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
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

// The corpus for tests: DISTILL_TEST_CORPUS or <build>/austen.txt (testing_util::test_corpus_path),
// else generated text.
inline std::string test_corpus(size_t generated_bytes) {
    if (const std::string p = testing_util::test_corpus_path(); !p.empty()) return read_file(p);
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

// ---- Comparing with HF tokenizers (tests/node/hf-tokenize.mjs) ------------------------------

inline const std::string kNodeDir = std::string(DISTILL_SOURCE_DIR) + "/tests/node";

inline std::string shell_quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

// Cuts `s` at a UTF-8 character boundary at or before `i`.
inline size_t char_boundary(const std::string& s, size_t i) {
    while (i > 0 && i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    return i;
}

inline std::vector<std::string> unusual_strings() {
    return {
        "",
        " ",
        "  ",
        "   ",
        "\n",
        "\n\n",
        " \n",
        "\n ",
        "\t",
        " \t\n ",
        "\r\n",
        "\r\n\r\n  x",
        "a  b",
        "a   b",
        "a \n b",
        "trailing space ",
        "trailing spaces   ",
        "   leading",
        "Hello, world!",
        "It's I'm we've they're you'll he'd IT'S I'LL 'S",
        "'s's's''",
        "don''t",
        "0",
        "12",
        "123",
        "1234",
        "12345678901234567890",
        "3.14159",
        "1,000,000",
        "v1.2.3-rc4",
        "2024-01-31T12:00:00Z",
        "$100.00 or €85,50 or ¥1000",
        "50% off!!!",
        "#hashtag @user",
        "東京は日本の首都です。",
        "我爱北京天安门",
        "日本語のテキスト、カタカナ、ひらがな",
        "한국어 문장입니다.",
        "مرحبا بالعالم، كيف حالك؟",
        "שלום עולם",
        "Привет, мир! Как дела?",
        "Съешь же ещё этих мягких французских булок",
        "नमस्ते दुनिया, आप कैसे हैं?",
        "ประเทศไทย ภาษาไทย",
        "Ελληνικά: καλημέρα κόσμε",
        "ქართული ენა",
        "Հայերեն",
        "👨‍👩‍👧‍👦👨‍👩‍👧‍👦",
        "👍🏽👍🏿 🇫🇷🇩🇪🇯🇵",
        "🏳️‍🌈 ❤️‍🔥 🧑🏽‍💻",
        "😀😃😄 text 😁",
        "e\xCC\x81\xCC\x82\xCC\x83 combining",
        "Z\xCD\x91\xCD\x97\xCC\x8A\xCC\x81"
        "algo",
        "ﬁ ligature",
        "Ａｂｃ１２３ fullwidth",
        "\xE2\x80\x8B zero width \xE2\x80\x8C\xE2\x80\x8D",
        "nbsp\xC2\xA0here",
        "ideographic\xE3\x80\x80space",
        "line\xE2\x80\xA8sep",
        "mongolian\xE1\xA0\x8Evowel sep",
        "nel\xC2\x85"
        "char",
        "\xEF\xBB\xBF"
        "bom",
        "tab\tsep\tvalues\t1\t2",
        "\x01\x02\x03 controls \x7F",
        "int main(void) {\n    return 0;\n}\n",
        "def f(x):\n\treturn x ** 2  # square\n",
        "if (a && b || !c) { x += 1; } else { y -= 2; }",
        "<html><body class=\"x\">Hi &amp; bye</body></html>",
        "SELECT * FROM t WHERE id = 42;",
        "https://example.com/path?q=1&r=2#frag",
        "user@example.com",
        "C:\\Windows\\System32",
        "<|bos|>",
        "<|eos|>",
        "<|pad|>",
        "<|bos|>Hello<|eos|>",
        "<|bos|><|bos|><|eos|>",
        "text <|eos|> more text",
        "a<|pad|>b",
        "<|bos",
        "<|bos|",
        "|bos|>",
        "<<|bos|>>",
        "<|BOS|>",
        " <|eos|> ",
        "\n<|eos|>\n",
        "<|eos|>123<|eos|>",
        "x<|eos|>'s",
        "\xF4\x8F\xBF\xBF",
        "\xF0\x90\x80\x80 plane 1",
        "\xF3\xA0\x80\x81 tag",
        "\xEF\xBF\xBD",
        "\xEF\xBF\xBF noncharacter",
        "𝕳𝖊𝖑𝖑𝖔 math letters",
        "𝟏𝟐𝟑 math digits",
        "Ⅻ roman",
        "½ ¼ ² ³ fractions",
        "٣٤٥ arabic digits",
        "१२३ devanagari digits",
    };
}

// A printable, bounded rendering of a string for failure messages.
inline std::string excerpt(const std::string& s) {
    std::string e = nlohmann::json(s.substr(0, 400)).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
    return s.size() > 400 ? e + str_cat("... (", s.size(), " bytes)") : e;
}

// Random strings with 1 to 4 bytes that are not UTF-8 inserted (HF sees them as Node's WHATWG
// decoder does: U+FFFD for each maximal invalid subsequence).
inline std::vector<std::string> invalid_utf8_strings(Rng& r, int n) {
    std::vector<std::string> out;
    for (int i = 0; i < n; ++i) {
        std::string s = random_utf8(r, 10);
        for (size_t k = 0, m = 1 + r.below(4); k < m; ++k)
            s.insert(r.below(s.size() + 1), 1, char(0x80 + r.below(0x80)));
        out.push_back(s);
    }
    return out;
}

// The `node` binary (DISTILL_NODE or node), or "" with `why` set if it or the HF bindings are
// missing.
inline std::string hf_node(std::string& why) {
    const std::string module = kNodeDir + "/node_modules/@anush008/tokenizers/package.json";
    if (!file_exists(module)) {
        why = module + " is missing: run `npm ci` in " + kNodeDir + " (or scripts/setup.sh --tests)";
        return "";
    }
    const char* node_env = std::getenv("DISTILL_NODE");
    const std::string node = node_env && *node_env ? node_env : "node";
    if (std::system((shell_quote(node) + " --version > /dev/null 2>&1").c_str()) != 0) {
        why = "`" + node + "` (Node.js) does not run; set DISTILL_NODE";
        return "";
    }
    return node;
}

// Texts to encode, byte strings (may be invalid UTF-8) to encode, id sequences to decode (the
// odd ones with skip_special).
struct HfRequests {
    std::vector<std::string> texts, byte_strings;
    std::vector<std::vector<int32_t>> id_seqs;
};

inline void write_requests(const std::string& path, const HfRequests& req) {
    using nlohmann::json;
    std::string out;
    for (const auto& s : req.texts) out += json{{"text", s}}.dump() + "\n";
    for (const auto& s : req.byte_strings) {
        json bytes = json::array();
        for (unsigned char c : s) bytes.push_back(int(c));
        out += json{{"bytes", bytes}}.dump() + "\n";
    }
    for (size_t i = 0; i < req.id_seqs.size(); ++i)
        out += json{{"decode", req.id_seqs[i]}, {"skip", i % 2 == 1}}.dump() + "\n";
    write_file_atomic(path, out);
}

struct HfCounts {
    size_t n = 0, id_mismatch = 0, text_mismatch = 0, decode_mismatch = 0;
};

// Runs HF on `req` with the tokenizer file `tok_path` and compares with `ours`: the ids of each
// text, our decode of HF's ids against HF's, and the decodes of the id sequences. Reports the
// first few mismatches as failures and prints the counts.
inline HfCounts compare_with_hf(const Tokenizer& ours, const std::string& node,
                                const std::string& tok_path, const std::string& req_path,
                                const std::string& out_path, const HfRequests& req,
                                const std::string& name) {
    using nlohmann::json;
    HfCounts c;
    std::string cmd = shell_quote(node) + " " + shell_quote(kNodeDir + "/hf-tokenize.mjs") + " " +
                      shell_quote(tok_path) + " " + shell_quote(req_path) + " " +
                      shell_quote(out_path);
    if (std::system(cmd.c_str()) != 0) {
        ADD_FAILURE() << "failed: " << cmd;
        c.id_mismatch = 1;
        return c;
    }
    std::istringstream lines(read_file(out_path));
    std::string line;
    std::getline(lines, line);
    std::printf("[%s] reference: %s\n", name.c_str(), line.c_str());
    auto report = [&](size_t& count, const std::string& what) {
        if (++count <= 8) ADD_FAILURE() << "[" << name << "] " << what;
    };
    auto next = [&]() {
        if (!std::getline(lines, line)) throw Error("hf-tokenize.mjs: too few output lines");
        return json::parse(line);
    };
    auto check_text = [&](const std::string& in, const json& hf) {
        std::vector<int32_t> hf_ids = hf.at("ids").get<std::vector<int32_t>>();
        std::vector<int32_t> ids = ours.encode(in);
        if (ids != hf_ids)
            report(c.id_mismatch, "ids differ for " + excerpt(in) + "\n  distill: " +
                                      excerpt(json(ids).dump()) +
                                      "\n  HF:      " + excerpt(json(hf_ids).dump()));
        std::string hf_text = hf.at("decoded");
        std::string text = ours.decode(hf_ids);
        if (text != hf_text)
            report(c.text_mismatch, "decode differs for " + json(hf_ids).dump() + ": distill " +
                                        excerpt(text) + ", HF " + excerpt(hf_text));
        ++c.n;
    };
    for (const auto& s : req.texts) check_text(s, next());
    for (const auto& s : req.byte_strings) check_text(s, next());
    for (size_t i = 0; i < req.id_seqs.size(); ++i) {
        std::string hf_text = next().at("text");
        std::string text = ours.decode(req.id_seqs[i], i % 2 == 1);
        if (text != hf_text)
            report(c.decode_mismatch, "decode differs for " + json(req.id_seqs[i]).dump() +
                                          ": distill " + excerpt(text) + ", HF " +
                                          excerpt(hf_text));
        ++c.n;
    }
    std::printf("[%s] %zu requests: %zu id mismatches, %zu text mismatches, %zu decode "
                "mismatches\n",
                name.c_str(), c.n, c.id_mismatch, c.text_mismatch, c.decode_mismatch);
    return c;
}

}  // namespace distill::testing_tok
