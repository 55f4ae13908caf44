#include "io/safetensors.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "util/error.h"

namespace distill {

namespace {

struct DtypeInfo {
    const char* name;
    torch::Dtype dtype;
};

const DtypeInfo kDtypes[] = {
    {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
    {"F64", torch::kFloat64}, {"I64", torch::kInt64},   {"I32", torch::kInt32},
    {"I16", torch::kInt16},   {"I8", torch::kInt8},     {"U8", torch::kUInt8},
    {"BOOL", torch::kBool},
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

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path)
    : file_(path), header_(parse_safetensors_header(file_.data(), file_.size(), path)) {}

torch::Tensor SafetensorsFile::get(const std::string& name, torch::Dtype dtype) const {
    auto it = header_.entries.find(name);
    DISTILL_CHECK(it != header_.entries.end(), "'", path(), "' has no tensor '", name, "'");
    const SafetensorsEntry& e = it->second;
    const DtypeInfo* info = find_dtype(e.dtype);
    DISTILL_ASSERT(info, "dtype checked at load");
    const uint8_t* p = file_.data() + header_.data_offset + e.begin;
    // from_blob over unaligned mapped bytes is not safe for every op: copy into a fresh tensor.
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(info->dtype));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), p, e.end - e.begin);
    // The copy is what is kept: the mapped pages need not stay resident (a big model would
    // otherwise be held twice while it loads).
    file_.drop(header_.data_offset + e.begin, e.end - e.begin);
    return t.scalar_type() == dtype ? t : t.to(dtype);
}

const uint8_t* SafetensorsFile::raw(const std::string& name) const {
    auto it = header_.entries.find(name);
    DISTILL_CHECK(it != header_.entries.end(), "'", path(), "' has no tensor '", name, "'");
    return file_.data() + header_.data_offset + it->second.begin;
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
        size_t nbytes = static_cast<size_t>(t.numel()) * safetensors_dtype_size(info->name);
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
