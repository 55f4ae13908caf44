// distill — GGUF files (llama.cpp's model format): a checked reader over a memory map and an
// atomic writer. Torch-free.
//
// Layout (little-endian): "GGUF", u32 version (2 or 3), u64 tensor count, u64 metadata count;
// metadata as (string key, u32 value type, value); tensor infos as (string name, u32 n_dims,
// u64 dims[n_dims] (innermost first), u32 ggml type, u64 offset); padding to
// `general.alignment` (default 32); the data section, each tensor at an aligned offset.
// A string is u64 length + bytes; an array is u32 element type + u64 count + elements.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "io/quant.h"
#include "util/file.h"

namespace distill {

enum class GgufType : uint32_t {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    BOOL = 7,
    STRING = 8,
    ARRAY = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
};
const char* gguf_type_name(GgufType t);

// One metadata value. Scalars: integers in `i` (u64 above INT64_MAX in `u`), floats in `f`,
// bools in `i`, strings in `s`. Arrays: element type `elem`, numbers in `ints` / `floats`
// (by element type), strings in `strs`. Nested arrays are not supported (llama.cpp has none).
struct GgufValue {
    GgufType type = GgufType::U32;
    int64_t i = 0;
    uint64_t u = 0;
    double f = 0;
    std::string s;
    GgufType elem = GgufType::U8;
    std::vector<int64_t> ints;
    std::vector<double> floats;
    std::vector<std::string> strs;

    static GgufValue u32(uint32_t v);
    static GgufValue i32(int32_t v);
    static GgufValue f32(float v);
    static GgufValue boolean(bool v);
    static GgufValue str(std::string v);
    static GgufValue str_array(std::vector<std::string> v);
    static GgufValue i32_array(std::vector<int64_t> v);  // written as INT32
};

struct GgufTensorInfo {
    std::string name;
    std::vector<int64_t> dims;  // innermost (row length) first, as ggml's ne
    GgmlType type = GgmlType::F32;
    uint64_t offset = 0;        // into the data section
    uint64_t nbytes = 0;
    int64_t numel() const;
};

class GgufFile {
public:
    // Maps and validates the whole file (header, every metadata value, every tensor info,
    // tensor data extents) before returning. Throws Error naming the file and the field.
    explicit GgufFile(const std::string& path);
    // The same checks on bytes in memory, which must outlive the GgufFile (`name` is for
    // messages).
    GgufFile(const uint8_t* data, size_t size, const std::string& name);

    uint32_t version() const { return version_; }
    uint64_t alignment() const { return alignment_; }
    const std::string& path() const { return name_; }

    const std::map<std::string, GgufValue>& metadata() const { return kv_; }
    bool has(const std::string& key) const { return kv_.count(key) != 0; }
    const GgufValue& get(const std::string& key) const;  // Error if absent
    // Typed access; Error naming the key when absent or of another type.
    std::string get_string(const std::string& key) const;
    int64_t get_int(const std::string& key) const;  // any integer type
    double get_float(const std::string& key) const;  // F32 / F64 (or an integer)
    bool get_bool(const std::string& key) const;
    const std::vector<std::string>& get_string_array(const std::string& key) const;
    const std::vector<int64_t>& get_int_array(const std::string& key) const;

    const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
    const GgufTensorInfo* find_tensor(const std::string& name) const;
    const uint8_t* tensor_data(const GgufTensorInfo& t) const { return data_ + data_offset_ + t.offset; }
    // The tensor as float32 (dequantized), numel() values.
    std::vector<float> tensor_f32(const GgufTensorInfo& t) const;

private:
    void parse(const uint8_t* data, size_t size);
    MappedFile file_;  // empty when reading bytes in memory
    std::string name_;
    const uint8_t* data_ = nullptr;
    uint32_t version_ = 0;
    uint64_t alignment_ = 32;
    uint64_t data_offset_ = 0;
    std::map<std::string, GgufValue> kv_;
    std::vector<GgufTensorInfo> tensors_;
    std::map<std::string, size_t> by_name_;
};

// A tensor to write: dims innermost first; data already in `type`'s layout.
struct GgufTensorOut {
    std::string name;
    std::vector<int64_t> dims;
    GgmlType type = GgmlType::F32;
    std::string data;
};

// Writes a GGUF v3 file atomically: metadata in the given order, then tensor infos and data
// at `alignment` (written as general.alignment when not 32).
void write_gguf(const std::string& path, const std::vector<std::pair<std::string, GgufValue>>& kv,
                const std::vector<GgufTensorOut>& tensors, uint32_t alignment = 32);

}  // namespace distill
