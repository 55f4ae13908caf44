// distill — the safetensors header: parsed and validated from raw bytes, without libtorch, so the
// fuzzers and any tool can check a file the way SafetensorsFile does.
// Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}}
// (plus an optional "__metadata__": {string: string}), then the raw little-endian tensor bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace distill {

struct SafetensorsEntry {
    std::string dtype;             // "F32", "F16", "BF16", "I32", "I64", ...
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;     // byte offsets into the data section
};

struct SafetensorsHeader {
    std::map<std::string, SafetensorsEntry> entries;
    std::map<std::string, std::string> metadata;
    size_t data_offset = 0;  // where the data section starts: 8 + N
};

constexpr uint64_t kSafetensorsMaxHeader = 100ull << 20;  // 100 MB, as the reference implementation

// Bytes per element of a safetensors dtype name; 0 if unknown.
size_t safetensors_dtype_size(const std::string& dtype);

// Parses and validates the header of the `size` bytes at `data` (the whole file): header length
// within the file and at most kSafetensorsMaxHeader; a JSON object without duplicate keys; every
// tensor with a known dtype, non-negative dims whose product does not overflow, byte length ==
// product * dtype size; the tensors tile the data section exactly (no overlaps, no holes, no
// trailing bytes), as the safetensors spec requires. Throws Error naming `name` and the problem.
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, const std::string& name);

}  // namespace distill
