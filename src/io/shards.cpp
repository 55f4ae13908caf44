#include "io/shards.h"

#include <torch/torch.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <random>

#include "util/error.h"

namespace distill {

ShardInfo write_shard(const std::string& prefix, const std::vector<int32_t>& ids, int64_t vocab_size,
                      const std::string& tokenizer_fingerprint, const std::string& source,
                      int64_t source_bytes) {
    ShardInfo info;
    info.num_tokens = static_cast<int64_t>(ids.size());
    info.vocab_size = vocab_size;
    info.width = vocab_size <= 65536 ? 2 : 4;
    info.tokenizer_fingerprint = tokenizer_fingerprint;
    info.source = source;
    info.source_bytes = source_bytes;
    std::string bytes(ids.size() * info.width, '\0');
    for (size_t i = 0; i < ids.size(); ++i) {
        DISTILL_ASSERT(ids[i] >= 0 && ids[i] < vocab_size, "id ", ids[i], " out of range");
        if (info.width == 2) {
            uint16_t v = static_cast<uint16_t>(ids[i]);
            std::memcpy(&bytes[i * 2], &v, 2);
        } else {
            uint32_t v = static_cast<uint32_t>(ids[i]);
            std::memcpy(&bytes[i * 4], &v, 4);
        }
    }
    info.fingerprint = hash_hex(bytes);
    write_file_atomic(prefix + ".bin", bytes);
    nlohmann::json h = {{"format", "distill-tokens"},
                        {"version", 1},
                        {"dtype", info.width == 2 ? "u16" : "u32"},
                        {"num_tokens", info.num_tokens},
                        {"vocab_size", vocab_size},
                        {"tokenizer_fingerprint", tokenizer_fingerprint},
                        {"source", source},
                        {"source_bytes", source_bytes},
                        {"fingerprint", info.fingerprint}};
    write_file_atomic(prefix + ".json", h.dump(2) + "\n");
    return info;
}

TokenShard::TokenShard(const std::string& prefix) {
    const std::string hpath = prefix + ".json", dpath = prefix + ".bin";
    DISTILL_CHECK(file_exists(hpath), "token shard header '", hpath,
                  "' is missing (was the shard written completely? re-run the step that makes it)");
    info_ = parse_shard_header(read_file(hpath), hpath);
    data_ = MappedFile(dpath);
    check_shard_ids(info_, data_.data(), data_.size(), dpath);
}

int64_t TokenShard::at(int64_t i) const {
    DISTILL_ASSERT(i >= 0 && i < info_.num_tokens, "index ", i);
    return shard_token(data_.data(), info_.width, i);
}

torch::Tensor TokenShard::slice(int64_t begin, int64_t n) const {
    DISTILL_ASSERT(begin >= 0 && n >= 0 && begin + n <= info_.num_tokens, begin, "+", n);
    auto t = torch::empty({n}, torch::kInt64);
    int64_t* p = t.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) p[i] = at(begin + i);
    return t;
}

int64_t num_aligned_windows(int64_t num_tokens, int64_t T) {
    return num_tokens > T ? (num_tokens - 1) / T : 0;
}

}  // namespace distill
