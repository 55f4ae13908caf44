#include "model/arch.h"

#include <map>

#include "util/error.h"

namespace distill {

const std::vector<Architecture>& architectures() {
    static const std::vector<Architecture> table = {
        // Llama 1-3 (and Mistral without a sliding window): llama.cpp's "llama" rotates adjacent
        // pairs, so convert_hf_to_gguf.py permutes q and k.
        {"llama", {{"llama", false, false}, {"mistral", true, true}}, "LlamaForCausalLM", false, false, true},
        // Qwen2 / Qwen2.5: q/k/v biases; NEOX rotation (halves), stored unpermuted.
        {"qwen2", {{"qwen2", false, true}}, "Qwen2ForCausalLM", true, false, false},
        // Qwen3: no biases, per-head q/k RMSNorm, its own head_dim.
        {"qwen3", {{"qwen3", false, true}}, "Qwen3ForCausalLM", false, true, false},
    };
    return table;
}

std::string architecture_names() {
    std::string s;
    for (const auto& a : architectures()) s += (s.empty() ? "" : ", ") + a.name;
    return s;
}

std::string model_type_names() {
    std::string s;
    for (const auto& a : architectures())
        for (const auto& t : a.model_types) s += (s.empty() ? "" : ", ") + t.name;
    return s;
}

const Architecture& architecture(const std::string& name, const std::string& where) {
    for (const auto& a : architectures())
        if (a.name == name) return a;
    throw Error(str_cat(where, ": architecture '", name, "' is not supported (supported: ", architecture_names(), ")"));
}

const Architecture* architecture_for_model_type(const std::string& model_type, const Architecture::ModelType** type) {
    for (const auto& a : architectures())
        for (const auto& t : a.model_types)
            if (t.name == model_type) {
                if (type) *type = &t;
                return &a;
            }
    return nullptr;
}

std::string gguf_tensor_name(const std::string& hf) {
    static const std::map<std::string, std::string> top = {
        {"model.embed_tokens.weight", "token_embd.weight"},
        {"model.norm.weight", "output_norm.weight"},
        {"lm_head.weight", "output.weight"}};
    if (auto it = top.find(hf); it != top.end()) return it->second;
    static const std::map<std::string, std::string> layer = {
        {"input_layernorm.weight", "attn_norm.weight"},
        {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.q_proj.bias", "attn_q.bias"},
        {"self_attn.k_proj.weight", "attn_k.weight"},
        {"self_attn.k_proj.bias", "attn_k.bias"},
        {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.v_proj.bias", "attn_v.bias"},
        {"self_attn.o_proj.weight", "attn_output.weight"},
        {"self_attn.q_norm.weight", "attn_q_norm.weight"},
        {"self_attn.k_norm.weight", "attn_k_norm.weight"},
        {"post_attention_layernorm.weight", "ffn_norm.weight"},
        {"mlp.gate_proj.weight", "ffn_gate.weight"},
        {"mlp.up_proj.weight", "ffn_up.weight"},
        {"mlp.down_proj.weight", "ffn_down.weight"}};
    const std::string prefix = "model.layers.";
    DISTILL_ASSERT(hf.compare(0, prefix.size(), prefix) == 0, "unexpected parameter ", hf);
    const size_t dot = hf.find('.', prefix.size());
    const std::string n = hf.substr(prefix.size(), dot - prefix.size());
    auto it = layer.find(hf.substr(dot + 1));
    DISTILL_ASSERT(it != layer.end(), "unexpected parameter ", hf);
    return "blk." + n + "." + it->second;
}

}  // namespace distill
