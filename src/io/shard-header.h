// distill — the token shard header (<name>.json) and the checks of its ids (<name>.bin), from
// bytes in memory and without libtorch, so TokenShard and the fuzzers share them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace distill {

struct ShardInfo {
    int64_t num_tokens = 0;
    int64_t vocab_size = 0;
    int width = 2;                      // bytes per id: 2 (u16) or 4 (u32)
    std::string tokenizer_fingerprint;  // the tokenizer that produced the ids
    std::string source;                 // where the text came from (path or name)
    std::string fingerprint;            // hash of the ids
    int64_t source_bytes = 0;           // UTF-8 bytes of the text the ids encode
};

// Parses <name>.json (its text; `path` names it in errors). Throws Error on invalid JSON, a wrong
// format, a missing field, a wrong type or a negative count.
ShardInfo parse_shard_header(const std::string& json_text, const std::string& path);

// Checks the ids (<name>.bin, `size` bytes at `data`) against the header: the size matches and
// every id is < vocab_size. Throws Error naming `path`.
void check_shard_ids(const ShardInfo& info, const uint8_t* data, size_t size,
                     const std::string& path);

// Id i of a checked shard (little-endian u16 or u32).
inline int64_t shard_token(const uint8_t* data, int width, int64_t i) {
    if (width == 2) {
        uint16_t v;
        std::memcpy(&v, data + i * 2, 2);
        return v;
    }
    uint32_t v;
    std::memcpy(&v, data + i * 4, 4);
    return v;
}

}  // namespace distill
