// distill — byte-level BPE tokenizer, stored as a Hugging Face tokenizer.json.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace distill {

struct TokenizerTrainOptions {
    int vocab_size = 4096;   // total, including the 256 byte tokens and the special tokens
    int min_frequency = 2;   // a pair must occur at least this often to be merged
    std::vector<std::string> special_tokens = {"<|bos|>", "<|eos|>", "<|pad|>"};
};

class Tokenizer {
public:
    Tokenizer();
    ~Tokenizer();
    Tokenizer(const Tokenizer&);
    Tokenizer& operator=(const Tokenizer&);
    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;

    // Loads a tokenizer.json; throws Error (naming the file and the problem) on bad input.
    static Tokenizer load(const std::string& path);
    static Tokenizer from_json(const std::string& json_text);
    // Trains byte-level BPE on a corpus (UTF-8 text).
    static Tokenizer train(std::string_view corpus, const TokenizerTrainOptions& opts);

    std::string to_json() const;
    void save(const std::string& path) const;  // atomic

    // Text -> ids. Special tokens that appear literally in the text are matched first (as HF
    // does). No BOS/EOS is added. Invalid UTF-8: see the README/docs for the documented behaviour.
    std::vector<int32_t> encode(std::string_view text) const;
    // Ids -> text; byte sequences that are not valid UTF-8 become U+FFFD (as HF's decoder does).
    std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
    // What the token decodes to on its own (byte-level: its raw bytes; <0xNN>: that byte).
    std::string token_bytes(int32_t id) const;
    std::string id_to_token(int32_t id) const;  // the vocabulary string (e.g. "Ġthe")
    int32_t token_to_id(const std::string& token) const;  // -1 if absent
    bool is_special(int32_t id) const;  // an added token marked special (<|bos|>, ...)

    int vocab_size() const;
    int32_t bos_id() const;  // -1 if the tokenizer has none
    int32_t eos_id() const;
    int32_t pad_id() const;
    // A stable fingerprint of the vocabulary, merges and settings (hex).
    std::string fingerprint() const;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace distill
