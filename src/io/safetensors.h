// distill — safetensors read (memory-mapped, checked) and write (atomic).
// Format and header checks: io/safetensors-header.h.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>

#include "io/safetensors-header.h"
#include "util/file.h"

namespace distill {

class SafetensorsFile {
public:
    // Maps the file and validates the header (parse_safetensors_header) before anything is read.
    // Throws Error naming the file and the problem.
    explicit SafetensorsFile(const std::string& path);

    bool has(const std::string& name) const { return header_.entries.count(name) != 0; }
    const std::map<std::string, SafetensorsEntry>& entries() const { return header_.entries; }
    const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
    // A tensor converted to `dtype` (a copy; the mapping is not kept alive by it).
    torch::Tensor get(const std::string& name, torch::Dtype dtype = torch::kFloat32) const;
    const std::string& path() const { return file_.path(); }
    // The tensor's bytes where the file is mapped (valid while this object lives).
    const uint8_t* raw(const std::string& name) const;

private:
    MappedFile file_;
    SafetensorsHeader header_;
};

// Writes tensors (contiguous copies are taken as needed) atomically. Supported dtypes:
// float32, float16, bfloat16, int32, int64, uint8.
void save_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace distill
