// distill — autoregressive generation with a KV cache, and sampling.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "guard/watermark.h"
#include "model/llama.h"

namespace distill {

struct SamplingOptions {
    double temperature = 1.0;  // 0 = greedy
    int64_t top_k = 0;         // 0 = off
    double top_p = 1.0;        // 1 = off
    uint64_t seed = 0;
    int64_t max_new_tokens = 64;
    std::vector<int64_t> stop_ids;  // stop when one of these is sampled (ModelConfig::stop_ids)
    // Only ids below this are drawn (0 = all): a model's rows beyond its tokenizer's tokens
    // (Qwen2.5 has 151,936 rows for 151,665 tokens) have no text to decode.
    int64_t vocab_limit = 0;
    // Adds delta to the green logits (from the key and the last h ids, prompt included) before
    // temperature / top-k / top-p; positions with fewer than h ids before them are left as they are.
    std::optional<WatermarkOptions> watermark;
};

// The k largest of x[0, n) and their indices, largest first, ties by the lower index (k clipped to
// n): one pass that keeps the k best so far in order.
std::vector<std::pair<int64_t, double>> top_k_of(const double* x, int64_t n, int64_t k);

// Draws one id from logits (V) with the options' temperature / top-k / top-p (the watermark, if
// any, is the caller's: watermark_apply before this).
int64_t sample_token(const torch::Tensor& logits, const SamplingOptions& opts, std::mt19937_64& rng);

// Generates up to max_new_tokens after `prompt` (non-empty). `on_token` (optional) sees each new
// id as it is produced. Returns the new ids.
std::vector<int64_t> generate(Llama& model, const std::vector<int64_t>& prompt,
                              const SamplingOptions& opts,
                              const std::function<void(int64_t)>& on_token = nullptr);

}  // namespace distill
