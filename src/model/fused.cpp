#include "model/fused.h"

#include <ATen/Parallel.h>
#include <cblas.h>
#include <torch/torch.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cpu-kernels.h"
#include "util/error.h"

namespace distill {

namespace k = kernels;
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

std::atomic<int> g_fused{-1};  // -1: not decided yet (read DISTILL_FUSED on first use)

bool needs_grad(std::initializer_list<const Tensor*> ts) {
    if (!torch::GradMode::is_enabled()) return false;
    for (const Tensor* t : ts)
        if (t->defined() && t->requires_grad()) return true;
    return false;
}

// Row-major C (M x N) = alpha op(A) op(B) + beta C, with leading dimensions (row strides).
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M), int(N),
                int(K), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}

// Rows of x (..., C) as a flat (N, C) float matrix, contiguous.
Tensor rows_of(const Tensor& x) { return x.contiguous().view({-1, x.size(-1)}); }

// ---------------------------------------------------------------------------------------------
// RMSNorm.  x (N, C), w (C) -> y (N, C); saved: x, w, r (N) = 1 / rms.

Tensor rms_forward(const Tensor& x2, const Tensor& w, double eps, Tensor* r_out, bool bf16_out) {
    const int64_t N = x2.size(0), C = x2.size(1);
    auto y = torch::empty({N, C}, x2.options().dtype(bf16_out ? torch::kBFloat16 : torch::kFloat32));
    auto r = torch::empty({N}, x2.options());
    const float* xp = x2.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    float* rp = r.data_ptr<float>();
    at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
        std::vector<float> out;
        for (int64_t n = b; n < e; ++n) {
            rp[n] = k::rms_norm_row(xp + n * C, wp, C, float(eps), out_row(y, n, out));
            store_row(y, n, out);
        }
    });
    if (r_out) *r_out = r;
    return y;
}

class RmsNormFn : public torch::autograd::Function<RmsNormFn> {
public:
    static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, double eps, bool bf16_out) {
        auto x2 = rows_of(x);
        auto wc = w.contiguous();
        Tensor r;
        auto y = rms_forward(x2, wc, eps, &r, bf16_out);
        ctx->save_for_backward({x2, wc, r});
        return {y.view(x.sizes())};
    }
    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        auto s = ctx->get_saved_variables();
        const Tensor& x2 = s[0];
        const Tensor& w = s[1];
        const Tensor& r = s[2];
        const int64_t N = x2.size(0), C = x2.size(1);
        auto dy = rows_of(grads[0]);
        auto dx = torch::empty_like(x2);
        // each row's share of dw, summed by libtorch's (pairwise) sum: a running float sum over
        // thousands of rows would round more, and differently for each split of the batch
        auto dw_rows = torch::empty_like(x2);
        const float* xp = x2.data_ptr<float>();
        const float* wp = w.data_ptr<float>();
        const float* rp = r.data_ptr<float>();
        float* dxp = dx.data_ptr<float>();
        float* dwp = dw_rows.data_ptr<float>();
        at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
            std::vector<float> widened;  // a bf16 output's gradient comes in bf16
            for (int64_t n = b; n < e; ++n)
                k::rms_norm_row_backward(xp + n * C, wp, float_row(dy, n, widened), C, rp[n], dxp + n * C,
                                         dwp + n * C);
        });
        return {dx.view(grads[0].sizes()), dw_rows.sum(0), Tensor(), Tensor()};
    }
};

// ---------------------------------------------------------------------------------------------
// SwiGLU product.  gu (N, 2I): gate | up -> h (N, I); the backward writes d(gu) in one buffer.
// A bf16 gu (the gate and up product under --precision bf16) gives a bf16 h (float_row,
// store_row).

Tensor swiglu_forward(const Tensor& gu) {
    const int64_t N = gu.size(0), I = gu.size(1) / 2;
    auto h = torch::empty({N, I}, gu.options());
    at::parallel_for(0, N, std::max<int64_t>(1, (1 << 14) / I), [&](int64_t b, int64_t e) {
        std::vector<float> in, out;
        for (int64_t n = b; n < e; ++n) {
            const float* p = float_row(gu, n, in);
            k::swiglu(p, p + I, I, out_row(h, n, out));
            store_row(h, n, out);
        }
    });
    return h;
}

class SwigluFn : public torch::autograd::Function<SwigluFn> {
public:
    static variable_list forward(AutogradContext* ctx, const Tensor& gu) {
        ctx->save_for_backward({gu});
        return {swiglu_forward(gu)};
    }
    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        const Tensor gu = ctx->get_saved_variables()[0];
        const int64_t N = gu.size(0), I = gu.size(1) / 2;
        auto dh = grads[0].to(gu.scalar_type()).contiguous();
        auto dgu = torch::empty_like(gu);
        at::parallel_for(0, N, std::max<int64_t>(1, (1 << 14) / I), [&](int64_t b, int64_t e) {
            std::vector<float> in, din, out;
            for (int64_t n = b; n < e; ++n) {
                const float* p = float_row(gu, n, in);
                float* dp = out_row(dgu, n, out);
                k::swiglu_backward(p, p + I, float_row(dh, n, din), I, dp, dp + I);
                store_row(dgu, n, out);
            }
        });
        return {dgu};
    }
};

// ---------------------------------------------------------------------------------------------
// Causal attention with rotary positions.
//
// qkv (B, T, (H + 2 Hkv) D): q | k | v of each position side by side (the merged projection's
// output); cos, sin (T, D). Per (batch, head): S = rope(Q) rope(K)^T / sqrt(D), causal softmax P
// (row i over keys 0..i), Y = P V. Saved for the backward: the rotated qr (B, H, T, D) and
// kr (B, Hkv, T, D), qkv (for V) and P (B, H, T, T). The backward writes d(qkv) in one buffer.

// Causal attention runs in blocks of this many query rows, each over the keys up to its last row
// only: at T = 128 a quarter of the products' work is skipped (the masked half of S in the
// later block), at T = 512 seven sixteenths.
constexpr int64_t kQueryBlock = 64;

struct AttnShape {
    int64_t B, T, H, Hkv, D, rep, W;  // W: the width of a qkv row
    float scale;
};

AttnShape attn_shape(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D) {
    return AttnShape{B, T, H, Hkv, D, H / Hkv, (H + 2 * Hkv) * D, float(1.0 / std::sqrt(double(D)))};
}

// Rotates n heads of qkv starting at column `col` into out (B, n, T, D).
void rope_heads(const float* qkv, int64_t col, int64_t n, const AttnShape& s, const float* cos, const float* sin,
                float* out) {
    const int64_t D = s.D, T = s.T, W = s.W;
    at::parallel_for(0, s.B * n, 1, [&](int64_t b0, int64_t e0) {
        for (int64_t bh = b0; bh < e0; ++bh) {
            const int64_t b = bh / n, h = bh % n;
            for (int64_t t = 0; t < T; ++t)
                k::rope_row(qkv + (b * T + t) * W + col + h * D, cos + t * D, sin + t * D, D, out + (bh * T + t) * D);
        }
    });
}

// Forward of all heads; P (B, H, T, T) is kept when p_all is not null, else a scratch per task.
void attn_forward(const AttnShape& s, const float* qr, const float* kr, const float* qkv, float* p_all, float* y) {
    const int64_t T = s.T, D = s.D, H = s.H, W = s.W, v_col = (H + s.Hkv) * D;
    at::parallel_for(0, s.B * H, 1, [&](int64_t b0, int64_t e0) {
        std::vector<float> scratch(p_all ? 0 : size_t(T * T));
        for (int64_t bh = b0; bh < e0; ++bh) {
            const int64_t b = bh / H, h = bh % H, g = h / s.rep;
            float* P = p_all ? p_all + bh * T * T : scratch.data();
            const float* Q = qr + bh * T * D;
            const float* K = kr + (b * s.Hkv + g) * T * D;
            const float* V = qkv + b * T * W + v_col + g * D;  // row stride W
            float* Y = y + b * T * H * D + h * D;               // row stride H*D
            for (int64_t i0 = 0; i0 < T; i0 += kQueryBlock) {
                // query rows i0..i1-1 see keys 0..i1-1 only: S = Q K^T, causal softmax, Y = P V
                const int64_t i1 = std::min(T, i0 + kQueryBlock), n = i1 - i0;
                gemm(false, true, n, i1, D, 1.0f, Q + i0 * D, D, K, D, 0.0f, P + i0 * T, T);
                for (int64_t i = i0; i < i1; ++i) {
                    k::row_softmax_inplace(P + i * T, i + 1, s.scale);
                    std::memset(P + i * T + i + 1, 0, sizeof(float) * size_t(T - i - 1));
                }
                gemm(false, false, n, D, i1, 1.0f, P + i0 * T, T, V, W, 0.0f, Y + i0 * H * D, H * D);
            }
        }
    });
}

class AttentionFn : public torch::autograd::Function<AttentionFn> {
public:
    static variable_list forward(AutogradContext* ctx, const Tensor& qkv_in, const Tensor& cos, const Tensor& sin,
                                 int64_t H, int64_t Hkv) {
        auto qkv = qkv_in.contiguous();
        const int64_t D = qkv.size(2) / (H + 2 * Hkv);
        const AttnShape s = attn_shape(qkv.size(0), qkv.size(1), H, Hkv, D);
        auto opt = qkv.options();
        auto qr = torch::empty({s.B, H, s.T, D}, opt);
        auto kr = torch::empty({s.B, Hkv, s.T, D}, opt);
        auto cc = cos.contiguous(), sc = sin.contiguous();
        const float* qp = qkv.data_ptr<float>();
        rope_heads(qp, 0, H, s, cc.data_ptr<float>(), sc.data_ptr<float>(), qr.data_ptr<float>());
        rope_heads(qp, H * D, Hkv, s, cc.data_ptr<float>(), sc.data_ptr<float>(), kr.data_ptr<float>());
        auto y = torch::empty({s.B, s.T, H * D}, opt);
        Tensor P;
        if (ctx) P = torch::empty({s.B, H, s.T, s.T}, opt);
        attn_forward(s, qr.data_ptr<float>(), kr.data_ptr<float>(), qp, ctx ? P.data_ptr<float>() : nullptr,
                     y.data_ptr<float>());
        if (ctx) {
            ctx->save_for_backward({qr, kr, qkv, P, cc, sc});
            ctx->saved_data["H"] = H;
            ctx->saved_data["Hkv"] = Hkv;
        }
        return {y};
    }

    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        auto sv = ctx->get_saved_variables();
        const Tensor& qr = sv[0];
        const Tensor& kr = sv[1];
        const Tensor& qkv = sv[2];
        const Tensor& P = sv[3];
        const float* cos = sv[4].data_ptr<float>();
        const float* sin = sv[5].data_ptr<float>();
        const int64_t H = ctx->saved_data["H"].toInt(), Hkv = ctx->saved_data["Hkv"].toInt();
        const AttnShape s = attn_shape(qr.size(0), qr.size(2), H, Hkv, qr.size(3));
        const int64_t B = s.B, T = s.T, D = s.D, W = s.W, k_col = H * D, v_col = (H + Hkv) * D;
        auto dy = grads[0].contiguous();  // (B, T, H*D)
        auto dqkv = torch::empty_like(qkv);
        const float* qp = qr.data_ptr<float>();
        const float* kp = kr.data_ptr<float>();
        const float* xp = qkv.data_ptr<float>();
        const float* pp = P.data_ptr<float>();
        const float* gp = dy.data_ptr<float>();
        float* dp = dqkv.data_ptr<float>();
        // One task per (batch, key/value head): the query heads that share it add into its dK, dV.
        at::parallel_for(0, B * Hkv, 1, [&](int64_t b0, int64_t e0) {
            std::vector<float> dP(size_t(T * T)), dQr(size_t(T * D)), dKr(size_t(T * D));
            for (int64_t bg = b0; bg < e0; ++bg) {
                const int64_t b = bg / Hkv, g = bg % Hkv;
                const float* K = kp + bg * T * D;
                const float* V = xp + b * T * W + v_col + g * D;  // row stride W
                float* dV = dp + b * T * W + v_col + g * D;       // row stride W
                for (int64_t r = 0; r < s.rep; ++r) {
                    const int64_t h = g * s.rep + r, bh = b * H + h;
                    const float* Pm = pp + bh * T * T;
                    const float* dY = gp + b * T * H * D + h * D;  // row stride H*D
                    // Query blocks from the last, which reaches every key: it starts dV and dKr
                    // (for the first query head of the group), the others add into their keys' rows.
                    for (int64_t i0 = (T - 1) / kQueryBlock * kQueryBlock; i0 >= 0; i0 -= kQueryBlock) {
                        const int64_t i1 = std::min(T, i0 + kQueryBlock), n = i1 - i0;
                        const float beta = r || i1 < T ? 1.0f : 0.0f;
                        float* dS = dP.data() + i0 * T;
                        // dV (+)= P^T dY
                        gemm(true, false, i1, D, n, 1.0f, Pm + i0 * T, T, dY + i0 * H * D, H * D, beta, dV, W);
                        // dP = dY V^T, then dS = softmax backward (rows over keys 0..i), scaled
                        gemm(false, true, n, i1, D, 1.0f, dY + i0 * H * D, H * D, V, W, 0.0f, dS, T);
                        for (int64_t i = i0; i < i1; ++i) {
                            k::row_softmax_backward_inplace(Pm + i * T, dP.data() + i * T, i + 1, s.scale);
                            std::memset(dP.data() + i * T + i + 1, 0, sizeof(float) * size_t(i1 - i - 1));
                        }
                        // dQr = dS K; dKr (+)= dS^T Qr
                        gemm(false, false, n, D, i1, 1.0f, dS, T, K, D, 0.0f, dQr.data() + i0 * D, D);
                        gemm(true, false, i1, D, n, 1.0f, dS, T, qp + bh * T * D + i0 * D, D, beta, dKr.data(), D);
                    }
                    for (int64_t t = 0; t < T; ++t)
                        k::rope_row_backward(dQr.data() + t * D, cos + t * D, sin + t * D, D,
                                             dp + (b * T + t) * W + h * D);
                }
                for (int64_t t = 0; t < T; ++t)
                    k::rope_row_backward(dKr.data() + t * D, cos + t * D, sin + t * D, D,
                                         dp + (b * T + t) * W + k_col + g * D);
            }
        });
        return {dqkv, Tensor(), Tensor(), Tensor(), Tensor()};
    }
};

// ---------------------------------------------------------------------------------------------
// Embedding.  weight (V, C), ids (N) -> (N, C).

class EmbeddingFn : public torch::autograd::Function<EmbeddingFn> {
public:
    static variable_list forward(AutogradContext* ctx, const Tensor& weight, const Tensor& ids) {
        auto flat = ids.reshape({-1}).to(torch::kInt64).contiguous();
        ctx->save_for_backward({flat});
        ctx->saved_data["V"] = weight.size(0);
        return {weight.index_select(0, flat)};
    }
    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        const Tensor ids = ctx->get_saved_variables()[0];
        const int64_t V = ctx->saved_data["V"].toInt();
        auto g = grads[0].contiguous();
        const int64_t N = g.size(0), C = g.size(1);
        auto dw = torch::zeros({V, C}, g.options());
        const int64_t* ip = ids.data_ptr<int64_t>();
        const float* gp = g.data_ptr<float>();
        float* dp = dw.data_ptr<float>();
        // Threads take column blocks, so no two add into the same place.
        const int64_t block = 64;
        at::parallel_for(0, (C + block - 1) / block, 1, [&](int64_t b0, int64_t e0) {
            const int64_t c0 = b0 * block, c1 = std::min(C, e0 * block);
            for (int64_t n = 0; n < N; ++n) k::add_inplace(dp + ip[n] * C + c0, gp + n * C + c0, c1 - c0);
        });
        return {dw, Tensor()};
    }
};

}  // namespace

const float* float_row(const Tensor& m, int64_t n, std::vector<float>& buf) {
    const int64_t C = m.size(1);
    if (m.scalar_type() == torch::kFloat32) return m.data_ptr<float>() + n * C;
    buf.resize(size_t(C));
    k::bf16_to_float(reinterpret_cast<const uint16_t*>(m.data_ptr<at::BFloat16>()) + n * C, C, buf.data());
    return buf.data();
}

float* out_row(const Tensor& m, int64_t n, std::vector<float>& buf) {
    const int64_t C = m.size(1);
    if (m.scalar_type() == torch::kFloat32) return m.data_ptr<float>() + n * C;
    buf.resize(size_t(C));
    return buf.data();
}

void store_row(const Tensor& m, int64_t n, const std::vector<float>& buf) {
    if (m.scalar_type() == torch::kFloat32) return;
    const int64_t C = m.size(1);
    k::float_to_bf16(buf.data(), C, reinterpret_cast<uint16_t*>(m.data_ptr<at::BFloat16>()) + n * C);
}

void set_fused_kernels(bool on) { g_fused = on ? 1 : 0; }

bool fused_kernels_enabled() {
    int v = g_fused.load();
    if (v < 0) {
        const char* env = std::getenv("DISTILL_FUSED");
        v = (env && std::strcmp(env, "0") == 0) ? 0 : 1;
        g_fused = v;
    }
    return v == 1;
}

bool fused_cpu(const Tensor& x) {
    return x.defined() && x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && fused_kernels_enabled();
}

bool fused_cpu_bf16(const Tensor& x) {
    return x.defined() && x.device().is_cpu() && x.scalar_type() == torch::kBFloat16 && fused_kernels_enabled();
}

bool fused_cpu_rows(const Tensor& x) { return fused_cpu(x) || fused_cpu_bf16(x); }

Tensor fused_rms_norm(const Tensor& x, const Tensor& w, double eps, bool bf16_out) {
    if (needs_grad({&x, &w})) return RmsNormFn::apply(x, w, eps, bf16_out)[0];
    return rms_forward(rows_of(x), w.contiguous(), eps, nullptr, bf16_out).view(x.sizes());
}

Tensor fused_swiglu(const Tensor& gu) {
    DISTILL_CHECK(gu.size(-1) % 2 == 0, "fused_swiglu: the gate and up halves differ in width");
    DISTILL_CHECK(gu.scalar_type() == torch::kFloat32 || gu.scalar_type() == torch::kBFloat16,
                  "fused_swiglu: takes float32 or bf16, got ", gu.scalar_type());
    auto shape = gu.sizes().vec();
    shape.back() /= 2;
    auto rows = rows_of(gu);
    if (needs_grad({&gu})) return SwigluFn::apply(rows)[0].view(shape);
    return swiglu_forward(rows).view(shape);
}

Tensor fused_attention(const Tensor& qkv, const Tensor& cos, const Tensor& sin, int64_t n_head, int64_t n_kv_head) {
    DISTILL_CHECK(qkv.dim() == 3 && n_kv_head > 0 && n_head % n_kv_head == 0 &&
                      qkv.size(2) % (n_head + 2 * n_kv_head) == 0,
                  "fused_attention: qkv ", qkv.sizes(), " does not fit ", n_head, " query and ", n_kv_head,
                  " key/value heads");
    const int64_t D = qkv.size(2) / (n_head + 2 * n_kv_head);
    DISTILL_CHECK(cos.dim() == 2 && cos.size(0) == qkv.size(1) && cos.size(1) == D && sin.sizes() == cos.sizes(),
                  "fused_attention: rotary tables ", cos.sizes(), " for ", qkv.size(1), " positions of ", D);
    if (needs_grad({&qkv})) return AttentionFn::apply(qkv, cos, sin, n_head, n_kv_head)[0];
    return AttentionFn::forward(nullptr, qkv, cos, sin, n_head, n_kv_head)[0];
}

Tensor fused_decode_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                              const std::vector<Tensor*>& k_cache, const std::vector<Tensor*>& v_cache,
                              const std::vector<int64_t>& length) {
    const int64_t B = q_in.size(0), H = q_in.size(1), Hkv = k_in.size(1), D = q_in.size(-1);
    DISTILL_CHECK(q_in.numel() == B * H * D && k_in.numel() == B * Hkv * D && v_in.sizes() == k_in.sizes() &&
                      Hkv > 0 && H % Hkv == 0 && k_cache.size() == size_t(B) && v_cache.size() == size_t(B) &&
                      length.size() == size_t(B),
                  "fused_decode_attention: q ", q_in.sizes(), ", k ", k_in.sizes(), ", v ", v_in.sizes(), " for ", B,
                  " slots");
    for (int64_t b = 0; b < B; ++b) {
        const Tensor& kc = *k_cache[size_t(b)];
        DISTILL_CHECK(fused_cpu(kc) && kc.is_contiguous() && kc.dim() == 3 && kc.size(0) == Hkv && kc.size(2) == D &&
                          v_cache[size_t(b)]->sizes() == kc.sizes() && v_cache[size_t(b)]->is_contiguous() &&
                          length[size_t(b)] < kc.size(1),
                      "fused_decode_attention: slot ", b, "'s cache ", kc.sizes(), " has no room after ",
                      length[size_t(b)], " positions");
    }
    auto q = q_in.contiguous(), kn = k_in.contiguous(), vn = v_in.contiguous();
    auto y = torch::empty({B, H * D}, q.options());
    const float* qp = q.data_ptr<float>();
    const float* kp = kn.data_ptr<float>();
    const float* vp = vn.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    const int64_t rep = H / Hkv;
    const float scale = float(1.0 / std::sqrt(double(D)));
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t e0) {
        std::vector<float> P;
        for (int64_t b = b0; b < e0; ++b) {
            const int64_t L = length[size_t(b)], S = L + 1, cap = k_cache[size_t(b)]->size(1);
            float* K = k_cache[size_t(b)]->data_ptr<float>();
            float* V = v_cache[size_t(b)]->data_ptr<float>();
            P.resize(size_t(rep * S));
            for (int64_t g = 0; g < Hkv; ++g) {
                float* Kg = K + g * cap * D;
                float* Vg = V + g * cap * D;
                std::memcpy(Kg + L * D, kp + (b * Hkv + g) * D, sizeof(float) * size_t(D));
                std::memcpy(Vg + L * D, vp + (b * Hkv + g) * D, sizeof(float) * size_t(D));
                // the rep query heads that read key/value head g: P = Q K^T, softmax, Y = P V
                const float* Q = qp + (b * H + g * rep) * D;
                gemm(false, true, rep, S, D, 1.0f, Q, D, Kg, D, 0.0f, P.data(), S);
                for (int64_t r = 0; r < rep; ++r) k::row_softmax_inplace(P.data() + r * S, S, scale);
                gemm(false, false, rep, D, S, 1.0f, P.data(), S, Vg, D, 0.0f, yp + (b * H + g * rep) * D, D);
            }
        }
    });
    return y;
}

Tensor fused_embedding(const Tensor& weight, const Tensor& ids) {
    auto shape = ids.sizes().vec();
    shape.push_back(weight.size(1));
    if (needs_grad({&weight})) return EmbeddingFn::apply(weight, ids)[0].view(shape);
    return weight.index_select(0, ids.reshape({-1}).to(torch::kInt64)).view(shape);
}

}  // namespace distill
