#include "io/quant.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>

#include "util/error.h"

namespace distill {

namespace {

constexpr int64_t kQK = 256;  // super-block of the K-quants


uint16_t rd16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
void wr16(uint8_t* p, uint16_t v) {
    p[0] = uint8_t(v);
    p[1] = uint8_t(v >> 8);
}
float half_at(const uint8_t* p) { return fp16_to_fp32(rd16(p)); }

// The 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes of Q4_K / Q5_K:
// bytes 0-3 hold scales 0-3 (low 6 bits), bytes 4-7 mins 0-3; sub-blocks 4-7 keep their low
// 4 bits in bytes 8-11 and their high 2 bits in the top bits of bytes 0-7.
void k_scale_min(int j, const uint8_t* s, int& sc, int& m) {
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

void k_pack_scale_min(int j, int sc, int m, uint8_t* s) {
    if (j < 4) {
        s[j] = uint8_t((s[j] & 0xC0) | sc);
        s[j + 4] = uint8_t((s[j + 4] & 0xC0) | m);
    } else {
        s[j + 4] = uint8_t((sc & 0x0F) | ((m & 0x0F) << 4));
        s[j - 4] = uint8_t((s[j - 4] & 0x3F) | ((sc >> 4) << 6));
        s[j] = uint8_t((s[j] & 0x3F) | ((m >> 4) << 6));
    }
}

int round_int(float x) { return int(std::lround(x)); }

// Fits x[i] ~ scale * L[i] - min with L in [0, nmax] and min >= 0, minimising the error
// weighted by w: the plain range fit first, then a few stretched scales, each refined by a
// weighted least-squares solve for (scale, min). Returns scale; the offset goes to *min_out.
float fit_scale_min(const float* x, const float* w, int n, int nmax, uint8_t* L, float* min_out) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; ++i) {
        lo = std::min(lo, x[i]);
        hi = std::max(hi, x[i]);
    }
    lo = std::min(lo, 0.0f);
    if (hi == lo) {
        std::fill(L, L + n, 0);
        *min_out = -lo;
        return 0.0f;
    }
    auto quantize = [&](float iscale, float offset, uint8_t* out) {
        for (int i = 0; i < n; ++i)
            out[i] = uint8_t(std::clamp(round_int(iscale * (x[i] - offset)), 0, nmax));
    };
    auto error = [&](float scale, float offset, const uint8_t* q) {
        float e = 0;
        for (int i = 0; i < n; ++i) {
            float d = scale * q[i] + offset - x[i];
            e += w[i] * d * d;
        }
        return e;
    };
    float best_scale = (hi - lo) / nmax, best_min = lo;
    quantize(1.0f / best_scale, lo, L);
    float best = error(best_scale, best_min, L);
    uint8_t trial[32];
    for (int step = 0; step <= 20; ++step) {
        const float iscale = (float(nmax) - 1.0f + 0.1f * step) / (hi - lo);
        quantize(iscale, lo, trial);
        double sw = 0, sl = 0, sll = 0, sx = 0, slx = 0;
        for (int i = 0; i < n; ++i) {
            sw += w[i];
            sl += w[i] * trial[i];
            sll += w[i] * trial[i] * trial[i];
            sx += w[i] * x[i];
            slx += w[i] * trial[i] * x[i];
        }
        const double det = sw * sll - sl * sl;
        if (det <= 0) continue;
        float scale = float((sw * slx - sx * sl) / det);
        float offset = float((sll * sx - sl * slx) / det);
        if (offset > 0) {  // the offset only ever subtracts
            offset = 0;
            scale = float(slx / sll);
        }
        const float e = error(scale, offset, trial);
        if (e < best) {
            best = e;
            best_scale = scale;
            best_min = offset;
            std::memcpy(L, trial, size_t(n));
        }
    }
    *min_out = -best_min;
    return best_scale;
}

// Q4_K and Q5_K share the layout of scales: 8 sub-blocks of 32, a 6-bit scale and min each,
// relative to the fp16 super-block scale d and dmin. Fills d/dmin/scales and the levels L.
void quantize_k_scales(const float* x, int nmax, uint8_t* block, uint8_t* L) {
    float scales[8], mins[8], w[32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
        const float* xs = x + 32 * j;
        float ss = 0;
        for (int i = 0; i < 32; ++i) ss += xs[i] * xs[i];
        const float rms = std::sqrt(ss / 32);
        for (int i = 0; i < 32; ++i) w[i] = rms + std::fabs(xs[i]);
        scales[j] = fit_scale_min(xs, w, 32, nmax, L + 32 * j, &mins[j]);
        max_scale = std::max(max_scale, scales[j]);
        max_min = std::max(max_min, mins[j]);
    }
    uint8_t* s = block + 4;
    std::memset(s, 0, 12);
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    for (int j = 0; j < 8; ++j)
        k_pack_scale_min(j, std::min(63, round_int(inv_scale * scales[j])),
                         std::min(63, round_int(inv_min * mins[j])), s);
    wr16(block, fp32_to_fp16(max_scale / 63.0f));
    wr16(block + 2, fp32_to_fp16(max_min / 63.0f));
    // levels again against the scales as stored
    const float d = half_at(block), dmin = half_at(block + 2);
    for (int j = 0; j < 8; ++j) {
        int sc, m;
        k_scale_min(j, s, sc, m);
        const float ds = d * sc, dm = dmin * m;
        if (ds == 0) continue;
        for (int i = 0; i < 32; ++i)
            L[32 * j + i] = uint8_t(std::clamp(round_int((x[32 * j + i] + dm) / ds), 0, nmax));
    }
}

void dequant_q4_0(const uint8_t* b, float* y) {
    const float d = half_at(b);
    for (int j = 0; j < 16; ++j) {
        y[j] = float((b[2 + j] & 0x0F) - 8) * d;
        y[j + 16] = float((b[2 + j] >> 4) - 8) * d;
    }
}

void quant_q4_0(const float* x, uint8_t* b) {
    float amax = 0, signed_max = 0;
    for (int i = 0; i < 32; ++i)
        if (std::fabs(x[i]) > amax) {
            amax = std::fabs(x[i]);
            signed_max = x[i];
        }
    const float d = signed_max / -8.0f;  // the largest magnitude maps to level 0 (= -8)
    const float id = d != 0 ? 1.0f / d : 0.0f;
    wr16(b, fp32_to_fp16(d));
    for (int j = 0; j < 16; ++j) {
        int lo = std::clamp(round_int(x[j] * id) + 8, 0, 15);
        int hi = std::clamp(round_int(x[j + 16] * id) + 8, 0, 15);
        b[2 + j] = uint8_t(lo | (hi << 4));
    }
}

void dequant_q8_0(const uint8_t* b, float* y) {
    const float d = half_at(b);
    for (int j = 0; j < 32; ++j) y[j] = float(int8_t(b[2 + j])) * d;
}

void quant_q8_0(const float* x, uint8_t* b) {
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float d = amax / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    wr16(b, fp32_to_fp16(d));
    for (int j = 0; j < 32; ++j) b[2 + j] = uint8_t(int8_t(std::clamp(round_int(x[j] * id), -127, 127)));
}

// Q4_K: d, dmin (fp16), scales[12], qs[128]. Four chunks of 64: byte l of a chunk holds
// element l (low nibble) and element l + 32 (high nibble).
void dequant_q4_k(const uint8_t* b, float* y) {
    const float d = half_at(b), dmin = half_at(b + 2);
    const uint8_t* q = b + 16;
    for (int c = 0; c < 4; ++c, q += 32, y += 64) {
        int sc0, m0, sc1, m1;
        k_scale_min(2 * c, b + 4, sc0, m0);
        k_scale_min(2 * c + 1, b + 4, sc1, m1);
        for (int l = 0; l < 32; ++l) {
            y[l] = d * sc0 * (q[l] & 0x0F) - dmin * m0;
            y[l + 32] = d * sc1 * (q[l] >> 4) - dmin * m1;
        }
    }
}

void quant_q4_k(const float* x, uint8_t* b) {
    uint8_t L[kQK];
    quantize_k_scales(x, 15, b, L);
    uint8_t* q = b + 16;
    for (int c = 0; c < 4; ++c, q += 32)
        for (int l = 0; l < 32; ++l) q[l] = uint8_t(L[64 * c + l] | (L[64 * c + l + 32] << 4));
}

// Q5_K: d, dmin, scales[12], qh[32], qs[128]. As Q4_K, plus a fifth bit per element: for
// chunk c, bit 2c of qh[l] belongs to element l, bit 2c+1 to element l + 32.
void dequant_q5_k(const uint8_t* b, float* y) {
    const float d = half_at(b), dmin = half_at(b + 2);
    const uint8_t* qh = b + 16;
    const uint8_t* q = b + 48;
    for (int c = 0; c < 4; ++c, q += 32, y += 64) {
        int sc0, m0, sc1, m1;
        k_scale_min(2 * c, b + 4, sc0, m0);
        k_scale_min(2 * c + 1, b + 4, sc1, m1);
        for (int l = 0; l < 32; ++l) {
            const int lo = (q[l] & 0x0F) | (((qh[l] >> (2 * c)) & 1) << 4);
            const int hi = (q[l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
            y[l] = d * sc0 * lo - dmin * m0;
            y[l + 32] = d * sc1 * hi - dmin * m1;
        }
    }
}

void quant_q5_k(const float* x, uint8_t* b) {
    uint8_t L[kQK];
    quantize_k_scales(x, 31, b, L);
    uint8_t* qh = b + 16;
    uint8_t* q = b + 48;
    std::memset(qh, 0, 32);
    for (int c = 0; c < 4; ++c, q += 32)
        for (int l = 0; l < 32; ++l) {
            const int lo = L[64 * c + l], hi = L[64 * c + l + 32];
            q[l] = uint8_t((lo & 0x0F) | ((hi & 0x0F) << 4));
            qh[l] |= uint8_t(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
        }
}

// Q6_K: ql[128], qh[64], scales[16] (int8, one per 16 elements), d (fp16). Two halves of 128:
// ql byte l holds elements l (low) and l + 64 (high), byte l + 32 elements l + 32 and l + 96;
// qh byte l holds the top two bits of elements l, l + 32, l + 64, l + 96. Levels are 6-bit - 32.
void dequant_q6_k(const uint8_t* b, float* y) {
    const float d = half_at(b + 208);
    for (int h = 0; h < 2; ++h, y += 128) {
        const uint8_t* ql = b + 64 * h;
        const uint8_t* qh = b + 128 + 32 * h;
        const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192 + 8 * h);
        for (int l = 0; l < 32; ++l) {
            const int g = l / 16;
            const int q0 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q1 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * sc[g] * q0;
            y[l + 32] = d * sc[g + 2] * q1;
            y[l + 64] = d * sc[g + 4] * q2;
            y[l + 96] = d * sc[g + 6] * q3;
        }
    }
}

void quant_q6_k(const float* x, uint8_t* b) {
    // Symmetric per group of 16: the largest magnitude maps to level -32.
    float scales[16], max_abs = 0, max_scale = 0;
    for (int g = 0; g < 16; ++g) {
        float amax = 0, smax = 0;
        for (int i = 0; i < 16; ++i)
            if (std::fabs(x[16 * g + i]) > amax) {
                amax = std::fabs(x[16 * g + i]);
                smax = x[16 * g + i];
            }
        scales[g] = smax / -32.0f;
        if (std::fabs(scales[g]) > max_abs) {
            max_abs = std::fabs(scales[g]);
            max_scale = scales[g];
        }
    }
    std::memset(b, 0, 210);
    if (max_abs == 0) return;
    const float iscale = -128.0f / max_scale;
    wr16(b + 208, fp32_to_fp16(1.0f / iscale));
    const float d = half_at(b + 208);
    int8_t* sc = reinterpret_cast<int8_t*>(b + 192);
    uint8_t L[kQK];
    for (int g = 0; g < 16; ++g) {
        sc[g] = int8_t(std::clamp(round_int(iscale * scales[g]), -128, 127));
        const float ds = d * sc[g];
        for (int i = 0; i < 16; ++i)
            L[16 * g + i] = uint8_t(ds != 0 ? std::clamp(round_int(x[16 * g + i] / ds), -32, 31) + 32 : 32);
    }
    for (int h = 0; h < 2; ++h) {
        uint8_t* ql = b + 64 * h;
        uint8_t* qh = b + 128 + 32 * h;
        const uint8_t* Lh = L + 128 * h;
        for (int l = 0; l < 32; ++l) {
            ql[l] = uint8_t((Lh[l] & 0x0F) | ((Lh[l + 64] & 0x0F) << 4));
            ql[l + 32] = uint8_t((Lh[l + 32] & 0x0F) | ((Lh[l + 96] & 0x0F) << 4));
            qh[l] = uint8_t((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                            ((Lh[l + 96] >> 4) << 6));
        }
    }
}

// Whole rows from the block kernels above.
template <void (*Dequant)(const uint8_t*, float*), int64_t Block, int64_t Bytes>
void blocks_to_float(const uint8_t* src, float* dst, int64_t n) {
    for (int64_t i = 0; i < n / Block; ++i) Dequant(src + i * Bytes, dst + i * Block);
}
template <void (*Quant)(const float*, uint8_t*), int64_t Block, int64_t Bytes>
void blocks_from_float(const float* src, uint8_t* dst, int64_t n) {
    for (int64_t i = 0; i < n / Block; ++i) Quant(src + i * Block, dst + i * Bytes);
}
void f32_to_float(const uint8_t* src, float* dst, int64_t n) { std::memcpy(dst, src, size_t(n) * 4); }
void f32_from_float(const float* src, uint8_t* dst, int64_t n) { std::memcpy(dst, src, size_t(n) * 4); }
void f16_to_float(const uint8_t* src, float* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(rd16(src + 2 * i));
}
void f16_from_float(const float* src, uint8_t* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) wr16(dst + 2 * i, fp32_to_fp16(src[i]));
}
void bf16_to_float(const uint8_t* src, float* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(rd16(src + 2 * i));
}
void bf16_from_float(const float* src, uint8_t* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) wr16(dst + 2 * i, fp32_to_bf16(src[i]));
}

// ggml's types: id, name, values and bytes per block, row kernels (gguf-py constants.py).
const GgmlTypeInfo kTypes[] = {
    {GgmlType::F32, "F32", 1, 4, f32_to_float, f32_from_float},
    {GgmlType::F16, "F16", 1, 2, f16_to_float, f16_from_float},
    {GgmlType::BF16, "BF16", 1, 2, bf16_to_float, bf16_from_float},
    {GgmlType::Q4_0, "Q4_0", 32, 18, blocks_to_float<dequant_q4_0, 32, 18>, blocks_from_float<quant_q4_0, 32, 18>},
    {GgmlType::Q4_1, "Q4_1", 32, 20, nullptr, nullptr},
    {GgmlType::Q5_0, "Q5_0", 32, 22, nullptr, nullptr},
    {GgmlType::Q5_1, "Q5_1", 32, 24, nullptr, nullptr},
    {GgmlType::Q8_0, "Q8_0", 32, 34, blocks_to_float<dequant_q8_0, 32, 34>, blocks_from_float<quant_q8_0, 32, 34>},
    {GgmlType::Q8_1, "Q8_1", 32, 40, nullptr, nullptr},
    {GgmlType::Q2_K, "Q2_K", kQK, 84, nullptr, nullptr},
    {GgmlType::Q3_K, "Q3_K", kQK, 110, nullptr, nullptr},
    {GgmlType::Q4_K, "Q4_K", kQK, 144, blocks_to_float<dequant_q4_k, kQK, 144>,
     blocks_from_float<quant_q4_k, kQK, 144>},
    {GgmlType::Q5_K, "Q5_K", kQK, 176, blocks_to_float<dequant_q5_k, kQK, 176>,
     blocks_from_float<quant_q5_k, kQK, 176>},
    {GgmlType::Q6_K, "Q6_K", kQK, 210, blocks_to_float<dequant_q6_k, kQK, 210>,
     blocks_from_float<quant_q6_k, kQK, 210>},
    {GgmlType::Q8_K, "Q8_K", kQK, 292, nullptr, nullptr},
    {GgmlType::I8, "I8", 1, 1, nullptr, nullptr},
    {GgmlType::I16, "I16", 1, 2, nullptr, nullptr},
    {GgmlType::I32, "I32", 1, 4, nullptr, nullptr},
    {GgmlType::I64, "I64", 1, 8, nullptr, nullptr},
    {GgmlType::F64, "F64", 1, 8, nullptr, nullptr},
};

const GgmlTypeInfo& checked(GgmlType type, int64_t n, const char* what) {
    const GgmlTypeInfo* info = ggml_type_info(uint32_t(type));
    DISTILL_CHECK(info, what, ": unknown ggml type ", uint32_t(type));
    DISTILL_CHECK(n >= 0 && n % info->block == 0, what, ": ", n, " elements are not a whole number of ",
                  info->name, " blocks of ", info->block);
    return *info;
}

}  // namespace

const GgmlTypeInfo* ggml_type_info(uint32_t id) {
    for (const auto& t : kTypes)
        if (uint32_t(t.type) == id) return &t;
    return nullptr;
}

const GgmlTypeInfo* ggml_type_by_name(const std::string& name) {
    std::string up = name;
    for (auto& c : up) c = char(std::toupper(static_cast<unsigned char>(c)));
    for (const auto& t : kTypes)
        if (up == t.name) return &t;
    return nullptr;
}

float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    uint32_t bits;
    if (exp == 0) {
        const float v = float(mant) * (1.0f / 16777216.0f);  // subnormal: mant * 2^-24
        return sign ? -v : v;
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

uint16_t fp32_to_fp16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = uint16_t((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) return uint16_t(sign | (ax > 0x7F800000u ? 0x7E00 : 0x7C00));
    if (ax >= 0x477FF000u) return uint16_t(sign | 0x7C00);  // >= 65520 rounds to infinity
    if (ax < 0x38800000u) {
        // below the smallest normal half: adding 0.5 lets the FPU round to the 2^-24 grid
        float a;
        std::memcpy(&a, &ax, 4);
        a += 0.5f;
        uint32_t r;
        std::memcpy(&r, &a, 4);
        return uint16_t(sign | (r - 0x3F000000u));
    }
    const uint32_t odd = (ax >> 13) & 1;
    ax += 0xC8000FFFu + odd;  // exponent rebias (127 -> 15) and round to nearest even
    return uint16_t(sign | (ax >> 13));
}

float bf16_to_fp32(uint16_t h) {
    const uint32_t bits = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

uint16_t fp32_to_bf16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((x >> 16) | 0x40);  // quiet NaN
    return uint16_t((x + 0x7FFFu + ((x >> 16) & 1)) >> 16);
}

int64_t row_bytes(GgmlType type, int64_t n) {
    const GgmlTypeInfo& t = checked(type, n, "row_bytes");
    return n / t.block * t.bytes;
}

void dequantize_row(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
    const GgmlTypeInfo& t = checked(type, n, "dequantize");
    DISTILL_CHECK(t.to_float, "tensors of type ", t.name,
                  " cannot be read yet (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)");
    t.to_float(src, dst, n);
}

void quantize_row(GgmlType type, const float* src, uint8_t* dst, int64_t n) {
    const GgmlTypeInfo& t = checked(type, n, "quantize");
    DISTILL_CHECK(t.from_float, "cannot write tensors of type ", t.name,
                  " (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)");
    t.from_float(src, dst, n);
}

}  // namespace distill
