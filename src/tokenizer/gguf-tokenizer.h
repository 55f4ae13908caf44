// distill — byte-level BPE tokenizers in GGUF metadata (tokenizer.ggml.*), both ways: the HF
// tokenizer.json equivalent to a file's metadata, and the metadata of a Tokenizer for export.
// Format and supported pre-tokenizers: docs/gguf.md ("Tokenizer").
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "io/gguf.h"
#include "tokenizer/tokenizer.h"

namespace distill {

// The HF tokenizer.json text equivalent to the file's tokenizer.ggml.* metadata.
std::string tokenizer_json_from_gguf(const GgufFile& f);

// The tokenizer.ggml.* metadata of `tok` for a model with `vocab_size` embedding rows: model,
// pre, tokens, token_type, merges, add_bos/eos_token, then bos/eos/padding_token_id. Ids beyond
// the tokenizer (or holes in it) become UNUSED "[PADn]" tokens. `bos_id` / `eos_id`: the model's
// own, or -1 for the tokenizer's. Throws Error if GGUF cannot hold the tokenizer (pre-tokenizer,
// normalizer, a merge with a space, more tokens than `vocab_size`).
std::vector<std::pair<std::string, GgufValue>> tokenizer_gguf_metadata(const Tokenizer& tok,
                                                                       int64_t vocab_size,
                                                                       int64_t bos_id = -1,
                                                                       int64_t eos_id = -1);

}  // namespace distill
