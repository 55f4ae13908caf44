#include "io/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include "util/error.h"

namespace distill {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian u32
constexpr uint64_t kMaxAlignment = 1u << 20;

size_t scalar_size(GgufType t) {
    switch (t) {
        case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
        case GgufType::U16: case GgufType::I16: return 2;
        case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
        case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
        default: return 0;  // STRING, ARRAY: variable
    }
}

bool is_float(GgufType t) { return t == GgufType::F32 || t == GgufType::F64; }

// A bounds-checked cursor over the mapped bytes; every read names what it was reading.
class Cursor {
public:
    Cursor(const uint8_t* p, size_t n, const std::string& path) : p_(p), n_(n), path_(path) {}
    size_t pos() const { return pos_; }
    size_t remaining() const { return n_ - pos_; }

    [[noreturn]] void fail(const std::string& what) const {
        throw Error(str_cat("'", path_, "' is not a valid GGUF file: ", what));
    }
    void need(size_t k, const std::string& what) const {
        if (k > remaining())
            fail(str_cat(what, " needs ", k, " bytes at offset ", pos_, " but the file has only ",
                         remaining(), " left (truncated?)"));
    }
    template <typename T>
    T read(const std::string& what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, p_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    std::string string(const std::string& what) {
        const uint64_t len = read<uint64_t>(what + " (length)");
        if (len > remaining())
            fail(str_cat(what, ": string length ", len, " exceeds the ", remaining(),
                         " bytes left in the file"));
        std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(len));
        pos_ += size_t(len);
        return s;
    }
    // A count of items that each take at least `min_bytes`: bounded by what is left.
    uint64_t count(uint64_t n, size_t min_bytes, const std::string& what) const {
        if (n > remaining() / min_bytes)
            fail(str_cat(what, " is ", n, " but only ", remaining(), " bytes are left (at least ",
                         min_bytes, " per item)"));
        return n;
    }

private:
    const uint8_t* p_;
    size_t n_;
    size_t pos_ = 0;
    const std::string& path_;
};

GgufType read_type(Cursor& c, const std::string& what) {
    const uint32_t t = c.read<uint32_t>(what);
    if (t > uint32_t(GgufType::F64)) c.fail(str_cat(what, ": unknown value type ", t));
    return GgufType(t);
}

void read_scalar(Cursor& c, GgufType t, GgufValue& v, const std::string& what) {
    switch (t) {
        case GgufType::U8: v.i = c.read<uint8_t>(what); break;
        case GgufType::I8: v.i = c.read<int8_t>(what); break;
        case GgufType::U16: v.i = c.read<uint16_t>(what); break;
        case GgufType::I16: v.i = c.read<int16_t>(what); break;
        case GgufType::U32: v.i = c.read<uint32_t>(what); break;
        case GgufType::I32: v.i = c.read<int32_t>(what); break;
        case GgufType::I64: v.i = c.read<int64_t>(what); break;
        case GgufType::U64:
            v.u = c.read<uint64_t>(what);
            v.i = v.u > uint64_t(std::numeric_limits<int64_t>::max())
                      ? std::numeric_limits<int64_t>::max()
                      : int64_t(v.u);
            break;
        case GgufType::F32: v.f = c.read<float>(what); break;
        case GgufType::F64: v.f = c.read<double>(what); break;
        case GgufType::BOOL: {
            const uint8_t b = c.read<uint8_t>(what);
            if (b > 1) c.fail(str_cat(what, ": a bool must be 0 or 1, not ", int(b)));
            v.i = b;
            break;
        }
        case GgufType::STRING: v.s = c.string(what); break;
        case GgufType::ARRAY: c.fail(str_cat(what, ": nested arrays are not supported"));
    }
}

GgufValue read_value(Cursor& c, GgufType t, const std::string& what) {
    GgufValue v;
    v.type = t;
    if (t != GgufType::ARRAY) {
        read_scalar(c, t, v, what);
        return v;
    }
    v.elem = read_type(c, what + " (array element type)");
    if (v.elem == GgufType::ARRAY) c.fail(what + ": nested arrays are not supported");
    const size_t min_bytes = v.elem == GgufType::STRING ? 8 : scalar_size(v.elem);
    const uint64_t n = c.count(c.read<uint64_t>(what + " (array length)"), min_bytes,
                               what + ": array length");
    GgufValue e;
    if (v.elem == GgufType::STRING) {
        v.strs.reserve(size_t(n));
        for (uint64_t k = 0; k < n; ++k) v.strs.push_back(c.string(str_cat(what, "[", k, "]")));
    } else if (is_float(v.elem)) {
        v.floats.reserve(size_t(n));
        for (uint64_t k = 0; k < n; ++k) {
            read_scalar(c, v.elem, e, what);
            v.floats.push_back(e.f);
        }
    } else {
        v.ints.reserve(size_t(n));
        for (uint64_t k = 0; k < n; ++k) {
            read_scalar(c, v.elem, e, what);
            v.ints.push_back(e.i);
        }
    }
    return v;
}

uint64_t pad_to(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

const char* gguf_type_name(GgufType t) {
    static const char* names[] = {"u8",  "i8",   "u16",    "i16",   "u32", "i32", "f32",
                                  "bool", "string", "array", "u64", "i64", "f64"};
    return uint32_t(t) <= uint32_t(GgufType::F64) ? names[uint32_t(t)] : "unknown";
}

GgufValue GgufValue::u32(uint32_t v) {
    GgufValue x;
    x.type = GgufType::U32;
    x.i = v;
    return x;
}
GgufValue GgufValue::i32(int32_t v) {
    GgufValue x;
    x.type = GgufType::I32;
    x.i = v;
    return x;
}
GgufValue GgufValue::f32(float v) {
    GgufValue x;
    x.type = GgufType::F32;
    x.f = v;
    return x;
}
GgufValue GgufValue::boolean(bool v) {
    GgufValue x;
    x.type = GgufType::BOOL;
    x.i = v;
    return x;
}
GgufValue GgufValue::str(std::string v) {
    GgufValue x;
    x.type = GgufType::STRING;
    x.s = std::move(v);
    return x;
}
GgufValue GgufValue::str_array(std::vector<std::string> v) {
    GgufValue x;
    x.type = GgufType::ARRAY;
    x.elem = GgufType::STRING;
    x.strs = std::move(v);
    return x;
}
GgufValue GgufValue::i32_array(std::vector<int64_t> v) {
    GgufValue x;
    x.type = GgufType::ARRAY;
    x.elem = GgufType::I32;
    x.ints = std::move(v);
    return x;
}

int64_t GgufTensorInfo::numel() const {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
}

GgufFile::GgufFile(const std::string& path) : file_(path), name_(path) {
    parse(file_.data(), file_.size());
}

GgufFile::GgufFile(const uint8_t* data, size_t size, const std::string& name) : name_(name) {
    parse(data, size);
}

void GgufFile::parse(const uint8_t* data, size_t size) {
    data_ = data;
    Cursor c(data, size, name_);
    const uint32_t magic = c.read<uint32_t>("the magic number");
    if (magic != kMagic) c.fail("it does not start with \"GGUF\" (a model is a directory or a .gguf file)");
    version_ = c.read<uint32_t>("the version");
    if (version_ != 2 && version_ != 3)
        c.fail(str_cat("version ", version_, " is not supported (supported: 2, 3)"));
    const uint64_t n_tensors_raw = c.read<uint64_t>("the tensor count");
    const uint64_t n_kv_raw = c.read<uint64_t>("the metadata count");
    // smallest metadata entry: empty key (8) + type (4) + one byte; smallest tensor info:
    // empty name (8) + n_dims (4) + one dim (8) + type (4) + offset (8)
    const uint64_t n_kv = c.count(n_kv_raw, 13, "the metadata count");
    for (uint64_t k = 0; k < n_kv; ++k) {
        const std::string key = c.string(str_cat("metadata key #", k));
        const std::string what = "metadata '" + key + "'";
        if (kv_.count(key)) c.fail(what + " appears twice");
        const GgufType t = read_type(c, what + " (type)");
        kv_.emplace(key, read_value(c, t, what));
    }
    if (auto it = kv_.find("general.alignment"); it != kv_.end()) {
        if (it->second.type != GgufType::U32)
            c.fail(str_cat("general.alignment must be a u32, not ", gguf_type_name(it->second.type)));
        const uint64_t a = uint64_t(it->second.i);
        if (a == 0 || (a & (a - 1)) != 0 || a > kMaxAlignment)
            c.fail(str_cat("general.alignment ", a, " is not a power of two up to ", kMaxAlignment));
        alignment_ = a;
    }
    const uint64_t n_tensors = c.count(n_tensors_raw, 32, "the tensor count");
    tensors_.reserve(size_t(n_tensors));
    for (uint64_t k = 0; k < n_tensors; ++k) {
        GgufTensorInfo t;
        t.name = c.string(str_cat("tensor #", k, " name"));
        const std::string what = "tensor '" + t.name + "'";
        if (by_name_.count(t.name)) c.fail(what + " appears twice");
        const uint32_t n_dims = c.read<uint32_t>(what + " n_dims");
        if (n_dims < 1 || n_dims > 4) c.fail(str_cat(what, " has ", n_dims, " dims (1 to 4 allowed)"));
        uint64_t numel = 1;
        for (uint32_t d = 0; d < n_dims; ++d) {
            const int64_t dim = c.read<int64_t>(what + " dims");
            if (dim <= 0) c.fail(str_cat(what, " has dim ", dim, " (must be positive)"));
            if (uint64_t(dim) > (uint64_t{1} << 59) / numel)
                c.fail(str_cat(what, " has dims whose product overflows"));
            numel *= uint64_t(dim);
            t.dims.push_back(dim);
        }
        const uint32_t type = c.read<uint32_t>(what + " type");
        const GgmlTypeInfo* info = ggml_type_info(type);
        if (!info) c.fail(str_cat(what, " has unknown ggml type ", type));
        t.type = info->type;
        if (t.dims[0] % info->block != 0)
            c.fail(str_cat(what, " row length ", t.dims[0], " is not a multiple of the ", info->name,
                           " block size ", info->block));
        t.nbytes = numel / uint64_t(info->block) * uint64_t(info->bytes);
        t.offset = c.read<uint64_t>(what + " offset");
        if (t.offset % alignment_ != 0)
            c.fail(str_cat(what, " offset ", t.offset, " is not a multiple of the alignment ", alignment_));
        by_name_[t.name] = tensors_.size();
        tensors_.push_back(std::move(t));
    }
    data_offset_ = pad_to(c.pos(), alignment_);
    if (!tensors_.empty() && data_offset_ > size)
        c.fail(str_cat("the data section would start at ", data_offset_, ", past the end of the ",
                       size, "-byte file (truncated?)"));
    const uint64_t data_size = tensors_.empty() ? 0 : size - data_offset_;
    std::vector<const GgufTensorInfo*> order;
    for (const auto& t : tensors_) {
        if (t.offset > data_size || t.nbytes > data_size - t.offset)
            c.fail(str_cat("tensor '", t.name, "' data [", t.offset, ", +", t.nbytes,
                           ") lies outside the ", data_size, "-byte data section (truncated?)"));
        order.push_back(&t);
    }
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    for (size_t k = 1; k < order.size(); ++k)
        if (order[k - 1]->offset + order[k - 1]->nbytes > order[k]->offset)
            c.fail(str_cat("tensors '", order[k - 1]->name, "' and '", order[k]->name,
                           "' overlap in the data section"));
}

const GgufValue& GgufFile::get(const std::string& key) const {
    auto it = kv_.find(key);
    DISTILL_CHECK(it != kv_.end(), "'", path(), "': missing metadata '", key, "'");
    return it->second;
}

namespace {
[[noreturn]] void wrong_type(const std::string& path, const std::string& key, const GgufValue& v,
                             const char* want) {
    throw Error(str_cat("'", path, "': metadata '", key, "' is ", gguf_type_name(v.type),
                        v.type == GgufType::ARRAY ? str_cat(" of ", gguf_type_name(v.elem)) : "",
                        ", expected ", want));
}
bool is_int(GgufType t) {
    return t != GgufType::F32 && t != GgufType::F64 && t != GgufType::BOOL &&
           t != GgufType::STRING && t != GgufType::ARRAY;
}
}  // namespace

std::string GgufFile::get_string(const std::string& key) const {
    const GgufValue& v = get(key);
    if (v.type != GgufType::STRING) wrong_type(path(), key, v, "a string");
    return v.s;
}

int64_t GgufFile::get_int(const std::string& key) const {
    const GgufValue& v = get(key);
    if (!is_int(v.type)) wrong_type(path(), key, v, "an integer");
    return v.i;
}

double GgufFile::get_float(const std::string& key) const {
    const GgufValue& v = get(key);
    if (is_float(v.type)) return v.f;
    if (is_int(v.type)) return double(v.i);
    wrong_type(path(), key, v, "a number");
}

bool GgufFile::get_bool(const std::string& key) const {
    const GgufValue& v = get(key);
    if (v.type != GgufType::BOOL) wrong_type(path(), key, v, "a bool");
    return v.i != 0;
}

const std::vector<std::string>& GgufFile::get_string_array(const std::string& key) const {
    const GgufValue& v = get(key);
    if (v.type != GgufType::ARRAY || v.elem != GgufType::STRING)
        wrong_type(path(), key, v, "an array of strings");
    return v.strs;
}

const std::vector<int64_t>& GgufFile::get_int_array(const std::string& key) const {
    const GgufValue& v = get(key);
    if (v.type != GgufType::ARRAY || !is_int(v.elem)) wrong_type(path(), key, v, "an array of integers");
    return v.ints;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::vector<float> GgufFile::tensor_f32(const GgufTensorInfo& t) const {
    std::vector<float> out(size_t(t.numel()));
    try {
        dequantize_row(t.type, tensor_data(t), out.data(), t.numel());
    } catch (const Error& e) {
        throw Error(str_cat("'", path(), "': tensor '", t.name, "': ", e.what()));
    }
    file_.drop(data_offset_ + t.offset, t.nbytes);  // the float copy is what is kept
    return out;
}

// ---- writing --------------------------------------------------------------------------------

namespace {

template <typename T>
void put(std::string& o, T v) {
    o.append(reinterpret_cast<const char*>(&v), sizeof(T));
}
void put_string(std::string& o, const std::string& s) {
    put<uint64_t>(o, s.size());
    o += s;
}

void put_scalar(std::string& o, GgufType t, int64_t i, uint64_t u, double f, const std::string& s) {
    switch (t) {
        case GgufType::U8: put<uint8_t>(o, uint8_t(i)); break;
        case GgufType::I8: put<int8_t>(o, int8_t(i)); break;
        case GgufType::U16: put<uint16_t>(o, uint16_t(i)); break;
        case GgufType::I16: put<int16_t>(o, int16_t(i)); break;
        case GgufType::U32: put<uint32_t>(o, uint32_t(i)); break;
        case GgufType::I32: put<int32_t>(o, int32_t(i)); break;
        case GgufType::U64: put<uint64_t>(o, u ? u : uint64_t(i)); break;
        case GgufType::I64: put<int64_t>(o, i); break;
        case GgufType::F32: put<float>(o, float(f)); break;
        case GgufType::F64: put<double>(o, f); break;
        case GgufType::BOOL: put<uint8_t>(o, i ? 1 : 0); break;
        case GgufType::STRING: put_string(o, s); break;
        case GgufType::ARRAY: DISTILL_ASSERT(false, "nested array");
    }
}

void put_value(std::string& o, const GgufValue& v) {
    put<uint32_t>(o, uint32_t(v.type));
    if (v.type != GgufType::ARRAY) {
        put_scalar(o, v.type, v.i, v.u, v.f, v.s);
        return;
    }
    DISTILL_ASSERT(v.elem != GgufType::ARRAY, "nested array");
    put<uint32_t>(o, uint32_t(v.elem));
    if (v.elem == GgufType::STRING) {
        put<uint64_t>(o, v.strs.size());
        for (const auto& s : v.strs) put_string(o, s);
    } else if (is_float(v.elem)) {
        put<uint64_t>(o, v.floats.size());
        for (double f : v.floats) put_scalar(o, v.elem, 0, 0, f, "");
    } else {
        put<uint64_t>(o, v.ints.size());
        for (int64_t i : v.ints) put_scalar(o, v.elem, i, 0, 0, "");
    }
}

}  // namespace

void write_gguf(const std::string& path, const std::vector<std::pair<std::string, GgufValue>>& kv,
                const std::vector<GgufTensorOut>& tensors, uint32_t alignment) {
    DISTILL_CHECK(alignment > 0 && (alignment & (alignment - 1)) == 0, "GGUF alignment ", alignment,
                  " is not a power of two");
    std::vector<std::pair<std::string, GgufValue>> all = kv;
    if (alignment != 32) all.emplace_back("general.alignment", GgufValue::u32(alignment));
    std::set<std::string> keys, names;
    std::string o;
    put<uint32_t>(o, kMagic);
    put<uint32_t>(o, 3);
    put<uint64_t>(o, tensors.size());
    put<uint64_t>(o, all.size());
    for (const auto& [key, v] : all) {
        DISTILL_CHECK(keys.insert(key).second, "GGUF metadata key '", key, "' given twice");
        put_string(o, key);
        put_value(o, v);
    }
    uint64_t offset = 0;
    for (const auto& t : tensors) {
        DISTILL_CHECK(names.insert(t.name).second, "GGUF tensor '", t.name, "' given twice");
        DISTILL_CHECK(!t.dims.empty() && t.dims.size() <= 4, "GGUF tensor '", t.name, "' has ",
                      t.dims.size(), " dims (1 to 4 allowed)");
        int64_t numel = 1;
        for (int64_t d : t.dims) numel *= d;
        DISTILL_CHECK(int64_t(t.data.size()) == row_bytes(t.type, numel), "GGUF tensor '", t.name,
                      "' has ", t.data.size(), " bytes, its shape and type need ",
                      row_bytes(t.type, numel));
        put_string(o, t.name);
        put<uint32_t>(o, uint32_t(t.dims.size()));
        for (int64_t d : t.dims) put<int64_t>(o, d);
        put<uint32_t>(o, uint32_t(t.type));
        put<uint64_t>(o, offset);
        offset = pad_to(offset + t.data.size(), alignment);
    }
    o.resize(pad_to(o.size(), alignment), '\0');
    // The tensors are streamed after the header rather than copied into it.
    AtomicFileWriter w(path);
    w.append(o);
    const std::string zeros(alignment, '\0');
    for (const auto& t : tensors) {
        w.append(t.data);
        w.append(zeros.data(), pad_to(w.size(), alignment) - w.size());
    }
    w.commit();
}

}  // namespace distill
