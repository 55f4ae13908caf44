// distill — fused CPU forms of the decoder's small ops, each an autograd Function whose forward and
// backward run the vectorized kernels of kernels/cpu-kernels.h over rows in parallel. On a
// float32 CPU tensor these replace the chains of libtorch ops (each a pass over memory and a
// dispatch) that dominated a training step of a small model; anywhere else (a GPU, or
// fusion turned off) the caller uses the plain tensor ops, which compute the same function.
// tests/unit/test-model.cpp checks logits and every gradient against PyTorch in Python either way.
#pragma once

#include <torch/types.h>

#include <vector>

namespace distill {

// Whether the fused kernels take x: float32 on the CPU, and not turned off with
// set_fused_kernels(false) or the environment variable DISTILL_FUSED=0.
bool fused_cpu(const torch::Tensor& x);
// The same for bf16 on the CPU, which fused_swiglu and the losses' student rows also take (the
// products' outputs under --precision bf16), row by row through float_row / store_row below.
bool fused_cpu_bf16(const torch::Tensor& x);
// Either of the two: what the row kernels take.
bool fused_cpu_rows(const torch::Tensor& x);
void set_fused_kernels(bool on);
bool fused_kernels_enabled();

// Rows of a float32 or bf16 (N, C) contiguous CPU matrix, for kernels that compute in float:
// float_row gives row n itself, or widened into buf; out_row is where to write row n (itself, or
// buf), and store_row then narrows buf into the bf16 row (nothing to do for float32). A row fits
// in cache, so memory sees only the bf16 array; the values are those of `.to(kFloat32)`, the
// float kernel and `.to(kBFloat16)`.
const float* float_row(const torch::Tensor& m, int64_t n, std::vector<float>& buf);
float* out_row(const torch::Tensor& m, int64_t n, std::vector<float>& buf);
void store_row(const torch::Tensor& m, int64_t n, const std::vector<float>& buf);

// RMSNorm: x (..., C), w (C) -> x / sqrt(mean(x^2) + eps) * w, float32 (x's type), or bf16 with
// bf16_out (for a bf16 product after it: rounded once, as `.to(kBFloat16)` of the float result)
torch::Tensor fused_rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps, bool bf16_out = false);

// SwiGLU's product: gu (..., 2I), the gate and up projections side by side -> silu(g) * u (..., I),
// in gu's type (float32 or bf16; computed in float either way)
torch::Tensor fused_swiglu(const torch::Tensor& gu);

// Causal self-attention of T positions with no cache, rotary positions applied inside:
//   qkv (B, T, (H + 2 Hkv) D): the query, key and value projections of each position side by
//   side (one product with the three weights stacked); cos, sin (T, D): the rotary tables of
//   positions 0..T-1.
// Query head h reads key/value head h / (H / Hkv). Returns (B, T, H*D), ready for o_proj.
torch::Tensor fused_attention(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                              int64_t n_head, int64_t n_kv_head);

// One new position for each of B decoding slots (no gradients): q (B, H, 1, D) and k, v
// (B, Hkv, 1, D), rotary positions already applied; k_cache[b], v_cache[b] (Hkv, capacity, D),
// float32 and contiguous, hold slot b's first length[b] positions. Writes each slot's new key and
// value at length[b] and attends over positions 0..length[b]; query head h reads key/value head
// h / (H / Hkv). Returns (B, H*D). One call in place of a dozen small ops per slot and layer.
torch::Tensor fused_decode_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     const std::vector<torch::Tensor*>& k_cache,
                                     const std::vector<torch::Tensor*>& v_cache, const std::vector<int64_t>& length);

// weight (V, C), ids (...) -> (..., C); the backward adds each row's gradient in one pass (libtorch
// 1.13's CPU embedding backward runs one small op per token).
torch::Tensor fused_embedding(const torch::Tensor& weight, const torch::Tensor& ids);

}  // namespace distill
