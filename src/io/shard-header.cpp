#include "io/shard-header.h"

#include <limits>
#include <nlohmann/json.hpp>

#include "util/error.h"

namespace distill {

namespace {

// An integer field: JSON floats and integers beyond int64 are refused, not converted.
int64_t get_int(const nlohmann::json& h, const char* key, const std::string& path) {
    const auto& v = h.at(key);
    DISTILL_CHECK(v.is_number_integer() &&
                      !(v.is_number_unsigned() &&
                        v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())),
                  path, ": \"", key, "\" is ", v.dump(), ", not an integer");
    return v.get<int64_t>();
}

}  // namespace

ShardInfo parse_shard_header(const std::string& json_text, const std::string& path) {
    ShardInfo info;
    try {
        const nlohmann::json h = nlohmann::json::parse(json_text);
        DISTILL_CHECK(h.is_object() && h.value("format", "") == "distill-tokens", path,
                      ": not a distill token shard header (no \"format\": \"distill-tokens\")");
        const std::string dtype = h.at("dtype").get<std::string>();
        DISTILL_CHECK(dtype == "u16" || dtype == "u32", path, ": unknown dtype '", dtype, "'");
        info.width = dtype == "u16" ? 2 : 4;
        info.num_tokens = get_int(h, "num_tokens", path);
        info.vocab_size = get_int(h, "vocab_size", path);
        info.tokenizer_fingerprint = h.value("tokenizer_fingerprint", "");
        info.source = h.value("source", "");
        info.source_bytes = h.contains("source_bytes") ? get_int(h, "source_bytes", path) : 0;
        info.fingerprint = h.value("fingerprint", "");
    } catch (const nlohmann::json::exception& e) {
        throw Error(str_cat(path, ": invalid shard header: ", e.what()));
    }
    DISTILL_CHECK(info.num_tokens >= 0 && info.vocab_size > 0, path,
                  ": negative token count or vocab size");
    return info;
}

void check_shard_ids(const ShardInfo& info, const uint8_t* data, size_t size,
                     const std::string& path) {
    // Compared by division: num_tokens * width can overflow for a hostile header.
    DISTILL_CHECK(size % info.width == 0 && uint64_t(info.num_tokens) == size / info.width, path,
                  ": has ", size, " bytes but the header says ", info.num_tokens, " tokens of ",
                  info.width, " bytes (truncated or replaced shard: re-create it)");
    // One pass to check every id is in range, so later reads need no checks.
    for (int64_t i = 0; i < info.num_tokens; ++i) {
        const int64_t v = shard_token(data, info.width, i);
        DISTILL_CHECK(v < info.vocab_size, path, ": token ", i, " has id ", v, " >= vocab_size ",
                      info.vocab_size, " (corrupt shard)");
    }
}

}  // namespace distill
