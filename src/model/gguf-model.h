// distill — models as GGUF files, the format of llama.cpp and ollama: load one (any supported
// tensor type, dequantized to float32) and export one (F32, F16, Q8_0, Q4_K, ...).
#pragma once

#include <string>

#include "model/checkpoint.h"

namespace distill {

// A regular file (not a directory): what load_model treats as GGUF.
bool is_gguf_path(const std::string& path);

// Loads a GGUF model of architecture llama or qwen2 with a "gpt2" (byte-level BPE) tokenizer.
// Unknown architectures, missing or unexpected tensors and wrong shapes give an Error naming them.
// packed: the matrices stay in their GGUF type, mapped (see load_model_dir).
LoadedModel load_gguf_model(const std::string& path, bool packed = false);

struct GgufExportOptions {
    std::string type = "f32";  // for 2-D weight matrices: f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k
    std::string name;          // general.name
    std::string chat_template; // tokenizer.chat_template (the Jinja text), when not empty
};

// Writes `model` with `tokenizer` as a GGUF file (atomically). Norms and biases stay F32; a
// matrix whose row length is not a whole number of the type's blocks falls back to Q8_0, then F16
// (logged). Returns a short summary (type -> tensor count).
std::string save_gguf_model(const std::string& path, Llama& model, const Tokenizer& tokenizer,
                            const GgufExportOptions& opts);

}  // namespace distill
