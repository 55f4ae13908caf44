// distill — the CPU kernels (see cpu-kernels.h). Compiled with -O3 -fopenmp-simd: the loops
// below are written so that GCC vectorizes them (no calls, no branches but selects), and
// `DISTILL_KERNEL` builds each function for AVX-512, AVX2+FMA and baseline x86-64, picked at
// load time by the CPU's features.
#include "kernels/cpu-kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(DISTILL_NO_CLONES)
#define DISTILL_KERNEL __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define DISTILL_KERNEL
#endif

namespace distill::kernels {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Sums of exponentials run in float over blocks of this many entries, the block sums in double:
// full vector speed, and the error of a float sum over a whole 150k-token vocabulary avoided.
constexpr int64_t kBlock = 512;

// exp(x) = 2^n e^r with n = round(x / ln 2), |r| <= ln(2) / 2, e^r by a degree-7 polynomial
// (Cephes expf's coefficients); 0 below -87 (and for -inf), clamped at 88. Rounding by adding
// and subtracting 1.5 * 2^23 keeps it branch-free and vectorizable (no -ffast-math here).
inline float fast_exp(float x) {
    const float xc = std::min(std::max(x, -87.0f), 88.0f);
    const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return x < -87.0f ? 0.0f : p * scale;
}

}  // namespace

float exp1(float x) { return fast_exp(x); }

DISTILL_KERNEL float row_max(const float* x, int64_t n) {
    float m = kNegInf;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
    return m;
}

DISTILL_KERNEL float row_exp_sum(const float* x, int64_t n, float scale, float shift) {
    double total = 0;
    for (int64_t b = 0; b < n; b += kBlock) {
        const int64_t e = std::min(n, b + kBlock);
        float s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = b; j < e; ++j) s += fast_exp(x[j] * scale - shift);
        total += s;
    }
    return static_cast<float>(total);
}

DISTILL_KERNEL void row_exp_sum_masked(const float* x, const float* keep, int64_t n, float scale, float shift,
                                       float* all, float* kept) {
    double ta = 0, tk = 0;
    for (int64_t b = 0; b < n; b += kBlock) {
        const int64_t e = std::min(n, b + kBlock);
        float sa = 0, sk = 0;
#pragma omp simd reduction(+ : sa, sk)
        for (int64_t j = b; j < e; ++j) {
            const float v = fast_exp(x[j] * scale - shift);
            sa += v;
            sk += v * keep[j];
        }
        ta += sa;
        tk += sk;
    }
    *all = static_cast<float>(ta);
    *kept = static_cast<float>(tk);
}

DISTILL_KERNEL void row_scaled_exp(const float* x, int64_t n, float scale, float shift, float coef, bool add,
                                   float* out) {
    if (add) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) out[j] += coef * fast_exp(x[j] * scale - shift);
    } else {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) out[j] = coef * fast_exp(x[j] * scale - shift);
    }
}

DISTILL_KERNEL float row_exp_sum_dot(const float* t, const float* s, int64_t n, float scale, float shift,
                                     float* dot) {
    double ts = 0, td = 0;
    for (int64_t b = 0; b < n; b += kBlock) {
        const int64_t e = std::min(n, b + kBlock);
        float ss = 0, sd = 0;
#pragma omp simd reduction(+ : ss, sd)
        for (int64_t j = b; j < e; ++j) {
            const float v = fast_exp(t[j] * scale - shift);
            ss += v;
            sd += v > 0.0f ? v * (t[j] - s[j]) : 0.0f;  // 0 log 0 = 0 where the teacher has -inf
        }
        ts += ss;
        td += sd;
    }
    *dot = static_cast<float>(td);
    return static_cast<float>(ts);
}

DISTILL_KERNEL void row_exp_diff(const float* s, const float* t, int64_t n, float scale, float shift_s,
                                 float shift_t, float coef, float* out) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j)
        out[j] = coef * (fast_exp(s[j] * scale - shift_s) - fast_exp(t[j] * scale - shift_t));
}

DISTILL_KERNEL void row_softmax_inplace(float* x, int64_t n, float scale) {
    float m = kNegInf;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
    const float shift = m * scale;
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) {
        x[j] = fast_exp(x[j] * scale - shift);
        s += x[j];
    }
    const float inv = 1.0f / s;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) x[j] *= inv;
}

DISTILL_KERNEL void row_softmax_backward_inplace(const float* p, float* dp, int64_t n, float scale) {
    float d = 0;
#pragma omp simd reduction(+ : d)
    for (int64_t j = 0; j < n; ++j) d += p[j] * dp[j];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dp[j] = scale * p[j] * (dp[j] - d);
}

DISTILL_KERNEL float rms_norm_row(const float* x, const float* w, int64_t n, float eps, float* y) {
    float ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < n; ++j) ss += x[j] * x[j];
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = x[j] * r * w[j];
    return r;
}

DISTILL_KERNEL void rms_norm_row_backward(const float* x, const float* w, const float* dy, int64_t n, float r,
                                          float* dx, float* dw_row) {
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < n; ++j) dot += dy[j] * w[j] * x[j];
    const float c = r * r * r * dot / static_cast<float>(n);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
        dx[j] = r * dy[j] * w[j] - c * x[j];
        dw_row[j] = dy[j] * x[j] * r;
    }
}

DISTILL_KERNEL void swiglu(const float* g, const float* u, int64_t n, float* h) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) h[j] = g[j] / (1.0f + fast_exp(-g[j])) * u[j];
}

DISTILL_KERNEL void swiglu_backward(const float* g, const float* u, const float* dh, int64_t n, float* dg,
                                    float* du) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
        const float sig = 1.0f / (1.0f + fast_exp(-g[j]));
        const float silu = g[j] * sig;
        du[j] = dh[j] * silu;
        dg[j] = dh[j] * u[j] * (sig + silu * (1.0f - sig));
    }
}

DISTILL_KERNEL void rope_row(const float* x, const float* cos, const float* sin, int64_t D, float* y) {
    const int64_t h = D / 2;
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) {
        y[j] = x[j] * cos[j] - x[j + h] * sin[j];
        y[j + h] = x[j + h] * cos[j + h] + x[j] * sin[j + h];
    }
}

DISTILL_KERNEL void rope_row_backward(const float* dy, const float* cos, const float* sin, int64_t D, float* dx) {
    const int64_t h = D / 2;
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) {
        dx[j] = dy[j] * cos[j] + dy[j + h] * sin[j + h];
        dx[j + h] = dy[j + h] * cos[j + h] - dy[j] * sin[j];
    }
}

DISTILL_KERNEL void add_inplace(float* y, const float* x, int64_t n) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] += x[j];
}

DISTILL_KERNEL void bf16_to_float(const uint16_t* x, int64_t n, float* y) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
        const uint32_t u = uint32_t(x[j]) << 16;
        float f;
        std::memcpy(&f, &u, sizeof f);
        y[j] = f;
    }
}

DISTILL_KERNEL void float_to_bf16(const float* x, int64_t n, uint16_t* y) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
        uint32_t u;
        std::memcpy(&u, &x[j], sizeof u);
        const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        y[j] = uint16_t((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
    }
}

DISTILL_KERNEL void adamw(float* p, const float* g, float* m, float* v, int64_t n, float decay, float b1, float b2,
                          float bc2, float eps, float step, float gscale) {
    const float a1 = 1.0f - b1, a2 = 1.0f - b2;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
        const float gj = g[j] * gscale;
        const float mj = m[j] * b1 + gj * a1;
        const float vj = v[j] * b2 + gj * gj * a2;
        m[j] = mj;
        v[j] = vj;
        p[j] = p[j] * decay - step * mj / (std::sqrt(vj / bc2) + eps);
    }
}

DISTILL_KERNEL double sum_squares(const float* x, int64_t n) {
    double total = 0;
    for (int64_t b = 0; b < n; b += kBlock) {
        const int64_t e = std::min(n, b + kBlock);
        float s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = b; j < e; ++j) s += x[j] * x[j];
        total += s;
    }
    return total;
}

DISTILL_KERNEL void scale_inplace(float* x, int64_t n, float s) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) x[j] *= s;
}

const char* isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(DISTILL_NO_CLONES)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return "avx512";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
#endif
    return "baseline";
}

}  // namespace distill::kernels
