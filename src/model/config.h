// distill — model configuration, read from and written to an HF-style config.json.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace distill {

// Rotary-position frequency scaling (HF `rope_scaling`): none, "linear", or "llama3" (Llama 3.1+).
struct RopeScaling {
    std::string type;  // "" = none
    double factor = 1.0;
    double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
    int64_t original_max_position_embeddings = 8192;       // llama3
};

// A decoder-only transformer of the Llama / Qwen2 / Qwen3 family.
struct ModelConfig {
    // "llama", "qwen2" (q/k/v projections have bias) or "qwen3" (RMSNorm on each head's q and k)
    std::string architecture = "llama";
    int64_t vocab_size = 4096;
    int64_t hidden_size = 256;        // C
    int64_t num_hidden_layers = 4;
    int64_t num_attention_heads = 8;  // query heads
    int64_t num_key_value_heads = 8;  // grouped-query attention when < num_attention_heads
    int64_t intermediate_size = 688;  // SwiGLU hidden width
    int64_t max_position_embeddings = 2048;
    double rope_theta = 10000.0;
    double rms_norm_eps = 1e-5;
    bool tie_word_embeddings = true;
    bool attention_bias = false;      // q/k/v bias (true for qwen2)
    bool qk_norm = false;             // per-head RMSNorm of q and k before rotation (qwen3)
    int64_t explicit_head_dim = 0;    // 0: hidden_size / num_attention_heads (qwen3 sets its own)
    RopeScaling rope_scaling;
    int64_t bos_token_id = -1;
    int64_t eos_token_id = -1;        // the first of eos_token_ids (GGUF holds one)
    std::vector<int64_t> eos_token_ids;  // all ids that end a generation (Llama 3.1 lists three)

    int64_t head_dim() const {
        return explicit_head_dim > 0 ? explicit_head_dim : hidden_size / num_attention_heads;
    }
    // The ids that end a generation: eos_token_ids, or eos_token_id alone.
    std::vector<int64_t> stop_ids() const {
        if (!eos_token_ids.empty()) return eos_token_ids;
        return eos_token_id >= 0 ? std::vector<int64_t>{eos_token_id} : std::vector<int64_t>{};
    }
    // Checks that the shapes fit together; throws Error saying which value is wrong.
    void validate() const;
    // Trainable parameter count (tied embeddings counted once).
    int64_t num_params() const;
    // Forward FLOPs per token at context length T (matmuls: 2 per MAC; attention included).
    double flops_per_token(int64_t T) const;
};

struct Architecture;
// The config's row of the architecture table (model/arch.h); an Error if it has none.
const Architecture& architecture_of(const ModelConfig& c);

ModelConfig config_from_json(const nlohmann::json& j, const std::string& source = "config.json");
nlohmann::json config_to_json(const ModelConfig& c);
// Reads config.json, and generation_config.json beside it when present (its eos_token_id, an int
// or a list, is what generation stops on).
ModelConfig load_config(const std::string& path);
// eos_token_id as HF writes it: an int or a list of ints (-1 / empty when absent).
std::vector<int64_t> eos_ids_from_json(const nlohmann::json& j, const std::string& source);

}  // namespace distill
