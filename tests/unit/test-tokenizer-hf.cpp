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

#include "test-tokenizer-common.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/file.h"
#include "test-util.h"

using namespace distill;
using namespace distill::testing_tok;
using json = nlohmann::json;

namespace {

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
    std::string why;
    const std::string node = hf_node(why);
    if (node.empty()) {
        if (std::getenv("CI")) FAIL() << "CI is set but " << why;
        GTEST_SKIP() << why;
    }

    std::string corpus = test_corpus(2'000'000);
    TokenizerTrainOptions opts;
    opts.vocab_size = 4096;
    Tokenizer t = Tokenizer::train(corpus, opts);

    // Requests: corpus pieces, unusual strings, random strings, invalid bytes, random ids.
    HfRequests req;
    std::vector<std::string>& texts = req.texts;
    texts = unusual_strings();
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
    req.byte_strings = invalid_utf8_strings(r, 200);
    for (int i = 0; i < 300; ++i) {
        std::vector<int32_t> ids;
        for (size_t k = 0, n = r.below(12); k < n; ++k)
            ids.push_back(r.chance(10)   ? int32_t(r.below(3))
                          : r.chance(50) ? int32_t(3 + 0x80 + r.below(0x80))
                                         : int32_t(r.below(t.vocab_size())));
        req.id_seqs.push_back(ids);
    }
    ASSERT_GE(texts.size(), 2000u);
    // And one long string: the first MB of the corpus (whitespace runs, long context).
    texts.push_back(
        corpus.substr(0, char_boundary(corpus, std::min<size_t>(corpus.size(), 1 << 20))));

    std::string dir = distill::testing_util::temp_dir("tokenizer-hf");
    make_dirs(dir);
    write_requests(dir + "/requests.jsonl", req);

    for (const Variant& v : variants(t)) {
        SCOPED_TRACE("variant " + v.name);
        Tokenizer ours = Tokenizer::from_json(v.json_text);
        std::string tok_path = dir + "/" + v.name + ".json";
        write_file_atomic(tok_path, v.json_text);
        HfCounts c = compare_with_hf(ours, node, tok_path, dir + "/requests.jsonl",
                                     dir + "/" + v.name + ".out.jsonl", req, v.name);
        EXPECT_EQ(c.id_mismatch, 0u);
        EXPECT_EQ(c.text_mismatch, 0u);
        EXPECT_EQ(c.decode_mismatch, 0u);
    }
}
