// distill — load_tokenizer: an HF model directory, a tokenizer.json, or a GGUF file (told apart
// by its magic bytes).
#include "tokenizer/load.h"

#include <cstdio>
#include <cstring>

#include "io/gguf.h"
#include "tokenizer/gguf-tokenizer.h"
#include "util/error.h"
#include "util/file.h"

namespace distill {

Tokenizer load_tokenizer(const std::string& path) {
    if (dir_exists(path)) {
        const std::string tok = path_join(path, "tokenizer.json");
        DISTILL_CHECK(file_exists(tok), "model directory '", path, "' has no tokenizer.json");
        return Tokenizer::load(tok);
    }
    DISTILL_CHECK(file_exists(path), "tokenizer '", path, "' does not exist");
    char magic[4] = {};
    if (std::FILE* f = std::fopen(path.c_str(), "rb")) {
        const size_t n = std::fread(magic, 1, 4, f);
        std::fclose(f);
        if (n == 4 && std::memcmp(magic, "GGUF", 4) == 0)
            return Tokenizer::from_json(tokenizer_json_from_gguf(GgufFile(path)));
    }
    return Tokenizer::load(path);
}

}  // namespace distill
