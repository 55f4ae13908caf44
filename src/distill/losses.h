// distill — knowledge-distillation losses (see docs/losses.md and ../shared/METHODS.md).
//
// p = teacher, q = student, both at temperature tau. Every loss is averaged over the positions
// whose target is not kIgnoreIndex, multiplied by tau^2 (Hinton et al. 2015), and mixed with
// cross-entropy on the data:  total = (1 - ce_weight) * tau^2 * D(p, q) + ce_weight * CE(q_1, y).
#pragma once

#include <torch/types.h>

#include <string>

namespace distill {

constexpr int64_t kIgnoreIndex = -100;

enum class LossKind {
    kForwardKL,      // sum p log(p/q)
    kReverseKL,      // sum q log(q/p)
    kJSD,            // beta KL(p||m) + (1-beta) KL(q||m), m = beta p + (1-beta) q
    kSkewForwardKL,  // KL(p || alpha p + (1-alpha) q)
    kSkewReverseKL,  // KL(q || alpha q + (1-alpha) p)
    kTV,             // 1/2 sum |p - q|
    kCrossEntropy,   // data only (no teacher term)
};

struct LossOptions {
    LossKind kind = LossKind::kForwardKL;
    double temperature = 1.0;
    double ce_weight = 0.0;  // weight of cross-entropy on the data targets
    double beta = 0.5;       // JSD
    double alpha = 0.1;      // skew KL
};

// loss_sparse's student side: log-probs (n, K+1) on the teacher's K ids plus the rest bucket, and
// log_z (n, 1), at temperature tau. `fused`: the hand-written CPU kernel when the logits are on
// the CPU; otherwise (a GPU, or fused = false) plain tensor ops with autograd.
std::vector<torch::Tensor> student_buckets(const torch::Tensor& student_logits, const torch::Tensor& ids,
                                           double tau, bool fused = true);

LossKind loss_kind_from_string(const std::string& name);  // "fkl", "rkl", "jsd", "sfkl", "srkl", "tv", "ce"
std::string loss_kind_name(LossKind kind);

// Cross-entropy of logits (N, V) against targets (N), the mean over the targets that are not
// kIgnoreIndex: torch's cross_entropy, in one fused pass over V per row on the CPU.
torch::Tensor loss_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets);

// Dense form (live teacher).
//   student_logits: (N, V) float, requires grad
//   teacher_logits: (N, V) float (no grad)
//   targets:        (N) int64, kIgnoreIndex where no target
// Returns a scalar.
torch::Tensor loss_dense(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                         const torch::Tensor& targets, const LossOptions& opts);

// Sparse form (cached teacher): the teacher is known only on its top-K ids plus one leftover
// "rest" bucket; the losses are exact on the (K+1)-bucket distributions. Never builds an (N, V)
// teacher tensor.
//   student_logits:   (N, V) float, requires grad
//   teacher_ids:      (N, K) int64, distinct per row
//   teacher_logprobs: (N, K) float, log p at temperature 1 (as captured)
//   targets:          (N) int64, kIgnoreIndex where no target
// The teacher's rest mass is 1 - sum exp(teacher_logprobs) (clamped at >= 0).
torch::Tensor loss_sparse(const torch::Tensor& student_logits, const torch::Tensor& teacher_ids,
                          const torch::Tensor& teacher_logprobs, const torch::Tensor& targets,
                          const LossOptions& opts);

}  // namespace distill
