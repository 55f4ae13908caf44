// distill — the serving engine: continuous batching over one model. Requests wait in a queue;
// up to `parallel` of them are decoded together, each in a slot with its own KV cache. Every
// step, new requests are prefilled into free slots (prompts of similar length in one forward,
// padded on the right), then one batched forward advances every active slot by one token
// (LlamaImpl::decode_step). A request that finishes frees its slot for the next in the queue.
// docs/serve.md has the details.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "guard/antidistill.h"
#include "model/generate.h"
#include "model/llama.h"

namespace distill {

// One position's log-prob under the model (temperature 1, no truncation) and the `top` most
// likely tokens there, most likely first.
struct TokenLogprob {
    int64_t id = 0;
    double logprob = 0;
    std::vector<std::pair<int64_t, double>> top;
};

enum class FinishReason { Stop, Length, Cancelled, Error };

struct GenRequest {
    std::vector<int64_t> prompt;  // non-empty, shorter than the model's context
    SamplingOptions sampling;     // max_new_tokens may be 0 (score the prompt only)
    bool logprobs = false;        // report TokenLogprob for each generated token
    int64_t top_logprobs = 0;     // how many alternatives per position
    bool prompt_logprobs = false; // report the prompt's log-probs (from the prefill)
    // A defense (docs/guard.md): Gaussian noise of this standard deviation (nats) on every
    // reported log-prob, a fixed function of (noise_key, the previous 4 ids, the token), so that
    // asking again returns the same numbers and averaging repeats gains nothing. 0 = none.
    double logprob_noise = 0;
    uint64_t noise_key = 0;

    // Called on the engine thread; keep them short. on_prompt gets positions 1 .. T-1 of the
    // prompt (position 0 has no prediction). on_token returns false to end the request (a stop
    // string matched, the client left), which then finishes as Cancelled.
    std::function<void(std::vector<TokenLogprob>)> on_prompt;
    std::function<bool(const TokenLogprob&)> on_token;
    std::function<void(FinishReason, const std::string& error)> on_done;

    std::atomic<bool> cancelled{false};  // set from any thread: the engine drops the request
};

struct EngineStats {
    int64_t queued = 0, active = 0, slots = 0;
    int64_t steps = 0, batched_tokens = 0;  // decode steps and the tokens they produced
    int64_t prefills = 0, prefill_forwards = 0;  // prompts prefilled, and the forwards that did it
};

class Engine {
public:
    // `parallel`: slots decoded together. The model is used only by the engine's thread. With
    // `antidistill`, every slot also runs its two perturbed proxies (with their own KV caches) and
    // λ·Δ is added to the logits of every position, sampled or scored (guard/antidistill.h).
    Engine(Llama model, int64_t parallel, std::shared_ptr<Antidistill> antidistill = nullptr);
    ~Engine();  // stops the thread; requests still queued finish as Cancelled
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    void submit(std::shared_ptr<GenRequest> r);
    // Queues them together, so that the next admission can prefill them in one forward (the
    // prompts and choices of one API call).
    void submit(std::vector<std::shared_ptr<GenRequest>> rs);
    EngineStats stats() const;
    int64_t context_length() const { return max_len_; }

private:
    struct Slot {
        std::shared_ptr<GenRequest> req;
        SlotCache cache;
        SlotCache plus_cache, minus_cache;  // the antidistillation proxies'
        std::mt19937_64 rng;
        int64_t generated = 0, next = 0;
        std::vector<int64_t> history;  // prompt + generated ids, kept when watermarked or noised
    };
    void loop();
    // Prefills the admitted requests. Without antidistillation, prompts of similar length share
    // one forward, right-padded (causal attention keeps a prompt's positions from seeing the
    // padding); with it, one forward each, as the proxies need.
    void prefill(std::vector<std::shared_ptr<GenRequest>> admitted);
    void prefill_group(const std::vector<std::shared_ptr<GenRequest>>& group, bool decodes);
    void prefill_one(const std::shared_ptr<GenRequest>& r);
    // The rest of a prefill once the prompt's logits are known: `logits` holds every position's
    // (T, V) when the prompt is scored, else its last (1, V); `ad` the same rows of λ·Δ or
    // undefined. A decoding request takes row `row` of `cache` (and of the proxies') into a slot.
    void start(const std::shared_ptr<GenRequest>& r, const torch::Tensor& logits, const torch::Tensor& ad,
               const KVCache* cache, int64_t row, const KVCache* plus = nullptr, const KVCache* minus = nullptr);
    void step();
    // Samples from logits (V) on the host (plus the antidistillation term `ad` (V) when defined,
    // then watermarked if the request says so), reports the token; false when the slot is done.
    bool emit(Slot& s, const torch::Tensor& logits, const torch::Tensor& ad);
    void finish(Slot& s, FinishReason why, const std::string& error = "");

    Llama model_;
    std::shared_ptr<Antidistill> ad_;  // used only by the engine thread
    int64_t parallel_, max_len_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<GenRequest>> queue_;
    std::vector<std::unique_ptr<Slot>> slots_;  // active ones
    bool stopping_ = false;
    int64_t steps_ = 0, batched_tokens_ = 0, prefills_ = 0, prefill_forwards_ = 0;
    std::thread thread_;
};

// log_softmax of logits (V) in float64 on the host: the log-prob of `id` and the top `k` (ties
// by the lower id).
TokenLogprob token_logprob(const double* logprobs, int64_t V, int64_t id, int64_t k);
TokenLogprob token_logprob(const torch::Tensor& logprobs_row, int64_t id, int64_t k);

// The noise GenRequest::logprob_noise adds to the log-prob of token `id` after context[0..n):
// sigma times a standard normal from XXH3-128 (seed `key`) of the u32-LE bytes of the last (up
// to) 4 context ids and `id`, by Box-Muller. Then t's entries are clamped at 0 and re-sorted.
double logprob_noise_z(uint64_t key, const int64_t* context, size_t n, int64_t id);
void add_logprob_noise(TokenLogprob& t, double sigma, uint64_t key, const int64_t* context, size_t n);

}  // namespace distill
