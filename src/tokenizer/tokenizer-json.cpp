// distill — the tokenizer.json reader (every field checked; errors name the file and the field)
// and writer. Which parts of the format are supported: docs/tokenizer.md.
#include <algorithm>

#include "tokenizer/tokenizer-impl.h"
#include "util/error.h"

namespace distill {

using json = nlohmann::json;

namespace {
constexpr int64_t kMaxVocab = int64_t(1) << 24;  // ids must lie below this
}  // namespace

// ---- JSON writing --------------------------------------------------------------------------

static std::string q(const std::string& s) {
    return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string impl_to_json(const Tokenizer::Impl& m) {
    std::string o;
    o.reserve(m.id_to_token.size() * 24 + m.merges.size() * 24 + 4096);
    auto dump = [](const json& j) {
        return j.dump(-1, ' ', false, json::error_handler_t::replace);
    };
    o += "{\n  \"version\": " + q(m.version) + ",\n";
    o += "  \"truncation\": " + dump(m.truncation) + ",\n";
    o += "  \"padding\": " + dump(m.padding) + ",\n";
    o += "  \"added_tokens\": [";
    std::vector<const AddedToken*> added;
    for (const auto& t : m.added) added.push_back(&t);
    std::sort(added.begin(), added.end(), [](auto* a, auto* b) { return a->id < b->id; });
    for (size_t i = 0; i < added.size(); ++i) {
        const AddedToken& t = *added[i];
        auto b = [](bool v) { return v ? "true" : "false"; };
        o += i ? ",\n    " : "\n    ";
        o += str_cat("{\"id\": ", t.id, ", \"content\": ", q(t.content),
                     ", \"single_word\": ", b(t.single_word), ", \"lstrip\": ", b(t.lstrip),
                     ", \"rstrip\": ", b(t.rstrip), ", \"normalized\": ", b(t.normalized),
                     ", \"special\": ", b(t.special), "}");
    }
    o += added.empty() ? "],\n" : "\n  ],\n";
    o += "  \"normalizer\": " + dump(m.normalizer) + ",\n";
    o += "  \"pre_tokenizer\": " + dump(m.pre_tokenizer) + ",\n";
    o += "  \"post_processor\": " + dump(m.post_processor) + ",\n";
    o += "  \"decoder\": " + dump(m.decoder) + ",\n";
    o += "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n";
    o += "    \"unk_token\": " + (m.unk_token.empty() ? std::string("null") : q(m.unk_token)) +
         ",\n";
    o += "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n";
    o += str_cat("    \"fuse_unk\": ", m.fuse_unk ? "true" : "false",
                 ",\n    \"byte_fallback\": ", m.byte_fallback ? "true" : "false",
                 ",\n    \"ignore_merges\": ",
                 m.ignore_merges ? "true" : "false", ",\n    \"vocab\": {");
    bool first = true;
    for (size_t id = 0; id < m.id_to_token.size(); ++id) {
        auto it = m.vocab.find(m.id_to_token[id]);  // skips holes and model-less added tokens
        if (it == m.vocab.end() || it->second != int32_t(id)) continue;
        o += first ? "\n      " : ",\n      ";
        first = false;
        o += q(m.id_to_token[id]) + ": " + std::to_string(id);
    }
    o += first ? "},\n" : "\n    },\n";
    // "a b" strings unless a token contains a space; then ["a", "b"] pairs (HF >= 0.20 reads both).
    bool pairs = false;
    for (auto [a, b] : m.merges)
        if (m.id_to_token[a].find(' ') != std::string::npos ||
            m.id_to_token[b].find(' ') != std::string::npos)
            pairs = true;
    o += "    \"merges\": [";
    for (size_t i = 0; i < m.merges.size(); ++i) {
        const std::string& a = m.id_to_token[m.merges[i].first];
        const std::string& b = m.id_to_token[m.merges[i].second];
        o += i ? ",\n      " : "\n      ";
        o += pairs ? "[" + q(a) + ", " + q(b) + "]" : q(a + " " + b);
    }
    o += m.merges.empty() ? "]\n" : "\n    ]\n";
    o += "  }\n}\n";
    return o;
}

// ---- JSON reading --------------------------------------------------------------------------

namespace {

struct Loader {
    std::string source;  // "tokenizer 'path'" or "tokenizer JSON"

    [[noreturn]] void fail(const std::string& where, const std::string& what) const {
        throw Error(str_cat("cannot load ", source, ": ", where, ": ", what));
    }
    const json& field(const json& obj, const char* key, const std::string& where) const {
        auto it = obj.find(key);
        if (it == obj.end()) fail(where, str_cat("missing field \"", key, "\""));
        return *it;
    }
    std::string str(const json& j, const std::string& where) const {
        if (!j.is_string()) fail(where, str_cat("must be a string, not ", j.type_name()));
        return j.get<std::string>();
    }
    bool boolean(const json& obj, const char* key, bool def, const std::string& where) const {
        auto it = obj.find(key);
        if (it == obj.end() || it->is_null()) return def;
        if (!it->is_boolean())
            fail(where + "." + key, str_cat("must be a boolean, not ", it->type_name()));
        return it->get<bool>();
    }
    int32_t id(const json& j, const std::string& where) const {
        if (!j.is_number_integer())
            fail(where, str_cat("the id must be an integer, not ", j.type_name()));
        int64_t v = j.is_number_unsigned() && j.get<uint64_t>() > uint64_t(kMaxVocab)
                        ? kMaxVocab
                        : j.get<int64_t>();
        if (v < 0 || v >= kMaxVocab)
            fail(where, str_cat("id ", j.dump(), " is out of range (0 to ", kMaxVocab - 1, ")"));
        return int32_t(v);
    }
    std::string type_of(const json& j, const std::string& where) const {
        if (!j.is_object()) fail(where, str_cat("must be an object, not ", j.type_name()));
        return str(field(j, "type", where), where + ".type");
    }

    void pre_tokenizer(const json& j, const std::string& where,
                       std::vector<PreTokStep>& out) const {
        if (j.is_null()) return;
        std::string type = type_of(j, where);
        if (type == "Sequence") {
            const json& list = field(j, "pretokenizers", where);
            if (!list.is_array()) fail(where + ".pretokenizers", "must be an array");
            for (size_t i = 0; i < list.size(); ++i)
                pre_tokenizer(list[i], str_cat(where, ".pretokenizers[", i, "]"), out);
            return;
        }
        PreTokStep s;
        if (type == "ByteLevel") {
            s.kind = PreTokStep::Kind::kByteLevel;
            s.add_prefix_space = boolean(j, "add_prefix_space", true, where);
            s.use_regex = boolean(j, "use_regex", true, where);
            if (s.use_regex) s.regex = gpt2_regex();
        } else if (type == "Split") {
            s.kind = PreTokStep::Kind::kSplit;
            pattern(j, where, s.regex, s.literal);
            std::string b = str(field(j, "behavior", where), where + ".behavior");
            if (b == "Removed")
                s.behavior = SplitBehavior::kRemoved;
            else if (b == "Isolated")
                s.behavior = SplitBehavior::kIsolated;
            else if (b == "MergedWithPrevious")
                s.behavior = SplitBehavior::kMergedWithPrevious;
            else if (b == "MergedWithNext")
                s.behavior = SplitBehavior::kMergedWithNext;
            else if (b == "Contiguous")
                s.behavior = SplitBehavior::kContiguous;
            else
                fail(where + ".behavior", str_cat("unknown split behavior ", json(b).dump()));
            s.invert = boolean(j, "invert", false, where);
        } else if (type == "Metaspace") {
            s.kind = PreTokStep::Kind::kMetaspace;
            metaspace(j, where, s.replacement, s.prepend);
            s.split = boolean(j, "split", true, where);
            s.literal = s.replacement;  // the split: before each replacement character
            s.behavior = SplitBehavior::kMergedWithNext;
        } else if (type == "Digits") {
            s.kind = PreTokStep::Kind::kSplit;
            static const auto digits = std::make_shared<const Regex>("\\p{N}", "Digits");
            s.regex = digits;
            s.behavior = boolean(j, "individual_digits", false, where) ? SplitBehavior::kIsolated
                                                                       : SplitBehavior::kContiguous;
        } else {
            fail(where, str_cat("pre-tokenizer type ", json(type).dump(),
                                " is not supported (supported: ByteLevel, Split, Metaspace, "
                                "Digits, Sequence)"));
        }
        out.push_back(std::move(s));
    }

    // Metaspace's replacement character and prepend scheme (HF: "prepend_scheme", or the older
    // "add_prefix_space": false meaning "never").
    void metaspace(const json& j, const std::string& where, std::string& replacement,
                   PrependScheme& prepend) const {
        replacement = str(field(j, "replacement", where), where + ".replacement");
        if (!utf8_valid(replacement) || utf8_code_points(replacement).size() != 1)
            fail(where + ".replacement", "must be exactly one character");
        std::string scheme = "always";
        if (auto it = j.find("prepend_scheme"); it != j.end() && !it->is_null())
            scheme = str(*it, where + ".prepend_scheme");
        if (scheme == "always")
            prepend = PrependScheme::kAlways;
        else if (scheme == "first")
            prepend = PrependScheme::kFirst;
        else if (scheme == "never")
            prepend = PrependScheme::kNever;
        else
            fail(where + ".prepend_scheme",
                 str_cat("unknown prepend scheme ", json(scheme).dump(),
                         " (expected \"first\", \"always\" or \"never\")"));
        if (!boolean(j, "add_prefix_space", true, where)) {
            if (prepend != PrependScheme::kNever && j.contains("prepend_scheme"))
                fail(where, "add_prefix_space false contradicts prepend_scheme");
            prepend = PrependScheme::kNever;
        }
    }

    // A {"String": ...} or {"Regex": ...} pattern (Split, Replace).
    void pattern(const json& j, const std::string& where, std::shared_ptr<const Regex>& regex,
                 std::string& literal) const {
        const json& pat = field(j, "pattern", where);
        if (!pat.is_object() || pat.size() != 1)
            fail(where + ".pattern", "must be {\"Regex\": ...} or {\"String\": ...}");
        if (pat.contains("Regex")) {
            std::string re = str(pat["Regex"], where + ".pattern.Regex");
            regex = std::make_shared<Regex>(re, str_cat("cannot load ", source, ": ", where));
        } else if (pat.contains("String")) {
            literal = str(pat["String"], where + ".pattern.String");
        } else {
            fail(where + ".pattern", "must be {\"Regex\": ...} or {\"String\": ...}");
        }
    }

    void normalizer(const json& j, const std::string& where, std::vector<NormStep>& out) const {
        if (j.is_null()) return;
        std::string type = type_of(j, where);
        if (type == "Sequence") {
            const json& list = field(j, "normalizers", where);
            if (!list.is_array()) fail(where + ".normalizers", "must be an array");
            for (size_t i = 0; i < list.size(); ++i)
                normalizer(list[i], str_cat(where, ".normalizers[", i, "]"), out);
            return;
        }
        NormStep s;
        if (type == "NFC") {
            s.kind = NormStep::Kind::kNFC;
        } else if (type == "NFD") {
            s.kind = NormStep::Kind::kNFD;
        } else if (type == "NFKC") {
            s.kind = NormStep::Kind::kNFKC;
        } else if (type == "NFKD") {
            s.kind = NormStep::Kind::kNFKD;
        } else if (type == "Lowercase") {
            s.kind = NormStep::Kind::kLowercase;
        } else if (type == "Replace") {
            s.kind = NormStep::Kind::kReplace;
            pattern(j, where, s.regex, s.literal);
            s.content = str(field(j, "content", where), where + ".content");
        } else if (type == "Prepend") {
            s.kind = NormStep::Kind::kPrepend;
            s.content = str(field(j, "prepend", where), where + ".prepend");
        } else if (type == "Strip") {
            s.kind = NormStep::Kind::kStrip;
            s.strip_left = boolean(j, "strip_left", false, where);
            s.strip_right = boolean(j, "strip_right", false, where);
        } else {
            fail(where, str_cat("normalizer type ", json(type).dump(),
                                " is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, "
                                "Replace, Prepend, Strip, Sequence)"));
        }
        out.push_back(std::move(s));
    }

    static std::shared_ptr<const Regex> gpt2_regex() {
        static const auto r = std::make_shared<const Regex>(kGpt2SplitRegex, "the GPT-2 regex");
        return r;
    }

    void decoder(const json& j, const std::string& where, std::vector<DecStep>& out) const {
        std::string type = type_of(j, where);
        if (type == "Sequence") {
            const json& list = field(j, "decoders", where);
            if (!list.is_array()) fail(where + ".decoders", "must be an array");
            for (size_t i = 0; i < list.size(); ++i)
                decoder(list[i], str_cat(where, ".decoders[", i, "]"), out);
            return;
        }
        auto one_char = [&](const char* key) {
            std::string c = str(field(j, key, where), str_cat(where, ".", key));
            if (!utf8_valid(c) || utf8_code_points(c).size() != 1)
                fail(str_cat(where, ".", key), "must be exactly one character");
            return utf8_code_points(c)[0];
        };
        auto count = [&](const char* key) {
            const json& v = field(j, key, where);
            if (!v.is_number_unsigned())
                fail(str_cat(where, ".", key), "must be a non-negative integer");
            return size_t(std::min<uint64_t>(v.get<uint64_t>(), uint64_t(1) << 30));
        };
        DecStep s;
        if (type == "ByteLevel") {
            s.kind = DecStep::Kind::kByteLevel;
        } else if (type == "ByteFallback") {
            s.kind = DecStep::Kind::kByteFallback;
        } else if (type == "Fuse") {
            s.kind = DecStep::Kind::kFuse;
        } else if (type == "Strip") {
            s.kind = DecStep::Kind::kStrip;
            s.ch = one_char("content");
            s.start = count("start");
            s.stop = count("stop");
        } else if (type == "Replace") {
            s.kind = DecStep::Kind::kReplace;
            pattern(j, where, s.regex, s.literal);
            s.content = str(field(j, "content", where), where + ".content");
        } else if (type == "Metaspace") {
            s.kind = DecStep::Kind::kMetaspace;
            std::string r;
            PrependScheme p;
            metaspace(j, where, r, p);
            s.ch = utf8_code_points(r)[0];
            s.prepend_never = p == PrependScheme::kNever;
        } else {
            fail(where, str_cat("decoder type ", json(type).dump(),
                                " is not supported (supported: ByteLevel, ByteFallback, Fuse, "
                                "Strip, Replace, Metaspace, Sequence)"));
        }
        out.push_back(std::move(s));
    }

    void load(const json& root, Tokenizer::Impl& m) const {
        if (!root.is_object())
            fail("top level", str_cat("must be an object, not ", root.type_name()));
        if (!root.contains("model")) fail("top level", "missing field \"model\"");
        if (auto it = root.find("version"); it != root.end() && it->is_string())
            m.version = it->get<std::string>();
        m.truncation = root.value("truncation", json());
        m.padding = root.value("padding", json());

        m.normalizer = root.value("normalizer", json());
        m.norm.clear();
        normalizer(m.normalizer, "normalizer", m.norm);
        m.pre_tokenizer = root.value("pre_tokenizer", json());
        pre_tokenizer(m.pre_tokenizer, "pre_tokenizer", m.pre);
        for (size_t i = 0; i + 1 < m.pre.size(); ++i)
            if (m.pre[i].kind == PreTokStep::Kind::kByteLevel)
                fail("pre_tokenizer", "ByteLevel must be the last pre-tokenizer of a Sequence");
        m.post_processor = root.value("post_processor", json());
        m.decoder = root.value("decoder", json());
        m.dec.clear();
        m.has_decoder = !m.decoder.is_null();
        if (m.has_decoder) decoder(m.decoder, "decoder", m.dec);

        // model
        const json& model = field(root, "model", "top level");
        if (!model.is_object())
            fail("model", str_cat("must be an object, not ", model.type_name()));
        if (model.contains("type") && str(model["type"], "model.type") != "BPE")
            fail("model.type", str_cat("model type ", model["type"].dump(),
                                       " is not supported (supported: BPE)"));
        if (model.contains("dropout") && !model["dropout"].is_null() &&
            !(model["dropout"].is_number() && model["dropout"].get<double>() == 0.0))
            fail("model.dropout", "BPE dropout is not supported (must be null)");
        for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
            if (model.contains(k) && !model[k].is_null() &&
                !(model[k].is_string() && model[k].get<std::string>().empty()))
                fail(str_cat("model.", k), "is not supported (must be null)");
        m.byte_fallback = boolean(model, "byte_fallback", false, "model");
        m.fuse_unk = boolean(model, "fuse_unk", false, "model");
        m.ignore_merges = boolean(model, "ignore_merges", false, "model");
        if (model.contains("unk_token") && !model["unk_token"].is_null())
            m.unk_token = str(model["unk_token"], "model.unk_token");

        const json& vocab = field(model, "vocab", "model");
        if (!vocab.is_object())
            fail("model.vocab", str_cat("must be an object, not ", vocab.type_name()));
        int64_t max_id = -1;
        std::vector<std::pair<int32_t, const std::string*>> entries;
        entries.reserve(vocab.size());
        for (auto it = vocab.begin(); it != vocab.end(); ++it) {
            int32_t v = id(it.value(), str_cat("model.vocab[", json(it.key()).dump(), "]"));
            entries.push_back({v, &it.key()});
            max_id = std::max<int64_t>(max_id, v);
        }
        std::vector<AddedToken> added;
        if (auto it = root.find("added_tokens"); it != root.end() && !it->is_null()) {
            if (!it->is_array())
                fail("added_tokens", str_cat("must be an array, not ", it->type_name()));
            for (size_t i = 0; i < it->size(); ++i) {
                const json& a = (*it)[i];
                std::string w = str_cat("added_tokens[", i, "]");
                if (!a.is_object()) fail(w, str_cat("must be an object, not ", a.type_name()));
                AddedToken t;
                t.id = id(field(a, "id", w), w + ".id");
                t.content = str(field(a, "content", w), w + ".content");
                if (t.content.empty()) fail(w + ".content", "must not be empty");
                t.special = boolean(a, "special", false, w);
                t.normalized = boolean(a, "normalized", !t.special, w);
                t.single_word = boolean(a, "single_word", false, w);
                t.lstrip = boolean(a, "lstrip", false, w);
                t.rstrip = boolean(a, "rstrip", false, w);
                max_id = std::max<int64_t>(max_id, t.id);
                added.push_back(std::move(t));
            }
        }
        // Holes are allowed (HF allows them) but not so many that one large id could make us
        // allocate gigabytes.
        const int64_t n_entries = int64_t(entries.size() + added.size());
        if (max_id >= 2 * n_entries + 1024)
            fail("model.vocab", str_cat("id ", max_id, " is out of range: the file has only ",
                                        n_entries, " tokens"));
        m.id_to_token.assign(size_t(max_id + 1), std::string());
        std::vector<uint8_t> used(size_t(max_id + 1), 0);
        for (auto [v, tok] : entries) {
            if (used[v])
                fail("model.vocab", str_cat("duplicate id ", v, ": ", json(m.id_to_token[v]).dump(),
                                            " and ", json(*tok).dump()));
            used[v] = 1;
            m.id_to_token[v] = *tok;
            m.vocab.emplace(*tok, v);
        }
        std::unordered_map<std::string, int32_t> added_seen;
        for (size_t i = 0; i < added.size(); ++i) {
            const AddedToken& t = added[i];
            std::string w = str_cat("added_tokens[", i, "]");
            if (auto s = added_seen.find(t.content); s != added_seen.end())
                fail(w, str_cat("token ", json(t.content).dump(), " is listed twice"));
            added_seen[t.content] = t.id;
            auto vit = m.vocab.find(t.content);
            if (vit != m.vocab.end() && vit->second != t.id)
                fail(w, str_cat("token ", json(t.content).dump(), " has id ", t.id,
                                " but the vocabulary gives it id ", vit->second));
            if (used[t.id] && m.id_to_token[t.id] != t.content)
                fail(w, str_cat("duplicate id ", t.id, ": ", json(m.id_to_token[t.id]).dump(),
                                " and ", json(t.content).dump()));
            if (used[t.id] == 2) fail(w, str_cat("duplicate id ", t.id));
            used[t.id] = 2;
            m.id_to_token[t.id] = t.content;
        }
        m.added = std::move(added);

        const json& merges = field(model, "merges", "model");
        if (!merges.is_array())
            fail("model.merges", str_cat("must be an array, not ", merges.type_name()));
        m.merges.reserve(merges.size());
        for (size_t i = 0; i < merges.size(); ++i) {
            const json& e = merges[i];
            std::string w = str_cat("model.merges[", i, "]");
            std::string a, b;
            if (e.is_string()) {
                std::string s = e.get<std::string>();
                size_t sp = s.find(' ');
                if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
                    fail(w, str_cat(json(s).dump(), " must be two tokens separated by one space"));
                a = s.substr(0, sp);
                b = s.substr(sp + 1);
            } else if (e.is_array() && e.size() == 2) {
                a = str(e[0], w + "[0]");
                b = str(e[1], w + "[1]");
            } else {
                fail(w, "must be a string \"a b\" or a pair [\"a\", \"b\"]");
            }
            auto ia = m.vocab.find(a), ib = m.vocab.find(b);
            if (ia == m.vocab.end())
                fail(w, str_cat("token ", json(a).dump(), " is not in the vocabulary"));
            if (ib == m.vocab.end())
                fail(w, str_cat("token ", json(b).dump(), " is not in the vocabulary"));
            if (m.vocab.find(a + b) == m.vocab.end())
                fail(w,
                     str_cat("the merged token ", json(a + b).dump(), " is not in the vocabulary"));
            m.merges.emplace_back(ia->second, ib->second);
        }
    }
};

}  // namespace

void load_into(Tokenizer::Impl& m, const std::string& text, const std::string& source) {
    Loader L{source};
    json root;
    try {
        root = json::parse(text);
    } catch (const json::exception& e) {
        throw Error(str_cat("cannot load ", source, ": not valid JSON: ", e.what()));
    }
    try {
        L.load(root, m);
        m.finalize("cannot load " + source);
    } catch (const json::exception& e) {  // a type we did not check; still the file's fault
        throw Error(str_cat("cannot load ", source, ": ", e.what()));
    }
}

// Builds the pipeline distill trains with: ByteLevel pre-tokenizer (GPT-2 regex, no prefix
// space), ByteLevel post-processor and decoder. Used by bpe-train.cpp.
void impl_set_default_pipeline(Tokenizer::Impl& m) {
    json bl = {{"type", "ByteLevel"},
               {"add_prefix_space", false},
               {"trim_offsets", true},
               {"use_regex", true}};
    m.normalizer = nullptr;
    m.pre_tokenizer = bl;
    m.post_processor = bl;
    m.decoder = bl;
    m.norm.clear();
    m.pre.clear();
    m.dec.clear();
    m.has_decoder = true;
    Loader{"default pipeline"}.pre_tokenizer(bl, "pre_tokenizer", m.pre);
    Loader{"default pipeline"}.decoder(bl, "decoder", m.dec);
}

}  // namespace distill
