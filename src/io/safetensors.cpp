#include "io/safetensors.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "util/error.h"

namespace distill {

namespace {

struct DtypeInfo {
    const char* name;
    torch::Dtype dtype;
    size_t size;
};

const DtypeInfo kDtypes[] = {
    {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2}, {"BF16", torch::kBFloat16, 2},
    {"F64", torch::kFloat64, 8}, {"I64", torch::kInt64, 8},   {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2},   {"I8", torch::kInt8, 1},     {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1},
};

const DtypeInfo* find_dtype(const std::string& name) {
    for (const auto& d : kDtypes)
        if (name == d.name) return &d;
    return nullptr;
}

const DtypeInfo* find_dtype(torch::Dtype t) {
    for (const auto& d : kDtypes)
        if (t == d.dtype) return &d;
    return nullptr;
}

constexpr uint64_t kMaxHeader = 100ull << 20;  // 100 MB, as the reference implementation

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
    const size_t n = file_.size();
    DISTILL_CHECK(n >= 8, "'", path, "' is not a safetensors file: only ", n,
                  " bytes (truncated?)");
    uint64_t hlen = 0;
    std::memcpy(&hlen, file_.data(), 8);
    DISTILL_CHECK(hlen <= kMaxHeader && hlen <= n - 8, "'", path,
                  "' is not a valid safetensors file: header length ", hlen,
                  " does not fit in the file of ", n, " bytes (truncated or corrupt)");
    data_offset_ = 8 + hlen;
    const size_t data_size = n - data_offset_;
    nlohmann::json header;
    try {
        header = nlohmann::json::parse(file_.data() + 8, file_.data() + 8 + hlen);
    } catch (const std::exception& e) {
        throw Error(str_cat("'", path, "': safetensors header is not valid JSON: ", e.what()));
    }
    DISTILL_CHECK(header.is_object(), "'", path, "': safetensors header is not a JSON object");
    for (auto it = header.begin(); it != header.end(); ++it) {
        const std::string& name = it.key();
        const auto& v = it.value();
        if (name == "__metadata__") {
            if (v.is_object())
                for (auto m = v.begin(); m != v.end(); ++m)
                    if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
            continue;
        }
        DISTILL_CHECK(v.is_object() && v.contains("dtype") && v["dtype"].is_string() &&
                          v.contains("shape") && v["shape"].is_array() &&
                          v.contains("data_offsets") && v["data_offsets"].is_array() &&
                          v["data_offsets"].size() == 2,
                      "'", path, "': tensor '", name,
                      "' needs dtype, shape and data_offsets [begin, end]");
        SafetensorsEntry e;
        e.dtype = v["dtype"].get<std::string>();
        const DtypeInfo* info = find_dtype(e.dtype);
        DISTILL_CHECK(info, "'", path, "': tensor '", name, "' has unsupported dtype ", e.dtype);
        uint64_t numel = 1;
        for (const auto& d : v["shape"]) {
            DISTILL_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0),
                          "'", path, "': tensor '", name, "' has a negative or non-integer dim");
            uint64_t dim = d.get<uint64_t>();
            DISTILL_CHECK(dim == 0 || numel <= (uint64_t{1} << 62) / dim, "'", path,
                          "': tensor '", name, "' shape overflows");
            numel *= dim;
            e.shape.push_back(static_cast<int64_t>(dim));
        }
        const auto& off = v["data_offsets"];
        DISTILL_CHECK(off[0].is_number_unsigned() && off[1].is_number_unsigned(), "'", path,
                      "': tensor '", name, "' has invalid data_offsets");
        e.begin = off[0].get<uint64_t>();
        e.end = off[1].get<uint64_t>();
        DISTILL_CHECK(e.begin <= e.end && e.end <= data_size, "'", path, "': tensor '", name,
                      "' data [", e.begin, ", ", e.end, ") lies outside the ", data_size,
                      "-byte data section (truncated file?)");
        DISTILL_CHECK(numel <= (uint64_t{1} << 60) / info->size &&
                          e.end - e.begin == numel * info->size,
                      "'", path, "': tensor '", name, "' has ", e.end - e.begin,
                      " bytes but its shape and dtype need ", numel * info->size);
        entries_[name] = std::move(e);
    }
}

torch::Tensor SafetensorsFile::get(const std::string& name, torch::Dtype dtype) const {
    auto it = entries_.find(name);
    DISTILL_CHECK(it != entries_.end(), "'", path(), "' has no tensor '", name, "'");
    const SafetensorsEntry& e = it->second;
    const DtypeInfo* info = find_dtype(e.dtype);
    DISTILL_ASSERT(info, "dtype checked at load");
    const uint8_t* p = file_.data() + data_offset_ + e.begin;
    // from_blob over unaligned mapped bytes is not safe for every op: copy into a fresh tensor.
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(info->dtype));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), p, e.end - e.begin);
    return t.scalar_type() == dtype ? t : t.to(dtype);
}

void save_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
    nlohmann::json header = nlohmann::json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::vector<torch::Tensor> blobs;
    size_t offset = 0;
    for (const auto& [name, t0] : tensors) {
        torch::Tensor t = t0.detach().to(torch::kCPU).contiguous();
        const DtypeInfo* info = find_dtype(t.scalar_type());
        DISTILL_CHECK(info, "cannot save tensor '", name, "' of dtype ", t.scalar_type());
        size_t nbytes = static_cast<size_t>(t.numel()) * info->size;
        header[name] = {{"dtype", info->name},
                        {"shape", t.sizes().vec()},
                        {"data_offsets", {offset, offset + nbytes}}};
        offset += nbytes;
        blobs.push_back(t);
    }
    std::string h = header.dump();
    while ((8 + h.size()) % 8 != 0) h.push_back(' ');  // align the data section
    // Streamed, so that saving a big model does not need a second copy of it in memory.
    AtomicFileWriter out(path);
    const uint64_t hlen = h.size();
    out.append(&hlen, 8);
    out.append(h);
    for (const auto& t : blobs) out.append(t.data_ptr(), t.numel() * t.element_size());
    out.commit();
}

}  // namespace distill
