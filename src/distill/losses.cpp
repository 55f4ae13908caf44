// distill — knowledge-distillation losses, dense (live teacher) and sparse (cached top-K teacher).
// Formulas and sources: docs/losses.md and ../shared/METHODS.md.
//
// Everything works on log-probabilities. A distribution is a tensor of log-probs over its last
// dimension, -inf for an outcome of probability 0. The helpers below keep 0 log 0 = 0 and never
// produce NaN in the forward or the backward pass, even for rows of -inf (the "double where" trick:
// the branch that is not taken is fed harmless values, so its backward is 0 rather than 0 * inf).

#include "distill/losses.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu-kernels.h"
#include "model/fused.h"
#include "util/error.h"

namespace distill {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct KindName {
    LossKind kind;
    const char* name;
};

const KindName kKindNames[] = {
    {LossKind::kForwardKL, "fkl"},      {LossKind::kReverseKL, "rkl"},      {LossKind::kJSD, "jsd"},
    {LossKind::kSkewForwardKL, "sfkl"}, {LossKind::kSkewReverseKL, "srkl"}, {LossKind::kTV, "tv"},
    {LossKind::kCrossEntropy, "ce"},
};

void check_options(const LossOptions& o, const char* fn) {
    DISTILL_CHECK(std::isfinite(o.temperature) && o.temperature > 0, fn,
                  ": temperature must be a positive number, got ", o.temperature);
    DISTILL_CHECK(o.ce_weight >= 0 && o.ce_weight <= 1, fn, ": ce_weight must be in [0, 1], got ",
                  o.ce_weight);
    DISTILL_CHECK(o.beta >= 0 && o.beta <= 1, fn, ": beta (JSD) must be in [0, 1], got ", o.beta);
    DISTILL_CHECK(o.alpha >= 0 && o.alpha <= 1, fn, ": alpha (skew KL) must be in [0, 1], got ",
                  o.alpha);
}

// Half-precision logits are upcast: the sums over V below need float32 at least.
torch::Dtype compute_dtype(const torch::Tensor& t) {
    return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

std::string shape_str(const torch::Tensor& t) {
    std::string s = "(";
    for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
    return s + ")";
}

// Elementwise a * (log a - log b), a = exp(log_a), with 0 log 0 = 0 (also when log b = -inf).
// (..., C) -> (..., C)
torch::Tensor kl_terms(const torch::Tensor& log_a, const torch::Tensor& log_b) {
    auto a = torch::exp(log_a);
    auto live = a > 0;
    auto zero = torch::zeros_like(a);
    auto la = torch::where(live, log_a, zero);
    auto lb = torch::where(live, log_b, zero);
    return torch::where(live, a * (la - lb), zero);
}

// log(w e^la + (1 - w) e^lb), elementwise; -inf (with a zero gradient) where both are -inf.
torch::Tensor log_mix(double w, const torch::Tensor& la, const torch::Tensor& lb) {
    if (w <= 0) return lb;
    if (w >= 1) return la;
    auto a = la + std::log(w);
    auto b = lb + std::log1p(-w);
    // The shift cancels exactly, so it needs no gradient; it is 0 where both are -inf.
    auto mx = torch::maximum(a, b).detach();
    mx = torch::where(torch::isfinite(mx), mx, torch::zeros_like(mx));
    auto s = torch::exp(a - mx) + torch::exp(b - mx);
    auto pos = s > 0;
    auto s_safe = torch::where(pos, s, torch::ones_like(s));
    return torch::where(pos, mx + torch::log(s_safe), torch::full_like(s, -kInf));
}

// D(p, q) per row. logp, logq: (N, C) log-probs -> (N)
torch::Tensor divergence_rows(const torch::Tensor& logp, const torch::Tensor& logq,
                              const LossOptions& o) {
    switch (o.kind) {
        case LossKind::kForwardKL:
            return kl_terms(logp, logq).sum(1);
        case LossKind::kReverseKL:
            return kl_terms(logq, logp).sum(1);
        case LossKind::kJSD: {
            // TRL GKDTrainer.generalized_jsd_loss: the endpoints are the plain KLs (the formula
            // itself tends to beta * KL(p||q) -> 0), so beta = 0 / 1 give forward / reverse KL.
            if (o.beta == 0) return kl_terms(logp, logq).sum(1);
            if (o.beta == 1) return kl_terms(logq, logp).sum(1);
            auto logm = log_mix(o.beta, logp, logq);
            return o.beta * kl_terms(logp, logm).sum(1) +
                   (1 - o.beta) * kl_terms(logq, logm).sum(1);
        }
        case LossKind::kSkewForwardKL:  // DistiLLM: KL(p || alpha p + (1 - alpha) q)
            return kl_terms(logp, log_mix(o.alpha, logp, logq)).sum(1);
        case LossKind::kSkewReverseKL:  // DistiLLM: KL(q || alpha q + (1 - alpha) p)
            return kl_terms(logq, log_mix(o.alpha, logq, logp)).sum(1);
        case LossKind::kTV:
            return 0.5 * (torch::exp(logp) - torch::exp(logq)).abs().sum(1);
        case LossKind::kCrossEntropy:
            break;
    }
    DISTILL_ASSERT(false, "divergence_rows: unhandled loss kind ", static_cast<int>(o.kind));
    return {};
}

// Runs the deferred checks with one device->host copy (one sync on a GPU).
// flags: 0-dim bool tensors, true = bad.
void check_flags(const std::vector<torch::Tensor>& flags, const std::vector<std::string>& msgs) {
    if (flags.empty()) return;
    auto host = torch::stack(flags).to(torch::kCPU);
    auto acc = host.accessor<bool, 1>();
    for (size_t i = 0; i < flags.size(); ++i) DISTILL_CHECK(!acc[static_cast<int64_t>(i)], msgs[i]);
}

torch::Tensor targets_bad(const torch::Tensor& targets, int64_t V) {
    return ((targets != kIgnoreIndex) & ((targets < 0) | (targets >= V))).any();
}

void check_student_targets(const char* fn, const torch::Tensor& student,
                           const torch::Tensor& targets) {
    DISTILL_CHECK(student.dim() == 2, fn, ": student_logits must be (N, V), got ",
                  shape_str(student));
    DISTILL_CHECK(torch::isFloatingType(student.scalar_type()), fn,
                  ": student_logits must be floating point, got ", student.scalar_type());
    DISTILL_CHECK(student.size(1) >= 1, fn, ": student_logits has an empty vocabulary (V = 0)");
    DISTILL_CHECK(targets.dim() == 1 && targets.size(0) == student.size(0), fn,
                  ": targets must be (N) with N = ", student.size(0), " (student rows), got ",
                  shape_str(targets));
    DISTILL_CHECK(
        !torch::isFloatingType(targets.scalar_type()) && targets.scalar_type() != torch::kBool, fn,
        ": targets must be integer token ids, got ", targets.scalar_type());
    DISTILL_CHECK(targets.device() == student.device(), fn, ": targets are on ", targets.device(),
                  " but student_logits on ", student.device());
}

// The mean over the positions with a target of per-row values; 0 when there are none.
torch::Tensor mean_rows(const torch::Tensor& rows, int64_t n) {
    return rows.sum() / static_cast<double>(std::max<int64_t>(n, 1));
}

// total = (1 - ce_weight) tau^2 mean(D) + ce_weight mean(CE); CE alone for kCrossEntropy.
// student_sel: (n, V) rows with a target, in the compute dtype; targets_sel: (n) int64.
// divergence: (n) or undefined when not needed; lq_y: (n) log q(y) at temperature 1 when the fused
// kernels computed it, else undefined (then from log_z1, the (n, 1) logsumexp of the untempered
// logits, or computed here).
torch::Tensor combine(const torch::Tensor& student_sel, const torch::Tensor& targets_sel,
                      const torch::Tensor& divergence, torch::Tensor log_z1, torch::Tensor lq_y,
                      const LossOptions& o) {
    const int64_t n = student_sel.size(0);
    const bool ce_only = o.kind == LossKind::kCrossEntropy;
    const double ce_w = ce_only ? 1.0 : o.ce_weight;
    torch::Tensor total;
    if (!ce_only && ce_w < 1) {
        const double tau2 = o.temperature * o.temperature;
        total = ((1 - ce_w) * tau2) * mean_rows(divergence, n);
    }
    if (ce_w > 0) {
        if (!lq_y.defined()) {
            if (!log_z1.defined()) log_z1 = torch::logsumexp(student_sel, 1, /*keepdim=*/true);
            // log q(y) = z_y - logsumexp(z), at temperature 1.
            lq_y = (student_sel.gather(1, targets_sel.unsqueeze(1)) - log_z1).squeeze(1);
        }
        auto term = (-ce_w) * mean_rows(lq_y, n);
        total = total.defined() ? total + term : term;
    }
    return total;
}

// The student's side of every loss, straight from its logits: at temperature tau, log_z =
// logsumexp(z / tau) and the (K+1)-bucket log-probs on the teacher's ids S plus the rest
// (log q_rest = log sum_{j not in S} q_j, summed outside S: no 1 - sum cancellation); with targets,
// also log q(y) at temperature 1 for the cross-entropy term. One vectorized pass over V per row
// in the forward and one in the backward (two when tau != 1 and there are targets), where the
// generic torch ops take about ten; rows run in parallel (kernels/cpu-kernels.h).
// backward: with h = dL/dlogq, g = dL/dlog_z, gy = dL/dlog q(y), for token j:
//   j in S:     dL/dz_j = (h_j - q_j sum(h) + q_j g) / tau - gy q1_j
//   j not in S: dL/dz_j = q_j (h_rest / q_rest - sum(h) + g) / tau - gy q1_j
//   plus gy at j = y; q at temperature tau, q1 at temperature 1.
class StudentRows : public torch::autograd::Function<StudentRows> {
public:
    // logits (N, V) float32 or bf16 CPU (a bf16 row is widened into a float buffer, and its
    // gradient narrowed back to bf16); ids (N, K) int64, K >= 0; targets (N) int64, or empty for
    // none (a custom Function takes no undefined inputs in libtorch 1.13).
    // Returns {logq (N, K+1), log_z (N, 1), lq_y (N) (empty without targets)}, float32.
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& logits,
                                                  const torch::Tensor& ids, const torch::Tensor& targets,
                                                  double tau) {
        auto z = logits.contiguous();
        auto id = ids.to(torch::kInt64).contiguous();
        const bool with_y = targets.numel() > 0;
        auto y = with_y ? targets.to(torch::kInt64).contiguous() : torch::Tensor();
        const int64_t N = z.size(0), V = z.size(1), K = id.size(1);
        const auto f32 = z.options().dtype(torch::kFloat32);
        auto logq = torch::empty({N, K + 1}, f32);
        auto log_z = torch::empty({N, 1}, f32);
        auto lq_y = torch::empty({with_y ? N : 0}, f32);
        auto lse1 = torch::empty({with_y ? N : 0}, f32);
        const int64_t* ip = id.data_ptr<int64_t>();
        const int64_t* yp = with_y ? y.data_ptr<int64_t>() : nullptr;
        float* lq = logq.data_ptr<float>();
        float* lz = log_z.data_ptr<float>();
        float* lqy = with_y ? lq_y.data_ptr<float>() : nullptr;
        float* l1 = with_y ? lse1.data_ptr<float>() : nullptr;
        const float inv_tau = float(1.0 / tau);
        at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
            std::vector<float> keep(K > 0 ? size_t(V) : 0, 1.0f), widened;
            for (int64_t n = begin; n < end; ++n) {
                const float* row = float_row(z, n, widened);
                const int64_t* rid = ip + n * K;
                float mx = kernels::row_max(row, V);
                if (!std::isfinite(mx)) mx = 0;
                const float shift = mx * inv_tau;
                float all, rest;
                if (K > 0) {
                    for (int64_t k = 0; k < K; ++k) keep[rid[k]] = 0.0f;
                    kernels::row_exp_sum_masked(row, keep.data(), V, inv_tau, shift, &all, &rest);
                    for (int64_t k = 0; k < K; ++k) keep[rid[k]] = 1.0f;
                } else {
                    all = rest = kernels::row_exp_sum(row, V, inv_tau, shift);
                }
                const float lse = shift + std::log(all);
                lz[n] = lse;
                for (int64_t k = 0; k < K; ++k) lq[n * (K + 1) + k] = row[rid[k]] * inv_tau - lse;
                lq[n * (K + 1) + K] = rest > 0 ? shift + std::log(rest) - lse : -float(kInf);
                if (with_y) {
                    l1[n] = tau == 1 ? lse : mx + std::log(kernels::row_exp_sum(row, V, 1.0f, mx));
                    lqy[n] = row[yp[n]] - l1[n];
                }
            }
        });
        ctx->save_for_backward({z, id, logq, log_z, y, lse1});
        ctx->saved_data["tau"] = tau;
        return {logq, log_z, lq_y};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads) {
        auto saved = ctx->get_saved_variables();
        const auto& z = saved[0];
        const auto& id = saved[1];
        const auto& logq = saved[2];
        const auto& log_z = saved[3];
        const auto& y = saved[4];
        const auto& lse1 = saved[5];
        const double tau = ctx->saved_data["tau"].toDouble();
        const int64_t N = z.size(0), V = z.size(1), K = id.size(1);
        const bool with_y = y.defined() && grads[2].defined();
        auto h = grads[0].defined() ? grads[0].contiguous() : torch::zeros_like(logq);
        auto g = grads[1].defined() ? grads[1].contiguous() : torch::zeros_like(log_z);
        auto gy = with_y ? grads[2].contiguous() : torch::Tensor();
        auto dz = torch::empty_like(z);  // in z's type
        const int64_t* ip = id.data_ptr<int64_t>();
        const float* lq = logq.data_ptr<float>();
        const float* lz = log_z.data_ptr<float>();
        const float* hp = h.data_ptr<float>();
        const float* gp = g.data_ptr<float>();
        const int64_t* yp = with_y ? y.data_ptr<int64_t>() : nullptr;
        const float* gyp = with_y ? gy.data_ptr<float>() : nullptr;
        const float* l1 = with_y ? lse1.data_ptr<float>() : nullptr;
        const float inv_tau = float(1.0 / tau);
        at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
            std::vector<float> widened, narrowed;
            for (int64_t n = begin; n < end; ++n) {
                const float* hr = hp + n * (K + 1);
                float hsum = 0;
                for (int64_t b = 0; b <= K; ++b) hsum += hr[b];
                const float lrest = lq[n * (K + 1) + K];
                // outside S: q_j * c_rest / tau (q_rest = 0 means every q_j outside is 0)
                const float c_rest = std::isfinite(lrest) ? hr[K] * std::exp(-lrest) - hsum + gp[n] : 0.0f;
                const float lse = lz[n];
                const float* row = float_row(z, n, widened);
                float* orow = out_row(dz, n, narrowed);
                const float gyn = with_y ? gyp[n] : 0.0f;
                if (gyn != 0 && tau == 1) {
                    kernels::row_scaled_exp(row, V, 1.0f, lse, c_rest - gyn, false, orow);
                } else {
                    kernels::row_scaled_exp(row, V, inv_tau, lse, c_rest * inv_tau, false, orow);
                    if (gyn != 0) kernels::row_scaled_exp(row, V, 1.0f, l1[n], -gyn, true, orow);
                }
                for (int64_t k = 0; k < K; ++k) {
                    const int64_t j = ip[n * K + k];
                    const float q = std::exp(lq[n * (K + 1) + k]);
                    float v = (hr[k] - q * hsum + q * gp[n]) * inv_tau;
                    if (gyn != 0) v -= gyn * std::exp(row[j] - l1[n]);
                    orow[j] = v;
                }
                if (gyn != 0) orow[yp[n]] += gyn;
                store_row(dz, n, narrowed);
            }
        });
        return {dz, torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
};

// Forward KL from a dense teacher, fused: per row KL(p || q) at temperature tau and, with targets,
// log q(y) at temperature 1. With e_j = exp(t_j / tau - m): KL = sum_j e_j (t_j - s_j) / (tau sum e)
// - lse_t + lse_s. backward: dL/ds_j = gk (q_j - p_j) / tau + gy (delta_jy - q1_j).
class DenseForwardKL : public torch::autograd::Function<DenseForwardKL> {
public:
    // s, t (N, V) float32 CPU; targets (N) int64 or empty -> {kl (N), lq_y (N) or empty}
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& s_in,
                                                  const torch::Tensor& t_in, const torch::Tensor& targets,
                                                  double tau) {
        auto s = s_in.contiguous(), t = t_in.contiguous();
        const bool with_y = targets.numel() > 0;
        auto y = with_y ? targets.to(torch::kInt64).contiguous() : torch::Tensor();
        const int64_t N = s.size(0), V = s.size(1);
        auto kl = torch::empty({N}, s.options());
        auto lq_y = torch::empty({with_y ? N : 0}, s.options());
        auto lse = torch::empty({3, N}, s.options());  // lse_s, lse_t at tau; lse_s at 1
        const float* sp = s.data_ptr<float>();
        const float* tp = t.data_ptr<float>();
        const int64_t* yp = with_y ? y.data_ptr<int64_t>() : nullptr;
        float* klp = kl.data_ptr<float>();
        float* lqy = with_y ? lq_y.data_ptr<float>() : nullptr;
        float* ls = lse.data_ptr<float>();
        const float inv_tau = float(1.0 / tau);
        at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
            for (int64_t n = begin; n < end; ++n) {
                const float* sr = sp + n * V;
                const float* tr = tp + n * V;
                float ms = kernels::row_max(sr, V), mt = kernels::row_max(tr, V);
                if (!std::isfinite(ms)) ms = 0;
                if (!std::isfinite(mt)) mt = 0;
                const float lse_s = ms * inv_tau + std::log(kernels::row_exp_sum(sr, V, inv_tau, ms * inv_tau));
                float dot;
                const float sum_t = kernels::row_exp_sum_dot(tr, sr, V, inv_tau, mt * inv_tau, &dot);
                const float lse_t = mt * inv_tau + std::log(sum_t);
                klp[n] = inv_tau * dot / sum_t - lse_t + lse_s;
                ls[n] = lse_s;
                ls[N + n] = lse_t;
                ls[2 * N + n] = tau == 1 ? lse_s : ms + std::log(kernels::row_exp_sum(sr, V, 1.0f, ms));
                if (with_y) lqy[n] = sr[yp[n]] - ls[2 * N + n];
            }
        });
        ctx->save_for_backward({s, t, y, lse});
        ctx->saved_data["tau"] = tau;
        return {kl, lq_y};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads) {
        auto saved = ctx->get_saved_variables();
        const auto& s = saved[0];
        const auto& t = saved[1];
        const auto& y = saved[2];
        const auto& lse = saved[3];
        const double tau = ctx->saved_data["tau"].toDouble();
        const int64_t N = s.size(0), V = s.size(1);
        const bool with_y = y.defined() && grads[1].defined();
        auto gk = grads[0].defined() ? grads[0].contiguous() : torch::zeros({N}, s.options());
        auto gy = with_y ? grads[1].contiguous() : torch::Tensor();
        auto ds = torch::empty_like(s);
        const float* sp = s.data_ptr<float>();
        const float* tp = t.data_ptr<float>();
        const int64_t* yp = with_y ? y.data_ptr<int64_t>() : nullptr;
        const float* gkp = gk.data_ptr<float>();
        const float* gyp = with_y ? gy.data_ptr<float>() : nullptr;
        const float* ls = lse.data_ptr<float>();
        float* out = ds.data_ptr<float>();
        const float inv_tau = float(1.0 / tau);
        at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
            for (int64_t n = begin; n < end; ++n) {
                float* orow = out + n * V;
                kernels::row_exp_diff(sp + n * V, tp + n * V, V, inv_tau, ls[n], ls[N + n], gkp[n] * inv_tau, orow);
                if (with_y && gyp[n] != 0) {
                    kernels::row_scaled_exp(sp + n * V, V, 1.0f, ls[2 * N + n], -gyp[n], true, orow);
                    orow[yp[n]] += gyp[n];
                }
            }
        });
        return {ds, torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
};

// Whether the fused kernels take these logits (float32 on the CPU; model/fused.h).
bool fused_rows(const torch::Tensor& s) { return fused_cpu(s); }

}  // namespace

// The student's (K+1) buckets and log_z: the fused CPU kernel above, or on other devices (a GPU)
// the same quantities from tensor ops that autograd differentiates.
std::vector<torch::Tensor> student_buckets(const torch::Tensor& s, const torch::Tensor& ids, double tau,
                                           bool fused) {
    if (fused && fused_cpu_rows(s)) {
        auto outs = StudentRows::apply(s, ids, torch::empty({0}, torch::kInt64), tau);
        return {outs[0], outs[1]};
    }
    auto z = tau == 1 ? s : s / tau;
    auto id = ids.to(torch::kInt64);
    auto log_z = z.logsumexp(1, /*keepdim=*/true);                        // (n, 1)
    auto lq_s = z.gather(1, id) - log_z;                                  // (n, K)
    const double inf = std::numeric_limits<double>::infinity();
    auto outside = z.scatter(1, id, -inf);
    // A row with nothing outside S (K = V, or only -inf logits there) has rest -inf; its
    // logsumexp would differentiate to NaN, so such rows go through zeros and are masked after.
    auto has_rest = torch::isfinite(std::get<0>(outside.max(1, /*keepdim=*/true)));
    auto safe = torch::where(has_rest, outside, torch::zeros_like(outside));
    auto lq_rest = torch::where(has_rest, safe.logsumexp(1, /*keepdim=*/true) - log_z,
                                torch::full_like(log_z, -inf));            // (n, 1)
    return {torch::cat({lq_s, lq_rest}, 1), log_z};
}

torch::Tensor loss_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets) {
    if (!fused_cpu_rows(logits))
        return torch::nn::functional::cross_entropy(logits.to(compute_dtype(logits)), targets);
    check_student_targets("loss_cross_entropy", logits, targets);
    const int64_t V = logits.size(1);
    check_flags({targets_bad(targets, V)}, {str_cat("loss_cross_entropy: targets must be in [0, ", V, ") or ",
                                                    kIgnoreIndex, " (ignored); a target is outside the vocabulary")});
    auto y = targets.to(torch::kInt64);
    const bool all_rows = !(y == kIgnoreIndex).any().item<bool>();
    auto idx = all_rows ? torch::Tensor() : (y != kIgnoreIndex).nonzero().squeeze(1);
    auto s = all_rows ? logits : logits.index_select(0, idx);
    if (!all_rows) y = y.index_select(0, idx);
    auto outs = StudentRows::apply(s, torch::empty({s.size(0), 0}, torch::kInt64), y, 1.0);
    return -outs[2].mean();
}

LossKind loss_kind_from_string(const std::string& name) {
    for (const auto& k : kKindNames)
        if (name == k.name) return k.kind;
    std::string all;
    for (const auto& k : kKindNames) all += std::string(all.empty() ? "" : ", ") + k.name;
    throw Error(str_cat("unknown loss '", name, "': expected one of ", all));
}

std::string loss_kind_name(LossKind kind) {
    for (const auto& k : kKindNames)
        if (kind == k.kind) return k.name;
    DISTILL_ASSERT(false, "loss_kind_name: unhandled loss kind ", static_cast<int>(kind));
    return {};
}

// student_logits: (N, V), teacher_logits: (N, V), targets: (N) -> scalar
torch::Tensor loss_dense(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                         const torch::Tensor& targets, const LossOptions& opts) {
    const char* fn = "loss_dense";
    check_options(opts, fn);
    check_student_targets(fn, student_logits, targets);
    DISTILL_CHECK(teacher_logits.sizes() == student_logits.sizes(), fn,
                  ": teacher_logits must have the student's shape ", shape_str(student_logits),
                  ", got ", shape_str(teacher_logits),
                  " (same positions and the same vocabulary are needed)");
    DISTILL_CHECK(torch::isFloatingType(teacher_logits.scalar_type()), fn,
                  ": teacher_logits must be floating point, got ", teacher_logits.scalar_type());
    DISTILL_CHECK(teacher_logits.device() == student_logits.device(), fn,
                  ": teacher_logits are on ", teacher_logits.device(), " but student_logits on ",
                  student_logits.device());
    const int64_t V = student_logits.size(1);
    check_flags({targets_bad(targets, V)},
                {str_cat(fn, ": targets must be in [0, ", V, ") or ", kIgnoreIndex,
                         " (ignored); a target is outside the vocabulary")});

    // Only the positions with a target take part (this also syncs, like the checks above).
    auto idx = (targets != kIgnoreIndex).nonzero().squeeze(1);
    const auto dt = compute_dtype(student_logits);
    const bool all_rows = idx.size(0) == student_logits.size(0);  // no copies in the usual case
    auto s = (all_rows ? student_logits : student_logits.index_select(0, idx)).to(dt);  // (n, V)
    auto y = (all_rows ? targets : targets.index_select(0, idx)).to(torch::kInt64);     // (n)

    torch::Tensor div, log_z1, lq_y;
    const bool want_div = opts.kind != LossKind::kCrossEntropy && opts.ce_weight < 1;
    const bool want_ce = opts.kind == LossKind::kCrossEntropy || opts.ce_weight > 0;
    if (want_div && opts.kind == LossKind::kForwardKL && fused_rows(s) && fused_rows(teacher_logits)) {
        auto t = all_rows ? teacher_logits.detach() : teacher_logits.detach().index_select(0, idx);
        auto outs = DenseForwardKL::apply(s, t, want_ce ? y : torch::empty({0}, torch::kInt64), opts.temperature);
        return combine(s, y, outs[0], {}, want_ce ? outs[1] : torch::Tensor(), opts);
    }
    if (!want_div && fused_rows(s)) {  // cross-entropy alone
        auto outs = StudentRows::apply(s, torch::empty({s.size(0), 0}, y.options()), y, 1.0);
        return combine(s, y, {}, {}, outs[2], opts);
    }
    if (want_div) {
        auto t = (all_rows ? teacher_logits.detach() : teacher_logits.detach().index_select(0, idx))
                     .to(dt);  // (n, V)
        const double tau = opts.temperature;
        auto zs = tau == 1 ? s : s / tau;
        auto zt = tau == 1 ? t : t / tau;
        auto logq = torch::log_softmax(zs, 1);
        auto logp = torch::log_softmax(zt, 1);
        if (opts.kind == LossKind::kForwardKL && torch::isfinite(logp).all().item<bool>()) {
            // Fast path (the common case): with a finite teacher, 0 log 0 cannot arise, so the
            // guarded kl_terms reduces to the plain sum p (log p - log q).
            div = (logp.exp() * (logp - logq)).sum(1);
        } else {
            div = divergence_rows(logp, logq, opts);  // (n)
        }
    }
    return combine(s, y, div, log_z1, lq_y, opts);
}

// student_logits: (N, V), teacher_ids: (N, K), teacher_logprobs: (N, K), targets: (N) -> scalar
torch::Tensor loss_sparse(const torch::Tensor& student_logits, const torch::Tensor& teacher_ids,
                          const torch::Tensor& teacher_logprobs, const torch::Tensor& targets,
                          const LossOptions& opts) {
    const char* fn = "loss_sparse";
    check_options(opts, fn);
    check_student_targets(fn, student_logits, targets);
    const int64_t N = student_logits.size(0), V = student_logits.size(1);
    DISTILL_CHECK(teacher_ids.dim() == 2 && teacher_ids.size(0) == N, fn,
                  ": teacher_ids must be (N, K) with N = ", N, " (student rows), got ",
                  shape_str(teacher_ids));
    const int64_t K = teacher_ids.size(1);
    DISTILL_CHECK(K >= 1 && K <= V, fn, ": the teacher's top-K must have 1 <= K <= V = ", V,
                  ", got K = ", K, " (was the cache made for a smaller vocabulary?)");
    DISTILL_CHECK(teacher_logprobs.sizes() == teacher_ids.sizes(), fn,
                  ": teacher_logprobs must have the shape of teacher_ids ", shape_str(teacher_ids),
                  ", got ", shape_str(teacher_logprobs));
    DISTILL_CHECK(!torch::isFloatingType(teacher_ids.scalar_type()) &&
                      teacher_ids.scalar_type() != torch::kBool,
                  fn, ": teacher_ids must be integer token ids, got ", teacher_ids.scalar_type());
    DISTILL_CHECK(torch::isFloatingType(teacher_logprobs.scalar_type()), fn,
                  ": teacher_logprobs must be floating point, got ",
                  teacher_logprobs.scalar_type());
    DISTILL_CHECK(teacher_ids.device() == student_logits.device() &&
                      teacher_logprobs.device() == student_logits.device(),
                  fn, ": teacher_ids / teacher_logprobs must be on the student's device ",
                  student_logits.device());

    auto ids_all = teacher_ids.to(torch::kInt64);
    std::vector<torch::Tensor> flags = {
        targets_bad(targets, V),
        ((ids_all < 0) | (ids_all >= V)).any(),
        torch::isnan(teacher_logprobs).any(),
    };
    std::vector<std::string> msgs = {
        str_cat(fn, ": targets must be in [0, ", V, ") or ", kIgnoreIndex,
                " (ignored); a target is outside the vocabulary"),
        str_cat(fn, ": teacher_ids must be in [0, V = ", V,
                "); an id is outside the student's vocabulary (cache from another tokenizer?)"),
        str_cat(fn, ": teacher_logprobs contain NaN (corrupt cache?)"),
    };
    if (K >= 2) {
        auto sorted = std::get<0>(ids_all.sort(1));
        flags.push_back((sorted.narrow(1, 1, K - 1) == sorted.narrow(1, 0, K - 1)).any());
        msgs.push_back(str_cat(fn,
                               ": teacher_ids repeat an id within a row; the top-K ids of a "
                               "position must be distinct"));
    }
    check_flags(flags, msgs);

    auto idx = (targets != kIgnoreIndex).nonzero().squeeze(1);
    const auto dt = compute_dtype(student_logits);
    const bool all_rows = idx.size(0) == N;  // the usual case: no copy of the (N, V) logits
    auto s = all_rows ? student_logits : student_logits.index_select(0, idx);  // (n, V)
    if (!fused_cpu_rows(s)) s = s.to(dt);  // (the fused rows read bf16 as it is)
    auto y = (all_rows ? targets : targets.index_select(0, idx)).to(torch::kInt64);     // (n)

    torch::Tensor div, log_z1, lq_y;
    const bool want_div = opts.kind != LossKind::kCrossEntropy && opts.ce_weight < 1;
    const bool want_ce = opts.kind == LossKind::kCrossEntropy || opts.ce_weight > 0;
    if (!want_div && fused_cpu_rows(s)) {  // cross-entropy alone
        auto outs = StudentRows::apply(s, torch::empty({s.size(0), 0}, y.options()), y, 1.0);
        lq_y = outs[2];
    }
    if (want_div) {
        const double tau = opts.temperature;
        auto ids = all_rows ? ids_all : ids_all.index_select(0, idx);  // (n, K)
        auto lp = (all_rows ? teacher_logprobs.detach() : teacher_logprobs.detach().index_select(0, idx))
                      .to(dt)
                      .clamp_max(0);  // (n, K)

        // Student (K+1) buckets at temperature tau: its log-probs on the teacher's ids, and the
        // rest log(1 - sum_S q) taken as the logsumexp of the logits outside S. This is exact
        // when the rest is ~0 as well as when it is ~1 (no 1 - sum cancellation).
        std::vector<torch::Tensor> outs;
        if (fused_cpu_rows(s)) {  // and log q(y) for the CE term, in the same pass
            outs = StudentRows::apply(s, ids, want_ce ? y : torch::empty({0}, torch::kInt64), tau);
            if (want_ce) lq_y = outs[2];
        } else {
            outs = student_buckets(s, ids, tau);
            if (tau == 1) log_z1 = outs[1];  // (n, 1), reused by the CE term
        }
        auto logq = outs[0];                                    // (n, K+1)
        auto lq_rest = logq.narrow(1, K, 1);

        // Teacher (K+1) buckets. Stored log-probs are at tau = 1; the rest is r = 1 - sum_S p,
        // computed as -expm1(log sum_S p). Below K eps, r is rounding noise (and a tau > 1 would
        // blow it up as r^(1/tau)), so it is floored there: r = max(r, K eps). The floor also keeps
        // the mode-seeking losses (reverse KL, JSD at beta = 1) finite when the top-K holds all of
        // the teacher's mass to rounding: KL(q||p) would be +inf with p_rest = 0 < q_rest.
        // Where the student has nothing outside S (K = V, or -inf logits) the rest is 0 for both.
        // Tempering: p_i^(1/tau) renormalised over the K+1 buckets (the rest is one bucket).
        //
        // log sum_S p = m + log1p(sum of the others / max), so that r keeps its relative
        // accuracy when the top-1 holds almost everything (a plain logsumexp would leave an
        // absolute error of eps in r).
        auto top1 = lp.max(1, /*keepdim=*/true);
        auto m = std::get<0>(top1);  // (n, 1)
        auto m_safe = torch::where(torch::isfinite(m), m, torch::zeros_like(m));
        auto others = torch::exp(lp - m_safe).scatter(1, std::get<1>(top1), 0.0).sum(1, true);
        auto l_top = m + torch::log1p(others);  // (n, 1)
        const double r_min = static_cast<double>(K) * (dt == torch::kFloat64
                                                           ? std::numeric_limits<double>::epsilon()
                                                           : std::numeric_limits<float>::epsilon());
        auto r = (-torch::expm1(l_top)).clamp_min(r_min);
        auto has_rest = torch::isfinite(lq_rest.detach());
        auto lr = torch::where(has_rest, torch::log(r), torch::full_like(r, -kInf));
        auto lp_buckets = torch::cat({lp, lr}, 1);  // (n, K+1)
        // Renormalising also absorbs sum_S p slightly above 1 from rounding in the cache.
        auto logp = torch::log_softmax(tau == 1 ? lp_buckets : lp_buckets / tau, 1);

        div = divergence_rows(logp, logq, opts);  // (n)
    }
    return combine(s, y, div, log_z1, lq_y, opts);
}

}  // namespace distill
