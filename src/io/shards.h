// distill — token shards: a flat little-endian array of token ids (<name>.bin, u16 or u32) plus a
// small JSON header (<name>.json), memory-mapped for reading.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "io/shard-header.h"
#include "util/file.h"

namespace distill {

// Writes <prefix>.bin and <prefix>.json atomically (the header last, so a shard whose header
// exists is complete).
ShardInfo write_shard(const std::string& prefix, const std::vector<int32_t>& ids, int64_t vocab_size,
                      const std::string& tokenizer_fingerprint, const std::string& source,
                      int64_t source_bytes);

class TokenShard {
public:
    // Opens and checks a shard (header readable, data size matches, ids < vocab_size).
    explicit TokenShard(const std::string& prefix);
    const ShardInfo& info() const { return info_; }
    int64_t size() const { return info_.num_tokens; }
    int64_t at(int64_t i) const;
    // ids [begin, begin + n) as an int64 tensor (n)
    torch::Tensor slice(int64_t begin, int64_t n) const;

private:
    ShardInfo info_;
    MappedFile data_;
};

// Aligned windows of T positions in a shard of num_tokens tokens: window w = tokens [w*T, w*T+T]
// (its targets run one further), as a logit cache indexes them.
int64_t num_aligned_windows(int64_t num_tokens, int64_t T);

}  // namespace distill
