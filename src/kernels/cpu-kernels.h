// distill — the CPU kernels under the fused training ops (model/fused.h, distill/losses.cpp,
// train/optimizer.cpp): plain loops over float rows that the compiler vectorizes, built three
// times (AVX-512, AVX2+FMA, baseline x86-64) and chosen when the program loads by the CPU's
// features (GCC/Clang `target_clones`), so one binary runs everywhere at its CPU's width.
//
// Every function works on one row (or one flat array) and is single-threaded: callers split
// rows across threads with at::parallel_for. No libtorch here, so this file compiles in a second.
// exp is a polynomial (kernels/cpu-kernels.cpp) with a relative error below 1e-7 for arguments
// down to -87 and exactly 0 below; callers pass arguments <= 0 (shifted by a row's maximum).
#pragma once

#include <cstdint>

namespace distill::kernels {

float exp1(float x);  // the scalar exp the row kernels use (for tests and remainders)

// max_j x[j] (-inf for n = 0)
float row_max(const float* x, int64_t n);
// sum_j exp(x[j] * scale - shift)
float row_exp_sum(const float* x, int64_t n, float scale, float shift);
// all = sum_j e_j and kept = sum_j e_j keep[j], e_j = exp(x[j] * scale - shift); keep is 0 or 1
void row_exp_sum_masked(const float* x, const float* keep, int64_t n, float scale, float shift, float* all,
                        float* kept);
// out[j] = coef * exp(x[j] * scale - shift)          (add = false)
// out[j] += coef * exp(x[j] * scale - shift)         (add = true)
void row_scaled_exp(const float* x, int64_t n, float scale, float shift, float coef, bool add, float* out);
// With e_j = exp(t[j] * scale - shift): returns sum_j e_j, and *dot = sum_j e_j (t[j] - s[j])
// (terms with e_j = 0 count 0, also where t[j] = -inf).
float row_exp_sum_dot(const float* t, const float* s, int64_t n, float scale, float shift, float* dot);
// out[j] = coef * (exp(s[j] * scale - shift_s) - exp(t[j] * scale - shift_t))
void row_exp_diff(const float* s, const float* t, int64_t n, float scale, float shift_s, float shift_t, float coef,
                  float* out);

// Softmax of x * scale over n entries, in place: x[j] = exp(x[j] * scale - m) / sum.
void row_softmax_inplace(float* x, int64_t n, float scale);
// Softmax backward: ds[j] = scale * p[j] * (dp[j] - sum_i p[i] dp[i]), written over dp.
void row_softmax_backward_inplace(const float* p, float* dp, int64_t n, float scale);

// RMSNorm of one row: y = x * r * w with r = 1 / sqrt(mean(x^2) + eps); returns r.
float rms_norm_row(const float* x, const float* w, int64_t n, float eps, float* y);
// Its backward: dx = r * (dy w - x r^2 mean(dy w x)); dw_row = dy x r (this row's share of dw).
void rms_norm_row_backward(const float* x, const float* w, const float* dy, int64_t n, float r, float* dx,
                           float* dw_row);

// SwiGLU: h = silu(g) u; backward dg = dh u silu'(g), du = dh silu(g).
void swiglu(const float* g, const float* u, int64_t n, float* h);
void swiglu_backward(const float* g, const float* u, const float* dh, int64_t n, float* dg, float* du);

// Rotary position embedding of one head vector (HF's rotate-half over the two halves of D):
// y = x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1). cos, sin: D entries.
void rope_row(const float* x, const float* cos, const float* sin, int64_t D, float* y);
// Its backward (the transpose): dx = dy cos + rotate_half^T(dy sin), rotate_half^T(z) = (z2, -z1).
void rope_row_backward(const float* dy, const float* cos, const float* sin, int64_t D, float* dx);

// y[j] += x[j]
void add_inplace(float* y, const float* x, int64_t n);

// bfloat16 rows (each value the upper 16 bits of a float, as uint16_t). Widening is exact;
// narrowing rounds to nearest, ties to even, as c10::BFloat16 does (a NaN stays a NaN), so a
// narrowed row equals libtorch's `.to(torch::kBFloat16)` of it bit for bit.
void bf16_to_float(const uint16_t* x, int64_t n, float* y);
void float_to_bf16(const float* x, int64_t n, uint16_t* y);

// One AdamW update of n parameters (torch.optim.AdamW's order of operations), with the gradient
// taken as g * gscale (gradient clipping's factor, or 1):
//   p *= decay; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//   p -= step * m / (sqrt(v / bc2) + eps)          with step = lr / bc1
void adamw(float* p, const float* g, float* m, float* v, int64_t n, float decay, float b1, float b2, float bc2,
           float eps, float step, float gscale);
// sum_j x[j]^2, accumulated in double
double sum_squares(const float* x, int64_t n);
// x[j] *= s
void scale_inplace(float* x, int64_t n, float s);

// Which build of the kernels this CPU runs: "avx512", "avx2" or "baseline".
const char* isa();

}  // namespace distill::kernels
