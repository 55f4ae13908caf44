// distill — byte-level BPE tokenizer: the public Tokenizer (load, save, encode, decode, ids) and
// Impl's derived tables. The parts: byte-alphabet.cpp, pretokenize.cpp, added-tokens.cpp, bpe.cpp,
// tokenizer-json.cpp (tokenizer.json read and write), tokenizer-pipeline.cpp (normalizers and
// decoders), bpe-train.cpp (training); shared internals in tokenizer-impl.h. Format and
// behaviour are described in docs/tokenizer.md.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <mutex>

#include "tokenizer/tokenizer-impl.h"
#include "util/error.h"
#include "util/file.h"

namespace distill {

using json = nlohmann::json;

// ---- Impl ----------------------------------------------------------------------------------

Tokenizer::Impl::Impl() {
    std::fill(std::begin(byte_ids), std::end(byte_ids), -1);
    std::fill(std::begin(fallback_ids), std::end(fallback_ids), -1);
}

Tokenizer::Impl::Impl(const Impl& o)
    : id_to_token(o.id_to_token),
      id_bytes(o.id_bytes),
      id_kind(o.id_kind),
      vocab(o.vocab),
      token_ids(o.token_ids),
      merges(o.merges),
      merge_map(o.merge_map),
      ignore_merges(o.ignore_merges),
      unk_id(o.unk_id),
      unk_token(o.unk_token),
      fuse_unk(o.fuse_unk),
      byte_fallback(o.byte_fallback),
      byte_level(o.byte_level),
      added(o.added),
      norm(o.norm),
      pre(o.pre),
      dec(o.dec),
      has_decoder(o.has_decoder),
      normalizer(o.normalizer),
      pre_tokenizer(o.pre_tokenizer),
      post_processor(o.post_processor),
      decoder(o.decoder),
      truncation(o.truncation),
      padding(o.padding),
      version(o.version),
      fingerprint(o.fingerprint),
      raw_by_first_byte(o.raw_by_first_byte),
      norm_by_first_byte(o.norm_by_first_byte),
      added_match(o.added_match),
      any_normalized_added(o.any_normalized_added) {
    std::copy(std::begin(o.byte_ids), std::end(o.byte_ids), std::begin(byte_ids));
    std::copy(std::begin(o.fallback_ids), std::end(o.fallback_ids), std::begin(fallback_ids));
}

// True if the decoder is one ByteLevel step: decode() then concatenates precomputed bytes.
static bool byte_level_decoder(const Tokenizer::Impl& m) {
    return m.has_decoder && m.dec.size() == 1 && m.dec[0].kind == DecStep::Kind::kByteLevel;
}

void Tokenizer::Impl::finalize(const std::string& source) {
    const auto& alpha = ByteAlphabet::get();
    const size_t n = id_to_token.size();
    id_kind.assign(n, 0);
    token_ids = vocab;
    for (const auto& [tok, id] : vocab) id_kind[id] = 1;
    for (const AddedToken& t : added) {
        id_kind[t.id] = t.special ? 3 : 2;
        token_ids[t.content] = t.id;
    }
    // What each id decodes to on its own. HF's ByteLevel decoder: a token whose characters are
    // all in the alphabet becomes those bytes; any other token is emitted as its own UTF-8.
    // Other decoders: the decoder run on the token alone (a <0xNN> token: that byte).
    id_bytes.assign(n, std::string());
    const bool bl = byte_level_decoder(*this);
    std::string tmp;
    for (size_t id = 0; id < n; ++id) {
        if (!id_kind[id]) continue;
        const std::string& tok = id_to_token[id];
        if (bl) {
            id_bytes[id] = alpha.decode(tok, tmp) ? tmp : tok;
        } else if (tok.size() == 6 && tok.compare(0, 3, "<0x") == 0 && tok[5] == '>' &&
                   std::isxdigit(static_cast<unsigned char>(tok[3])) &&
                   std::isxdigit(static_cast<unsigned char>(tok[4]))) {
            id_bytes[id] = std::string(1, char(std::stoi(tok.substr(3, 2), nullptr, 16)));
        } else if (has_decoder) {
            std::vector<std::string> one{tok};
            decode_steps(dec, one);
            for (auto& s : one) id_bytes[id] += s;
        } else {
            id_bytes[id] = tok;
        }
    }
    build_merge_map(source);
    char name[8];
    for (int b = 0; b < 256; ++b) {
        auto it = vocab.find(alpha.byte_to_str[b]);
        byte_ids[b] = it == vocab.end() ? -1 : it->second;
        std::snprintf(name, sizeof name, "<0x%02X>", b);  // HF: format!("<{:#04X}>", b)
        it = vocab.find(name);
        fallback_ids[b] = it == vocab.end() ? -1 : it->second;
    }
    unk_id = -1;
    if (!unk_token.empty()) {
        auto it = vocab.find(unk_token);
        DISTILL_CHECK(it != vocab.end(), source, ": model.unk_token ", json(unk_token).dump(),
                      " is not in the vocabulary");
        unk_id = it->second;
    }
    byte_level = !pre.empty() && pre.back().kind == PreTokStep::Kind::kByteLevel;
    build_added_tables();
    {
        std::unique_lock<std::shared_mutex> lock(cache_mu);
        cache.clear();
    }
    fingerprint = hash_hex(impl_to_json(*this));
}

// ---- Tokenizer -----------------------------------------------------------------------------

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {
    impl_set_default_pipeline(*impl_);
    impl_->finalize("empty tokenizer");
}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(const Tokenizer& o) : impl_(std::make_unique<Impl>(*o.impl_)) {}
Tokenizer& Tokenizer::operator=(const Tokenizer& o) {
    if (this != &o) impl_ = std::make_unique<Impl>(*o.impl_);
    return *this;
}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::load(const std::string& path) {
    std::string text = read_file(path);
    Tokenizer t;
    t.impl_ = std::make_unique<Impl>();
    load_into(*t.impl_, text, str_cat("tokenizer '", path, "'"));
    return t;
}

Tokenizer Tokenizer::from_json(const std::string& json_text) {
    Tokenizer t;
    t.impl_ = std::make_unique<Impl>();
    load_into(*t.impl_, json_text, "tokenizer JSON");
    return t;
}

std::string Tokenizer::to_json() const {
    return impl_to_json(*impl_);
}

void Tokenizer::save(const std::string& path) const {
    write_file_atomic(path, to_json());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
    const Impl& m = *impl_;
    std::string clean;
    if (!utf8_valid(text)) {  // documented: invalid sequences become U+FFFD first
        clean = utf8_lossy(text);
        text = clean;
    }
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    std::string storage, normalized;
    std::vector<std::string_view> words;
    auto encode_piece = [&](std::string_view piece, bool at_start) {
        words.clear();
        m.pre_tokenize(piece, storage, words, at_start);
        for (std::string_view w : words) m.encode_word_cached(w, ids);
    };
    // HF's AddedVocabulary::extract_and_normalize: added tokens that are not normalized are
    // found in the raw text; each piece between them is normalized, and the normalized ones are
    // found in that.
    std::vector<AddedSpan> spans, inner;
    if (m.added.empty())
        spans.push_back({0, text.size(), -1});
    else
        m.find_added(text, false, spans);
    for (const AddedSpan& sp : spans) {
        if (sp.id >= 0) {
            ids.push_back(sp.id);
            continue;
        }
        std::string_view seg = text.substr(sp.a, sp.b - sp.a);
        if (!m.norm.empty()) {
            normalized = normalize_text(m.norm, seg);
            seg = normalized;
        }
        if (!m.any_normalized_added) {
            encode_piece(seg, sp.a == 0);
            continue;
        }
        inner.clear();
        m.find_added(seg, true, inner);
        for (const AddedSpan& s : inner) {
            if (s.id >= 0)
                ids.push_back(s.id);
            else
                encode_piece(seg.substr(s.a, s.b - s.a), sp.a == 0 && s.a == 0);
        }
    }
    return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
    const Impl& m = *impl_;
    for (int32_t id : ids)
        DISTILL_CHECK(id >= 0 && size_t(id) < m.id_kind.size() && m.id_kind[id] != 0, "decode: id ",
                      id, " is not in the vocabulary (size ", m.id_kind.size(), ")");
    if (byte_level_decoder(m)) {  // the common case: concatenate each token's bytes
        std::string out;
        for (int32_t id : ids)
            if (!skip_special || m.id_kind[id] != 3) out += m.id_bytes[id];
        return utf8_valid(out) ? out : utf8_lossy(out);
    }
    // HF's Tokenizer::decode: the token strings (added tokens: their content), through the
    // decoder's steps, joined; with no decoder, joined with spaces.
    std::vector<std::string> tokens;
    for (int32_t id : ids)
        if (!skip_special || m.id_kind[id] != 3) tokens.push_back(m.id_to_token[id]);
    if (m.has_decoder) decode_steps(m.dec, tokens);
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (i && !m.has_decoder) out += ' ';
        out += tokens[i];
    }
    return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
    const Impl& m = *impl_;
    DISTILL_CHECK(id >= 0 && size_t(id) < m.id_kind.size() && m.id_kind[id] != 0, "token id ", id,
                  " is not in the vocabulary (size ", m.id_kind.size(), ")");
    return m.id_bytes[id];
}

std::string Tokenizer::id_to_token(int32_t id) const {
    const Impl& m = *impl_;
    DISTILL_CHECK(id >= 0 && size_t(id) < m.id_kind.size() && m.id_kind[id] != 0, "token id ", id,
                  " is not in the vocabulary (size ", m.id_kind.size(), ")");
    return m.id_to_token[id];
}

int32_t Tokenizer::token_to_id(const std::string& token) const {
    auto it = impl_->token_ids.find(token);
    return it == impl_->token_ids.end() ? -1 : it->second;
}

bool Tokenizer::is_special(int32_t id) const {
    const Impl& m = *impl_;
    return id >= 0 && size_t(id) < m.id_kind.size() && m.id_kind[id] == 3;
}

int Tokenizer::vocab_size() const {
    return int(impl_->id_to_token.size());
}

static int32_t first_special(const Tokenizer::Impl& m, std::initializer_list<const char*> names) {
    for (const char* n : names) {
        auto it = m.token_ids.find(n);
        if (it != m.token_ids.end()) return it->second;
    }
    return -1;
}

int32_t Tokenizer::bos_id() const {
    return first_special(*impl_, {"<|bos|>", "<|begin_of_text|>", "<s>"});
}
int32_t Tokenizer::eos_id() const {
    return first_special(*impl_, {"<|eos|>", "<|end_of_text|>", "</s>", "<|endoftext|>"});
}
int32_t Tokenizer::pad_id() const {
    return first_special(*impl_, {"<|pad|>", "<pad>"});
}

std::string Tokenizer::fingerprint() const {
    return impl_->fingerprint;
}

}  // namespace distill
