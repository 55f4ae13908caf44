#include "serve/engine.h"

#include <torch/torch.h>

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "util/error.h"

namespace distill {

TokenLogprob token_logprob(const torch::Tensor& lp_row, int64_t id, int64_t k) {
    TokenLogprob t;
    t.id = id;
    const double* lp = lp_row.data_ptr<double>();
    const int64_t V = lp_row.numel();
    t.logprob = lp[id];
    k = std::min(k, V);
    if (k > 0) {
        std::vector<int64_t> order(V);
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + k, order.end(),
                          [&](int64_t a, int64_t b) { return lp[a] > lp[b] || (lp[a] == lp[b] && a < b); });
        for (int64_t i = 0; i < k; ++i) t.top.emplace_back(order[i], lp[order[i]]);
    }
    return t;
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
    DISTILL_CHECK(!r->prompt.empty(), "a request needs a non-empty prompt");
    {
        std::lock_guard<std::mutex> lk(mu_);
        queue_.push_back(std::move(r));
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
        for (auto& r : admit) {
            if (r->cancelled) {
                if (r->on_done) r->on_done(FinishReason::Cancelled, "");
                continue;
            }
            try {
                prefill(r);
            } catch (const std::exception& e) {
                if (r->on_done) r->on_done(FinishReason::Error, e.what());
            }
        }
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

void Engine::prefill(std::shared_ptr<GenRequest> r) {
    const int64_t T = static_cast<int64_t>(r->prompt.size());
    DISTILL_CHECK(T < max_len_ || (T == max_len_ && r->sampling.max_new_tokens == 0), "the prompt has ", T,
                  " tokens; the model's context is ", max_len_);
    const torch::Device dev = model_->parameters().front().device();
    KVCache cache;
    auto ids = torch::tensor(r->prompt, torch::kInt64).unsqueeze(0).to(dev);
    // a prompt that is only scored keeps no cache (and takes the fused cache-free attention)
    const bool decodes = r->sampling.max_new_tokens > 0;
    torch::Tensor logits = model_->forward(ids, decodes ? &cache : nullptr).squeeze(0);  // (T, V)
    const bool score_prompt = r->prompt_logprobs && r->on_prompt;
    KVCache plus_cache, minus_cache;
    // float64 on the host: λ·Δ at every position of the prompt (T, V) when it is scored, else at
    // its last position only (1, V); not needed when nothing is scored or sampled
    torch::Tensor ad;
    if (ad_ && (score_prompt || r->sampling.max_new_tokens > 0)) {
        torch::Tensor plus = ad_->plus->forward(ids, &plus_cache).squeeze(0);
        torch::Tensor minus = ad_->minus->forward(ids, &minus_cache).squeeze(0);
        const int64_t from = score_prompt ? 0 : T - 1;
        ad = ad_->term(plus.narrow(0, from, T - from), minus.narrow(0, from, T - from));
    }
    if (score_prompt) {
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
        torch::Tensor lp = host_logprobs(rows);
        std::vector<TokenLogprob> out;
        out.reserve(T - 1);
        for (int64_t i = 0; i + 1 < T; ++i) {
            out.push_back(token_logprob(lp[i], r->prompt[i + 1], r->top_logprobs));
            add_logprob_noise(out.back(), r->logprob_noise, r->noise_key, r->prompt.data(), static_cast<size_t>(i + 1));
        }
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
    const int64_t cap = std::min(T + r->sampling.max_new_tokens - 1, max_len_);
    slot->cache.adopt(cache, std::max(cap, T));
    if (ad_) {
        slot->plus_cache.adopt(plus_cache, std::max(cap, T));
        slot->minus_cache.adopt(minus_cache, std::max(cap, T));
    }
    if (!emit(*slot, logits[T - 1], ad.defined() ? ad[ad.size(0) - 1] : torch::Tensor())) return;
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
        t = token_logprob(host_logprobs(row), id, r.top_logprobs);
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
