#include "model/packed.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <limits>

#include "util/device.h"
#include "util/error.h"
#include "util/file.h"

namespace distill {

namespace {

// A tile of about 4 MiB of float32: large enough for an efficient GEMM when many rows of x come
// at once, small enough to stay in the last-level cache when one row does (decoding).
constexpr int64_t kTileFloats = int64_t{1} << 20;

// The reused buffer of this thread's tiles (the server's engine and a capture run each have one).
float* tile_buffer(int64_t n) {
    thread_local std::vector<float> buf;
    if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
    return buf.data();
}

}  // namespace

PackedMatrix::PackedMatrix(GgmlType type, const uint8_t* data, int64_t rows, int64_t cols,
                           std::shared_ptr<const void> owner, std::vector<int32_t> row_map)
    : type_(type), data_(data), rows_(rows), cols_(cols), owner_(std::move(owner)), row_map_(std::move(row_map)) {
    const GgmlTypeInfo* info = ggml_type_info(uint32_t(type));
    DISTILL_CHECK(info && info->to_float, "tensor type ", uint32_t(type), " cannot be read");
    DISTILL_CHECK(cols % info->block == 0, "a row of ", cols, " values is not a whole number of ", info->name,
                  " blocks");
    DISTILL_CHECK(row_map_.empty() || static_cast<int64_t>(row_map_.size()) == rows, "row map of ",
                  row_map_.size(), " entries for ", rows, " rows");
    to_float_ = info->to_float;
    row_bytes_ = row_bytes(type, cols);
    if (type == GgmlType::F32 && row_map_.empty() && reinterpret_cast<uintptr_t>(data) % alignof(float) == 0)
        in_place_ = torch::from_blob(const_cast<uint8_t*>(data), {rows, cols}, torch::kFloat32);
}

const uint8_t* PackedMatrix::row_ptr(int64_t r) const {
    return data_ + (row_map_.empty() ? r : row_map_[static_cast<size_t>(r)]) * row_bytes_;
}

void PackedMatrix::dequantize(int64_t r0, int64_t n, float* dst) const {
    DISTILL_ASSERT(r0 >= 0 && n >= 0 && r0 + n <= rows_, "rows out of range");
    const int64_t grain = std::max<int64_t>(1, 16384 / cols_);
    at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) to_float_(row_ptr(r0 + i), dst + i * cols_, cols_);
    });
}

torch::Tensor PackedMatrix::linear(const torch::Tensor& x, const torch::Tensor& bias) const {
    namespace F = torch::nn::functional;
    DISTILL_CHECK(x.size(-1) == cols_, "input of width ", x.size(-1), " for a matrix of ", cols_, " columns");
    const bool bf16 = Bf16Forward::active();
    if (bf16) {  // the whole matrix where it needs no tiles: an F32 one rounded, a BF16 one as it lies
        torch::Tensor w;
        if (in_place_.defined())
            w = in_place_.to(torch::kBFloat16);
        else if (type_ == GgmlType::BF16 && row_map_.empty() && reinterpret_cast<uintptr_t>(data_) % 2 == 0)
            w = torch::from_blob(const_cast<uint8_t*>(data_), {rows_, cols_}, torch::kBFloat16);
        if (w.defined()) {
            auto y = F::linear(x.to(torch::kBFloat16), w).to(torch::kFloat32);
            return bias.defined() ? y + bias : y;
        }
    } else if (in_place_.defined()) {
        return F::linear(x, in_place_, bias);
    }
    auto sizes = x.sizes().vec();
    auto x2 = x.reshape({-1, cols_}).to(bf16 ? torch::kBFloat16 : torch::kFloat32).contiguous();
    sizes.back() = rows_;
    auto out = torch::empty({x2.size(0), rows_}, x2.options().dtype(torch::kFloat32));
    const int64_t tile_rows = std::max<int64_t>(16, kTileFloats / cols_);
    float* buf = tile_buffer(std::min(tile_rows, rows_) * cols_);
    for (int64_t r0 = 0; r0 < rows_; r0 += tile_rows) {
        const int64_t n = std::min(tile_rows, rows_ - r0);
        dequantize(r0, n, buf);
        auto w = torch::from_blob(buf, {n, cols_}, torch::kFloat32);
        auto dst = out.narrow(1, r0, n);
        if (bf16)
            dst.copy_(torch::mm(x2, w.to(torch::kBFloat16).t()));  // each tile rounded for its product
        else
            torch::mm_out(dst, x2, w.t());
    }
    if (bias.defined()) out.add_(bias);
    return out.view(sizes);
}

void PackedMatrix::for_each_logit_tile(const torch::Tensor& x2,
                                       const std::function<void(int64_t, const torch::Tensor&)>& visit) const {
    const int64_t tile_rows = std::max<int64_t>(16, kTileFloats / cols_);
    float* buf = tile_buffer(std::min(tile_rows, rows_) * cols_);
    for (int64_t r0 = 0; r0 < rows_; r0 += tile_rows) {
        const int64_t m = std::min(tile_rows, rows_ - r0);
        if (in_place_.defined()) {
            visit(r0, torch::mm(x2, in_place_.narrow(0, r0, m).t()));
        } else {
            dequantize(r0, m, buf);
            visit(r0, torch::mm(x2, torch::from_blob(buf, {m, cols_}, torch::kFloat32).t()));  // (n, m)
        }
    }
}

namespace {

// The running log-sum-exp of a row's logits over tiles.
struct RunningLse {
    torch::Tensor max, sum;
    RunningLse(int64_t n, const torch::TensorOptions& o)
        : max(torch::full({n}, -std::numeric_limits<float>::infinity(), o)), sum(torch::zeros({n}, o)) {}
    void add(const torch::Tensor& logits) {
        auto new_max = torch::maximum(max, std::get<0>(logits.max(1)));
        sum = sum * (max - new_max).exp() + (logits - new_max.unsqueeze(1)).exp().sum(1);
        max = new_max;
    }
    torch::Tensor value() const { return max + sum.log(); }
};

}  // namespace

torch::Tensor PackedMatrix::target_logprobs(const torch::Tensor& x, const torch::Tensor& targets) const {
    DISTILL_CHECK(targets.dim() == 1 && x.dim() == 2 && targets.size(0) == x.size(0), "target_logprobs takes x (n, ",
                  cols_, ") and targets (n), got ", x.sizes(), " and ", targets.sizes());
    torch::Tensor lp;
    top_logprobs(x, 0, targets, &lp);
    return lp;
}

std::pair<torch::Tensor, torch::Tensor> PackedMatrix::top_logprobs(const torch::Tensor& x, int64_t k,
                                                                   const torch::Tensor& targets,
                                                                   torch::Tensor* target_lp) const {
    DISTILL_CHECK(x.dim() == 2 && x.size(1) == cols_ && k >= 0 && k <= rows_, "top_logprobs takes x (n, ", cols_,
                  ") and 0 <= k <= ", rows_, ", got ", x.sizes(), " and ", k);
    const bool want_targets = targets.defined() && target_lp;
    DISTILL_CHECK(!want_targets || (targets.dim() == 1 && targets.size(0) == x.size(0)), "targets ", targets.sizes(),
                  " for ", x.size(0), " rows");
    auto x2 = x.to(torch::kFloat32).contiguous();
    const int64_t n = x2.size(0);
    RunningLse lse(n, x2.options());
    torch::Tensor vals = torch::empty({n, 0}, x2.options()), ids = torch::empty({n, 0}, torch::kInt64);
    torch::Tensor tgt = want_targets ? targets.to(torch::kInt64) : torch::Tensor();
    torch::Tensor picked = torch::zeros({n}, x2.options());
    for_each_logit_tile(x2, [&](int64_t r0, const torch::Tensor& logits) {
        const int64_t m = logits.size(1);
        lse.add(logits);
        if (want_targets) {
            auto here = (tgt >= r0).logical_and(tgt < r0 + m);
            auto local = (tgt - r0).clamp(0, m - 1).unsqueeze(1);
            picked = torch::where(here, logits.gather(1, local).squeeze(1), picked);
        }
        if (k == 0) return;
        auto [v, i] = logits.topk(std::min(k, m), 1);
        v = torch::cat({vals, v}, 1);
        i = torch::cat({ids, i + r0}, 1);
        if (v.size(1) > k) {
            auto [tv, at] = v.topk(k, 1);
            i = i.gather(1, at);
            v = tv;
        }
        vals = v;
        ids = i;
    });
    auto total = lse.value();
    if (want_targets) *target_lp = picked - total;
    return {vals - total.unsqueeze(1), ids};
}

torch::Tensor PackedMatrix::embedding(const torch::Tensor& ids) const {
    auto flat = ids.reshape({-1}).to(torch::kCPU, torch::kInt64).contiguous();
    const int64_t n = flat.size(0);
    const int64_t* id = flat.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i)
        DISTILL_CHECK(id[i] >= 0 && id[i] < rows_, "token id ", id[i], " is outside the embedding's ", rows_,
                      " rows");
    auto out = torch::empty({n, cols_}, torch::kFloat32);
    float* dst = out.data_ptr<float>();
    at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) to_float_(row_ptr(id[i]), dst + i * cols_, cols_);
    });
    auto sizes = ids.sizes().vec();
    sizes.push_back(cols_);
    return out.view(sizes);
}

torch::Tensor PackedMatrix::to_float() const {
    auto out = torch::empty({rows_, cols_}, torch::kFloat32);
    dequantize(0, rows_, out.data_ptr<float>());
    return out;
}

uint64_t PackedMatrix::hash_as_float(uint64_t seed) const {
    Hash64Stream h(seed);
    const int64_t tile_rows = std::max<int64_t>(1, kTileFloats / cols_);
    float* buf = tile_buffer(std::min(tile_rows, rows_) * cols_);
    for (int64_t r0 = 0; r0 < rows_; r0 += tile_rows) {
        const int64_t n = std::min(tile_rows, rows_ - r0);
        dequantize(r0, n, buf);
        h.update(buf, static_cast<size_t>(n * cols_) * sizeof(float));
    }
    return h.digest();
}

}  // namespace distill
