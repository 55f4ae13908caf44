// distill — tokenizer.ggml.* metadata <-> tokenizer.json (see gguf-tokenizer.h, docs/gguf.md).
#include "tokenizer/gguf-tokenizer.h"

#include <nlohmann/json.hpp>
#include <set>

#include "util/error.h"
#include "util/progress.h"

namespace distill {

using nlohmann::json;

namespace {

// llama.cpp's token types (gguf-py TokenType).
constexpr int kTokNormal = 1, kTokControl = 3, kTokUserDefined = 4, kTokUnused = 5;

// Pre-tokenizer regexes by tokenizer.ggml.pre, as the models' own tokenizer.json files write
// them (llama.cpp's src/llama-vocab.cpp implements the same splits). "gpt-2" is the ByteLevel
// pre-tokenizer's built-in regex, the one distill's trained tokenizers use.
struct PreTok {
    const char* name;
    std::vector<std::string> regexes;  // empty: ByteLevel with use_regex
    bool ignore_merges;
};
const std::vector<PreTok>& pre_tokenizers() {
    static const std::vector<PreTok> table = {
        {"gpt-2", {}, false},
        {"llama-bpe",
         {R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
         true},
        {"qwen2",
         {R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
         false},
        {"deepseek-v3",
         {R"(\p{N}{1,3})", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
          "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"},
         false},
    };
    return table;
}

std::string pre_names() {
    std::string s;
    for (const auto& p : pre_tokenizers()) s += (s.empty() ? "" : ", ") + std::string(p.name);
    return s;
}

// A normalizer that changes nothing: none, or a Sequence of such (DeepSeek-V3 ships an empty
// one).
bool is_identity_normalizer(const json& n) {
    if (n.is_null()) return true;
    if (!n.is_object() || n.value("type", "") != "Sequence" || !n.contains("normalizers"))
        return false;
    for (const auto& m : n["normalizers"])
        if (!is_identity_normalizer(m)) return false;
    return true;
}
// NFC (Qwen2/3): the same as none on text already in NFC, which is most text.
bool is_nfc(const json& n) {
    return n.is_object() && n.value("type", "") == "NFC";
}

}  // namespace

std::string tokenizer_json_from_gguf(const GgufFile& f) {
    const std::string src = "'" + f.path() + "'";
    const std::string model = f.get_string("tokenizer.ggml.model");
    DISTILL_CHECK(model == "gpt2", src, ": tokenizer.ggml.model '", model,
                  "' is not supported (supported: gpt2, byte-level BPE)");
    DISTILL_CHECK(f.has("tokenizer.ggml.pre"), src,
                  ": no tokenizer.ggml.pre: the pre-tokenizer is unknown (supported: ", pre_names(),
                  ")");
    const std::string pre = f.get_string("tokenizer.ggml.pre");
    const PreTok* pt = nullptr;
    for (const auto& p : pre_tokenizers())
        if (pre == p.name) pt = &p;
    DISTILL_CHECK(pt, src, ": tokenizer.ggml.pre '", pre, "' is not supported (supported: ",
                  pre_names(), ")");
    const auto& tokens = f.get_string_array("tokenizer.ggml.tokens");
    std::vector<int64_t> types(tokens.size(), kTokNormal);
    if (f.has("tokenizer.ggml.token_type")) {
        types = f.get_int_array("tokenizer.ggml.token_type");
        DISTILL_CHECK(types.size() == tokens.size(), src, ": tokenizer.ggml.token_type has ",
                      types.size(), " entries but tokenizer.ggml.tokens has ", tokens.size());
    }
    json vocab = json::object();
    json added = json::array();
    for (size_t id = 0; id < tokens.size(); ++id) {
        if (types[id] == kTokUnused) continue;  // padding rows: never produced by the tokenizer
        DISTILL_CHECK(!vocab.contains(tokens[id]), src, ": token ",
                      json(tokens[id]).dump(-1, ' ', false, json::error_handler_t::replace),
                      " appears twice (ids ", vocab[tokens[id]].get<int64_t>(), " and ", id, ")");
        vocab[tokens[id]] = id;
        if (types[id] == kTokControl || types[id] == kTokUserDefined) {
            const bool special = types[id] == kTokControl;
            added.push_back({{"id", id}, {"content", tokens[id]}, {"single_word", false},
                             {"lstrip", false}, {"rstrip", false}, {"normalized", !special},
                             {"special", special}});
        }
    }
    json merges = json::array();
    if (f.has("tokenizer.ggml.merges"))
        for (const auto& m : f.get_string_array("tokenizer.ggml.merges")) merges.push_back(m);
    json pre_tok, post;
    if (pt->regexes.empty()) {
        pre_tok = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                   {"use_regex", true}};
        post = pre_tok;
    } else {
        json steps = json::array();
        for (const auto& r : pt->regexes)
            steps.push_back({{"type", "Split"}, {"pattern", {{"Regex", r}}},
                             {"behavior", "Isolated"}, {"invert", false}});
        steps.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false},
                         {"trim_offsets", false}, {"use_regex", false}});
        pre_tok = {{"type", "Sequence"}, {"pretokenizers", steps}};
        post = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false},
                {"use_regex", false}};
    }
    json j = {{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", added},
              {"normalizer", nullptr},
              {"pre_tokenizer", pre_tok},
              {"post_processor", post},
              {"decoder", post},
              {"model",
               {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                {"fuse_unk", false}, {"byte_fallback", false},
                {"ignore_merges", pt->ignore_merges}, {"vocab", vocab}, {"merges", merges}}}};
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::vector<std::pair<std::string, GgufValue>> tokenizer_gguf_metadata(const Tokenizer& tok,
                                                                       int64_t vocab_size,
                                                                       int64_t bos_id,
                                                                       int64_t eos_id) {
    // The pre-tokenizer, normalizer, tokens, types and merges, from the tokenizer.json form.
    const json tj = json::parse(tok.to_json());
    const json& pre = tj["pre_tokenizer"];
    const PreTok* pt = nullptr;
    for (const auto& p : pre_tokenizers()) {
        if (p.regexes.empty()) {
            if (pre.is_object() && pre.value("type", "") == "ByteLevel" &&
                pre.value("use_regex", true) && !pre.value("add_prefix_space", false))
                pt = &p;
            continue;
        }
        if (!pre.is_object() || pre.value("type", "") != "Sequence") continue;
        const json& steps = pre["pretokenizers"];
        if (!steps.is_array() || steps.size() != p.regexes.size() + 1) continue;
        bool same = steps.back().value("type", "") == "ByteLevel" &&
                    !steps.back().value("use_regex", true) &&
                    !steps.back().value("add_prefix_space", false);
        for (size_t i = 0; same && i < p.regexes.size(); ++i)
            same = steps[i].value("type", "") == "Split" &&
                   steps[i].value("behavior", "") == "Isolated" &&
                   !steps[i].value("invert", false) && steps[i].contains("pattern") &&
                   steps[i]["pattern"].value("Regex", "") == p.regexes[i];
        if (same) pt = &p;
    }
    DISTILL_CHECK(pt, "cannot export the tokenizer to GGUF: its pre-tokenizer ", pre.dump(),
                  " is none that llama.cpp implements (supported: ", pre_names(), ")");
    if (is_nfc(tj["normalizer"]))
        log_info("the tokenizer's NFC normalizer has no GGUF equivalent: llama.cpp tokenizes "
                 "text that is not in NFC differently (as with llama.cpp's own conversion of such "
                 "models)");
    else
        DISTILL_CHECK(is_identity_normalizer(tj["normalizer"]),
                      "cannot export the tokenizer to GGUF: its normalizer ",
                      tj["normalizer"].dump().substr(0, 200),
                      " has no GGUF equivalent (llama.cpp would not apply it)");
    const size_t rows = size_t(vocab_size);
    std::vector<std::string> tokens(rows);
    std::vector<int64_t> types(rows, kTokNormal);
    DISTILL_CHECK(tok.vocab_size() <= vocab_size, "the tokenizer has ", tok.vocab_size(),
                  " tokens, more than the model's vocab_size ", vocab_size);
    std::set<int32_t> added_ids;
    for (const auto& a : tj["added_tokens"]) added_ids.insert(a["id"].get<int32_t>());
    for (int32_t id = 0; id < int32_t(vocab_size); ++id) {
        const std::string t = id < tok.vocab_size() ? tok.id_to_token(id) : "";
        if (t.empty()) {  // beyond the tokenizer (or a hole in it): a padding row
            tokens[size_t(id)] = "[PAD" + std::to_string(id) + "]";
            types[size_t(id)] = kTokUnused;
            continue;
        }
        tokens[size_t(id)] = t;
        if (added_ids.count(id))
            types[size_t(id)] = tok.is_special(id) ? kTokControl : kTokUserDefined;
    }
    std::vector<std::string> merges;
    for (const auto& mj : tj["model"]["merges"]) {
        std::string a, b;
        if (mj.is_string()) {
            merges.push_back(mj.get<std::string>());
            continue;
        }
        a = mj[0].get<std::string>();
        b = mj[1].get<std::string>();
        DISTILL_CHECK(a.find(' ') == std::string::npos && b.find(' ') == std::string::npos,
                      "cannot export the tokenizer to GGUF: merge [", json(a).dump(), ", ",
                      json(b).dump(), "] has a space, which GGUF's \"a b\" merges cannot hold");
        merges.push_back(a + " " + b);
    }

    std::vector<std::pair<std::string, GgufValue>> kv = {
        {"tokenizer.ggml.model", GgufValue::str("gpt2")},
        {"tokenizer.ggml.pre", GgufValue::str(pt->name)},
        {"tokenizer.ggml.tokens", GgufValue::str_array(tokens)},
        {"tokenizer.ggml.token_type", GgufValue::i32_array(types)},
        {"tokenizer.ggml.merges", GgufValue::str_array(merges)},
        {"tokenizer.ggml.add_bos_token", GgufValue::boolean(false)},
        {"tokenizer.ggml.add_eos_token", GgufValue::boolean(false)},
    };
    auto id_or = [](int64_t a, int64_t b) { return a >= 0 ? a : b; };
    if (int64_t b = id_or(bos_id, tok.bos_id()); b >= 0)
        kv.emplace_back("tokenizer.ggml.bos_token_id", GgufValue::u32(uint32_t(b)));
    if (int64_t e = id_or(eos_id, tok.eos_id()); e >= 0)
        kv.emplace_back("tokenizer.ggml.eos_token_id", GgufValue::u32(uint32_t(e)));
    if (tok.pad_id() >= 0)
        kv.emplace_back("tokenizer.ggml.padding_token_id", GgufValue::u32(uint32_t(tok.pad_id())));
    return kv;
}

}  // namespace distill
