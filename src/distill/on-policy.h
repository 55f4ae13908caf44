// distill — on-policy distillation (GKD, Agarwal et al. 2024; TRL's GKDTrainer with `lmbda`): with
// probability λ a batch's continuations are sampled from the student itself, the teacher scores
// them, and the divergence is taken on those tokens (docs/losses.md, "On-policy").
#pragma once

#include <cstdint>
#include <random>
#include <unordered_map>

#include "distill/losses.h"
#include "eval/scorer.h"
#include "io/shards.h"
#include "model/generate.h"
#include "model/llama.h"
#include "train/batches.h"
#include "train/trainer.h"

namespace distill {

struct OnPolicyOptions {
    double lambda = 0;           // the probability that a batch is the student's own samples
    int64_t max_new_tokens = 32; // N: sampled tokens per row; the prompt is the window's first T - N
    SamplingOptions sampling;    // temperature, top_k, top_p (max_new_tokens and seed are set per batch)
};

// Whether batch (step, micro) is sampled from the student: a pure function of (seed, step, micro),
// so a resumed run makes the same choices.
bool on_policy_batch(uint64_t seed, int64_t step, int64_t micro, double lambda);

// prompts (B, P) int64 -> (B, P + n): each row continued by n ids sampled from `model`, all rows
// in one batched forward per position with a KV cache, without gradients. Row b draws from its
// own generator seeded by (seed, first_row + b), so the result does not depend on the batch's
// size (and a data-parallel rank holding rows first_row.. of a batch draws as one process would).
torch::Tensor sample_continuations(Llama& model, const torch::Tensor& prompts, int64_t n,
                                   const SamplingOptions& sampling, uint64_t seed, int64_t first_row = 0);

// The GKD loss on fixed sequences seqs (B, L): the student's and the teacher's next-token
// distributions at the positions that predict seqs[:, prompt_len:], compared with `loss`'s
// divergence (τ² · mean over those B·(L − prompt_len) positions; no cross-entropy term: the
// targets are the student's own samples). student_logits, teacher_logits: (B, L - 1, V), from
// seqs[:, :L-1]. With teacher_top_k > 0 the teacher's exact top K + rest (the sparse form).
torch::Tensor on_policy_loss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                             const torch::Tensor& seqs, int64_t prompt_len, const LossOptions& loss,
                             int64_t teacher_top_k = 0);

// A training loss for `distill train --on-policy λ --teacher T`: batch (step, micro) is the
// student's own continuations of prompts cut from the data with probability λ, else `off_policy`
// (the usual online loss on the data). Extras: on_policy (1 or 0 for the batch).
LossFn make_on_policy_loss(Llama& student, Llama& teacher, const TokenShard& shard, const BatchSpec& spec,
                           const LossOptions& loss, const OnPolicyOptions& opts, int64_t teacher_top_k,
                           LossFn off_policy);

// The same with the teacher behind an OpenAI-compatible API: each sampled sequence goes to
// POST /completions as token ids with echo, max_tokens 0 and logprobs `top_k`; the teacher's
// top-k at each sampled position, mapped back onto the student's tokens by their text (the
// legacy logprobs keys; texts that are not one student token, or stand for several, go to the
// rest bucket), is the sparse target. The student's tokenizer must be the endpoint model's.
LossFn make_on_policy_loss_remote(Llama& student, const Tokenizer& tokenizer, const TokenShard& shard,
                                  const BatchSpec& spec, const LossOptions& loss, const OnPolicyOptions& opts,
                                  const RemoteOptions& remote, int64_t top_k, LossFn off_policy);

}  // namespace distill
