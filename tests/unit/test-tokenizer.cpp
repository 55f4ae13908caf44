// distill — tokenizer unit tests: training, round trips, invalid UTF-8, special tokens,
// tokenizer.json save/load, hostile files. The comparison with HF tokenizers is in
// test-tokenizer-hf.cpp (label `ref`).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "test-tokenizer-common.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/file.h"
#include "test-util.h"

using namespace distill;
using namespace distill::testing_tok;
using json = nlohmann::json;

namespace {

// One trained tokenizer shared by the tests (training is the slow part).
const Tokenizer& tok() {
    static const Tokenizer t = [] {
        TokenizerTrainOptions o;
        o.vocab_size = 1024;
        return Tokenizer::train(generated_corpus(400'000), o);
    }();
    return t;
}

void expect_roundtrip(const Tokenizer& t, const std::string& s) {
    auto ids = t.encode(s);
    ASSERT_EQ(t.decode(ids), s) << "input: " << json(s).dump();
}

}  // namespace

TEST(Tokenizer, LayoutAndSpecialIds) {
    const Tokenizer& t = tok();
    EXPECT_EQ(t.vocab_size(), 1024);
    EXPECT_EQ(t.bos_id(), 0);
    EXPECT_EQ(t.eos_id(), 1);
    EXPECT_EQ(t.pad_id(), 2);
    EXPECT_TRUE(t.is_special(0));
    EXPECT_FALSE(t.is_special(3));
    EXPECT_EQ(t.id_to_token(0), "<|bos|>");
    EXPECT_EQ(t.token_to_id("<|eos|>"), 1);
    // Byte b is id 3 + b, spelled in the GPT-2 alphabet.
    EXPECT_EQ(t.id_to_token(3 + ' '), "\xC4\xA0");   // "Ġ"
    EXPECT_EQ(t.id_to_token(3 + '\n'), "\xC4\x8A");  // "Ċ"
    EXPECT_EQ(t.id_to_token(3 + 'a'), "a");
    for (int b = 0; b < 256; ++b) EXPECT_EQ(t.token_bytes(3 + b), std::string(1, char(b)));
    EXPECT_EQ(t.token_to_id("no such token"), -1);
    EXPECT_EQ(t.token_bytes(0), "<|bos|>");
    // Merges did something: common words are single tokens.
    EXPECT_EQ(t.encode(" the").size(), 1u);
    EXPECT_EQ(t.encode(" and").size(), 1u);
    EXPECT_THROW(t.id_to_token(1024), Error);
    EXPECT_THROW(t.id_to_token(-1), Error);
}

TEST(Tokenizer, TrainingIsDeterministic) {
    TokenizerTrainOptions o;
    o.vocab_size = 600;
    std::string corpus = generated_corpus(150'000, 7);
    Tokenizer a = Tokenizer::train(corpus, o);
    Tokenizer b = Tokenizer::train(corpus, o);
    EXPECT_EQ(a.to_json(), b.to_json());
    EXPECT_EQ(a.fingerprint(), b.fingerprint());
    EXPECT_EQ(a.vocab_size(), 600);
    // A different corpus gives a different tokenizer (the fingerprint can tell).
    Tokenizer c = Tokenizer::train(generated_corpus(150'000, 8), o);
    EXPECT_NE(a.fingerprint(), c.fingerprint());
}

TEST(Tokenizer, TrainingTieBreakAndMinFrequency) {
    // "ab" and "cd" both occur 3 times: the smaller pair of ids, (a, b), is merged first,
    // whatever the order of the corpus.
    TokenizerTrainOptions o;
    o.vocab_size = 3 + 256 + 10;
    for (std::string corpus : {"ab\ncd\nab\ncd\nab\ncd", "cd\ncd\ncd\nab\nab\nab"}) {
        Tokenizer t = Tokenizer::train(corpus, o);
        json j = json::parse(t.to_json());
        EXPECT_EQ(j["model"]["merges"], json({"a b", "c d"}));
        EXPECT_EQ(t.vocab_size(), 3 + 256 + 2);  // no pair left: the vocabulary stops short
    }
    o.min_frequency = 4;  // pairs seen fewer times are never merged
    EXPECT_EQ(Tokenizer::train("ab\ncd\nab\ncd\nab\ncd", o).vocab_size(), 3 + 256);
    o.min_frequency = 3;
    EXPECT_EQ(Tokenizer::train("ab\ncd\nab\ncd\nab\ncd", o).vocab_size(), 3 + 256 + 2);
}

TEST(Tokenizer, TrainingOptionErrors) {
    TokenizerTrainOptions o;
    o.vocab_size = 100;
    EXPECT_THROW(Tokenizer::train("abc", o), Error);
    o.vocab_size = 300;
    o.special_tokens = {"<a>", "<a>"};
    EXPECT_THROW(Tokenizer::train("abc", o), Error);
    o.special_tokens = {""};
    EXPECT_THROW(Tokenizer::train("abc", o), Error);
    o.special_tokens = {"\xFF"};
    EXPECT_THROW(Tokenizer::train("abc", o), Error);
}

TEST(Tokenizer, SpecialTokensInTrainingCorpusAreNotLearned) {
    TokenizerTrainOptions o;
    o.vocab_size = 3 + 256 + 50;
    std::string corpus;
    for (int i = 0; i < 200; ++i) corpus += "<|eos|>x";
    Tokenizer t = Tokenizer::train(corpus, o);
    EXPECT_EQ(t.token_to_id("<|"), -1);
    EXPECT_EQ(t.encode(corpus).size(), 400u);
}

TEST(Tokenizer, RoundTripRandomUtf8) {
    const Tokenizer& t = tok();
    Rng r(12345);
    for (int i = 0; i < 3000; ++i) expect_roundtrip(t, random_utf8(r, i % 10 == 0 ? 400 : 40));
}

TEST(Tokenizer, RoundTripFixedStrings) {
    const Tokenizer& t = tok();
    const std::vector<std::string> cases = {
        "",
        " ",
        "  ",
        "\n",
        "\n\n\n",
        " \n ",
        "\t\t x",
        "a  b   c",
        "   leading",
        "trailing   ",
        "Hello, world!",
        "It's I'm we've they're you'll he'd",
        "IT'S 'S 's's",
        "1234567890 3.14 1,000,000",
        "naïve café — “quotes” …",
        "東京は日本の首都です。",
        "مرحبا بالعالم",
        "Привет, мир!",
        "नमस्ते दुनिया",
        "👨‍👩‍👧‍👦 family, 👍🏽 thumbs, 🇫🇷 flag",
        "e\xCC\x81 (e + combining acute)",
        std::string("nul\0byte", 8),
        "\xF4\x8F\xBF\xBF max code point",
        "\xEF\xBF\xBD",
        "x\u180Ey",
        "a\u3000b\u00A0c\u2028d",
        "int main() { return 0; }\n",
        "<|bos|>",
        "<|bos|><|eos|><|pad|>",
        "a<|eos|>b",
        "<|bos",
        "<|bos|",
        "<<|bos|>>",
    };
    for (const auto& s : cases) expect_roundtrip(t, s);
}

TEST(Tokenizer, LongInputs) {
    const Tokenizer& t = tok();
    expect_roundtrip(t, std::string(1 << 20, ' '));
    expect_roundtrip(t, std::string(1 << 20, 'a'));
    expect_roundtrip(t, std::string(1 << 18, '\n') + "x");
    std::string digits;
    for (int i = 0; i < 100000; ++i) digits += char('0' + i % 10);
    expect_roundtrip(t, digits);
    std::string emoji;
    for (int i = 0; i < 50000; ++i) emoji += "\xF0\x9F\x98\x80";
    expect_roundtrip(t, emoji);
}

TEST(Tokenizer, InvalidUtf8IsReplacedLikeFromUtf8Lossy) {
    const Tokenizer& t = tok();
    const std::string R = "\xEF\xBF\xBD";  // U+FFFD
    // input -> what encode() sees (and decode(encode()) returns): each maximal invalid
    // subsequence becomes one U+FFFD, as Rust's String::from_utf8_lossy does.
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"a\xFF"
         "b",
         "a" + R + "b"},
        {"\x80", R},
        {"\xC3", R},  // truncated 2-byte
        {"\xC3(", R + "("},
        {"\xE2\x82", R},  // truncated 3-byte: one replacement
        {"\xE2\x82x", R + "x"},
        {"\xF0\x9F\x98", R},  // truncated 4-byte: one replacement
        {"\xF0\x9F\x98\xF0\x9F\x98\x80", R + "\xF0\x9F\x98\x80"},
        {"\xC0\x80", R + R},                  // overlong NUL
        {"\xE0\x80\x80", R + R + R},          // overlong: E0 needs A0..BF
        {"\xED\xA0\x80", R + R + R},          // UTF-16 surrogate
        {"\xF4\x90\x80\x80", R + R + R + R},  // above U+10FFFF
        {"\xF5\x80", R + R},
        {"\xFE\xFF", R + R},
        {"ok \xE2\x28\xA1 ok", "ok " + R + "(" + R + " ok"},
        {"<|bos|>\xFF<|eos|>", "<|bos|>" + R + "<|eos|>"},
    };
    for (const auto& [in, expect] : cases) {
        auto ids = t.encode(in);
        EXPECT_EQ(ids, t.encode(expect)) << json(expect).dump();
        EXPECT_EQ(t.decode(ids), expect) << json(expect).dump();
    }
    // Random bytes never crash and always decode to valid UTF-8.
    Rng r(99);
    for (int i = 0; i < 2000; ++i) {
        std::string s;
        size_t n = r.below(64);
        for (size_t k = 0; k < n; ++k) s += char(r.below(256));
        std::string d = t.decode(t.encode(s));
        EXPECT_EQ(t.decode(t.encode(d)), d);
    }
}

TEST(Tokenizer, DecodeInvalidBytesGivesReplacement) {
    const Tokenizer& t = tok();
    const std::string R = "\xEF\xBF\xBD";
    EXPECT_EQ(t.decode({3 + 0x80}), R);
    EXPECT_EQ(t.decode({3 + 'a', 3 + 0xE2, 3 + 0x82, 3 + 'b'}), "a" + R + "b");
    EXPECT_EQ(t.decode({3 + 0xE2, 3 + 0x82, 3 + 0xAC}), "\xE2\x82\xAC");  // euro sign in pieces
    EXPECT_EQ(t.decode({3 + 0xE2, 0, 3 + 0x82}), R + "<|bos|>" + R);
    EXPECT_THROW(t.decode({-1}), Error);
    EXPECT_THROW(t.decode({1 << 20}), Error);
    EXPECT_EQ(t.decode({}), "");
}

TEST(Tokenizer, SpecialTokensInText) {
    const Tokenizer& t = tok();
    auto ids = t.encode("<|bos|>Hello<|eos|><|pad|>");
    ASSERT_GE(ids.size(), 4u);
    EXPECT_EQ(ids.front(), 0);
    EXPECT_EQ(ids[ids.size() - 2], 1);
    EXPECT_EQ(ids.back(), 2);
    EXPECT_EQ(t.decode(ids), "<|bos|>Hello<|eos|><|pad|>");
    EXPECT_EQ(t.decode(ids, /*skip_special=*/true), "Hello");
    // Text around a special token is pre-tokenized separately, like HF does.
    auto a = t.encode("x <|eos|> y");
    std::vector<int32_t> expect = t.encode("x ");
    expect.push_back(1);
    auto tail = t.encode(" y");
    expect.insert(expect.end(), tail.begin(), tail.end());
    EXPECT_EQ(a, expect);
    // Near misses are ordinary text.
    for (const std::string s : {"<|bos", "<|bos |>", "<|BOS|>", "|bos|>"})
        for (int32_t id : t.encode(s)) EXPECT_GT(id, 2) << s;
    // Leftmost-longest among overlapping added tokens.
    TokenizerTrainOptions o;
    o.vocab_size = 300;
    o.special_tokens = {"<a>", "<a><b>", "b>"};
    Tokenizer u = Tokenizer::train("some text", o);
    EXPECT_EQ(u.encode("<a><b>"), (std::vector<int32_t>{1}));
    EXPECT_EQ(u.encode("<a>b>"), (std::vector<int32_t>{0, 2}));
}

TEST(Tokenizer, SaveLoadEquality) {
    const Tokenizer& t = tok();
    std::string path = distill::testing_util::temp_dir("tok-saveload") + "/tok.json";
    t.save(path);
    Tokenizer u = Tokenizer::load(path);
    EXPECT_EQ(u.to_json(), t.to_json());
    EXPECT_EQ(u.fingerprint(), t.fingerprint());
    EXPECT_EQ(u.vocab_size(), t.vocab_size());
    Rng r(5);
    for (int i = 0; i < 300; ++i) {
        std::string s = random_utf8(r, 60);
        EXPECT_EQ(u.encode(s), t.encode(s));
    }
    // Copies and moves keep working.
    Tokenizer c = u;
    Tokenizer m = std::move(u);
    EXPECT_EQ(c.encode("Emma Woodhouse"), t.encode("Emma Woodhouse"));
    EXPECT_EQ(m.encode("Emma Woodhouse"), t.encode("Emma Woodhouse"));
    // It is the HF layout.
    json j = json::parse(t.to_json());
    EXPECT_EQ(j["version"], "1.0");
    EXPECT_EQ(j["model"]["type"], "BPE");
    EXPECT_EQ(j["pre_tokenizer"]["type"], "ByteLevel");
    EXPECT_EQ(j["pre_tokenizer"]["add_prefix_space"], false);
    EXPECT_EQ(j["decoder"]["type"], "ByteLevel");
    EXPECT_EQ(j["added_tokens"].size(), 3u);
    EXPECT_EQ(j["added_tokens"][0]["content"], "<|bos|>");
    EXPECT_EQ(j["added_tokens"][0]["special"], true);
    EXPECT_EQ(j["model"]["vocab"].size(), 1024u);
    EXPECT_EQ(j["model"]["merges"].size(), 1024u - 259u);
    EXPECT_TRUE(j["model"]["merges"][0].is_string());
}

TEST(Tokenizer, LoadsMergesAsPairs) {
    const Tokenizer& t = tok();
    json j = json::parse(t.to_json());
    j["model"]["merges"] = merges_as_pairs(j["model"]["merges"]);
    Tokenizer u = Tokenizer::from_json(j.dump());
    EXPECT_EQ(u.fingerprint(), t.fingerprint());  // same tokenizer, whatever the spelling
    EXPECT_EQ(u.encode("Mr. Knightley, 1813"), t.encode("Mr. Knightley, 1813"));
}

TEST(Tokenizer, LlamaStyleSplitPipeline) {
    // Llama-3's pre-tokenizer: Split(regex, Isolated) then ByteLevel(use_regex = false).
    const Tokenizer& t = tok();
    json j = json::parse(t.to_json());
    j["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern",
            {{"Regex",
              "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}"
              "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"},
           {"add_prefix_space", false},
           {"trim_offsets", true},
           {"use_regex", false}}}}};
    Tokenizer u = Tokenizer::from_json(j.dump());
    // Digits come in groups of at most three; the GPT-2 regex keeps them together.
    auto cat = [](const Tokenizer& k, std::vector<std::string> parts) {
        std::vector<int32_t> ids;
        for (const auto& p : parts) {
            auto x = k.encode(p);
            ids.insert(ids.end(), x.begin(), x.end());
        }
        return ids;
    };
    EXPECT_EQ(u.encode("1234567"), cat(u, {"123", "456", "7"}));
    EXPECT_EQ(u.encode("Hello world"), cat(u, {"Hello", " world"}));
    EXPECT_EQ(u.encode("I'LL go"), cat(u, {"I", "'LL", " go"}));  // (?i:...) contractions
    EXPECT_EQ(t.encode("I'LL go"), cat(t, {"I", "'", "LL", " go"}));
    Rng r(77);
    for (int i = 0; i < 500; ++i) {
        std::string s = random_utf8(r, 50);
        ASSERT_EQ(u.decode(u.encode(s)), s);
    }
    EXPECT_NE(u.fingerprint(), t.fingerprint());
    // And it survives a save/load.
    Tokenizer v = Tokenizer::from_json(u.to_json());
    EXPECT_EQ(v.fingerprint(), u.fingerprint());
    EXPECT_EQ(v.encode("Hello 12345 world"), u.encode("Hello 12345 world"));
}

TEST(Tokenizer, ConcurrentEncode) {
    const Tokenizer& t = tok();
    std::string text = generated_corpus(100'000, 3);
    auto expect = t.encode(text);
    std::vector<std::thread> threads;
    std::vector<int> ok(4, 0);
    for (int k = 0; k < 4; ++k)
        threads.emplace_back([&, k] {
            Tokenizer copy = t;  // copies, and the shared original, both work
            ok[k] = (k % 2 ? copy.encode(text) : t.encode(text)) == expect;
        });
    for (auto& th : threads) th.join();
    for (int k = 0; k < 4; ++k) EXPECT_TRUE(ok[k]);
}

// ---- hostile files ---------------------------------------------------------------------------

namespace {

void expect_load_error(const std::string& text, const std::string& needle) {
    std::string path = distill::testing_util::temp_dir("tok-hostile") + "/hostile-tokenizer.json";
    write_file_atomic(path, text);
    try {
        Tokenizer::load(path);
        ADD_FAILURE() << "expected an error containing '" << needle << "' for "
                      << text.substr(0, 200);
    } catch (const Error& e) {
        std::string msg = e.what();
        EXPECT_NE(msg.find(path), std::string::npos) << msg;
        EXPECT_NE(msg.find(needle), std::string::npos) << "want '" << needle << "' in: " << msg;
    }
}

json good() {
    TokenizerTrainOptions o;
    o.vocab_size = 280;
    static const std::string s = Tokenizer::train("hello hello world the the the", o).to_json();
    return json::parse(s);
}

}  // namespace

TEST(Tokenizer, HostileFiles) {
    ASSERT_NO_THROW(Tokenizer::from_json(good().dump()));
    expect_load_error("", "not valid JSON");
    expect_load_error("not json at all", "not valid JSON");
    expect_load_error("{\"model\": ", "not valid JSON");
    expect_load_error(good().dump().substr(0, 500), "not valid JSON");
    expect_load_error(std::string(100000, '[') + std::string(100000, ']'), "must be an object");
    expect_load_error("[]", "must be an object");
    expect_load_error("{}", "missing field \"model\"");
    expect_load_error("\"\xFF\"", "not valid JSON");

    auto with = [](auto edit) {
        json j = good();
        edit(j);
        return j.dump();
    };
    expect_load_error(with([](json& j) { j["model"] = 3; }), "model: must be an object");
    expect_load_error(with([](json& j) { j["model"].erase("vocab"); }), "missing field \"vocab\"");
    expect_load_error(with([](json& j) { j["model"]["vocab"] = json::array(); }), "model.vocab");
    expect_load_error(with([](json& j) { j["model"]["vocab"]["a"] = "7"; }), "must be an integer");
    expect_load_error(with([](json& j) { j["model"]["vocab"]["zz"] = -1; }), "out of range");
    expect_load_error(with([](json& j) { j["model"]["vocab"]["zz"] = 1e15; }),
                      "must be an integer");
    expect_load_error(with([](json& j) { j["model"]["vocab"]["zz"] = 4000000000ull; }),
                      "out of range");
    expect_load_error(with([](json& j) { j["model"]["vocab"]["zz"] = 1LL << 40; }), "out of range");
    expect_load_error(with([](json& j) { j["model"]["vocab"]["zz"] = 5; }), "duplicate id 5");
    expect_load_error(with([](json& j) { j["model"]["merges"].push_back("nope h"); }),
                      "token \"nope\" is not in the vocabulary");
    expect_load_error(with([](json& j) { j["model"]["merges"].push_back("h nope"); }),
                      "token \"nope\" is not in the vocabulary");
    expect_load_error(with([](json& j) { j["model"]["merges"].push_back("z q"); }),
                      "merged token \"zq\" is not in the vocabulary");
    expect_load_error(with([](json& j) { j["model"]["merges"].push_back("abc"); }),
                      "two tokens separated by one space");
    expect_load_error(with([](json& j) { j["model"]["merges"].push_back(42); }),
                      "must be a string \"a b\" or a pair");
    expect_load_error(with([](json& j) {
                          j["model"]["merges"].push_back({"h", 1});
                      }),
                      "must be a string");
    expect_load_error(with([](json& j) { j["model"]["merges"] = "h e"; }),
                      "model.merges: must be an array");
    expect_load_error(with([](json& j) { j["model"]["type"] = "WordPiece"; }), "not supported");
    expect_load_error(with([](json& j) { j["model"]["dropout"] = 0.1; }), "dropout");
    expect_load_error(with([](json& j) { j["model"]["byte_fallback"] = 1; }), "must be a boolean");
    expect_load_error(with([](json& j) { j["model"]["unk_token"] = "<unk>"; }),
                      "unk_token \"<unk>\" is not in the vocabulary");
    expect_load_error(with([](json& j) { j["added_tokens"] = 5; }),
                      "added_tokens: must be an array");
    expect_load_error(with([](json& j) { j["added_tokens"][0].erase("content"); }),
                      "missing field \"content\"");
    expect_load_error(with([](json& j) { j["added_tokens"][0]["content"] = ""; }),
                      "must not be empty");
    expect_load_error(with([](json& j) { j["added_tokens"][0]["id"] = 7; }),
                      "the vocabulary gives it id 0");
    expect_load_error(with([](json& j) {
                          j["added_tokens"].push_back({{"id", 7}, {"content", "<new>"}});
                      }),
                      "duplicate id 7");
    expect_load_error(with([](json& j) {
                          j["added_tokens"].push_back({{"id", 100000}, {"content", "<new>"}});
                      }),
                      "out of range");
    expect_load_error(with([](json& j) { j["added_tokens"][1]["content"] = "<|bos|>"; }),
                      "listed twice");
    expect_load_error(with([](json& j) { j["added_tokens"][0]["special"] = "yes"; }),
                      "must be a boolean");
    expect_load_error(with([](json& j) { j["added_tokens"][0]["id"] = nullptr; }),
                      "must be an integer");
    expect_load_error(with([](json& j) {
                          j["pre_tokenizer"] = {{"type", "Metaspace"}};
                      }),
                      "missing field \"replacement\"");
    expect_load_error(with([](json& j) {
                          j["pre_tokenizer"] = {{"type", "Metaspace"},
                                                {"replacement", "▁"},
                                                {"prepend_scheme", "sometimes"}};
                      }),
                      "unknown prepend scheme");
    expect_load_error(with([](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }),
                      "pre-tokenizer type \"Whitespace\" is not supported");
    expect_load_error(with([](json& j) {
                          j["pre_tokenizer"] = {{"kind", "ByteLevel"}};
                      }),
                      "missing field \"type\"");
    expect_load_error(with([](json& j) {
                          j["pre_tokenizer"] = {{"type", "Split"},
                                                {"pattern", {{"Regex", "(unclosed"}}},
                                                {"behavior", "Isolated"}};
                      }),
                      "cannot compile the regex");
    expect_load_error(with([](json& j) {
                          j["pre_tokenizer"] = {{"type", "Split"},
                                                {"pattern", {{"Regex", "x"}}},
                                                {"behavior", "Sideways"}};
                      }),
                      "unknown split behavior");
    expect_load_error(with([](json& j) { j["normalizer"] = {{"type", "Precompiled"}}; }),
                      "normalizer type \"Precompiled\" is not supported");
    expect_load_error(with([](json& j) {
                          j["normalizer"] = {{"type", "Sequence"},
                                             {"normalizers", {{{"type", "BertNormalizer"}}}}};
                      }),
                      "normalizer.normalizers[0]: normalizer type \"BertNormalizer\"");
    expect_load_error(with([](json& j) {
                          j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", "a"}}}};
                      }),
                      "missing field \"content\"");
    expect_load_error(with([](json& j) {
                          j["decoder"] = {{"type", "WordPiece"}};
                      }),
                      "not supported");
    expect_load_error(with([](json& j) {
                          j["decoder"] = {{"type", "Strip"}, {"content", "ab"}, {"start", 1},
                                          {"stop", 0}};
                      }),
                      "decoder.content: must be exactly one character");
    expect_load_error(with([](json& j) { j["decoder"] = {{"type", "CTC"}}; }),
                      "decoder type \"CTC\" is not supported");

    // A file that does not exist names the path too.
    try {
        Tokenizer::load(distill::testing_util::temp_dir("tok-missing") + "/does-not-exist.json");
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("does-not-exist.json"), std::string::npos);
    }
    // Random corruption of a good file: an error or a tokenizer, never a crash.
    std::string base = good().dump();
    Rng r(2024);
    for (int i = 0; i < 300; ++i) {
        std::string s = base;
        for (int k = 0; k < 3; ++k) s[r.below(s.size())] = char(r.below(256));
        try {
            Tokenizer u = Tokenizer::from_json(s);
            (void)u.decode(u.encode("hello world"));
        } catch (const Error&) {
        }
    }
}

TEST(Tokenizer, Speed) {
    // Not a benchmark (see docs/tokenizer.md for the numbers); guards against a quadratic path.
    const Tokenizer& t = tok();
    std::string text = generated_corpus(2'000'000, 11);
    auto t0 = std::chrono::steady_clock::now();
    auto ids = t.encode(text);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("encode: %.1f MB/s (%zu bytes -> %zu tokens)\n", text.size() / s / 1e6, text.size(),
                ids.size());
    EXPECT_LT(s, 10.0);
    EXPECT_EQ(t.decode(ids), text);
}
