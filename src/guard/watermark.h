// distill — the watermark's green test (Kirchenbauer et al. 2023, "A Watermark for Large Language
// Models"), with a hash fixed so that anyone can reproduce it (docs/guard.md has it with test
// vectors):
//   k = XXH3_64(bytes of the key file, seed 0)
//   token v after c_1 .. c_h is green  iff  XXH3_64(u32-LE bytes of [c_1, ..., c_h, v], seed k)
//                                           < floor(gamma * 2^64)
// Sampling adds delta to the green logits before temperature / top-k / top-p; a position with
// fewer than h previous ids is left as it is.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace at {
class Tensor;
}

namespace distill {

// The secret: k seeds every green test; id names the key in reports without giving k away.
struct WatermarkKey {
    uint64_t k = 0;   // XXH3_64(key file bytes, seed 0)
    uint64_t id = 0;  // XXH3_64(key file bytes, seed kWatermarkKeyIdSeed)
};
constexpr uint64_t kWatermarkKeyIdSeed = 1;
constexpr int64_t kWatermarkMaxContext = 4;

struct WatermarkOptions {
    WatermarkKey key;
    double gamma = 0.25;  // the green fraction of the vocabulary, in (0, 1)
    double delta = 2.0;   // added to green logits when sampling
    int64_t context = 1;  // h: the previous ids that pick the green list, 1 .. kWatermarkMaxContext
};

// The key from its bytes (non-empty), or from a file (missing or empty: Error saying how to make
// one).
WatermarkKey watermark_key(std::string_view bytes);
WatermarkKey watermark_key_file(const std::string& path);
// The key's id as 16 hex digits, as reports print it.
std::string watermark_key_id_hex(const WatermarkKey& key);

// Error unless gamma is in (0, 1), delta finite and context in 1 .. kWatermarkMaxContext.
void watermark_check(const WatermarkOptions& o);

// floor(gamma * 2^64) for gamma in (0, 1), exact: gamma is an IEEE double, so gamma * 2^64 is a
// power-of-two scaling that loses nothing.
uint64_t watermark_threshold(double gamma);

// XXH3_64 of the u32 little-endian bytes of ids[0 .. n), with seed k. Ids must fit in 32 bits.
uint64_t watermark_hash(uint64_t k, const int64_t* ids, int64_t n);

// Whether `token` is green after the h = o.context ids at `context` (context[0] the oldest).
bool watermark_green(const WatermarkOptions& o, const int64_t* context, int64_t token);

// The green mask of a whole vocabulary after `context` (h ids): mask[v] = 1 for green v.
std::vector<uint8_t> watermark_green_mask(const WatermarkOptions& o, const int64_t* context,
                                          int64_t V);

// Adds delta to the green entries of logits (V) after `history` (the ids so far, prompt
// included; the last h are the context). With fewer than h ids the logits are left as they are.
// logits may live on any device, in any floating type.
void watermark_apply(const WatermarkOptions& o, const std::vector<int64_t>& history,
                     at::Tensor& logits);

// The same for a batch: row b of logits (B, V) after histories[b].
void watermark_apply(const WatermarkOptions& o, const std::vector<std::vector<int64_t>>& histories,
                     at::Tensor& logits);

}  // namespace distill
