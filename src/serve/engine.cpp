#include "serve/engine.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <xxhash.h>

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace distill {

TokenLogprob token_logprob(const double* lp, int64_t V, int64_t id, int64_t k) {
    TokenLogprob t;
    t.id = id;
    t.logprob = lp[id];
    t.top = top_k_of(lp, V, k);
    return t;
}

TokenLogprob token_logprob(const torch::Tensor& lp_row, int64_t id, int64_t k) {
    const torch::Tensor row = lp_row.to(torch::kCPU, torch::kFloat64).contiguous();
    return token_logprob(row.data_ptr<double>(), row.numel(), id, k);
}

double logprob_noise_z(uint64_t key, const int64_t* context, size_t n, int64_t id) {
    unsigned char buf[5 * 4];
    size_t len = 0;
    auto put = [&](int64_t v) {
        const uint32_t u = static_cast<uint32_t>(v);
        for (int b = 0; b < 4; ++b) buf[len++] = static_cast<unsigned char>(u >> (8 * b));
    };
    for (size_t i = n > 4 ? n - 4 : 0; i < n; ++i) put(context[i]);
    put(id);
    const XXH128_hash_t h = XXH3_128bits_withSeed(buf, len, key);
    const double u1 = (static_cast<double>(h.low64 >> 11) + 0.5) * 0x1.0p-53;  // (0, 1)
    const double u2 = static_cast<double>(h.high64 >> 11) * 0x1.0p-53;        // [0, 1)
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

void add_logprob_noise(TokenLogprob& t, double sigma, uint64_t key, const int64_t* context, size_t n) {
    if (sigma <= 0) return;
    auto noisy = [&](int64_t id, double lp) { return std::min(0.0, lp + sigma * logprob_noise_z(key, context, n, id)); };
    t.logprob = noisy(t.id, t.logprob);
    for (auto& [id, lp] : t.top) lp = id == t.id ? t.logprob : noisy(id, lp);
    std::stable_sort(t.top.begin(), t.top.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
}

namespace {
// logits (..., V) on any device -> log-probs in float64 on the host
torch::Tensor host_logprobs(const torch::Tensor& logits) {
    return torch::log_softmax(logits.to(torch::kCPU, torch::kFloat64), -1).contiguous();
}
}  // namespace

Engine::Engine(Llama model, int64_t parallel, std::shared_ptr<Antidistill> antidistill)
    : model_(std::move(model)), ad_(std::move(antidistill)), parallel_(std::max<int64_t>(1, parallel)),
      max_len_(model_->config().max_position_embeddings) {
    model_->eval();
    thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void Engine::submit(std::shared_ptr<GenRequest> r) {
    std::vector<std::shared_ptr<GenRequest>> one;
    one.push_back(std::move(r));
    submit(std::move(one));
}

void Engine::submit(std::vector<std::shared_ptr<GenRequest>> rs) {
    for (const auto& r : rs) DISTILL_CHECK(!r->prompt.empty(), "a request needs a non-empty prompt");
    {
        std::lock_guard<std::mutex> lk(mu_);
        for (auto& r : rs) queue_.push_back(std::move(r));
    }
    cv_.notify_all();
}

EngineStats Engine::stats() const {
    std::lock_guard<std::mutex> lk(mu_);
    EngineStats s;
    s.queued = static_cast<int64_t>(queue_.size());
    s.active = static_cast<int64_t>(slots_.size());
    s.slots = parallel_;
    s.steps = steps_;
    s.batched_tokens = batched_tokens_;
    s.prefills = prefills_;
    s.prefill_forwards = prefill_forwards_;
    return s;
}

void Engine::loop() {
    torch::NoGradGuard no_grad;
    for (;;) {
        std::vector<std::shared_ptr<GenRequest>> admit;
        {
            std::unique_lock<std::mutex> lk(mu_);
            cv_.wait(lk, [&] { return stopping_ || !queue_.empty() || !slots_.empty(); });
            if (stopping_) break;
            // new prompts are prefilled between decoding steps, as long as slots are free
            while (!queue_.empty() && static_cast<int64_t>(slots_.size() + admit.size()) < parallel_) {
                admit.push_back(std::move(queue_.front()));
                queue_.pop_front();
            }
        }
        prefill(std::move(admit));
        try {
            step();
        } catch (const std::exception& e) {
            // a failed batched step fails its requests, not the server
            std::lock_guard<std::mutex> lk(mu_);
            for (auto& s : slots_)
                if (s->req->on_done) s->req->on_done(FinishReason::Error, e.what());
            slots_.clear();
        }
    }
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& s : slots_)
        if (s->req->on_done) s->req->on_done(FinishReason::Cancelled, "the server is shutting down");
    for (auto& r : queue_)
        if (r->on_done) r->on_done(FinishReason::Cancelled, "the server is shutting down");
    slots_.clear();
    queue_.clear();
}

void Engine::prefill(std::vector<std::shared_ptr<GenRequest>> admitted) {
    auto fail = [](const std::shared_ptr<GenRequest>& r, const std::exception& e) {
        if (r->on_done) r->on_done(FinishReason::Error, e.what());
    };
    std::vector<std::shared_ptr<GenRequest>> ready;
    for (auto& r : admitted) {
        if (r->cancelled) {
            if (r->on_done) r->on_done(FinishReason::Cancelled, "");
            continue;
        }
        const int64_t T = static_cast<int64_t>(r->prompt.size());
        try {
            DISTILL_CHECK(T < max_len_ || (T == max_len_ && r->sampling.max_new_tokens == 0), "the prompt has ", T,
                          " tokens; the model's context is ", max_len_);
            if (ad_) prefill_one(r);
            else ready.push_back(r);
        } catch (const std::exception& e) {
            fail(r, e);
        }
    }
    // the requests that decode apart from those only scored (which keep no cache), longest first;
    // a group takes the next prompt while padding stays within a fifth of its positions and the
    // logits it keeps (every position of a scored prompt, the last of the others) under 2^25
    // values. On the demo's echo capture (windows of 129 tokens, 4 to a request), one forward per
    // prompt left both threads in OpenMP waits for a quarter of their time: 1000 windows took
    // 13-16 s, against 10 s in shared forwards.
    auto key = [](const std::shared_ptr<GenRequest>& r) {
        return std::make_pair(r->sampling.max_new_tokens > 0, -static_cast<int64_t>(r->prompt.size()));
    };
    std::stable_sort(ready.begin(), ready.end(), [&](const auto& a, const auto& b) { return key(a) < key(b); });
    const int64_t V = model_->config().vocab_size, budget = int64_t{1} << 25;
    for (size_t i = 0; i < ready.size();) {
        const bool decodes = ready[i]->sampling.max_new_tokens > 0;
        const int64_t Tmax = static_cast<int64_t>(ready[i]->prompt.size());
        int64_t tokens = 0, rows = 0;
        size_t j = i;
        for (; j < ready.size() && (ready[j]->sampling.max_new_tokens > 0) == decodes; ++j) {
            const int64_t T = static_cast<int64_t>(ready[j]->prompt.size());
            const int64_t r = ready[j]->prompt_logprobs && ready[j]->on_prompt ? Tmax : 1;
            const int64_t n = static_cast<int64_t>(j - i) + 1;
            if (j > i && (4 * n * Tmax > 5 * (tokens + T) || (rows + r) * V > budget)) break;
            tokens += T;
            rows += r;
        }
        std::vector<std::shared_ptr<GenRequest>> group(ready.begin() + static_cast<std::ptrdiff_t>(i),
                                                       ready.begin() + static_cast<std::ptrdiff_t>(j));
        try {
            prefill_group(group, decodes);
        } catch (const std::exception& e) {
            for (auto& r : group) fail(r, e);  // (start() reports its own failures)
        }
        i = j;
    }
}

void Engine::prefill_group(const std::vector<std::shared_ptr<GenRequest>>& group, bool decodes) {
    const int64_t B = static_cast<int64_t>(group.size());
    int64_t Tmax = 0;
    for (const auto& r : group) Tmax = std::max<int64_t>(Tmax, static_cast<int64_t>(r->prompt.size()));
    std::vector<int64_t> padded(static_cast<size_t>(B * Tmax), 0);
    for (int64_t b = 0; b < B; ++b) std::copy(group[b]->prompt.begin(), group[b]->prompt.end(), padded.begin() + b * Tmax);
    const torch::Device dev = model_->parameters().front().device();
    const torch::Tensor ids = torch::from_blob(padded.data(), {B, Tmax}, torch::kInt64).to(dev, /*non_blocking=*/false,
                                                                                            /*copy=*/true);
    KVCache cache;
    // a group that only scores keeps no cache (and takes the fused cache-free attention)
    const torch::Tensor h = model_->hidden(ids, decodes ? &cache : nullptr);
    {
        std::lock_guard<std::mutex> lk(mu_);
        prefills_ += B;
        ++prefill_forwards_;
    }
    const torch::Tensor flat = h.reshape({B * Tmax, h.size(-1)});
    // the head on the rows whose logits are read: every position of a scored prompt, else the last
    std::vector<int64_t> rows, first(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) {
        const int64_t T = static_cast<int64_t>(group[b]->prompt.size());
        first[b] = static_cast<int64_t>(rows.size());
        const bool scored = group[b]->prompt_logprobs && group[b]->on_prompt;
        for (int64_t t = scored ? 0 : T - 1; t < T; ++t) rows.push_back(b * Tmax + t);
    }
    const torch::Tensor logits =
        static_cast<int64_t>(rows.size()) == B * Tmax
            ? model_->head(flat)
            : model_->head(flat.index_select(0, torch::tensor(rows, torch::kInt64).to(dev)));
    for (int64_t b = 0; b < B; ++b) {
        const int64_t n = (b + 1 < B ? first[b + 1] : static_cast<int64_t>(rows.size())) - first[b];
        try {
            start(group[b], logits.narrow(0, first[b], n), torch::Tensor(), decodes ? &cache : nullptr, b);
        } catch (const std::exception& e) {
            if (group[b]->on_done) group[b]->on_done(FinishReason::Error, e.what());
        }
    }
}

void Engine::prefill_one(const std::shared_ptr<GenRequest>& r) {
    const int64_t T = static_cast<int64_t>(r->prompt.size());
    const torch::Device dev = model_->parameters().front().device();
    const bool decodes = r->sampling.max_new_tokens > 0;
    const bool scored = r->prompt_logprobs && r->on_prompt;
    auto ids = torch::tensor(r->prompt, torch::kInt64).unsqueeze(0).to(dev);
    KVCache cache, plus_cache, minus_cache;
    torch::Tensor logits = model_->forward(ids, decodes ? &cache : nullptr).squeeze(0);  // (T, V)
    {
        std::lock_guard<std::mutex> lk(mu_);
        ++prefills_;
        ++prefill_forwards_;
    }
    // float64 on the host: λ·Δ at every position of the prompt (T, V) when it is scored, else at
    // its last position only (1, V); not needed when nothing is scored or sampled
    torch::Tensor ad;
    const int64_t from = scored ? 0 : T - 1;
    if (scored || decodes) {
        torch::Tensor plus = ad_->plus->forward(ids, &plus_cache).squeeze(0);
        torch::Tensor minus = ad_->minus->forward(ids, &minus_cache).squeeze(0);
        ad = ad_->term(plus.narrow(0, from, T - from), minus.narrow(0, from, T - from));
    }
    start(r, logits.narrow(0, from, T - from), ad, decodes ? &cache : nullptr, 0, &plus_cache, &minus_cache);
}

void Engine::start(const std::shared_ptr<GenRequest>& r, const torch::Tensor& logits, const torch::Tensor& ad,
                   const KVCache* cache, int64_t row, const KVCache* plus, const KVCache* minus) {
    const int64_t T = static_cast<int64_t>(r->prompt.size());
    if (r->prompt_logprobs && r->on_prompt) {
        torch::Tensor rows = logits.narrow(0, 0, T - 1).to(torch::kCPU, torch::kFloat64).contiguous();  // (T-1, V)
        // an antidistilling server scores with the logits it samples from, as a watermarked one
        if (ad.defined()) rows.add_(ad.narrow(0, 0, T - 1));
        if (r->sampling.watermark) {
            // a watermarked server scores with the logits it samples from: otherwise comparing an
            // echo with a completion in the same context would give the green list away
            const int64_t h = r->sampling.watermark->context;
            std::vector<std::vector<int64_t>> recent(T - 1);
            for (int64_t i = 0; i + 1 < T; ++i)
                recent[i].assign(r->prompt.begin() + std::max<int64_t>(0, i + 1 - h), r->prompt.begin() + i + 1);
            watermark_apply(*r->sampling.watermark, recent, rows);
        }
        const torch::Tensor lp = host_logprobs(rows);
        const double* p = lp.data_ptr<double>();
        const int64_t V = lp.size(1);
        std::vector<TokenLogprob> out(static_cast<size_t>(T - 1));
        // the positions' top-k on the OpenMP threads, which otherwise wait for this one
        at::parallel_for(0, T - 1, 16, [&](int64_t i0, int64_t i1) {
            for (int64_t i = i0; i < i1; ++i) {
                out[i] = token_logprob(p + i * V, V, r->prompt[i + 1], r->top_logprobs);
                add_logprob_noise(out[i], r->logprob_noise, r->noise_key, r->prompt.data(), static_cast<size_t>(i + 1));
            }
        });
        r->on_prompt(std::move(out));
    }
    if (r->sampling.max_new_tokens <= 0) {
        if (r->on_done) r->on_done(FinishReason::Length, "");
        return;
    }
    auto slot = std::make_unique<Slot>();
    slot->req = r;
    slot->rng.seed(r->sampling.seed);
    if (r->sampling.watermark || r->logprob_noise > 0) slot->history = r->prompt;
    const int64_t cap = std::max(std::min(T + r->sampling.max_new_tokens - 1, max_len_), T);
    slot->cache.adopt(*cache, cap, row, T);
    if (ad_) {
        slot->plus_cache.adopt(*plus, cap, row, T);
        slot->minus_cache.adopt(*minus, cap, row, T);
    }
    const int64_t last = logits.size(0) - 1;
    if (!emit(*slot, logits[last], ad.defined() ? ad[ad.size(0) - 1] : torch::Tensor())) return;
    std::lock_guard<std::mutex> lk(mu_);
    slots_.push_back(std::move(slot));
}

bool Engine::emit(Slot& s, const torch::Tensor& logits, const torch::Tensor& ad) {
    GenRequest& r = *s.req;
    torch::Tensor row = logits.to(torch::kCPU, torch::kFloat64).contiguous();
    if (ad.defined()) row.add_(ad);
    // the watermark's context is this slot's own last h ids; log-probs below are of what was sampled from
    if (r.sampling.watermark) watermark_apply(*r.sampling.watermark, s.history, row);
    const int64_t id = sample_token(row, r.sampling, s.rng);
    TokenLogprob t;
    if (r.logprobs) {
        const torch::Tensor lp = host_logprobs(row);
        t = token_logprob(lp.data_ptr<double>(), lp.numel(), id, r.top_logprobs);
        add_logprob_noise(t, r.logprob_noise, r.noise_key, s.history.data(), s.history.size());
    } else {
        t.id = id;
    }
    if (r.sampling.watermark || r.logprob_noise > 0) s.history.push_back(id);
    s.next = id;
    ++s.generated;
    if (r.on_token && !r.on_token(t)) return finish(s, FinishReason::Cancelled), false;
    const auto& stop = r.sampling.stop_ids;
    if (std::find(stop.begin(), stop.end(), id) != stop.end()) return finish(s, FinishReason::Stop), false;
    if (s.generated >= r.sampling.max_new_tokens || s.cache.length >= s.cache.capacity())
        return finish(s, FinishReason::Length), false;
    return true;
}

void Engine::finish(Slot& s, FinishReason why, const std::string& error) {
    if (s.req && s.req->on_done) s.req->on_done(why, error);
    s.req.reset();
}

void Engine::step() {
    std::vector<Slot*> live;
    {
        std::lock_guard<std::mutex> lk(mu_);
        for (auto& s : slots_) {
            if (s->req && s->req->cancelled) finish(*s, FinishReason::Cancelled);
            if (s->req) live.push_back(s.get());
        }
    }
    if (!live.empty()) {
        std::vector<int64_t> next;
        std::vector<SlotCache*> caches, plus, minus;
        for (Slot* s : live) {
            next.push_back(s->next);
            caches.push_back(&s->cache);
            plus.push_back(&s->plus_cache);
            minus.push_back(&s->minus_cache);
        }
        const torch::Tensor ids = torch::tensor(next, torch::kInt64);
        torch::Tensor logits = model_->decode_step(ids, caches);
        torch::Tensor host = logits.to(torch::kCPU, torch::kFloat64);  // one copy for the batch
        torch::Tensor ad;  // (B, V): λ·Δ for each slot's next position
        if (ad_) ad = ad_->term(ad_->plus->decode_step(ids, plus), ad_->minus->decode_step(ids, minus));
        {
            std::lock_guard<std::mutex> lk(mu_);
            ++steps_;
            batched_tokens_ += static_cast<int64_t>(live.size());
        }
        for (size_t b = 0; b < live.size(); ++b)
            emit(*live[b], host[b], ad.defined() ? ad[static_cast<int64_t>(b)] : torch::Tensor());
    }
    std::lock_guard<std::mutex> lk(mu_);
    slots_.erase(std::remove_if(slots_.begin(), slots_.end(), [](const auto& s) { return !s->req; }), slots_.end());
}

}  // namespace distill
