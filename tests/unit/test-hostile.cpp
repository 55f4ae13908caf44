// Hostile files for every reader: each must give distill::Error with a message that says what is
// wrong — never a crash, another exception type or a huge allocation. Inputs are built by hand
// from the documented formats (or by mutating a valid file), not by our writers' quirks.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <unistd.h>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/logit-cache.h"
#include "io/safetensors-header.h"
#include "io/safetensors.h"
#include "io/shards.h"
#include "test-util.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/file.h"

using namespace distill;
using distill::testing_util::safetensors_bytes;
using nlohmann::json;

namespace {

// Runs f, which must throw distill::Error whose message contains `needle`.
template <typename F>
void expect_error(F&& f, const std::string& needle, const std::string& what = "") {
    try {
        f();
        ADD_FAILURE() << what << ": expected an Error containing '" << needle << "'";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
            << what << ": the message does not say '" << needle << "': " << e.what();
    }
}

std::string u64le(uint64_t n) {
    return std::string(reinterpret_cast<const char*>(&n), 8);
}

// A safetensors file: u64 header length, header, `data_bytes` zero bytes.
void st_error(const std::string& bytes, const std::string& needle) {
    expect_error(
        [&] {
            parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                     "t.safetensors");
        },
        needle, bytes.substr(8, 200));
}

const char* kTwoTensors =
    R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
    R"("b":{"dtype":"I64","shape":[2],"data_offsets":[24,40]}})";

}  // namespace

TEST(HostileSafetensors, ValidFileParses) {
    const std::string f = safetensors_bytes(kTwoTensors, 40);
    auto h = parse_safetensors_header(reinterpret_cast<const uint8_t*>(f.data()), f.size(), "t");
    ASSERT_EQ(h.entries.size(), 2u);
    EXPECT_EQ(h.entries.at("a").shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(h.entries.at("b").begin, 24u);
    EXPECT_EQ(h.metadata.at("format"), "pt");
    EXPECT_EQ(h.data_offset, 8 + std::strlen(kTwoTensors));
}

TEST(HostileSafetensors, TruncatedAtEveryOffset) {
    const std::string f = safetensors_bytes(kTwoTensors, 40);
    for (size_t n = 0; n < f.size(); ++n) {
        const std::string cut = f.substr(0, n);
        const std::string needle = n < 8                           ? "truncated"
                                   : n < 8 + std::strlen(kTwoTensors) ? "header length"
                                                                    : "outside";
        expect_error(
            [&] {
                parse_safetensors_header(reinterpret_cast<const uint8_t*>(cut.data()), cut.size(),
                                         "t");
            },
            needle, "cut at " + std::to_string(n));
    }
}

TEST(HostileSafetensors, TruncatedFileOnDisk) {
    const std::string path = distill::testing_util::temp_dir("hostile-st") + "/hostile.safetensors";
    const std::string f = safetensors_bytes(kTwoTensors, 40);
    for (size_t n : {size_t(0), size_t(5), size_t(20), f.size() - 1}) {
        write_file_atomic(path, f.substr(0, n));
        expect_error([&] { SafetensorsFile s(path); }, path, "cut at " + std::to_string(n));
    }
}

TEST(HostileSafetensors, HeaderLength) {
    st_error(u64le(~uint64_t(0)) + "{}", "header length");
    st_error(u64le(uint64_t(1) << 63) + "{}", "header length");
    // Larger than the 100 MB cap even though "the file" (the buffer) would hold it: no allocation
    // of the claimed size happens, the length is refused first.
    std::string big = u64le(kSafetensorsMaxHeader + 1) + "{}";
    big.resize(big.size() + 64, ' ');
    st_error(big, "header length");
}

TEST(HostileSafetensors, NotJsonOrNotAnObject) {
    st_error(safetensors_bytes("{not json", 0), "not valid JSON");
    st_error(safetensors_bytes("", 0), "not valid JSON");
    st_error(safetensors_bytes("[1,2,3]", 0), "not a JSON object");
    st_error(safetensors_bytes("42", 0), "not a JSON object");
    st_error(safetensors_bytes(R"("a string")", 0), "not a JSON object");
    st_error(safetensors_bytes("null", 0), "not a JSON object");
    st_error(safetensors_bytes("{\"a\":\"\xff\"}", 0), "not valid JSON");  // invalid UTF-8
}

TEST(HostileSafetensors, DuplicateKeys) {
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                     R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                     8),
             "\"a\" twice");
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","dtype":"I32","shape":[1],"data_offsets":[0,4]}})", 4),
             "\"dtype\" twice");
}

TEST(HostileSafetensors, BadEntries) {
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "data_offsets");
    st_error(safetensors_bytes(R"({"a":[1,2]})", 8), "needs dtype, shape and data_offsets");
    st_error(safetensors_bytes(R"({"a":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", 8), "needs dtype");
    st_error(safetensors_bytes(R"({"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}})", 8),
             "unsupported dtype Q9");
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", 8),
             "data_offsets");
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8),
             "invalid data_offsets");
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0.0,8.0]}})", 8),
             "invalid data_offsets");
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "outside");
    st_error(safetensors_bytes(R"({"__metadata__":["x"]})", 0), "__metadata__ is not a JSON object");
    st_error(safetensors_bytes(R"({"__metadata__":{"n":1}})", 0), "value of 'n' is not a string");
}

TEST(HostileSafetensors, Shapes) {
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "negative");
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
             "non-integer");
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8),
             "non-integer");
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],)"
                     R"("data_offsets":[0,8]}})",
                     8),
             "overflow");
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})",
                     8),
             "overflow");
    // Product fits 64 bits but times the dtype size does not.
    st_error(safetensors_bytes(R"({"a":{"dtype":"F64","shape":[1152921504606846976],"data_offsets":[0,8]}})",
                     8),
             "need more than 2^60");
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
             "has 8 bytes but its shape and dtype need 12");
}

TEST(HostileSafetensors, LayoutOfTheDataSection) {
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                     12),
             "overlaps");
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                     8),
             "overlaps");
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                     20),
             "hole [8, 12)");
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12), "hole [0, 4)");
    st_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 9),
             "1 bytes after the last tensor");
    // Allowed: empty tensors anywhere, tensors in any order in the header.
    const std::string ok = safetensors_bytes(R"({"z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                   R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},)"
                                   R"("a":{"dtype":"U8","shape":[],"data_offsets":[4,5]}})",
                                   5);
    EXPECT_EQ(parse_safetensors_header(reinterpret_cast<const uint8_t*>(ok.data()), ok.size(), "t")
                  .entries.size(),
              3u);
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json, through the public API only (from_json, encode, decode).

namespace {

// A small valid byte-level BPE tokenizer.json, as json to mutate.
json base_tokenizer() {
    TokenizerTrainOptions opt;
    opt.vocab_size = 280;
    opt.min_frequency = 1;
    static const json j = json::parse(
        Tokenizer::train("the cat sat on the mat; the hat is on the cat. ", opt).to_json());
    return j;
}

// The base tokenizer with a Split(regex) + ByteLevel pre-tokenizer, as Qwen's and Llama 3's.
json with_split_regex(const std::string& re) {
    json j = base_tokenizer();
    j["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers",
                           {{{"type", "Split"},
                             {"pattern", {{"Regex", re}}},
                             {"behavior", "Isolated"},
                             {"invert", false}},
                            {{"type", "ByteLevel"},
                             {"add_prefix_space", false},
                             {"trim_offsets", false},
                             {"use_regex", false}}}}};
    return j;
}

void tok_error(const json& j, const std::string& needle, const std::string& what) {
    expect_error([&] { Tokenizer::from_json(j.dump()); }, needle, what);
}

}  // namespace

TEST(HostileTokenizer, BaseLoads) {
    Tokenizer t = Tokenizer::from_json(base_tokenizer().dump());
    EXPECT_EQ(t.decode(t.encode("the cat")), "the cat");
}

TEST(HostileTokenizer, MalformedJson) {
    for (const char* s : {"", "{", "{\"model\":", "[]", "null", "42", "\"x\"", "{\"model\":{}} x"})
        expect_error([&] { Tokenizer::from_json(s); }, "cannot load", s);
    std::string text = base_tokenizer().dump();
    for (size_t n : {size_t(1), text.size() / 3, text.size() / 2, text.size() - 1})
        expect_error([&] { Tokenizer::from_json(text.substr(0, n)); }, "not valid JSON",
                     "cut at " + std::to_string(n));
}

TEST(HostileTokenizer, WrongTypes) {
    json j = base_tokenizer();
    j["model"] = 3;
    tok_error(j, "model", "model is a number");
    j = base_tokenizer();
    j["model"]["vocab"] = json::array({"a", "b"});
    tok_error(j, "model.vocab", "vocab is an array");
    j = base_tokenizer();
    j["model"]["merges"] = json::object();
    tok_error(j, "model.merges", "merges is an object");
    j = base_tokenizer();
    j["model"]["merges"][0] = 7;
    tok_error(j, "merges", "a merge is a number");
    j = base_tokenizer();
    j["added_tokens"] = "none";
    tok_error(j, "added_tokens", "added_tokens is a string");
    j = base_tokenizer();
    j["added_tokens"][0]["content"] = 5;
    tok_error(j, "content", "added token content is a number");
    j = base_tokenizer();
    j["model"]["vocab"]["a"] = "zero";
    tok_error(j, "id", "an id is a string");
}

TEST(HostileTokenizer, Ids) {
    for (const json& id : {json(-1), json(int64_t(1) << 40), json(uint64_t(18446744073709551615ull)),
                           json(1e30), json(2.5)}) {
        json j = base_tokenizer();
        j["model"]["vocab"]["\xc4\xa0zz"] = id;
        tok_error(j, "model.vocab", "vocab id " + id.dump());
        j = base_tokenizer();
        j["added_tokens"][0]["id"] = id;
        tok_error(j, "added_tokens", "added token id " + id.dump());
    }
    json j = base_tokenizer();
    j["model"]["vocab"]["\xc4\xa0zz"] = 0;  // id 0 is taken by a byte token
    tok_error(j, "duplicate id 0", "duplicate id");
    // A huge but legal id: no allocation of that size happens without error or with it, and
    // decoding the hole below it is an error.
    j = base_tokenizer();
    j["added_tokens"][0]["id"] = 16000000;
    try {
        Tokenizer t = Tokenizer::from_json(j.dump());
        expect_error([&] { t.decode({15999999}); }, "15999999", "decoding a hole");
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("16000000"), std::string::npos) << e.what();
    }
}

TEST(HostileTokenizer, Merges) {
    json j = base_tokenizer();
    j["model"]["merges"].push_back("nosuch token");
    tok_error(j, "not in the vocabulary", "merge of unknown tokens");
    j = base_tokenizer();
    j["model"]["merges"].push_back(json::array({"t", "\xc4\xa0qqq"}));
    tok_error(j, "not in the vocabulary", "merge pair of unknown tokens");
    j = base_tokenizer();
    j["model"]["merges"].push_back("abc");
    tok_error(j, "two tokens", "merge without a space");
    j = base_tokenizer();
    j["model"]["merges"].push_back(json::array({"t"}));
    tok_error(j, "merges", "merge pair of one");
}

TEST(HostileTokenizer, UnknownTypes) {
    json j = base_tokenizer();
    j["model"]["type"] = "WordPiece";
    tok_error(j, "model type", "WordPiece");
    j = base_tokenizer();
    j["pre_tokenizer"] = {{"type", "Whatever"}};
    tok_error(j, "pre-tokenizer type", "unknown pre-tokenizer");
    j = base_tokenizer();
    j["decoder"] = {{"type", "Whatever"}};
    tok_error(j, "decoder type", "unknown decoder");
    j = base_tokenizer();
    j["normalizer"] = {{"type", "Nmt"}};
    tok_error(j, "normalizer", "unknown normalizer");
}

TEST(HostileTokenizer, InvalidRegex) {
    for (const char* re : {"(", "[a-", "(?<", "\\", "a{2,1}", "(?<=a+)b"}) {
        json j = with_split_regex(re);
        tok_error(j, "regex", std::string("regex ") + re);
    }
}

TEST(HostileTokenizer, CatastrophicRegex) {
    // Exponential backtracking: PCRE2's match limit must end it with an Error (or the match
    // finish), not hang; either way nothing is lost.
    Tokenizer t = Tokenizer::from_json(with_split_regex("(a|aa)+$|(a+)+b").dump());
    const std::string text(64, 'a');
    try {
        EXPECT_EQ(t.decode(t.encode(text)), text);
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("regex"), std::string::npos) << e.what();
    }
}

TEST(HostileTokenizer, DecodeOutOfRange) {
    Tokenizer t = Tokenizer::from_json(base_tokenizer().dump());
    for (int32_t id : {-1, t.vocab_size(), int32_t(0x7fffffff)})
        expect_error([&] { t.decode({id}); }, std::to_string(id), "decode " + std::to_string(id));
}

// ---------------------------------------------------------------------------------------------
// Token shards

namespace {

std::string shard_dir() {
    const std::string d = distill::testing_util::temp_dir("hostile-shard");
    make_dirs(d);
    return d + "/s";
}

json shard_header(int64_t n, int64_t vocab, const char* dtype = "u16") {
    return {{"format", "distill-tokens"}, {"version", 1},       {"dtype", dtype},
            {"num_tokens", n},           {"vocab_size", vocab}, {"tokenizer_fingerprint", "x"},
            {"source", "s"},             {"source_bytes", 3},   {"fingerprint", "y"}};
}

void shard_error(const std::string& header, const std::string& bin, const std::string& needle) {
    const std::string p = shard_dir();
    write_file_atomic(p + ".json", header);
    write_file_atomic(p + ".bin", bin);
    expect_error([&] { TokenShard s(p); }, needle, header);
}

std::string u16s(std::vector<uint16_t> v) {
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 2);
}

}  // namespace

TEST(HostileShards, Header) {
    const std::string bin = u16s({1, 2, 3});
    shard_error("{not json", bin, "invalid shard header");
    shard_error("[]", bin, "not a distill token shard header");
    shard_error(R"({"format":"other"})", bin, "not a distill token shard header");
    shard_error(R"({"format":"distill-tokens"})", bin, "invalid shard header");
    json h = shard_header(3, 10);
    h["dtype"] = "u8";
    shard_error(h.dump(), bin, "unknown dtype 'u8'");
    h = shard_header(3, 10);
    h["num_tokens"] = 1e300;
    shard_error(h.dump(), bin, "\"num_tokens\" is 1e+300, not an integer");
    h = shard_header(3, 10);
    h["num_tokens"] = uint64_t(1) << 63;
    shard_error(h.dump(), bin, "not an integer");
    h = shard_header(3, 10);
    h["vocab_size"] = "10";
    shard_error(h.dump(), bin, "\"vocab_size\" is \"10\", not an integer");
    shard_error(shard_header(-3, 10).dump(), bin, "negative token count");
    shard_error(shard_header(3, 0).dump(), bin, "vocab size");
    h = shard_header(3, 10);
    h["source"] = 5;
    shard_error(h.dump(), bin, "invalid shard header");
}

TEST(HostileShards, Data) {
    shard_error(shard_header(4, 10).dump(), u16s({1, 2, 3}), "has 6 bytes but the header says 4");
    shard_error(shard_header(3, 10).dump(), u16s({1, 2, 3}) + "x", "has 7 bytes");
    shard_error(shard_header(3, 10).dump(), u16s({1, 12, 3}), "token 1 has id 12 >= vocab_size 10");
    // num_tokens * 4 wraps to 0 in 64 bits: an empty .bin must not pass as 2^62 tokens.
    shard_error(shard_header(int64_t(1) << 62, 10, "u32").dump(), "",
                "has 0 bytes but the header says 4611686018427387904");
    const std::string p = shard_dir();
    write_file_atomic(p + ".json", shard_header(3, 10).dump());
    ::unlink((p + ".bin").c_str());
    expect_error([&] { TokenShard s(p); }, "s.bin", "missing .bin");
}

// ---------------------------------------------------------------------------------------------
// Logit cache

namespace {

LogitCacheInfo cache_info() {
    LogitCacheInfo info;
    info.top_k = 2;
    info.vocab_size = 50;
    info.window = 3;
    info.num_windows = 2;
    info.teacher_fingerprint = info.tokenizer_fingerprint = info.data_fingerprint = "f";
    return info;
}

// A complete two-window cache; returns its directory.
std::string make_cache(const std::string& name) {
    const std::string dir = distill::testing_util::temp_dir("hostile-cache-" + name) + "/cache";
    std::filesystem::remove_all(dir);
    LogitCacheOptions opt;
    opt.windows_per_chunk = 1;
    LogitCacheWriter w(dir, cache_info(), opt);
    const int32_t ids[6] = {1, 2, 3, 4, 5, 6};
    const float lp[6] = {-0.5f, -2, -0.7f, -1.5f, -1, -3};
    w.append_window(ids, lp);
    w.append_window(ids, lp);
    w.finish();
    return dir;
}

}  // namespace

TEST(HostileLogitCache, HeaderJson) {
    const std::string dir = make_cache("header");
    const json good = json::parse(read_file(dir + "/header.json"));
    auto with = [&](const char* key, const json& v, const std::string& needle) {
        json h = good;
        if (v.is_discarded())
            h.erase(key);
        else
            h[key] = v;
        write_file_atomic(dir + "/header.json", h.dump());
        expect_error([&] { LogitCacheReader r(dir); }, needle, h.dump());
    };
    with("top_k", 1e30, "\"top_k\" has a wrong type or value (1e+30)");
    with("top_k", (int64_t(1) << 32) + 2, "expected an integer in [0, 2147483647]");
    with("top_k", -2, "wrong type or value (-2)");
    with("top_k", 0, "top_k 0 must be in [1, vocab_size=50]");
    with("vocab_size", "50", "wrong type");
    with("vocab_size", (1 << 20) + 1, "vocab_size 1048577 is out of range");
    with("window", json(nullptr), "wrong type");
    with("num_windows", 1.5, "wrong type");
    with("format_version", 2, "format_version 2");
    with("format", 1, "not a distill logit cache header");
    with("teacher_fingerprint", json(json::value_t::discarded), "missing a field");
    with("quant_grid", json::array(), "quantisation grid");
    for (const char* text : {"", "[]", "{", "null"}) {
        write_file_atomic(dir + "/header.json", text);
        expect_error([&] { LogitCacheReader r(dir); }, "header.json", text);
    }
}

TEST(HostileLogitCache, DataFile) {
    const std::string dir = make_cache("data");
    const std::string data = read_file(dir + "/data.bin");
    auto with = [&](const std::string& bytes, const std::string& needle, bool on_read) {
        write_file_atomic(dir + "/data.bin", bytes);
        expect_error(
            [&] {
                LogitCacheReader r(dir);
                if (on_read) r.verify();
            },
            needle, "data.bin of " + std::to_string(bytes.size()) + " bytes");
    };
    with(data.substr(0, 20), "truncated", false);
    with("XXXXXXXX" + data.substr(8), "bad magic", false);
    std::string d = data;
    d[16] ^= 1;  // the fingerprint hash of header.json
    with(d, "checksum", false);
    d = data;
    d[32 + 4] = 9;  // first chunk claims 9 windows of the 2 planned
    with(d, "9 windows but only 2 remain", false);
    d = data;
    std::memset(&d[32 + 16], 0x7f, 8);  // absurd payload size: refused before any allocation
    with(d, "payload size", false);
    d = data;
    d[d.size() - 3] ^= 0x55;  // payload byte of the last chunk
    with(d, "checksum mismatch", true);
}
