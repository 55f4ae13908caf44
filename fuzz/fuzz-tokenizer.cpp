// Fuzzes Tokenizer::from_json with whole tokenizer.json files. A file that loads must then work:
// encoding a few fixed strings gives ids in range that decode without error, and the tokenizer
// survives a round trip through to_json() with the same fingerprint. Keep the seeds small.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail) {
    std::fprintf(stderr, "fuzz-tokenizer: %s: %s\n", what, detail.c_str());
    abort();
}

const char* const kTexts[] = {
    "Hello, world! It's 2024.", "  two  spaces\n\nand\ttabs ", "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80",
    "<|bos|>x<|eos|>", "a\xFF" "b\xE2\x82", "",
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    distill::Tokenizer t;
    try {
        t = distill::Tokenizer::from_json(std::string(reinterpret_cast<const char*>(data), size));
    } catch (const distill::Error&) {
        return 0;
    }
    const int V = t.vocab_size();
    for (const char* text : kTexts) {
        std::vector<int32_t> ids;
        try {
            ids = t.encode(text);
        } catch (const distill::Error&) {
            continue;  // e.g. a regex that hits PCRE2's match limit: refused, not a crash
        }
        for (int32_t id : ids)
            if (id < 0 || id >= V) fail("encode gave an id out of range", std::to_string(id));
        try {
            t.decode(ids);
            t.decode(ids, true);
            for (int32_t id : ids) t.token_bytes(id), t.id_to_token(id), t.is_special(id);
        } catch (const distill::Error& e) {
            fail("the ids encode gave do not decode", e.what());
        }
    }
    for (int32_t id : {-1, V, V + 1, int32_t(0x7fffffff)}) {
        try {
            t.decode({id});
            fail("decode accepted an id out of range", std::to_string(id));
        } catch (const distill::Error&) {
        }
    }
    std::string saved;
    try {
        saved = t.to_json();
        if (distill::Tokenizer::from_json(saved).fingerprint() != t.fingerprint())
            fail("to_json round trip changed the fingerprint", saved.substr(0, 2000));
    } catch (const distill::Error& e) {
        fail("to_json wrote a file from_json refuses", e.what());
    }
    return 0;
}
