// distill — tokenizer internals shared by the files of src/tokenizer/: tokenizer.cpp (the public
// Tokenizer), byte-alphabet.cpp, pretokenize.cpp, added-tokens.cpp, bpe.cpp, tokenizer-json.cpp,
// tokenizer-pipeline.cpp and bpe-train.cpp. Private: include only from src/tokenizer/.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "util/utf8.h"

namespace distill {

// The GPT-2 pre-tokenizer regex, as HF's ByteLevel pre-tokenizer uses it (use_regex = true).
inline constexpr const char* kGpt2SplitRegex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// UTF-8: util/utf8.h (the project's one decoder).

// ---- GPT-2 byte <-> unicode alphabet (byte-alphabet.cpp) -----------------------------------

struct ByteAlphabet {
    uint32_t byte_to_cp[256];
    std::string byte_to_str[256];  // UTF-8 of byte_to_cp
    int16_t cp_to_byte[324];       // -1 where the code point is not in the alphabet
    ByteAlphabet();
    static const ByteAlphabet& get();
    // Maps raw bytes to the alphabet's characters ("Ġthe" for " the").
    std::string encode(std::string_view bytes) const;
    // Inverse; false if some character is not in the alphabet.
    bool decode(std::string_view token, std::string& out) const;
};

// ---- Regex (PCRE2, UTF + UCP, JIT; pretokenize.cpp) ----------------------------------------

class Regex {
  public:
    // Throws Error (mentioning `what`) if the pattern does not compile.
    Regex(const std::string& pattern, const std::string& what);
    ~Regex();
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;
    // Non-overlapping leftmost matches in s[0, n), as byte ranges. Empty matches are skipped.
    // `s` must be valid UTF-8.
    void find_all(const char* s, size_t n, std::vector<std::pair<size_t, size_t>>& out) const;
    // Every match of the regex (or of `literal` when the regex is null) replaced by `content`.
    static std::string replace_all(const Regex* re, const std::string& literal,
                                   std::string_view s, const std::string& content);
    const std::string& pattern() const { return pattern_; }

  private:
    void* code_ = nullptr;  // pcre2_code_8*
    std::string pattern_;
};

// Onig (which HF uses) and PCRE2 disagree on a few characters for \s and \S; rewrites them into
// explicit classes with Onig's meaning. Exposed for tests.
std::string regex_onig_to_pcre2(const std::string& pattern);

// ---- Normalizers (tokenizer-pipeline.cpp) --------------------------------------------------

// One step of the normalizer (HF's NormalizerWrapper, the supported subset).
struct NormStep {
    enum class Kind { kNFC, kNFD, kNFKC, kNFKD, kLowercase, kReplace, kPrepend, kStrip };
    Kind kind = Kind::kNFC;
    std::shared_ptr<const Regex> regex;  // Replace with a {"Regex": ...} pattern
    std::string literal;                 // Replace with a {"String": ...} pattern
    std::string content;                 // Replace: the replacement; Prepend: the prefix
    bool strip_left = false, strip_right = false;
};

// Runs the steps over valid UTF-8 `in` (may contain NUL); the result is valid UTF-8.
std::string normalize_text(const std::vector<NormStep>& steps, std::string_view in);
// Unicode White_Space (Rust's char::is_whitespace), for Strip and added-token lstrip/rstrip.
bool is_white_space(uint32_t cp);
// The Rust regex crate's \w (Alphabetic, marks, Nd, Pc, joiners), for added-token single_word.
bool is_word_char(uint32_t cp);

// ---- Pre-tokenizer pipeline (pretokenize.cpp) ----------------------------------------------

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
enum class PrependScheme { kAlways, kFirst, kNever };

// One step of a pre-tokenizer: splits each piece into smaller pieces. ByteLevel must be the last
// step (it also maps bytes to the GPT-2 alphabet, which the BPE model sees). Digits is a Split on
// \p{N} (Isolated with individual_digits, else Contiguous).
struct PreTokStep {
    enum class Kind { kByteLevel, kSplit, kMetaspace };
    Kind kind = Kind::kByteLevel;
    // ByteLevel
    bool add_prefix_space = false;
    bool use_regex = true;
    // Split (and ByteLevel with use_regex: the GPT-2 regex, Isolated)
    std::shared_ptr<const Regex> regex;
    std::string literal;  // Split with a {"String": ...} pattern
    SplitBehavior behavior = SplitBehavior::kIsolated;
    bool invert = false;
    // Metaspace: spaces become `replacement` (UTF-8 of one character), then a prefix, then a
    // split before each replacement character (MergedWithNext) if `split`.
    std::string replacement;
    PrependScheme prepend = PrependScheme::kAlways;
    bool split = true;
};

// ---- Decoders (tokenizer-pipeline.cpp) -----------------------------------------------------

// One step of the decoder (HF's DecoderWrapper, the supported subset); each maps the list of
// token strings to a new list, and decode() joins the last list.
struct DecStep {
    enum class Kind { kByteLevel, kByteFallback, kFuse, kStrip, kReplace, kMetaspace };
    Kind kind = Kind::kByteLevel;
    std::shared_ptr<const Regex> regex;  // Replace
    std::string literal, content;        // Replace: pattern (String) and replacement
    uint32_t ch = 0;                     // Strip: the character; Metaspace: the replacement
    size_t start = 0, stop = 0;          // Strip: how many to cut at most at each end
    bool prepend_never = false;          // Metaspace: prepend_scheme is "never"
};

// Runs the decoder steps (HF's decode_chain, one step after the other).
void decode_steps(const std::vector<DecStep>& steps, std::vector<std::string>& tokens);

// ---- Added (special) tokens (added-tokens.cpp) ---------------------------------------------

struct AddedToken {
    int32_t id = -1;
    std::string content;
    bool special = true;
    bool normalized = false;
    bool single_word = false, lstrip = false, rstrip = false;
};

// ---- The tokenizer -------------------------------------------------------------------------

// A piece of text between added tokens (id < 0), or an added token's span (id >= 0).
struct AddedSpan {
    size_t a, b;
    int32_t id;
};

struct Tokenizer::Impl {
    // Vocabulary. id_to_token[i] is empty for ids that are holes.
    std::vector<std::string> id_to_token;
    std::vector<std::string> id_bytes;               // what decode() emits for the id alone
    std::vector<uint8_t> id_kind;                    // 0 hole, 1 model, 2 added, 3 added+special
    std::unordered_map<std::string, int32_t> vocab;  // the BPE model's vocabulary
    std::unordered_map<std::string, int32_t> token_ids;  // vocab + added tokens

    // BPE model.
    std::vector<std::pair<int32_t, int32_t>> merges;                      // in rank order
    std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merge_map;  // pair -> rank,new
    bool ignore_merges = false;
    int32_t unk_id = -1;
    std::string unk_token;  // empty: none
    bool fuse_unk = false;
    bool byte_fallback = false;  // characters not in the vocabulary become <0xNN> tokens
    bool byte_level = true;      // the pipeline ends with ByteLevel: words are seen as mapped bytes
    int32_t byte_ids[256];       // byte-level: the id of each single-byte symbol, -1 if absent
    int32_t fallback_ids[256];   // the id of "<0xNN>", -1 if absent

    // Pipeline.
    std::vector<AddedToken> added;
    std::vector<NormStep> norm;
    std::vector<PreTokStep> pre;
    std::vector<DecStep> dec;
    bool has_decoder = true;  // false: decode() joins the tokens with spaces, as HF does
    // Parts stored as given and written back unchanged (only their supported subset is used).
    nlohmann::json normalizer, pre_tokenizer, post_processor, decoder, truncation, padding;
    std::string version = "1.0";

    std::string fingerprint;

    // word -> ids cache for encode (guarded; encode() is const and may run on many threads).
    mutable std::shared_mutex cache_mu;
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

    Impl();
    Impl(const Impl& o);

    // Builds the derived tables (token_ids, id_bytes, merge_map, byte_ids, fingerprint) after
    // id_to_token / vocab / merges / added / pipeline are set. Throws Error naming `source`.
    void finalize(const std::string& source);
    // Parts of finalize(): merge_map from merges (bpe.cpp; throws Error naming `source`), and the
    // added-token matching tables below (added-tokens.cpp).
    void build_merge_map(const std::string& source);
    void build_added_tables();

    // HF's AddedVocabulary::find_matches over `text` (valid UTF-8) with the tokens that are
    // matched before normalization (`normalized` false) or after it (true): leftmost-longest,
    // then single_word, lstrip, rstrip. Appends spans covering `text` (no empty text spans).
    void find_added(std::string_view text, bool normalized, std::vector<AddedSpan>& out) const;

    // Splits `text` (valid UTF-8) on the added tokens matched before normalization; calls
    // on_text(string_view) for the text between them and on_added(id) for each match.
    template <typename OnText, typename OnAdded>
    void split_added(std::string_view text, OnText&& on_text, OnAdded&& on_added) const;

    // Runs the pre-tokenizer on one segment (valid UTF-8); appends word byte ranges into
    // `words` (views into `segment` or into `storage`). `at_start`: the segment begins the
    // input (Metaspace's prepend_scheme "first").
    void pre_tokenize(std::string_view segment, std::string& storage,
                      std::vector<std::string_view>& words, bool at_start = true) const;

    // BPE of one pre-tokenized word (raw bytes), as HF's Word::merge_all does it.
    void bpe_word(std::string_view word, std::vector<int32_t>& out) const;
    void encode_word_cached(std::string_view word, std::vector<int32_t>& out) const;

    // Added-token matching tables: indices into `added`, by the first byte of what is matched
    // (the content, or the normalized content), longest first.
    std::vector<std::vector<int32_t>> raw_by_first_byte, norm_by_first_byte;
    std::vector<std::string> added_match;  // what each added token matches
    bool any_normalized_added = false;
};

// ---- tokenizer.json (tokenizer-json.cpp) ---------------------------------------------------

// Parses tokenizer.json text into `m` and finalizes it. Throws Error naming `source` ("tokenizer
// 'path'" or "tokenizer JSON") and the field at fault.
void load_into(Tokenizer::Impl& m, const std::string& text, const std::string& source);
// The tokenizer.json text of `m` (what save() writes; the fingerprint is its hash).
std::string impl_to_json(const Tokenizer::Impl& m);
// Sets the pipeline distill trains with (ByteLevel pre-tokenizer, post-processor, decoder).
void impl_set_default_pipeline(Tokenizer::Impl& m);

template <typename OnText, typename OnAdded>
void Tokenizer::Impl::split_added(std::string_view text, OnText&& on_text,
                                  OnAdded&& on_added) const {
    if (added.empty()) {
        if (!text.empty()) on_text(text);
        return;
    }
    std::vector<AddedSpan> spans;
    find_added(text, false, spans);
    for (const AddedSpan& s : spans) {
        if (s.id >= 0)
            on_added(s.id);
        else
            on_text(text.substr(s.a, s.b - s.a));
    }
}

}  // namespace distill
