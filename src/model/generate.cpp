#include "model/generate.h"

#include <torch/torch.h>

#include <algorithm>
#include <iterator>
#include <numeric>

#include "util/error.h"

namespace distill {

namespace {

// The tokens ordered by logit, highest first, ties by the lower id, sorted only as far as a caller
// reads. One counting pass puts them in bands of logit below the top, each a quarter of the
// temperature wide (the last takes everything further down); a band comes wholly before the next
// in that order, so a band is sorted when the walk enters it. A draw at temperature 1 from the
// demo's teacher walked 145 tokens deep on average, past the first ~1,900 tokens of weight above
// 1/16V of the sum; sorting those as far as needed (nth_element a doubling chunk at a time) was a
// fifth of a served decoding step.
class LazyOrder {
public:
    LazyOrder(const double* z, int64_t V, double zmax, double temperature) : by_(static_cast<size_t>(V)) {
        constexpr int kBands = 64;
        const double per_band = 4.0 / temperature;
        std::vector<uint8_t> band(static_cast<size_t>(V));
        start_.assign(kBands + 1, 0);
        for (int64_t i = 0; i < V; ++i) {
            const double d = (zmax - z[i]) * per_band;  // >= 0, and monotone in z; NaN goes last
            const int b = d < kBands - 1 ? static_cast<int>(d) : kBands - 1;
            band[i] = static_cast<uint8_t>(b);
            ++start_[b + 1];
        }
        for (int b = 0; b < kBands; ++b) start_[b + 1] += start_[b];
        std::vector<int64_t> fill(start_.begin(), start_.end() - 1);
        for (int64_t i = 0; i < V; ++i) by_[fill[band[i]]++] = {-z[i], i};
    }
    int64_t operator[](int64_t i) {
        while (i >= sorted_) {
            const int64_t from = sorted_;
            sorted_ = start_[++bands_sorted_];
            std::sort(by_.begin() + from, by_.begin() + sorted_);
        }
        return by_[i].second;
    }

private:
    std::vector<std::pair<double, int64_t>> by_;  // (-logit, id): the pairs' order is the tokens' order
    std::vector<int64_t> start_;                   // band b is by_[start_[b], start_[b + 1])
    int64_t sorted_ = 0, bands_sorted_ = 0;
};

}  // namespace

std::vector<std::pair<int64_t, double>> top_k_of(const double* x, int64_t n, int64_t k) {
    std::vector<std::pair<int64_t, double>> top;
    k = std::min(k, n);
    if (k <= 0) return top;
    top.reserve(static_cast<size_t>(k));
    for (int64_t i = 0; i < n; ++i) {
        if (static_cast<int64_t>(top.size()) == k) {
            if (!(x[i] > top.back().second)) continue;
            top.pop_back();
        }
        // after the equal values already kept, which have the lower indices
        auto at = top.end();
        while (at != top.begin() && std::prev(at)->second < x[i]) --at;
        top.emplace(at, i, x[i]);
    }
    return top;
}

int64_t sample_token(const torch::Tensor& logits_in, const SamplingOptions& opts,
                     std::mt19937_64& rng) {
    auto logits = logits_in.to(torch::kCPU, torch::kFloat64).contiguous();
    const int64_t V = opts.vocab_limit > 0 ? std::min(opts.vocab_limit, logits.numel()) : logits.numel();
    const double* z = logits.data_ptr<double>();
    if (opts.temperature <= 0) return std::max_element(z, z + V) - z;
    const double t = opts.temperature;
    if (opts.top_k > 0 && opts.top_k < V) {
        // the k most likely, by logit, ties by the lower id, each weighed exp((z - max) / T)
        const auto top = top_k_of(z, V, opts.top_k);
        const int64_t k = static_cast<int64_t>(top.size());
        std::vector<double> p(k);
        double sum = 0;
        for (int64_t i = 0; i < k; ++i) sum += p[i] = std::exp((top[i].second - top[0].second) / t);
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
            if (r < (acc += p[i])) return top[i].first;
        return top[p.size() - 1].first;
    }
    // the whole vocabulary: the same weights, their sum taken in id order; the draw walks the
    // tokens in order (top_p's prefix cut the same way), which is sorted only as far as it goes
    // (a full sort of the vocabulary was a third of a served decoding step)
    const double zmax = *std::max_element(z, z + V);
    std::vector<double> w(static_cast<size_t>(V));
    double sum = 0;
    for (int64_t i = 0; i < V; ++i) sum += w[i] = std::exp((z[i] - zmax) / t);
    LazyOrder order(z, V, zmax, t);
    int64_t keep = V;
    if (opts.top_p < 1.0) {
        double acc = 0;
        int64_t n = 0;
        while (n < V && acc < opts.top_p * sum) acc += w[order[n++]];
        keep = std::max<int64_t>(n, 1);
        sum = 0;
        for (int64_t i = 0; i < keep; ++i) sum += w[order[i]];
    }
    const double r = std::uniform_real_distribution<double>(0.0, sum)(rng);
    double acc = 0;
    for (int64_t i = 0; i < keep; ++i)
        if (r < (acc += w[order[i]])) return order[i];
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
