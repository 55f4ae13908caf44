// distill — model directories in the Hugging Face layout: config.json, model.safetensors
// (or sharded with model.safetensors.index.json), tokenizer.json.
#pragma once

#include <map>
#include <string>

#include "model/config.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace distill {

struct LoadedModel {
    ModelConfig config;
    Llama model{nullptr};
    Tokenizer tokenizer;
    bool has_tokenizer = false;
    std::string path;
    std::string fingerprint;  // of config + weights
};

// Loads a model directory, or a GGUF file (see model/gguf-model.h). Missing files, tensors with
// wrong shapes, missing or unexpected tensors give an Error naming them.
// packed = true: for inference on the CPU; the matrices stay in the file's type where the file
// is mapped (model/packed.h), so the model needs about its file's size. The fingerprint is the
// same either way.
LoadedModel load_model_dir(const std::string& dir, bool packed = false);

// Writes a model directory. The directory is first written beside the target and then renamed
// into place, so a killed process leaves either the old directory or the new one.
// dtype: the weights' type in model.safetensors (float32, bfloat16 or float16; config.json's
// torch_dtype says which).
void save_model_dir(const std::string& dir, Llama& model, const Tokenizer* tokenizer,
                    const std::map<std::string, std::string>& extra_files = {},
                    torch::Dtype dtype = torch::kFloat32);

// The state dict with HF names, detached (tied head omitted).
std::map<std::string, torch::Tensor> model_state(Llama& model);


}  // namespace distill
