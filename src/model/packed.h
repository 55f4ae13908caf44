// distill — weight matrices kept in their file's type: a model loaded for inference (a teacher
// for capture, eval, score, generate, serve) maps its file and leaves each matrix as the file
// stores it (F32, F16, BF16, Q8_0, Q4_K, ...), so that it needs about its file's size in memory
// instead of 4 bytes per weight. A product x Wᵀ dequantizes W a tile of rows at a time into a
// reused float32 buffer, just before that tile's GEMM; an F32 matrix is used in place.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "io/quant.h"

namespace distill {

class PackedMatrix {
public:
    // rows × cols values of `type` at `data`, row r of the matrix stored at row row_map[r] (or at
    // row r when row_map is empty). `owner` keeps the memory alive (a mapped file).
    PackedMatrix(GgmlType type, const uint8_t* data, int64_t rows, int64_t cols,
                 std::shared_ptr<const void> owner, std::vector<int32_t> row_map = {});

    int64_t rows() const { return rows_; }
    int64_t cols() const { return cols_; }
    GgmlType type() const { return type_; }
    int64_t bytes() const { return rows_ * row_bytes_; }

    // Rows [r0, r0 + n) as float32 into dst (n × cols, row-major), on the intra-op threads.
    void dequantize(int64_t r0, int64_t n, float* dst) const;
    // x (..., cols) -> x Wᵀ + bias (..., rows), float32 on the CPU. bias may be undefined. Under
    // Bf16Forward (util/device.h) the product takes x and W rounded to bf16 (a BF16 matrix as it
    // lies in the file), accumulates in float32 and rounds to bf16 (autocast's linear), and the
    // result comes back as float32.
    torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& bias = {}) const;
    // log softmax(x Wᵀ) at each row's target, without the (n × rows) logits: one tile of W's rows
    // at a time, with a running max and sum of exponentials. x (n, cols), targets (n) int64 ->
    // (n) float32. For an output head over a large vocabulary, where the logits would dominate memory.
    torch::Tensor target_logprobs(const torch::Tensor& x, const torch::Tensor& targets) const;
    // The k largest of log softmax(x Wᵀ) per row and their column ids, streamed as
    // target_logprobs is (each tile's top k merged into a running top k). x (n, cols) ->
    // {values (n, k) float32, descending; ids (n, k) int64}. k = 0: none. With targets (n)
    // given, *target_lp receives each row's log-prob of its target (as target_logprobs) in the
    // same pass.
    std::pair<torch::Tensor, torch::Tensor> top_logprobs(const torch::Tensor& x, int64_t k,
                                                         const torch::Tensor& targets = {},
                                                         torch::Tensor* target_lp = nullptr) const;
    // The rows that ids (any shape, int64) pick: (..., cols), as an embedding lookup.
    torch::Tensor embedding(const torch::Tensor& ids) const;
    // The whole matrix as a new float32 tensor (rows × cols).
    torch::Tensor to_float() const;
    // hash64 of the matrix as float32, row after row, seeded with `seed`: what hashing
    // to_float()'s bytes gives, without holding them all (a model's fingerprint).
    uint64_t hash_as_float(uint64_t seed) const;

private:
    const uint8_t* row_ptr(int64_t r) const;
    // visit(r0, x2 W[r0 : r0 + m]ᵀ) for each tile of m rows; x2 (n, cols) float32, contiguous.
    void for_each_logit_tile(const torch::Tensor& x2,
                             const std::function<void(int64_t, const torch::Tensor&)>& visit) const;

    GgmlType type_;
    const uint8_t* data_;
    int64_t rows_, cols_, row_bytes_;
    std::shared_ptr<const void> owner_;
    std::vector<int32_t> row_map_;
    void (*to_float_)(const uint8_t*, float*, int64_t);
    torch::Tensor in_place_;  // an F32 matrix without a row map, used as it lies in the file
};

}  // namespace distill
