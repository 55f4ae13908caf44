// distill — load_tokenizer: a tokenizer from wherever a model keeps it.
#pragma once

#include <string>

#include "tokenizer/tokenizer.h"

namespace distill {

// A tokenizer from a tokenizer.json file, a model directory (its tokenizer.json) or a GGUF file
// (its tokenizer.ggml.* metadata).
Tokenizer load_tokenizer(const std::string& path);

}  // namespace distill
