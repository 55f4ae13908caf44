// Fuzzes the token shard reader: input = header JSON, a NUL byte, then the ids (.bin). A header
// that parses and ids that pass the check must be readable in full with every id < vocab_size.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "io/shard-header.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const uint8_t* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
    const size_t hlen = nul ? size_t(nul - data) : size;
    const uint8_t* ids = nul ? nul + 1 : data + size;
    const size_t nids = nul ? size - hlen - 1 : 0;
    try {
        const distill::ShardInfo info = distill::parse_shard_header(
            std::string(reinterpret_cast<const char*>(data), hlen), "fuzz.json");
        distill::check_shard_ids(info, ids, nids, "fuzz.bin");
        for (int64_t i = 0; i < info.num_tokens; ++i)
            if (distill::shard_token(ids, info.width, i) >= info.vocab_size) abort();
    } catch (const distill::Error&) {
    }
    return 0;
}
