#include "distill/on-policy.h"

#include "distill/api-logprobs.h"

#include <torch/torch.h>

#include <functional>

#include "distill/cross-tokenizer.h"
#include "util/device.h"
#include "util/error.h"
#include "util/utf8.h"

namespace distill {

namespace {

std::mt19937_64 stream(uint64_t seed, uint64_t a, uint64_t b, uint32_t tag) {
    std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), static_cast<uint32_t>(a),
                      static_cast<uint32_t>(a >> 32), static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32), tag};
    return std::mt19937_64(seq);
}

constexpr uint32_t kChoiceTag = 0x6b64'0001;  // "on-policy or not" for a batch
constexpr uint32_t kSampleTag = 0x6b64'0002;  // a row's sampling

}  // namespace

bool on_policy_batch(uint64_t seed, int64_t step, int64_t micro, double lambda) {
    if (lambda <= 0) return false;
    if (lambda >= 1) return true;
    auto rng = stream(seed, static_cast<uint64_t>(step), static_cast<uint64_t>(micro), kChoiceTag);
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng) < lambda;
}

torch::Tensor sample_continuations(Llama& model, const torch::Tensor& prompts, int64_t n,
                                   const SamplingOptions& sampling, uint64_t seed, int64_t first_row) {
    DISTILL_CHECK(prompts.dim() == 2 && prompts.size(1) > 0, "sample_continuations needs prompts (B, P), P > 0");
    DISTILL_CHECK(n >= 0, "sample_continuations: n must be >= 0");
    const int64_t B = prompts.size(0), P = prompts.size(1);
    DISTILL_CHECK(P + n <= model->config().max_position_embeddings, "prompt (", P, ") + ", n,
                  " new tokens exceed the model's max_position_embeddings (",
                  model->config().max_position_embeddings, ")");
    torch::NoGradGuard ng;
    const torch::Device dev = model->parameters().front().device();
    std::vector<std::mt19937_64> rngs;
    for (int64_t b = 0; b < B; ++b)
        rngs.push_back(stream(seed, static_cast<uint64_t>(first_row + b), 0, kSampleTag));
    std::vector<int64_t> out(static_cast<size_t>(B * n));
    KVCache cache;
    torch::Tensor logits = model->forward(prompts.to(dev), &cache).select(1, P - 1);  // (B, V)
    for (int64_t i = 0; i < n; ++i) {
        const torch::Tensor host = logits.to(torch::kCPU, torch::kFloat32).contiguous();
        std::vector<int64_t> next(static_cast<size_t>(B));
        for (int64_t b = 0; b < B; ++b) {
            next[static_cast<size_t>(b)] = sample_token(host[b], sampling, rngs[static_cast<size_t>(b)]);
            out[static_cast<size_t>(b * n + i)] = next[static_cast<size_t>(b)];
        }
        if (i + 1 < n) logits = model->forward(torch::tensor(next, torch::kInt64).view({B, 1}).to(dev), &cache).select(1, 0);
    }
    torch::Tensor cont = torch::tensor(out, torch::kInt64).view({B, n});
    return torch::cat({prompts.to(torch::kCPU, torch::kInt64), cont}, 1);
}

torch::Tensor on_policy_loss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                             const torch::Tensor& seqs, int64_t prompt_len, const LossOptions& loss,
                             int64_t teacher_top_k) {
    DISTILL_CHECK(seqs.dim() == 2 && student_logits.dim() == 3 && teacher_logits.dim() == 3,
                  "on_policy_loss: seqs (B, L), logits (B, L-1, V)");
    const int64_t B = seqs.size(0), L = seqs.size(1), V = student_logits.size(2);
    DISTILL_CHECK(prompt_len >= 1 && prompt_len < L, "on_policy_loss: prompt_len ", prompt_len, " outside [1, ",
                  L - 1, "]");
    DISTILL_CHECK(student_logits.size(0) == B && student_logits.size(1) == L - 1 &&
                      teacher_logits.sizes() == student_logits.sizes(),
                  "on_policy_loss: logits must be (B, L-1, V) for both models");
    const int64_t N = L - prompt_len;
    // position t predicts seqs[:, t + 1]: the continuation is predicted at prompt_len - 1 .. L - 2
    auto s = student_logits.narrow(1, prompt_len - 1, N).reshape({B * N, V});
    auto t = teacher_logits.narrow(1, prompt_len - 1, N).reshape({B * N, V});
    auto targets = seqs.narrow(1, prompt_len, N).reshape({-1}).to(s.device());
    LossOptions kd = loss;
    kd.ce_weight = 0;  // the targets are the student's own samples: no cross-entropy on them
    if (teacher_top_k > 0) {
        torch::Tensor top_lp, top_ids;
        {
            torch::NoGradGuard ng;
            std::tie(top_lp, top_ids) = torch::log_softmax(t.to(torch::kFloat32), -1).topk(teacher_top_k, -1);
        }
        return loss_sparse(s, top_ids, top_lp, targets, kd);
    }
    return loss_dense(s, t, targets, kd);
}

namespace {

// What both teachers share: the options checked; batch (step, micro) on-policy with probability
// λ, its prompts cut from the data and continued by the student (rows seeded as one process
// would), then `score` turns the sequences (B, T) into the step's loss; else `off_policy`.
LossFn on_policy_loop(Llama& student, const TokenShard& shard, const BatchSpec& spec_in, const LossOptions& loss,
                      const OnPolicyOptions& opts, LossFn off_policy,
                      std::function<StepLoss(const torch::Tensor& seqs, const BatchSpec& spec)> score) {
    DISTILL_CHECK(loss.kind != LossKind::kCrossEntropy, "on-policy distillation needs a divergence, not --loss ce");
    DISTILL_CHECK(opts.lambda >= 0 && opts.lambda <= 1, "--on-policy must lie in [0, 1]");
    DISTILL_CHECK(opts.max_new_tokens >= 1 && opts.max_new_tokens < spec_in.seq_len,
                  "--max-new-tokens (", opts.max_new_tokens, ") must lie in [1, --seq-len - 1 = ",
                  spec_in.seq_len - 1, "]: the prompt is the rest of the window");
    BatchSpec spec = spec_in;
    spec.device = student->parameters().front().device();
    return [&student, &shard, spec, opts, off_policy, score](int64_t step, int64_t micro) {
        if (!on_policy_batch(spec.seed, step, micro, opts.lambda)) {
            StepLoss out = off_policy(step, micro);
            out.extras["on_policy"] = 0;
            return out;
        }
        const int64_t P = spec.seq_len - opts.max_new_tokens;
        Batch b = sample_batch(shard, spec, step, micro);
        const uint64_t sample_seed =
            stream(spec.seed, static_cast<uint64_t>(step), static_cast<uint64_t>(micro), kSampleTag)();
        const torch::Tensor seqs = sample_continuations(student, b.tokens.narrow(1, 0, P), opts.max_new_tokens,
                                                        opts.sampling, sample_seed, spec.row_begin);
        StepLoss out = score(seqs, spec);
        out.tokens = seqs.size(0) * (spec.seq_len - 1);  // this rank's rows, through the student's training forward
        out.extras["on_policy"] = 1;
        return out;
    };
}

}  // namespace

LossFn make_on_policy_loss(Llama& student, Llama& teacher, const TokenShard& shard, const BatchSpec& spec,
                           const LossOptions& loss, const OnPolicyOptions& opts, int64_t teacher_top_k,
                           LossFn off_policy) {
    const int64_t P = spec.seq_len - opts.max_new_tokens;
    return on_policy_loop(student, shard, spec, loss, opts, off_policy,
                          [&student, &teacher, loss, teacher_top_k, P](const torch::Tensor& seqs, const BatchSpec& sp) {
                              auto inputs = seqs.narrow(1, 0, sp.seq_len - 1).to(sp.device);
                              auto s_logits = student->forward(inputs);
                              torch::Tensor t_logits;
                              {
                                  torch::NoGradGuard ng;
                                  Bf16Forward bf16(train_precision() == Precision::kBFloat16);  // as autocast
                                  t_logits = teacher->forward(inputs);
                              }
                              StepLoss out;
                              out.loss = on_policy_loss(s_logits, t_logits, seqs, P, loss, teacher_top_k);
                              return out;
                          });
}

LossFn make_on_policy_loss_remote(Llama& student, const Tokenizer& tokenizer, const TokenShard& shard,
                                  const BatchSpec& spec, const LossOptions& loss, const OnPolicyOptions& opts,
                                  const RemoteOptions& remote_in, int64_t top_k, LossFn off_policy) {
    DISTILL_CHECK(top_k >= 1, "the API teacher needs --online-top-logprobs >= 1");
    RemoteOptions remote = remote_in;
    remote.model = remote_model_name(remote);
    // the API names tokens by id where it can (return_tokens_as_token_ids), else by their text
    auto by_text = std::make_shared<ApiTokenMap>(tokenizer);
    auto as_ids = std::make_shared<std::atomic<bool>>(true);
    LossOptions kd = loss;
    kd.ce_weight = 0;  // the targets are the student's own samples
    const int64_t N = opts.max_new_tokens;
    auto score = [&student, kd, remote, top_k, by_text, as_ids, N](const torch::Tensor& seqs, const BatchSpec& sp) {
        const int64_t B = seqs.size(0), T = sp.seq_len, P = T - N;
        // the teacher scores every sequence in one request
        nlohmann::json prompts = nlohmann::json::array();
        const auto host = seqs.contiguous();
        for (int64_t r = 0; r < B; ++r)
            prompts.push_back(std::vector<int64_t>(host[r].data_ptr<int64_t>(), host[r].data_ptr<int64_t>() + T));
        const nlohmann::json body = {{"model", remote.model}, {"prompt", prompts}, {"echo", true},
                                     {"max_tokens", 0},       {"logprobs", top_k}, {"temperature", 0}};
        const nlohmann::json answer = remote_scoring_request(remote, body, *as_ids);
        DISTILL_CHECK(answer.contains("choices") && answer["choices"].is_array() &&
                          answer["choices"].size() == static_cast<size_t>(B),
                      remote.url, "/completions returned ",
                      answer.contains("choices") && answer["choices"].is_array() ? answer["choices"].size() : 0,
                      " choices for ", B, " prompts");
        std::vector<int64_t> rows;
        std::vector<std::vector<std::pair<int64_t, float>>> tops;
        for (const auto& ch : answer["choices"]) {
            const int64_t r = ch.value("index", int64_t{-1});
            DISTILL_CHECK(r >= 0 && r < B, remote.url, "/completions returned choice index ", r);
            auto got = remote_top_targets(ch.value("logprobs", nlohmann::json(nullptr)), *by_text,
                                          static_cast<size_t>(P), static_cast<size_t>(T));
            for (int64_t t = 0; t < N; ++t) {
                if (got[static_cast<size_t>(t)].empty()) continue;  // no entry maps: nothing to learn there
                rows.push_back(r * N + t);
                tops.push_back(std::move(got[static_cast<size_t>(t)]));
            }
        }
        auto s_logits = student->forward(seqs.narrow(1, 0, T - 1).to(sp.device));
        const int64_t V = s_logits.size(-1);
        auto s = s_logits.narrow(1, P - 1, N).reshape({B * N, V});
        auto targets = seqs.narrow(1, P, N).reshape({-1}).to(sp.device);
        StepLoss out;
        out.extras["mapped_fraction"] = double(rows.size()) / double(B * N);
        out.loss = rows.empty() ? s.sum() * 0.0 : loss_sparse_rows(s, rows, tops, targets, kd) / double(rows.size());
        return out;
    };
    return on_policy_loop(student, shard, spec, loss, opts, off_policy, score);
}

}  // namespace distill
