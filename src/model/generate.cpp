#include "model/generate.h"

#include <torch/torch.h>

#include <algorithm>
#include <numeric>

#include "util/error.h"

namespace distill {

int64_t sample_token(const torch::Tensor& logits_in, const SamplingOptions& opts,
                     std::mt19937_64& rng) {
    auto logits = logits_in.to(torch::kCPU, torch::kFloat64).contiguous();
    const int64_t V = opts.vocab_limit > 0 ? std::min(opts.vocab_limit, logits.numel()) : logits.numel();
    const double* z = logits.data_ptr<double>();
    if (opts.temperature <= 0) return std::max_element(z, z + V) - z;
    // the tokens by logit, highest first, ties by the lower id
    std::vector<int64_t> order(V);
    int64_t keep = V;
    if (opts.top_k > 0 && opts.top_k < V) keep = opts.top_k;
    if (keep < V) {
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                          [&](int64_t a, int64_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
        order.resize(keep);
    } else {
        // the whole vocabulary: std::sort on (-logit, id) pairs gives the same order several times
        // faster than a heap over indices (it was most of a served decoding step's time)
        std::vector<std::pair<double, int64_t>> by(V);
        for (int64_t i = 0; i < V; ++i) by[i] = {-z[i], i};
        std::sort(by.begin(), by.end());
        for (int64_t i = 0; i < V; ++i) order[i] = by[i].second;
    }
    std::vector<double> p(keep);
    const double zmax = z[order[0]];
    double sum = 0;
    for (int64_t i = 0; i < keep; ++i) sum += p[i] = std::exp((z[order[i]] - zmax) / opts.temperature);
    if (opts.top_p < 1.0) {
        // smallest prefix (by probability) whose mass reaches top_p; always keeps the first
        double acc = 0;
        int64_t n = 0;
        while (n < keep && acc < opts.top_p * sum) acc += p[n++];
        keep = std::max<int64_t>(n, 1);
        p.resize(keep);
        sum = std::accumulate(p.begin(), p.end(), 0.0);
    }
    std::uniform_real_distribution<double> u(0.0, sum);
    double r = u(rng), acc = 0;
    for (int64_t i = 0; i < keep; ++i) {
        acc += p[i];
        if (r < acc) return order[i];
    }
    return order[keep - 1];
}

std::vector<int64_t> generate(Llama& model, const std::vector<int64_t>& prompt,
                              const SamplingOptions& opts,
                              const std::function<void(int64_t)>& on_token) {
    DISTILL_CHECK(!prompt.empty(), "generation needs a non-empty prompt");
    torch::NoGradGuard ng;
    std::mt19937_64 rng(opts.seed);
    KVCache cache;
    const int64_t max_len = model->config().max_position_embeddings;
    std::vector<int64_t> ctx = prompt;
    if (static_cast<int64_t>(ctx.size()) >= max_len) ctx.erase(ctx.begin(), ctx.end() - (max_len - 1));
    const torch::Device dev = model->parameters().front().device();
    auto ids = torch::tensor(ctx, torch::kInt64).unsqueeze(0).to(dev);
    auto logits = model->forward(ids, &cache).select(1, -1).squeeze(0);  // (V)
    std::vector<int64_t> out;
    for (int64_t i = 0; i < opts.max_new_tokens; ++i) {
        if (opts.watermark) watermark_apply(*opts.watermark, ctx, logits);
        int64_t next = sample_token(logits, opts, rng);
        out.push_back(next);
        if (opts.watermark) ctx.push_back(next);
        if (on_token) on_token(next);
        if (std::find(opts.stop_ids.begin(), opts.stop_ids.end(), next) != opts.stop_ids.end()) break;
        if (cache.length() + 1 > max_len) break;
        auto in = torch::tensor({next}, torch::kInt64).unsqueeze(0).to(dev);
        logits = model->forward(in, &cache).select(1, -1).squeeze(0);
    }
    return out;
}

}  // namespace distill
