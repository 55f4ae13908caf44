// distill — ggml tensor types: block sizes, and rows converted to and from float32.
// Block layouts as llama.cpp's ggml-common.h defines them (little-endian, fp16 scales).
// Torch-free, so that the GGUF reader can be fuzzed on its own.
#pragma once

#include <cstdint>
#include <string>

namespace distill {

// ggml type ids (as stored in GGUF tensor infos).
enum class GgmlType : uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    BF16 = 30,
};

struct GgmlTypeInfo {
    GgmlType type;
    const char* name;  // "F32", "Q4_K", ...
    int64_t block;     // elements per block
    int64_t bytes;     // bytes per block
    // Whole rows of n values (n a multiple of block); nullptr where distill cannot read or write
    // the type. dequantize_row / quantize_row call these after checking.
    void (*to_float)(const uint8_t* src, float* dst, int64_t n);
    void (*from_float)(const float* src, uint8_t* dst, int64_t n);
};

// nullptr for an id distill does not know.
const GgmlTypeInfo* ggml_type_info(uint32_t id);
// By name, case-insensitive ("q4_k", "F16"); nullptr if unknown.
const GgmlTypeInfo* ggml_type_by_name(const std::string& name);

float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);  // round to nearest even, as the F16C instructions do
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);  // round to nearest even (NaN stays NaN)

// n elements of `type` at src -> dst. n must be a multiple of the block size; throws Error for a
// type without to_float.
void dequantize_row(GgmlType type, const uint8_t* src, float* dst, int64_t n);
// n floats -> n / block blocks of `type` at dst (row_bytes(type, n) bytes).
void quantize_row(GgmlType type, const float* src, uint8_t* dst, int64_t n);
// Bytes of n elements; n must be a multiple of the block size.
int64_t row_bytes(GgmlType type, int64_t n);

}  // namespace distill
