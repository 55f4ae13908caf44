#include "guard/watermark.h"

#include <torch/torch.h>
#include <xxhash.h>

#include <cmath>
#include <cstdio>

#include "util/error.h"
#include "util/file.h"

namespace distill {

namespace {
void put_u32le(uint8_t* p, int64_t id) {
    DISTILL_CHECK(id >= 0 && id <= 0xFFFFFFFFll, "token id ", id,
                  " does not fit the watermark's u32 encoding");
    const uint32_t u = static_cast<uint32_t>(id);
    p[0] = uint8_t(u);
    p[1] = uint8_t(u >> 8);
    p[2] = uint8_t(u >> 16);
    p[3] = uint8_t(u >> 24);
}
}  // namespace

WatermarkKey watermark_key(std::string_view bytes) {
    DISTILL_CHECK(!bytes.empty(), "the watermark key is empty");
    WatermarkKey key;
    key.k = XXH3_64bits_withSeed(bytes.data(), bytes.size(), 0);
    key.id = XXH3_64bits_withSeed(bytes.data(), bytes.size(), kWatermarkKeyIdSeed);
    return key;
}

WatermarkKey watermark_key_file(const std::string& path) {
    const std::string make = str_cat("make one with `head -c 32 /dev/urandom > ", path,
                                     "` (any bytes work; keep the file secret: whoever has it can "
                                     "find and remove the watermark)");
    DISTILL_CHECK(!path.empty(), "no watermark key file given");
    DISTILL_CHECK(file_exists(path), "watermark key file ", path, " does not exist: ", make);
    const std::string bytes = read_file(path);
    DISTILL_CHECK(!bytes.empty(), "watermark key file ", path, " is empty: ", make);
    return watermark_key(bytes);
}

std::string watermark_key_id_hex(const WatermarkKey& key) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(key.id));
    return buf;
}

void watermark_check(const WatermarkOptions& o) {
    DISTILL_CHECK(o.gamma > 0 && o.gamma < 1,
                  "the watermark's green fraction gamma must be in (0, 1), not ", o.gamma);
    DISTILL_CHECK(std::isfinite(o.delta), "the watermark's delta must be a finite number");
    DISTILL_CHECK(o.context >= 1 && o.context <= kWatermarkMaxContext,
                  "the watermark's context must be 1 .. ", kWatermarkMaxContext,
                  " previous tokens, not ", o.context);
}

uint64_t watermark_threshold(double gamma) {
    DISTILL_CHECK(gamma > 0 && gamma < 1,
                  "the watermark's green fraction gamma must be in (0, 1), not ", gamma);
    // ldexp scales by a power of two: exact, and below 2^64 because gamma < 1
    return static_cast<uint64_t>(std::floor(std::ldexp(gamma, 64)));
}

uint64_t watermark_hash(uint64_t k, const int64_t* ids, int64_t n) {
    uint8_t buf[4 * (kWatermarkMaxContext + 1)];
    DISTILL_ASSERT(n >= 1 && n <= kWatermarkMaxContext + 1,
                   "watermark tuples hold 1 .. 5 ids, not ", n);
    for (int64_t i = 0; i < n; ++i) put_u32le(buf + 4 * i, ids[i]);
    return XXH3_64bits_withSeed(buf, static_cast<size_t>(4 * n), k);
}

bool watermark_green(const WatermarkOptions& o, const int64_t* context, int64_t token) {
    int64_t ids[kWatermarkMaxContext + 1];
    DISTILL_ASSERT(o.context >= 1 && o.context <= kWatermarkMaxContext, "bad watermark context ",
                   o.context);
    for (int64_t i = 0; i < o.context; ++i) ids[i] = context[i];
    ids[o.context] = token;
    return watermark_hash(o.key.k, ids, o.context + 1) < watermark_threshold(o.gamma);
}

std::vector<uint8_t> watermark_green_mask(const WatermarkOptions& o, const int64_t* context,
                                          int64_t V) {
    watermark_check(o);
    const uint64_t threshold = watermark_threshold(o.gamma);
    const int64_t h = o.context;
    uint8_t buf[4 * (kWatermarkMaxContext + 1)];
    for (int64_t i = 0; i < h; ++i) put_u32le(buf + 4 * i, context[i]);
    const size_t n = static_cast<size_t>(4 * (h + 1));
    std::vector<uint8_t> mask(static_cast<size_t>(V));
    for (int64_t v = 0; v < V; ++v) {
        put_u32le(buf + 4 * h, v);
        mask[v] = XXH3_64bits_withSeed(buf, n, o.key.k) < threshold;
    }
    return mask;
}

void watermark_apply(const WatermarkOptions& o, const std::vector<int64_t>& history,
                     at::Tensor& logits) {
    DISTILL_ASSERT(logits.dim() == 1, "watermark_apply: logits must be (V)");
    if (static_cast<int64_t>(history.size()) < o.context) return;
    const int64_t V = logits.size(0);
    std::vector<uint8_t> mask =
        watermark_green_mask(o, history.data() + history.size() - o.context, V);
    torch::Tensor m = torch::from_blob(mask.data(), {V}, torch::kUInt8);
    logits.add_(m.to(logits.device(), logits.scalar_type()), o.delta);
}

void watermark_apply(const WatermarkOptions& o, const std::vector<std::vector<int64_t>>& histories,
                     at::Tensor& logits) {
    // logits: (B, V)
    DISTILL_ASSERT(logits.dim() == 2 && logits.size(0) == static_cast<int64_t>(histories.size()),
                   "watermark_apply: logits must be (B, V) with one history per row");
    const int64_t B = logits.size(0), V = logits.size(1);
    std::vector<uint8_t> mask(static_cast<size_t>(B * V), 0);
    bool any = false;
    for (int64_t b = 0; b < B; ++b) {
        const auto& hist = histories[b];
        if (static_cast<int64_t>(hist.size()) < o.context) continue;
        std::vector<uint8_t> row =
            watermark_green_mask(o, hist.data() + hist.size() - o.context, V);
        std::copy(row.begin(), row.end(), mask.begin() + b * V);
        any = true;
    }
    if (!any) return;
    torch::Tensor m = torch::from_blob(mask.data(), {B, V}, torch::kUInt8);
    logits.add_(m.to(logits.device(), logits.scalar_type()), o.delta);
}

}  // namespace distill
