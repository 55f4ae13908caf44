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

// How training windows are drawn from a shard. Every batch is a pure function of (seed, step),
// so resuming at step s draws exactly the batches an uninterrupted run would.
struct BatchSpec {
    int64_t batch_size = 16;  // B
    int64_t seq_len = 128;    // T
    uint64_t seed = 1;
    // Aligned: windows start at multiples of T (window w = tokens [w*T, w*T+T]); used where a
    // captured teacher cache indexes the same windows. Otherwise any offset.
    bool aligned = false;
};

int64_t num_aligned_windows(int64_t num_tokens, int64_t T);

// For step `step` and micro-batch `micro`: tokens (B, T+1) int64 and, when aligned, the window
// indices (B) into the cache.
struct Batch {
    torch::Tensor tokens;
    std::vector<int64_t> windows;
};
Batch sample_batch(const TokenShard& shard, const BatchSpec& spec, int64_t step, int64_t micro);

}  // namespace distill
