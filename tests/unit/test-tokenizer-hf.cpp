// distill — reference test: distill's tokenizer against Hugging Face `tokenizers` (Rust, through
// the Node bindings pinned in tests/node/package.json; `npm ci` there installs them).
//
// A tokenizer is trained on a corpus (DISTILL_TEST_CORPUS, or generated multilingual text),
// saved as tokenizer.json, and several pipeline variants of it (distill's own, Llama-3-style
// Split + ByteLevel, merges as pairs, ignore_merges, ...) are loaded by both libraries. Thousands
// of strings are encoded by both; ids, decoded text, and the decoding of random id sequences
// must agree exactly.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>

#include "test-tokenizer-common.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/file.h"

using namespace distill;
using namespace distill::testing_tok;
using json = nlohmann::json;

namespace {

const std::string kNodeDir = std::string(DISTILL_SOURCE_DIR) + "/tests/node";

std::string shell_quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

// Cuts `s` at a UTF-8 character boundary at or before `i`.
size_t char_boundary(const std::string& s, size_t i) {
    while (i > 0 && i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    return i;
}

std::vector<std::string> unusual_strings() {
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
std::string excerpt(const std::string& s) {
    std::string e = json(s.substr(0, 400)).dump(-1, ' ', true, json::error_handler_t::replace);
    return s.size() > 400 ? e + str_cat("... (", s.size(), " bytes)") : e;
}

struct Variant {
    std::string name;
    std::string json_text;
};

std::vector<Variant> variants(const Tokenizer& t) {
    std::vector<Variant> v;
    v.push_back({"distill", t.to_json()});
    json base = json::parse(t.to_json());

    json j = base;  // merges as ["a", "b"] pairs, ignore_merges (both as newer HF files have)
    j["model"]["merges"] = merges_as_pairs(j["model"]["merges"]);
    j["model"]["ignore_merges"] = true;
    v.push_back({"pairs+ignore_merges", j.dump()});

    auto byte_level = [](bool regex, bool prefix) {
        return json{{"type", "ByteLevel"},
                    {"add_prefix_space", prefix},
                    {"trim_offsets", true},
                    {"use_regex", regex}};
    };
    auto split = [](const std::string& re, const std::string& behavior) {
        return json{{"type", "Split"},
                    {"pattern", {{"Regex", re}}},
                    {"behavior", behavior},
                    {"invert", false}};
    };
    j = base;  // Llama-3
    j["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         {split("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
                "Isolated"),
          byte_level(false, false)}}};
    v.push_back({"llama3", j.dump()});

    j = base;  // Qwen2 (without its NFC normalizer)
    j["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         {split("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
                "Isolated"),
          byte_level(false, false)}}};
    v.push_back({"qwen2", j.dump()});

    j = base;  // the other split behaviours, a literal pattern, invert, and a prefix space
    j["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers",
                           {{{"type", "Split"},
                             {"pattern", {{"String", "\n"}}},
                             {"behavior", "MergedWithPrevious"},
                             {"invert", false}},
                            split("\\p{N}", "Contiguous"),
                            split("[.,;:!?]", "MergedWithNext"),
                            {{"type", "Split"},
                             {"pattern", {{"Regex", "\\s+"}}},
                             {"behavior", "Removed"},
                             {"invert", true}},
                            byte_level(true, true)}}};
    v.push_back({"split-behaviours+prefix", j.dump()});
    return v;
}

}  // namespace

TEST(TokenizerHF, MatchesHuggingFaceTokenizers) {
    const bool ci = std::getenv("CI") != nullptr;
    const std::string module = kNodeDir + "/node_modules/@anush008/tokenizers/package.json";
    if (!file_exists(module)) {
        if (ci) FAIL() << "CI is set but " << module << " is missing: run `npm ci` in " << kNodeDir;
        GTEST_SKIP() << "HF tokenizers for Node are not installed: run `npm ci` in " << kNodeDir;
    }
    const char* node_env = std::getenv("DISTILL_NODE");
    const std::string node = node_env && *node_env ? node_env : "node";
    if (std::system((shell_quote(node) + " --version > /dev/null 2>&1").c_str()) != 0) {
        if (ci) FAIL() << "CI is set but `" << node << "` (Node.js) does not run";
        GTEST_SKIP() << "Node.js (`" << node << "`) is not available";
    }

    std::string corpus = test_corpus(2'000'000);
    TokenizerTrainOptions opts;
    opts.vocab_size = 4096;
    Tokenizer t = Tokenizer::train(corpus, opts);

    // Requests: corpus pieces, unusual strings, random strings, invalid bytes, random ids.
    std::vector<std::string> texts = unusual_strings();
    Rng r(31337);
    for (int i = 0; i < 1600; ++i) {
        size_t a = char_boundary(corpus, r.below(corpus.size()));
        size_t len = i % 4 == 0 ? 1 + r.below(20) : 1 + r.below(600);
        size_t b = char_boundary(corpus, std::min(corpus.size(), a + len));
        std::string piece = corpus.substr(a, b - a);
        if (i % 10 == 0) piece.insert(char_boundary(piece, r.below(piece.size() + 1)), "<|eos|>");
        texts.push_back(piece);
    }
    for (int i = 0; i < 600; ++i) texts.push_back(random_utf8(r, i % 5 == 0 ? 200 : 30));
    std::vector<std::string> byte_strings;
    for (int i = 0; i < 200; ++i) {
        std::string s = random_utf8(r, 10);
        for (size_t k = 0, n = 1 + r.below(4); k < n; ++k)
            s.insert(r.below(s.size() + 1), 1, char(0x80 + r.below(0x80)));
        byte_strings.push_back(s);
    }
    std::vector<std::vector<int32_t>> id_seqs;
    for (int i = 0; i < 300; ++i) {
        std::vector<int32_t> ids;
        for (size_t k = 0, n = r.below(12); k < n; ++k)
            ids.push_back(r.chance(10)   ? int32_t(r.below(3))
                          : r.chance(50) ? int32_t(3 + 0x80 + r.below(0x80))
                                         : int32_t(r.below(t.vocab_size())));
        id_seqs.push_back(ids);
    }
    ASSERT_GE(texts.size(), 2000u);
    // And one long string: the first MB of the corpus (whitespace runs, long context).
    texts.push_back(
        corpus.substr(0, char_boundary(corpus, std::min<size_t>(corpus.size(), 1 << 20))));

    std::string dir = testing::TempDir() + "/tokenizer-hf";
    make_dirs(dir);
    std::string requests;
    for (const auto& s : texts) requests += json{{"text", s}}.dump() + "\n";
    for (const auto& s : byte_strings) {
        json bytes = json::array();
        for (unsigned char c : s) bytes.push_back(int(c));
        requests += json{{"bytes", bytes}}.dump() + "\n";
    }
    for (size_t i = 0; i < id_seqs.size(); ++i)
        requests += json{{"decode", id_seqs[i]}, {"skip", i % 2 == 1}}.dump() + "\n";
    write_file_atomic(dir + "/requests.jsonl", requests);

    for (const Variant& v : variants(t)) {
        SCOPED_TRACE("variant " + v.name);
        Tokenizer ours = Tokenizer::from_json(v.json_text);
        std::string tok_path = dir + "/" + v.name + ".json";
        write_file_atomic(tok_path, v.json_text);
        std::string out_path = dir + "/" + v.name + ".out.jsonl";
        std::string cmd = shell_quote(node) + " " + shell_quote(kNodeDir + "/hf-tokenize.mjs") +
                          " " + shell_quote(tok_path) + " " + shell_quote(dir + "/requests.jsonl") +
                          " " + shell_quote(out_path);
        ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
        std::istringstream lines(read_file(out_path));
        std::string line;
        ASSERT_TRUE(std::getline(lines, line));
        std::printf("[%s] reference: %s\n", v.name.c_str(), line.c_str());

        size_t n = 0, id_mismatch = 0, text_mismatch = 0, decode_mismatch = 0;
        auto report = [&](size_t& count, const std::string& what) {
            if (++count <= 8) ADD_FAILURE() << what;
        };
        auto check_text = [&](const std::string& in, const json& hf) {
            std::vector<int32_t> hf_ids = hf.at("ids").get<std::vector<int32_t>>();
            std::vector<int32_t> ids = ours.encode(in);
            if (ids != hf_ids)
                report(id_mismatch, "ids differ for " + excerpt(in) +
                                        "\n  distill: " + excerpt(json(ids).dump()) +
                                        "\n  HF:      " + excerpt(json(hf_ids).dump()));
            std::string hf_text = hf.at("decoded");
            std::string text = ours.decode(hf_ids);
            if (text != hf_text)
                report(text_mismatch, "decode differs for " + json(hf_ids).dump() + ": distill " +
                                          json(text).dump() + ", HF " + json(hf_text).dump());
        };
        for (const auto& s : texts) {
            ASSERT_TRUE(std::getline(lines, line));
            check_text(s, json::parse(line));
            ++n;
        }
        for (const auto& s : byte_strings) {  // invalid UTF-8: distill's lossy rule vs Node's
            ASSERT_TRUE(std::getline(lines, line));
            check_text(s, json::parse(line));
            ++n;
        }
        for (size_t i = 0; i < id_seqs.size(); ++i) {
            ASSERT_TRUE(std::getline(lines, line));
            std::string hf_text = json::parse(line).at("text");
            std::string text = ours.decode(id_seqs[i], i % 2 == 1);
            if (text != hf_text)
                report(decode_mismatch, "decode differs for " + json(id_seqs[i]).dump() +
                                            ": distill " + json(text).dump() + ", HF " +
                                            json(hf_text).dump());
            ++n;
        }
        std::printf(
            "[%s] %zu requests: %zu id mismatches, %zu text mismatches, %zu decode "
            "mismatches\n",
            v.name.c_str(), n, id_mismatch, text_mismatch, decode_mismatch);
        EXPECT_EQ(id_mismatch, 0u);
        EXPECT_EQ(text_mismatch, 0u);
        EXPECT_EQ(decode_mismatch, 0u);
    }
}
