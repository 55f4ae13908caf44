// Fuzzes Tokenizer::encode on one fixed, real tokenizer (fuzz/fixtures/tokenizer.json, trained
// by `distill train-tokenizer`; or $DISTILL_FUZZ_TOKENIZER, e.g. Qwen3's) with arbitrary text:
// ids in range, decode never throws on them, and decode(encode(x)) == x for valid UTF-8 when the
// tokenizer has no normalizer.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace {

const distill::Tokenizer* g_tok = nullptr;
bool g_round_trip = false;

[[noreturn]] void fail(const char* what, std::string_view text) {
    std::fprintf(stderr, "fuzz-tokenizer-encode: %s (input: %s)\n", what,
                 nlohmann::json(std::string(text)).dump(-1, ' ', false,
                     nlohmann::json::error_handler_t::replace).c_str());
    abort();
}

// Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as Rust's str.
bool utf8_valid(std::string_view s) {
    static const uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    for (size_t i = 0; i < s.size();) {
        const unsigned char c = s[i];
        const int n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2
                    : (c & 0xF8) == 0xF0 ? 3 : -1;
        if (n < 0 || s.size() - i <= size_t(n)) return false;
        uint32_t cp = n == 0 ? c : c & (0x3F >> n);
        for (int k = 1; k <= n; ++k) {
            const unsigned char d = s[i + k];
            if ((d & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (d & 0x3F);
        }
        if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += n + 1;
    }
    return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const char* env = std::getenv("DISTILL_FUZZ_TOKENIZER");
    const std::string path = env ? env : DISTILL_FUZZ_DIR "/fixtures/tokenizer.json";
    try {
        g_tok = new distill::Tokenizer(distill::Tokenizer::load(path));
        const auto j = nlohmann::json::parse(g_tok->to_json());
        const auto& norm = j.value("normalizer", nlohmann::json());
        g_round_trip = norm.is_null() ||
                       (norm.value("type", "") == "Sequence" && norm.value("normalizers",
                                                                           nlohmann::json()).empty());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fuzz-tokenizer-encode: cannot load %s: %s\n", path.c_str(), e.what());
        std::exit(1);
    }
    std::fprintf(stderr, "fuzz-tokenizer-encode: %s, %d tokens, round trip %s\n", path.c_str(),
                 g_tok->vocab_size(), g_round_trip ? "checked" : "not checked (normalizer)");
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    std::vector<int32_t> ids;
    try {
        ids = g_tok->encode(text);
    } catch (const distill::Error&) {
        return 0;
    }
    for (int32_t id : ids)
        if (id < 0 || id >= g_tok->vocab_size()) fail("encode gave an id out of range", text);
    std::string back;
    try {
        back = g_tok->decode(ids);
    } catch (const distill::Error& e) {
        fail("the ids encode gave do not decode", text);
    }
    if (!utf8_valid(back)) fail("decode gave invalid UTF-8", text);
    if (g_round_trip && utf8_valid(text) && back != text) fail("decode(encode(x)) != x", text);
    return 0;
}
