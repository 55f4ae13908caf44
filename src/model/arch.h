// distill — the supported architectures, as one table (as llama.cpp keeps them): for each, the
// config.json model_types read as it, the class name written back, its features, how its
// tensors are named in HF and GGUF files and whether GGUF stores q/k rows permuted. The HF reader,
// the GGUF reader and the GGUF writer all read this table.
#pragma once

#include <string>
#include <vector>

namespace distill {

struct Architecture {
    std::string name;                  // distill's, and GGUF's general.architecture
    struct ModelType {
        std::string name;              // config.json model_type
        bool sliding_window_default;   // use_sliding_window when config.json does not say
        bool has_sliding_window_key;   // config.json may carry use_sliding_window / sliding_window
    };
    std::vector<ModelType> model_types;
    std::string hf_class;              // config.json architectures[0] when distill writes it
    bool attention_bias = false;       // q/k/v biases
    bool qk_norm = false;              // per-head RMSNorm of q and k before the rotation
    bool gguf_permute_qk = false;      // llama.cpp rotates adjacent pairs: q/k rows reordered in GGUF
};

const std::vector<Architecture>& architectures();
// The architecture named `name` (distill / GGUF name); an Error listing the supported ones if none.
const Architecture& architecture(const std::string& name, const std::string& where);
// The architecture a config.json model_type is read as (nullptr if none), and that type's row.
const Architecture* architecture_for_model_type(const std::string& model_type,
                                                const Architecture::ModelType** type = nullptr);
// "llama, qwen2, qwen3" and "llama, mistral, qwen2, qwen3", for messages.
std::string architecture_names();
std::string model_type_names();

// The GGUF name of an HF parameter (the same mapping for every architecture in the table).
std::string gguf_tensor_name(const std::string& hf_name);

}  // namespace distill
