#include "model/generate.h"

#include <torch/torch.h>

#include <algorithm>
#include <numeric>

#include "util/error.h"

namespace distill {

namespace {

// The tokens ordered by logit, highest first, ties by the lower id, sorted only as far as a caller
// reads: a draw usually stops within the first few dozen, so the rest of the vocabulary is split
// off (nth_element) and sorted a doubling chunk at a time when the walk gets there.
class LazyOrder {
public:
    LazyOrder(const double* z, int64_t V) : by_(static_cast<size_t>(V)) {
        for (int64_t i = 0; i < V; ++i) by_[i] = {-z[i], i};
    }
    int64_t operator[](int64_t i) {
        if (i >= sorted_) extend(i + 1);
        return by_[i].second;
    }

private:
    void extend(int64_t need) {
        const int64_t V = static_cast<int64_t>(by_.size());
        while (sorted_ < need) {
            const int64_t to = std::min(V, sorted_ + chunk_);
            if (to < V) std::nth_element(by_.begin() + sorted_, by_.begin() + to, by_.end());
            std::sort(by_.begin() + sorted_, by_.begin() + to);
            sorted_ = to;
            chunk_ *= 2;
        }
    }
    std::vector<std::pair<double, int64_t>> by_;  // (-logit, id): the pairs' order is the tokens' order
    int64_t sorted_ = 0, chunk_ = 64;
};

}  // namespace

int64_t sample_token(const torch::Tensor& logits_in, const SamplingOptions& opts,
                     std::mt19937_64& rng) {
    auto logits = logits_in.to(torch::kCPU, torch::kFloat64).contiguous();
    const int64_t V = opts.vocab_limit > 0 ? std::min(opts.vocab_limit, logits.numel()) : logits.numel();
    const double* z = logits.data_ptr<double>();
    if (opts.temperature <= 0) return std::max_element(z, z + V) - z;
    const double t = opts.temperature;
    if (opts.top_k > 0 && opts.top_k < V) {
        // the k most likely, by logit, ties by the lower id, each weighed exp((z - max) / T)
        const int64_t k = opts.top_k;
        std::vector<int64_t> order(V);
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + k, order.end(),
                          [&](int64_t a, int64_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
        std::vector<double> p(k);
        double sum = 0;
        for (int64_t i = 0; i < k; ++i) sum += p[i] = std::exp((z[order[i]] - z[order[0]]) / t);
        if (opts.top_p < 1.0) {
            // smallest prefix (by probability) whose mass reaches top_p; always keeps the first
            double acc = 0;
            int64_t n = 0;
            while (n < k && acc < opts.top_p * sum) acc += p[n++];
            p.resize(std::max<int64_t>(n, 1));
            sum = std::accumulate(p.begin(), p.end(), 0.0);
        }
        const double r = std::uniform_real_distribution<double>(0.0, sum)(rng);
        double acc = 0;
        for (size_t i = 0; i < p.size(); ++i)
            if (r < (acc += p[i])) return order[i];
        return order[p.size() - 1];
    }
    // the whole vocabulary: the same weights, their sum taken in id order; the draw walks the
    // tokens in order (top_p's prefix cut the same way), which is sorted only as far as it goes
    // (a full sort of the vocabulary was a third of a served decoding step)
    const double zmax = *std::max_element(z, z + V);
    auto weight = [&](int64_t id) { return std::exp((z[id] - zmax) / t); };
    double sum = 0;
    for (int64_t i = 0; i < V; ++i) sum += weight(i);
    LazyOrder order(z, V);
    int64_t keep = V;
    if (opts.top_p < 1.0) {
        double acc = 0;
        int64_t n = 0;
        while (n < V && acc < opts.top_p * sum) acc += weight(order[n++]);
        keep = std::max<int64_t>(n, 1);
        sum = 0;
        for (int64_t i = 0; i < keep; ++i) sum += weight(order[i]);
    }
    const double r = std::uniform_real_distribution<double>(0.0, sum)(rng);
    double acc = 0;
    for (int64_t i = 0; i < keep; ++i)
        if (r < (acc += weight(order[i]))) return order[i];
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
