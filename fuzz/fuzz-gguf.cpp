// Fuzzes the GGUF reader: any input either parses into metadata and tensors that lie inside the
// buffer, or throws distill::Error. Small accepted tensors are also dequantized, so the block
// decoders of every type see hostile bytes. Anything else is a finding.
#include <cstdint>
#include <cstdlib>

#include "io/gguf.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const distill::GgufFile f(data, size, "fuzz");
        volatile uint8_t sink = 0;
        for (const auto& t : f.tensors()) {
            const uint8_t* p = f.tensor_data(t);
            // ASan reports any extent outside the input.
            sink = sink ^ p[0] ^ p[t.nbytes - 1];
            if (t.numel() <= (1 << 16)) {
                const std::vector<float> v = f.tensor_f32(t);
                if (int64_t(v.size()) != t.numel()) abort();
            }
        }
        for (const auto& [key, v] : f.metadata()) sink = sink ^ uint8_t(key.size());
    } catch (const distill::Error&) {
    }
    return 0;
}
