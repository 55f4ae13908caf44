// distill — safetensors read (memory-mapped, checked) and write (atomic).
// Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
// then the raw little-endian tensor bytes.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

#include "util/file.h"

namespace distill {

struct SafetensorsEntry {
    std::string dtype;             // "F32", "F16", "BF16", "I32", "I64", ...
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;     // byte offsets into the data section
};

class SafetensorsFile {
public:
    // Maps the file and validates the header: sizes, offsets, dtypes and shapes are checked
    // against the file before anything is read. Throws Error naming the file and the problem.
    explicit SafetensorsFile(const std::string& path);

    bool has(const std::string& name) const { return entries_.count(name) != 0; }
    const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    // A tensor converted to `dtype` (a copy; the mapping is not kept alive by it).
    torch::Tensor get(const std::string& name, torch::Dtype dtype = torch::kFloat32) const;
    const std::string& path() const { return file_.path(); }

private:
    MappedFile file_;
    size_t data_offset_ = 0;
    std::map<std::string, SafetensorsEntry> entries_;
    std::map<std::string, std::string> metadata_;
};

// Writes tensors (contiguous copies are taken as needed) atomically. Supported dtypes:
// float32, float16, bfloat16, int32, int64, uint8.
void save_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace distill
