#include "train/batches.h"

#include <torch/torch.h>

#include <random>

#include "util/error.h"

namespace distill {

Batch sample_batch(const TokenShard& shard, const BatchSpec& spec, int64_t step, int64_t micro) {
    const int64_t B = spec.batch_size, T = spec.seq_len, N = shard.size();
    DISTILL_CHECK(N > T + 1, "the token shard '", shard.info().source, "' has ", N,
                  " tokens: too few for windows of ", T, " (use a shorter --seq-len or more text)");
    // splitmix-style seed so that (seed, step, micro) streams do not overlap
    std::seed_seq seq{static_cast<uint32_t>(spec.seed), static_cast<uint32_t>(spec.seed >> 32),
                      static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32),
                      static_cast<uint32_t>(micro)};
    std::mt19937_64 rng(seq);
    const int64_t r0 = spec.row_begin, r1 = spec.row_end > 0 ? spec.row_end : B;
    DISTILL_ASSERT(0 <= r0 && r0 < r1 && r1 <= B, "batch rows out of range");
    Batch b;
    b.tokens = torch::empty({r1 - r0, T + 1}, torch::kInt64);
    const int64_t W = num_aligned_windows(N, T);
    for (int64_t i = 0; i < B; ++i) {
        int64_t start, w = -1;
        if (spec.aligned) {
            w = std::uniform_int_distribution<int64_t>(0, W - 1)(rng);
            start = w * T;
        } else {
            start = std::uniform_int_distribution<int64_t>(0, N - T - 1)(rng);
        }
        if (i < r0 || i >= r1) continue;
        if (spec.aligned) b.windows.push_back(w);
        b.starts.push_back(start);
        b.tokens[i - r0].copy_(shard.slice(start, T + 1));
    }
    if (spec.device != b.tokens.device()) b.tokens = b.tokens.to(spec.device);
    return b;
}

}  // namespace distill
