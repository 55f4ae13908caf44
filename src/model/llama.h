// distill — a decoder-only transformer of the Llama / Qwen2 family in libtorch:
// RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP, optional tied embeddings,
// optional q/k/v bias. Parameter names are the Hugging Face ones
// (model.layers.0.self_attn.q_proj.weight, ...), so state dicts map one to one.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <vector>

#include "model/config.h"
#include "model/packed.h"

namespace distill {

// Keys and values of every layer for the positions seen so far. k[l], v[l]: (B, Hkv, S, D).
struct KVCache {
    std::vector<torch::Tensor> k, v;
    int64_t length() const { return k.empty() || !k[0].defined() ? 0 : k[0].size(2); }
    void clear() { k.clear(); v.clear(); }
};

// The cache of one sequence in a batch of independent sequences (continuous batching): k[l],
// v[l] are (Hkv, capacity, D) buffers, filled up to `length`. See LlamaImpl::decode_step.
struct SlotCache {
    std::vector<torch::Tensor> k, v;
    int64_t length = 0;
    int64_t capacity() const { return k.empty() ? 0 : k[0].size(1); }
    // Takes over sequence `row` of a KVCache after a prefill, its first `length` positions (all
    // when -1), with room for `capacity` positions in all.
    void adopt(const KVCache& c, int64_t capacity, int64_t row = 0, int64_t length = -1);
};

// The rotary inverse frequencies (D/2) in float64, with the config's rope_scaling applied.
torch::Tensor rope_inv_freq(const ModelConfig& c);

class RMSNormImpl : public torch::nn::Module {
public:
    RMSNormImpl(int64_t dim, double eps);
    // x: (..., C) -> (..., C)
    torch::Tensor forward(const torch::Tensor& x);
    // The same rows as the product after the norm takes them: in a training forward under
    // --precision bf16 the fused kernel writes them in bf16 (saving that product a pass each way);
    // forward's otherwise.
    torch::Tensor forward_for_product(const torch::Tensor& x);
    torch::Tensor weight;
    double eps;
};
TORCH_MODULE(RMSNorm);

// y = x Wᵀ (+ b), with torch::nn::Linear's parameter names ("weight", "bias") and initialisation.
// In a model loaded for inference, `packed` holds the matrix in its file's type and `weight` is an
// empty placeholder (see model/packed.h).
class ProjImpl : public torch::nn::Module {
public:
    // allocate = false: no weight storage (a packed matrix is attached after construction).
    ProjImpl(int64_t in, int64_t out, bool bias, bool allocate = true);
    torch::Tensor forward(const torch::Tensor& x);
    torch::Tensor weight, bias;
    std::shared_ptr<const PackedMatrix> packed;
    int64_t in_features, out_features;
};
TORCH_MODULE(Proj);

class AttentionImpl : public torch::nn::Module {
public:
    explicit AttentionImpl(const ModelConfig& c, bool allocate = true);
    // x: (B, T, C); cos, sin: (T, D) for the T new positions; past k/v from `cache` if given.
    torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                          torch::Tensor* cache_k, torch::Tensor* cache_v);
    // One new position per sequence: x (B, 1, C); cos, sin (B, 1, 1, D) at each sequence's
    // position; slots[b]->k[layer] / v[layer] receive the new keys and values.
    torch::Tensor forward_slots(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                const std::vector<SlotCache*>& slots, size_t layer);
    // Whether its fused form reads x through one product (q, k and v stacked), so that x may come
    // in bf16 (RMSNormImpl::forward_for_product); with q/k norms it takes three, whose bf16
    // gradients would then be summed in bf16.
    bool one_product() const { return !q_norm && !q_proj->packed; }
    Proj q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
    RMSNorm q_norm{nullptr}, k_norm{nullptr};  // qwen3 only
    int64_t n_head, n_kv_head, head_dim;
};
TORCH_MODULE(Attention);

class MLPImpl : public torch::nn::Module {
public:
    explicit MLPImpl(const ModelConfig& c, bool allocate = true);
    torch::Tensor forward(const torch::Tensor& x);  // down(silu(gate(x)) * up(x))
    Proj gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

class DecoderLayerImpl : public torch::nn::Module {
public:
    explicit DecoderLayerImpl(const ModelConfig& c, bool allocate = true);
    torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                          torch::Tensor* cache_k, torch::Tensor* cache_v);
    torch::Tensor forward_slots(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                const std::vector<SlotCache*>& slots, size_t layer);
    RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
    Attention self_attn{nullptr};
    MLP mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

// The "model." part of the HF names.
class LlamaBodyImpl : public torch::nn::Module {
public:
    explicit LlamaBodyImpl(const ModelConfig& c, bool allocate = true);
    // x = embed(ids): (B, T) -> (B, T, C), from the packed table when there is one.
    torch::Tensor embed(const torch::Tensor& ids);
    torch::nn::Embedding embed_tokens{nullptr};  // (0, C) when the table is packed
    std::shared_ptr<const PackedMatrix> packed_embed;
    torch::nn::ModuleList layers{nullptr};
    RMSNorm norm{nullptr};
};
TORCH_MODULE(LlamaBody);

class LlamaImpl : public torch::nn::Module {
public:
    // packed = true: a model for inference whose matrices (embeddings, projections, head) are
    // attached as PackedMatrix after construction (model/checkpoint.h, LoadOptions); only the
    // norms are float parameters. Such a model cannot be trained, moved or saved.
    explicit LlamaImpl(const ModelConfig& c, bool packed = false);
    // ids: (B, T) int64 -> logits (B, T, V). With a cache, the T ids continue the cached
    // sequence and the cache is extended.
    torch::Tensor forward(const torch::Tensor& ids, KVCache* cache = nullptr);
    // The logits a training loss reads, (B, T, V): forward's, except that in a training forward
    // under --precision bf16 on the CPU they stay in bf16 as the head's product returns them. The
    // losses (distill/losses.h) take either and compute in float; this saves widening 2 × V bytes
    // a position and narrowing the gradient back.
    torch::Tensor forward_for_loss(const torch::Tensor& ids);
    // One decoding step for B independent sequences at different lengths: ids (B) is the next
    // token of each; slots[b] holds sequence b's cache and is extended by one. The projections
    // and the MLP run as one batched product; attention runs per sequence over its own length.
    // Returns logits (B, V).
    torch::Tensor decode_step(const torch::Tensor& ids, const std::vector<SlotCache*>& slots);
    // The final hidden states (B, T, C) after the last norm, before the head (in a training
    // forward under --precision bf16, in bf16: see RMSNormImpl::forward_for_product).
    torch::Tensor hidden(const torch::Tensor& ids, KVCache* cache = nullptr);
    // h: (..., C) -> logits (..., V)
    torch::Tensor head(const torch::Tensor& h, bool keep_bf16 = false);
    // log softmax(head(h))[target] for h (n, C), targets (n) -> (n) float32. A packed head over
    // a large vocabulary streams its rows (PackedMatrix::target_logprobs) instead of holding
    // n × V logits; buf as in head_into.
    torch::Tensor head_target_logprobs(const torch::Tensor& h, const torch::Tensor& targets, torch::Tensor* buf);
    // The k largest log softmax(head(h)) per row and their ids: {(n, k) float32, (n, k) int64}.
    // Streamed the same way for a packed head.
    // With targets (n) given, *target_lp gets each row's log-prob of its target from the same logits.
    std::pair<torch::Tensor, torch::Tensor> head_top_logprobs(const torch::Tensor& h, int64_t k,
                                                              const torch::Tensor& targets = {},
                                                              torch::Tensor* target_lp = nullptr);
    // The same for h (n, C), written into *buf (reused across calls when large enough).
    torch::Tensor head_into(const torch::Tensor& h, torch::Tensor* buf);
    bool packed() const { return packed_; }
    // A packed model's matrix slots: the weights (HF names) that are empty placeholders, with the
    // {rows, cols} each takes; attach() puts a matrix in one (Error for a wrong name or shape).
    std::vector<int64_t> packed_shape(const std::string& name);
    void attach(const std::string& name, std::shared_ptr<const PackedMatrix> m);
    // The device of the model's parameters (its norms when packed).
    torch::Device device();
    // Initialises weights as HF does for Llama (normal(0, 0.02), norms at 1), seeded.
    void init_weights(uint64_t seed);

    const ModelConfig& config() const { return config_; }
    LlamaBody model{nullptr};
    Proj lm_head{nullptr};  // absent when embeddings are tied

private:
    std::pair<torch::Tensor, torch::Tensor> rope(int64_t offset, int64_t T);
    // The head's matrix when it is packed (lm_head's, or the tied embedding's), else nullptr.
    const PackedMatrix* packed_head() const;
    ModelConfig config_;
    bool packed_ = false;
    torch::Tensor inv_freq_, cos_cache_, sin_cache_;
};
TORCH_MODULE(Llama);

}  // namespace distill
