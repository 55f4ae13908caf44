// Fuzzes the logit cache reader and the writer's resume path on hostile files.
//   input starting with '{': header.json (data.bin is absent, so only the header is parsed);
//   otherwise: data.bin after its 32-byte file header, for the fixed header.json of
//   logit-cache-fixture.h. The harness rewrites each well-framed chunk's xxh3 checksum so that
//   mutations reach the payload decoder instead of stopping at the checksum.
// Every window the reader reports must decode, or throw distill::Error.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "logit-cache-fixture.h"
#include "util/error.h"
#include "util/file.h"

namespace {

std::string g_dir, g_header_json, g_file_header;

uint64_t get_u64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

// Chunk layout (docs/logit-cache.md): "LCCK", u32 windows, u64 first window, u64 payload bytes,
// u64 xxh3(payload, seed = xxh3(first 24 header bytes)).
void fix_checksums(std::string& d) {
    size_t off = 0;
    while (d.size() - off >= 32 && std::memcmp(d.data() + off, "LCCK", 4) == 0) {
        auto* h = reinterpret_cast<uint8_t*>(&d[off]);
        const uint64_t n = get_u64(h + 16);
        if (n > d.size() - off - 32) break;
        const uint64_t sum = distill::hash64(h + 32, n, distill::hash64(h, 24));
        std::memcpy(h + 24, &sum, 8);
        off += 32 + n;
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    g_dir = fuzz::temp_dir("distill-fuzz-logit-cache");
    std::atexit([] { std::filesystem::remove_all(g_dir); });
    { distill::LogitCacheWriter w(g_dir, fuzz::logit_cache_info()); }
    g_header_json = distill::read_file(g_dir + "/header.json");
    g_file_header = distill::read_file(g_dir + "/data.bin");
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string input(reinterpret_cast<const char*>(data), size);
    const std::string header = g_dir + "/header.json", bin = g_dir + "/data.bin";
    if (size > 0 && data[0] == '{') {
        distill::write_file_atomic(header, input);
        ::unlink(bin.c_str());
        try {
            distill::LogitCacheReader r(g_dir);
        } catch (const distill::Error&) {
        }
        return 0;
    }
    std::string body = input;
    fix_checksums(body);
    distill::write_file_atomic(header, g_header_json);
    distill::write_file_atomic(bin, g_file_header + body);
    const distill::LogitCacheInfo info = fuzz::logit_cache_info();
    std::vector<int32_t> ids(size_t(info.window) * info.top_k);
    std::vector<float> logprobs(ids.size());
    try {
        distill::LogitCacheReader r(g_dir);
        for (int64_t w = 0; w < r.num_windows(); ++w) {
            try {
                r.read_window(w, ids.data(), logprobs.data());
            } catch (const distill::Error&) {
            }
        }
    } catch (const distill::Error&) {
    }
    try {  // resuming: verifies every chunk and drops a torn tail
        distill::LogitCacheWriter w(g_dir, info);
    } catch (const distill::Error&) {
    }
    return 0;
}
