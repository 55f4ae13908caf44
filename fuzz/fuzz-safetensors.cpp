// Fuzzes parse_safetensors_header: any input either parses into entries that lie inside the
// buffer, or throws distill::Error. Anything else (a crash, a sanitizer report, another exception
// type) is a finding.
#include <cstdint>
#include <cstdlib>

#include "io/safetensors-header.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const distill::SafetensorsHeader h = distill::parse_safetensors_header(data, size, "fuzz");
        // Touch each tensor's first and last byte: ASan reports any offset outside the input.
        volatile uint8_t sink = 0;
        for (const auto& [name, e] : h.entries) {
            if (e.end == e.begin) continue;
            sink = sink ^ data[h.data_offset + e.begin] ^ data[h.data_offset + e.end - 1];
        }
        if (h.data_offset > size) abort();
    } catch (const distill::Error&) {
    }
    return 0;
}
