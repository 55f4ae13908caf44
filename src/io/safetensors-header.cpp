#include "io/safetensors-header.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "util/error.h"

namespace distill {

size_t safetensors_dtype_size(const std::string& dtype) {
    static const std::map<std::string, size_t> kSizes = {
        {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
        {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1},
    };
    auto it = kSizes.find(dtype);
    return it == kSizes.end() ? 0 : it->second;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size,
                                           const std::string& name) {
    const std::string what = str_cat("'", name, "'");
    DISTILL_CHECK(size >= 8, what, " is not a safetensors file: only ", size,
                  " bytes (truncated?)");
    uint64_t hlen = 0;
    std::memcpy(&hlen, data, 8);
    DISTILL_CHECK(hlen <= kSafetensorsMaxHeader && hlen <= size - 8, what,
                  " is not a valid safetensors file: header length ", hlen,
                  " does not fit in the file of ", size, " bytes (truncated or corrupt)");
    SafetensorsHeader out;
    out.data_offset = 8 + hlen;
    const size_t data_size = size - out.data_offset;

    // Duplicate keys are an error (nlohmann would silently keep the last one): one set of keys
    // per open object.
    std::vector<std::set<std::string>> keys;
    auto reject_duplicates = [&](int, nlohmann::json::parse_event_t ev, nlohmann::json& v) {
        using E = nlohmann::json::parse_event_t;
        if (ev == E::object_start) keys.emplace_back();
        if (ev == E::object_end) keys.pop_back();
        if (ev == E::key)
            DISTILL_CHECK(keys.back().insert(v.get<std::string>()).second, what,
                          ": safetensors header has the key ", v.dump(), " twice");
        return true;
    };
    nlohmann::json header;
    try {
        header = nlohmann::json::parse(data + 8, data + 8 + hlen, reject_duplicates);
    } catch (const nlohmann::json::exception& e) {
        throw Error(str_cat(what, ": safetensors header is not valid JSON: ", e.what()));
    }
    DISTILL_CHECK(header.is_object(), what, ": safetensors header is not a JSON object");

    for (auto it = header.begin(); it != header.end(); ++it) {
        const std::string& tname = it.key();
        const auto& v = it.value();
        if (tname == "__metadata__") {
            DISTILL_CHECK(v.is_object(), what, ": __metadata__ is not a JSON object");
            for (auto m = v.begin(); m != v.end(); ++m) {
                DISTILL_CHECK(m.value().is_string(), what, ": __metadata__ value of '", m.key(),
                              "' is not a string");
                out.metadata[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        const std::string where = str_cat(what, ": tensor '", tname, "'");
        DISTILL_CHECK(v.is_object() && v.contains("dtype") && v["dtype"].is_string() &&
                          v.contains("shape") && v["shape"].is_array() &&
                          v.contains("data_offsets") && v["data_offsets"].is_array() &&
                          v["data_offsets"].size() == 2,
                      where, " needs dtype, shape and data_offsets [begin, end]");
        SafetensorsEntry e;
        e.dtype = v["dtype"].get<std::string>();
        const size_t esize = safetensors_dtype_size(e.dtype);
        DISTILL_CHECK(esize != 0, where, " has unsupported dtype ", e.dtype);
        uint64_t numel = 1;
        for (const auto& d : v["shape"]) {
            DISTILL_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0),
                          where, " has a negative or non-integer dim ", d.dump());
            const uint64_t dim = d.get<uint64_t>();
            DISTILL_CHECK(dim == 0 || numel <= (uint64_t{1} << 62) / dim, where,
                          " shape overflows");
            numel *= dim;
            e.shape.push_back(static_cast<int64_t>(dim));
        }
        const auto& off = v["data_offsets"];
        DISTILL_CHECK(off[0].is_number_unsigned() && off[1].is_number_unsigned(), where,
                      " has invalid data_offsets ", off.dump());
        e.begin = off[0].get<uint64_t>();
        e.end = off[1].get<uint64_t>();
        DISTILL_CHECK(e.begin <= e.end && e.end <= data_size, where, " data [", e.begin, ", ",
                      e.end, ") lies outside the ", data_size,
                      "-byte data section (truncated file?)");
        DISTILL_CHECK(numel <= (uint64_t{1} << 60) / esize && e.end - e.begin == numel * esize,
                      where, " has ", e.end - e.begin, " bytes but its shape and dtype need ",
                      numel <= (uint64_t{1} << 60) / esize ? str_cat(numel * esize)
                                                            : std::string("more than 2^60"));
        out.entries[tname] = std::move(e);
    }

    // The tensors must cover the data section exactly, in some order (spec: no holes, which also
    // rules out overlaps and hidden trailing data).
    std::vector<std::pair<const SafetensorsEntry*, const std::string*>> order;
    for (const auto& [tname, e] : out.entries) order.push_back({&e, &tname});
    std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
        return std::make_pair(a.first->begin, a.first->end) <
               std::make_pair(b.first->begin, b.first->end);
    });
    size_t pos = 0;
    for (const auto& [e, tname] : order) {
        DISTILL_CHECK(e->begin >= pos, what, ": tensor '", *tname, "' data [", e->begin, ", ",
                      e->end, ") overlaps the tensor before it (which ends at ", pos, ")");
        DISTILL_CHECK(e->begin == pos, what, ": the data section has a hole [", pos, ", ",
                      e->begin, ") before tensor '", *tname, "' (corrupt file)");
        pos = e->end;
    }
    DISTILL_CHECK(pos == data_size, what, ": the data section has ", data_size - pos,
                  " bytes after the last tensor (corrupt file, or not a safetensors file)");
    return out;
}

}  // namespace distill
