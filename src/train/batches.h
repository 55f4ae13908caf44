// distill — how training windows are drawn from a token shard. Every batch is a pure function of
// (seed, step, micro), so resuming at step s draws exactly the batches an uninterrupted run would.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "io/shards.h"

namespace distill {

struct BatchSpec {
    int64_t batch_size = 16;  // B
    int64_t seq_len = 128;    // T
    uint64_t seed = 1;
    // Aligned: windows start at multiples of T (window w = tokens [w*T, w*T+T]); used where a
    // captured teacher cache indexes the same windows. Otherwise any offset.
    bool aligned = false;
    torch::Device device = torch::kCPU;  // where the batch's tokens are put
    // Data parallel: this process keeps rows [row_begin, row_end) of the global batch of B (all
    // B windows are drawn, so every rank's rows are the ones one process would compute there).
    // row_end 0 = all rows.
    int64_t row_begin = 0, row_end = 0;
};

// For step `step` and micro-batch `micro`: tokens (B, T+1) int64 (B = the kept rows), where each
// row starts in the shard (B) and, when aligned, the window indices (B) into the cache.
struct Batch {
    torch::Tensor tokens;
    std::vector<int64_t> starts;
    std::vector<int64_t> windows;
};
Batch sample_batch(const TokenShard& shard, const BatchSpec& spec, int64_t step, int64_t micro);

}  // namespace distill
