#include "model/llama.h"

#include <c10/core/InferenceMode.h>
#include <torch/torch.h>

#include <cmath>

#include "model/fused.h"
#include "util/device.h"
#include "util/error.h"

namespace distill {

namespace F = torch::nn::functional;

namespace {

// Whether a product with trainable weight w runs in bf16: a training forward (gradients on, w
// trainable) under --precision bf16.
bool bf16_product(const torch::Tensor& w) {
    return w.requires_grad() && torch::GradMode::is_enabled() && train_precision() == Precision::kBFloat16;
}

// Whether a product outside autograd runs in bf16: a live teacher's forward under Bf16Forward.
bool bf16_frozen_product() { return !torch::GradMode::is_enabled() && Bf16Forward::active(); }

// x W^T + b. Where bf16_product(W) (or bf16_frozen_product(), outside autograd), the product
// takes bf16 copies of x and W and returns float32, and autograd carries the gradients back
// through the same conversions (mixed precision, as autocast does; the weights, their gradients
// and the optimizer stay float32). In training, with keep_bf16 (no bias) it returns the product as
// it comes, in bf16, for a consumer that reads bf16 rows itself (fused_swiglu, the losses), which
// saves a pass over the output each way (a frozen forward rounds where a packed one does, at the
// products' inputs only). x may already be bf16
// (written so by such a consumer or by RMSNormImpl::forward_for_product). Otherwise float32
// throughout.
torch::Tensor mixed_linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b = {},
                           bool keep_bf16 = false) {
    const bool trained = bf16_product(w);
    if ((trained || bf16_frozen_product()) &&
        (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16)) {
        auto y = F::linear(x.to(torch::kBFloat16), w.to(torch::kBFloat16));
        if (keep_bf16 && trained && !b.defined()) return y;
        y = y.to(torch::kFloat32);
        return b.defined() ? y + b : y;
    }
    // (a bf16 x meets a frozen W only if a norm before it trains and W does not)
    return F::linear(x.scalar_type() == w.scalar_type() ? x : x.to(w.scalar_type()), w, b);
}

}  // namespace

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
    weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
    if (fused_cpu(x) && fused_cpu(weight)) return fused_rms_norm(x, weight, eps);
    auto var = x.pow(2).mean(-1, /*keepdim=*/true);
    return x * torch::rsqrt(var + eps) * weight;
}

torch::Tensor RMSNormImpl::forward_for_product(const torch::Tensor& x) {
    if (fused_cpu(x) && fused_cpu(weight) && bf16_product(weight)) return fused_rms_norm(x, weight, eps, true);
    return forward(x);
}

ProjImpl::ProjImpl(int64_t in, int64_t out, bool with_bias, bool allocate) : in_features(in), out_features(out) {
    weight = register_parameter("weight", allocate ? torch::empty({out, in}) : torch::empty({0}));
    if (with_bias) bias = register_parameter("bias", torch::empty({out}));  // small: always a float tensor
    if (!allocate) return;
    // as torch::nn::Linear::reset_parameters: kaiming_uniform(a = sqrt(5)), i.e. U(±1/sqrt(in))
    torch::NoGradGuard ng;
    torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
    if (with_bias) {
        const double bound = in > 0 ? 1.0 / std::sqrt(double(in)) : 0.0;
        torch::nn::init::uniform_(bias, -bound, bound);
    }
}

torch::Tensor ProjImpl::forward(const torch::Tensor& x) {
    if (packed) return packed->linear(x, bias);
    return mixed_linear(x, weight, bias);
}

AttentionImpl::AttentionImpl(const ModelConfig& c, bool allocate)
    : n_head(c.num_attention_heads), n_kv_head(c.num_key_value_heads), head_dim(c.head_dim()) {
    const int64_t C = c.hidden_size;
    auto lin = [&](int64_t in, int64_t out, bool bias) { return Proj(in, out, bias, allocate); };
    q_proj = register_module("q_proj", lin(C, n_head * head_dim, c.attention_bias));
    k_proj = register_module("k_proj", lin(C, n_kv_head * head_dim, c.attention_bias));
    v_proj = register_module("v_proj", lin(C, n_kv_head * head_dim, c.attention_bias));
    o_proj = register_module("o_proj", lin(n_head * head_dim, C, false));
    if (c.qk_norm) {
        q_norm = register_module("q_norm", RMSNorm(head_dim, c.rms_norm_eps));
        k_norm = register_module("k_norm", RMSNorm(head_dim, c.rms_norm_eps));
    }
}

// x: (B, H, T, D); rotate_half as in HF: (-x2, x1) over the two halves of D.
static torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos,
                                const torch::Tensor& sin) {
    const int64_t half = x.size(-1) / 2;
    auto x1 = x.narrow(-1, 0, half);
    auto x2 = x.narrow(-1, half, half);
    auto rotated = torch::cat({-x2, x1}, -1);
    return x * cos + rotated * sin;
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                     const torch::Tensor& sin, torch::Tensor* cache_k,
                                     torch::Tensor* cache_v) {
    const int64_t B = x.size(0), T = x.size(1);
    if (!cache_k && fused_cpu_rows(x)) {
        // training and cache-free scoring: rotation, causal softmax and both products per head
        // in one fused op (model/fused.h)
        torch::Tensor qkv;  // (B, T, (H + 2 Hkv) D)
        if (q_norm || q_proj->packed) {
            auto q = q_proj(x), k = k_proj(x);
            if (q_norm) {
                q = q_norm(q.view({B, T, n_head, head_dim})).view({B, T, n_head * head_dim});
                k = k_norm(k.view({B, T, n_kv_head, head_dim})).view({B, T, n_kv_head * head_dim});
            }
            qkv = torch::cat({q, k, v_proj(x)}, 2);
        } else {  // one product with the three matrices stacked
            auto w = torch::cat({q_proj->weight, k_proj->weight, v_proj->weight});
            auto b = q_proj->bias.defined() ? torch::cat({q_proj->bias, k_proj->bias, v_proj->bias}) : torch::Tensor();
            qkv = mixed_linear(x, w, b);
        }
        return o_proj(fused_attention(qkv, cos, sin, n_head, n_kv_head));
    }
    // q: (B, H, T, D); k, v: (B, Hkv, T, D)
    auto q = q_proj(x).view({B, T, n_head, head_dim});
    auto k = k_proj(x).view({B, T, n_kv_head, head_dim});
    if (q_norm) {
        q = q_norm(q);
        k = k_norm(k);
    }
    q = q.transpose(1, 2);
    k = k.transpose(1, 2);
    auto v = v_proj(x).view({B, T, n_kv_head, head_dim}).transpose(1, 2);
    q = apply_rope(q, cos, sin);
    k = apply_rope(k, cos, sin);
    int64_t past = 0;
    if (cache_k) {
        if (cache_k->defined()) {
            past = cache_k->size(2);
            k = torch::cat({*cache_k, k}, 2);
            v = torch::cat({*cache_v, v}, 2);
        }
        *cache_k = k;
        *cache_v = v;
    }
    const int64_t S = past + T;
    if (n_kv_head != n_head) {
        // (B, Hkv, S, D) -> (B, H, S, D): each kv head serves H/Hkv consecutive query heads.
        const int64_t rep = n_head / n_kv_head;
        k = k.unsqueeze(2).expand({B, n_kv_head, rep, S, head_dim}).reshape({B, n_head, S, head_dim});
        v = v.unsqueeze(2).expand({B, n_kv_head, rep, S, head_dim}).reshape({B, n_head, S, head_dim});
    }
    // scores: (B, H, T, S)
    auto scores = torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(double(head_dim)));
    if (T > 1) {
        // query i (absolute position past+i) sees keys j <= past+i
        auto mask = torch::ones({T, S}, torch::TensorOptions().dtype(torch::kBool).device(x.device()))
                        .triu(past + 1);
        scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
    }
    auto att = torch::softmax(scores, -1);
    auto y = torch::matmul(att, v);  // (B, H, T, D)
    y = y.transpose(1, 2).reshape({B, T, n_head * head_dim});
    return o_proj(y);
}

torch::Tensor AttentionImpl::forward_slots(const torch::Tensor& x, const torch::Tensor& cos,
                                           const torch::Tensor& sin, const std::vector<SlotCache*>& slots,
                                           size_t layer) {
    const int64_t B = x.size(0);
    auto q = q_proj(x).view({B, 1, n_head, head_dim});
    auto k = k_proj(x).view({B, 1, n_kv_head, head_dim});
    if (q_norm) {
        q = q_norm(q);
        k = k_norm(k);
    }
    q = apply_rope(q.transpose(1, 2), cos, sin);  // (B, H, 1, D)
    k = apply_rope(k.transpose(1, 2), cos, sin);  // (B, Hkv, 1, D)
    auto v = v_proj(x).view({B, 1, n_kv_head, head_dim}).transpose(1, 2);
    if (fused_cpu(q) && !torch::GradMode::is_enabled() && fused_cpu(slots[0]->k[layer])) {
        std::vector<torch::Tensor*> kc, vc;
        std::vector<int64_t> len;
        for (SlotCache* s : slots) {
            kc.push_back(&s->k[layer]);
            vc.push_back(&s->v[layer]);
            len.push_back(s->length);
        }
        return o_proj(fused_decode_attention(q, k, v, kc, vc, len).view({B, 1, n_head * head_dim}));
    }
    const int64_t rep = n_head / n_kv_head;
    const double scale = 1.0 / std::sqrt(double(head_dim));
    std::vector<torch::Tensor> ys;
    ys.reserve(B);
    for (int64_t b = 0; b < B; ++b) {
        SlotCache& s = *slots[b];
        const int64_t S = s.length + 1;
        s.k[layer].narrow(1, s.length, 1).copy_(k[b]);
        s.v[layer].narrow(1, s.length, 1).copy_(v[b]);
        auto kk = s.k[layer].narrow(1, 0, S);  // (Hkv, S, D)
        auto vv = s.v[layer].narrow(1, 0, S);
        if (rep > 1) {
            kk = kk.unsqueeze(1).expand({n_kv_head, rep, S, head_dim}).reshape({n_head, S, head_dim});
            vv = vv.unsqueeze(1).expand({n_kv_head, rep, S, head_dim}).reshape({n_head, S, head_dim});
        }
        auto att = torch::softmax(torch::matmul(q[b], kk.transpose(-2, -1)) * scale, -1);  // (H, 1, S)
        ys.push_back(torch::matmul(att, vv));                                               // (H, 1, D)
    }
    auto y = torch::stack(ys).transpose(1, 2).reshape({B, 1, n_head * head_dim});
    return o_proj(y);
}

MLPImpl::MLPImpl(const ModelConfig& c, bool allocate) {
    auto lin = [&](int64_t in, int64_t out) { return Proj(in, out, false, allocate); };
    gate_proj = register_module("gate_proj", lin(c.hidden_size, c.intermediate_size));
    up_proj = register_module("up_proj", lin(c.hidden_size, c.intermediate_size));
    down_proj = register_module("down_proj", lin(c.intermediate_size, c.hidden_size));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) {
    if (fused_cpu_rows(x)) {
        // gate and up as one product (their matrices stacked), unless packed for inference
        // (under --precision bf16 in bf16, which fused_swiglu reads and writes as it is)
        auto gu = gate_proj->packed ? torch::cat({gate_proj(x), up_proj(x)}, -1)
                                    : mixed_linear(x, torch::cat({gate_proj->weight, up_proj->weight}), {}, true);
        return down_proj(fused_swiglu(gu));
    }
    return down_proj(F::silu(gate_proj(x)) * up_proj(x));
}

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, bool allocate) {
    self_attn = register_module("self_attn", Attention(c, allocate));
    mlp = register_module("mlp", MLP(c, allocate));
    input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
    post_attention_layernorm =
        register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                        const torch::Tensor& sin, torch::Tensor* cache_k,
                                        torch::Tensor* cache_v) {
    auto xn = self_attn->one_product() ? input_layernorm->forward_for_product(x) : input_layernorm(x);
    auto h = x + self_attn->forward(xn, cos, sin, cache_k, cache_v);
    return h + mlp(post_attention_layernorm->forward_for_product(h));
}

torch::Tensor DecoderLayerImpl::forward_slots(const torch::Tensor& x, const torch::Tensor& cos,
                                              const torch::Tensor& sin, const std::vector<SlotCache*>& slots,
                                              size_t layer) {
    auto h = x + self_attn->forward_slots(input_layernorm(x), cos, sin, slots, layer);
    return h + mlp(post_attention_layernorm(h));
}

void SlotCache::adopt(const KVCache& c, int64_t cap, int64_t row, int64_t len) {
    const int64_t S = len < 0 ? c.length() : len;
    DISTILL_CHECK(S <= c.length(), "a slot cannot take ", S, " positions of a cache of ", c.length());
    DISTILL_CHECK(cap >= S, "slot capacity ", cap, " is below the cached length ", S);
    k.resize(c.k.size());
    v.resize(c.v.size());
    for (size_t l = 0; l < c.k.size(); ++l) {
        DISTILL_CHECK(row >= 0 && row < c.k[l].size(0), "the cache has no sequence ", row);
        auto shape = c.k[l].sizes().vec();  // (B, Hkv, length, D)
        k[l] = torch::empty({shape[1], cap, shape[3]}, c.k[l].options());
        v[l] = torch::empty({shape[1], cap, shape[3]}, c.v[l].options());
        k[l].narrow(1, 0, S).copy_(c.k[l][row].narrow(1, 0, S));
        v[l].narrow(1, 0, S).copy_(c.v[l][row].narrow(1, 0, S));
    }
    length = S;
}

LlamaBodyImpl::LlamaBodyImpl(const ModelConfig& c, bool allocate) {
    embed_tokens = register_module("embed_tokens",
                                   torch::nn::Embedding(allocate ? c.vocab_size : 0, c.hidden_size));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(DecoderLayer(c, allocate));
    norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

torch::Tensor LlamaBodyImpl::embed(const torch::Tensor& ids) {
    if (packed_embed) return packed_embed->embedding(ids);
    if (fused_cpu(embed_tokens->weight)) return fused_embedding(embed_tokens->weight, ids);
    return embed_tokens(ids);
}

LlamaImpl::LlamaImpl(const ModelConfig& c, bool packed) : config_(c), packed_(packed) {
    config_.validate();
    model = register_module("model", LlamaBody(c, !packed));
    if (!c.tie_word_embeddings)
        lm_head = register_module("lm_head", Proj(c.hidden_size, c.vocab_size, false, !packed));
    inv_freq_ = rope_inv_freq(c);
}

torch::Device LlamaImpl::device() { return model->norm->weight.device(); }

namespace {

// "model.layers.0.mlp.up_proj.weight" -> "model.layers.0.mlp.up_proj"; "" when not a weight.
std::string weight_owner(const std::string& name) {
    static const std::string suffix = ".weight";
    if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
        return "";
    return name.substr(0, name.size() - suffix.size());
}

}  // namespace

std::vector<int64_t> LlamaImpl::packed_shape(const std::string& name) {
    DISTILL_CHECK(packed_, "packed_shape on a model with float weights");
    const std::string owner = weight_owner(name);
    if (owner == "model.embed_tokens") return {config_.vocab_size, config_.hidden_size};
    for (const auto& item : named_modules())
        if (item.key() == owner)
            if (auto* p = item.value()->as<ProjImpl>()) return {p->out_features, p->in_features};
    throw Error(str_cat("'", name, "' is not a matrix of this model"));
}

void LlamaImpl::attach(const std::string& name, std::shared_ptr<const PackedMatrix> m) {
    const auto shape = packed_shape(name);
    DISTILL_CHECK(m && m->rows() == shape[0] && m->cols() == shape[1], "'", name, "' takes a ", shape[0], " x ",
                  shape[1], " matrix");
    const std::string owner = weight_owner(name);
    if (owner == "model.embed_tokens") {
        model->packed_embed = std::move(m);
        return;
    }
    for (const auto& item : named_modules())
        if (item.key() == owner) item.value()->as<ProjImpl>()->packed = std::move(m);
}

torch::Tensor rope_inv_freq(const ModelConfig& c) {
    const int64_t D = c.head_dim();
    auto inv_freq = 1.0 / torch::pow(torch::tensor(c.rope_theta, torch::kFloat64),
                                     torch::arange(0, D, 2, torch::kFloat64) / double(D));
    const RopeScaling& rs = c.rope_scaling;
    if (rs.type == "linear") return inv_freq / rs.factor;
    if (rs.type != "llama3") return inv_freq;
    // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
    // interpolated smoothly.
    const double old_len = double(rs.original_max_position_embeddings);
    const double low_wavelen = old_len / rs.low_freq_factor;
    const double high_wavelen = old_len / rs.high_freq_factor;
    auto wavelen = 2.0 * M_PI / inv_freq;
    auto scaled = torch::where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq);
    auto smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
    auto smoothed = (1.0 - smooth) * scaled / rs.factor + smooth * scaled;
    auto medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    return torch::where(medium, smoothed, scaled);
}

std::pair<torch::Tensor, torch::Tensor> LlamaImpl::rope(int64_t offset, int64_t T) {
    const int64_t need = offset + T;
    auto device = this->device();
    if (!cos_cache_.defined() || cos_cache_.size(0) < need || cos_cache_.device() != device) {
        // Normal tensors even when first built under c10::InferenceMode (eval): an inference
        // tensor kept here would break a later training step, which saves cos/sin for backward.
        c10::InferenceMode normal(false);
        int64_t n = std::max<int64_t>(need, std::min<int64_t>(config_.max_position_embeddings, 4096));
        n = std::max(n, need);
        // Angles in float64, as float32 loses precision at large positions; stored as float32.
        auto t = torch::arange(n, torch::kFloat64);
        auto freqs = torch::outer(t, inv_freq_);          // (n, D/2)
        auto emb = torch::cat({freqs, freqs}, -1);        // (n, D)
        cos_cache_ = emb.cos().to(torch::kFloat32).to(device);
        sin_cache_ = emb.sin().to(torch::kFloat32).to(device);
    }
    return {cos_cache_.narrow(0, offset, T), sin_cache_.narrow(0, offset, T)};
}

torch::Tensor LlamaImpl::hidden(const torch::Tensor& ids, KVCache* cache) {
    DISTILL_CHECK(ids.dim() == 2, "model input must be (B, T) token ids, got ", ids.sizes());
    const int64_t T = ids.size(1);
    const int64_t offset = cache ? cache->length() : 0;
    DISTILL_CHECK(offset + T <= config_.max_position_embeddings, "sequence of ", offset + T,
                  " tokens exceeds max_position_embeddings ", config_.max_position_embeddings);
    auto [cos, sin] = rope(offset, T);
    const size_t L = model->layers->size();
    if (cache && cache->k.size() != L) {
        cache->k.assign(L, torch::Tensor());
        cache->v.assign(L, torch::Tensor());
    }
    auto x = model->embed(ids);  // (B, T, C)
    for (size_t l = 0; l < L; ++l) {
        auto layer = model->layers->ptr<DecoderLayerImpl>(l);
        x = layer->forward(x, cos, sin, cache ? &cache->k[l] : nullptr,
                           cache ? &cache->v[l] : nullptr);
    }
    return model->norm->forward_for_product(x);
}

torch::Tensor LlamaImpl::decode_step(const torch::Tensor& ids, const std::vector<SlotCache*>& slots) {
    DISTILL_CHECK(ids.dim() == 1 && ids.size(0) == static_cast<int64_t>(slots.size()),
                  "decode_step takes one id per slot, got ", ids.sizes(), " for ", slots.size(), " slots");
    const int64_t B = ids.size(0);
    const size_t L = model->layers->size();
    std::vector<int64_t> pos(B);
    int64_t max_pos = 0;
    for (int64_t b = 0; b < B; ++b) {
        const SlotCache& s = *slots[b];
        DISTILL_CHECK(s.k.size() == L && s.length < s.capacity(), "slot ", b, " is full or not prefilled (",
                      s.length, " of ", s.capacity(), ")");
        pos[b] = s.length;
        max_pos = std::max(max_pos, s.length);
    }
    DISTILL_CHECK(max_pos < config_.max_position_embeddings, "position ", max_pos,
                  " exceeds max_position_embeddings ", config_.max_position_embeddings);
    rope(0, max_pos + 1);  // fills the tables up to max_pos
    auto device = this->device();
    auto at = torch::tensor(pos, torch::kInt64).to(device);
    const int64_t D = cos_cache_.size(1);
    auto cos = cos_cache_.index_select(0, at).view({B, 1, 1, D});
    auto sin = sin_cache_.index_select(0, at).view({B, 1, 1, D});
    auto x = model->embed(ids.to(device).view({B, 1}));  // (B, 1, C)
    for (size_t l = 0; l < L; ++l)
        x = model->layers->ptr<DecoderLayerImpl>(l)->forward_slots(x, cos, sin, slots, l);
    for (SlotCache* s : slots) ++s->length;
    return head(model->norm(x)).squeeze(1);
}

torch::Tensor LlamaImpl::head(const torch::Tensor& h, bool keep_bf16) {
    if (lm_head) return lm_head->packed ? lm_head(h) : mixed_linear(h, lm_head->weight, lm_head->bias, keep_bf16);
    if (model->packed_embed) return model->packed_embed->linear(h);
    return mixed_linear(h, model->embed_tokens->weight, {}, keep_bf16);
}

const PackedMatrix* LlamaImpl::packed_head() const {
    return lm_head ? lm_head->packed.get() : model->packed_embed.get();
}

torch::Tensor LlamaImpl::head_target_logprobs(const torch::Tensor& h, const torch::Tensor& targets,
                                              torch::Tensor* buf) {
    const PackedMatrix* packed_head = this->packed_head();
    if (packed_head) return packed_head->target_logprobs(h, targets);
    auto logits = head_into(h, buf).to(torch::kFloat32);
    return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - logits.logsumexp(-1);
}

std::pair<torch::Tensor, torch::Tensor> LlamaImpl::head_top_logprobs(const torch::Tensor& h, int64_t k,
                                                                     const torch::Tensor& targets,
                                                                     torch::Tensor* target_lp) {
    const PackedMatrix* packed_head = this->packed_head();
    if (packed_head) return packed_head->top_logprobs(h, k, targets, target_lp);
    auto lp = torch::log_softmax(head(h).to(torch::kFloat32), -1);
    if (targets.defined() && target_lp) *target_lp = lp.gather(1, targets.unsqueeze(1)).squeeze(1);
    if (k == 0) return {torch::empty({h.size(0), 0}, lp.options()), torch::empty({h.size(0), 0}, torch::kInt64)};
    auto [v, i] = lp.topk(k, -1);
    return {v, i};
}

torch::Tensor LlamaImpl::head_into(const torch::Tensor& h, torch::Tensor* buf) {
    if (packed_) return head(h);  // tiles write into their own output
    const torch::Tensor& w = lm_head ? lm_head->weight : model->embed_tokens->weight;  // (V, C)
    if (!buf->defined() || buf->scalar_type() != h.scalar_type() || buf->device() != h.device())
        *buf = torch::empty({0}, h.options());
    buf->resize_({h.size(0), w.size(0)});  // keeps the storage when it is large enough
    torch::mm_out(*buf, h, w.t());
    return *buf;
}

torch::Tensor LlamaImpl::forward(const torch::Tensor& ids, KVCache* cache) {
    return head(hidden(ids, cache));
}

torch::Tensor LlamaImpl::forward_for_loss(const torch::Tensor& ids) {
    auto h = hidden(ids);
    return head(h, fused_cpu_rows(h));
}

void LlamaImpl::init_weights(uint64_t seed) {
    DISTILL_CHECK(!packed_, "a model loaded for inference (packed weights) cannot be re-initialised");
    torch::NoGradGuard ng;
    torch::manual_seed(seed);
    for (auto& p : named_parameters()) {
        const std::string& name = p.key();
        auto& t = p.value();
        if (name.find("norm") != std::string::npos) {
            t.fill_(1.0);
        } else if (name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0) {
            t.zero_();
        } else if (name.find("o_proj") != std::string::npos ||
                   name.find("down_proj") != std::string::npos) {
            // Residual-stream outputs scaled down by depth (GPT-2), which trains faster here.
            t.normal_(0.0, 0.02 / std::sqrt(2.0 * config_.num_hidden_layers));
        } else {
            t.normal_(0.0, 0.02);
        }
    }
}

}  // namespace distill
