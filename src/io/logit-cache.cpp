#include "io/logit-cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>

#include "util/error.h"
#include "util/file.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "logit-cache.cpp assumes a little-endian host (the on-disk format is little-endian)"
#endif

namespace distill {

namespace {

constexpr char kFileMagic[8] = {'D', 'S', 'T', 'L', 'O', 'G', 'I', 'T'};
constexpr char kChunkMagic[4] = {'L', 'C', 'C', 'K'};
constexpr uint64_t kFileHeaderBytes = 32;
constexpr uint64_t kChunkHeaderBytes = 32;
constexpr int kNumStreams = 5;                        // id planes 0..2, code deltas, rest codes
constexpr int64_t kMaxChunkItems = int64_t(1) << 26;  // positions*K in one chunk
constexpr int kZeroCode = 255;                        // p == 0
constexpr int kNumCodes = 255;                        // codes 0..254 are grid points
const char* const kHeaderName = "header.json";
const char* const kDataName = "data.bin";

// The quantisation grid of x = -log p: (start, step) regions. Dyadic values, so the table below is
// bit-identical on every machine. Finer where p is large: a bucket's KL contribution is about
// p * step^2 / 24, so the step can double each time p falls by 4.
constexpr std::array<std::array<double, 2>, 4> kGrid = {
    {{0.0, 1.0 / 32}, {1.5, 1.0 / 16}, {3.0, 1.0 / 8}, {24.0, 1.0}}};

struct GridTables {
    double x[kNumCodes];  // -log p of each code
    double p[256];        // p of each code (p[255] = 0)
    GridTables() {
        double v = 0;
        for (int c = 0; c < kNumCodes; ++c) {
            x[c] = v;
            p[c] = std::exp(-v);
            double step = kGrid[0][1];
            for (const auto& r : kGrid)
                if (v >= r[0]) step = r[1];
            v += step;
        }
        p[kZeroCode] = 0.0;
    }
};

const GridTables& grid() {
    static const GridTables g;
    return g;
}

nlohmann::json grid_json() {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : kGrid) j.push_back({r[0], r[1]});
    return j;
}

void put_u32(uint8_t* p, uint32_t v) {
    std::memcpy(p, &v, 4);
}
void put_u64(uint8_t* p, uint64_t v) {
    std::memcpy(p, &v, 8);
}
uint32_t get_u32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}
uint64_t get_u64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

int id_bits(int vocab) {
    int b = 1;
    while ((int64_t(1) << b) < vocab) ++b;
    return b;
}
int num_planes(int vocab) {
    return (id_bits(vocab) + 7) / 8;
}
int plane_bits(int vocab, int j) {
    return std::min(8, id_bits(vocab) - 8 * j);
}
bool plane_packed(int vocab, int j) {
    return plane_bits(vocab, j) <= 4;
}

// Raw (decompressed) size of each stream for n positions.
std::array<uint64_t, kNumStreams> stream_sizes(const LogitCacheInfo& info, int64_t npos) {
    std::array<uint64_t, kNumStreams> s{};
    const uint64_t items = uint64_t(npos) * uint64_t(info.top_k);
    for (int j = 0; j < num_planes(info.vocab_size); ++j)
        s[j] = plane_packed(info.vocab_size, j) ? (items + 1) / 2 : items;
    s[3] = items;
    s[4] = uint64_t(npos);
    return s;
}

uint64_t max_payload_bytes(const LogitCacheInfo& info, int64_t npos) {
    uint64_t total = 4 * kNumStreams;
    for (uint64_t s : stream_sizes(info, npos)) total += ZSTD_compressBound(s);
    return total;
}

void validate_info(const LogitCacheInfo& info, const std::string& where) {
    DISTILL_CHECK(info.vocab_size >= 1 && info.vocab_size <= kLogitCacheMaxVocab, where,
                  ": vocab_size ", info.vocab_size, " is out of range [1, ", kLogitCacheMaxVocab,
                  "]");
    DISTILL_CHECK(info.top_k >= 1 && info.top_k <= info.vocab_size, where, ": top_k ", info.top_k,
                  " must be in [1, vocab_size=", info.vocab_size, "]");
    DISTILL_CHECK(info.window >= 1, where, ": window ", info.window, " must be >= 1");
    DISTILL_CHECK(int64_t(info.window) * info.top_k <= kMaxChunkItems, where,
                  ": window*top_k = ", int64_t(info.window) * info.top_k, " exceeds the limit ",
                  kMaxChunkItems);
    DISTILL_CHECK(info.num_windows >= 1, where, ": num_windows ", info.num_windows,
                  " must be >= 1");
}

nlohmann::json info_to_json(const LogitCacheInfo& info) {
    return {{"format", "distill-logit-cache"},
            {"format_version", kLogitCacheFormatVersion},
            {"top_k", info.top_k},
            {"vocab_size", info.vocab_size},
            {"window", info.window},
            {"num_windows", info.num_windows},
            {"teacher_fingerprint", info.teacher_fingerprint},
            {"tokenizer_fingerprint", info.tokenizer_fingerprint},
            {"data_fingerprint", info.data_fingerprint},
            {"temperature", 1.0},
            {"quant_grid", grid_json()}};
}

// Binds data.bin to its header: a data file copied next to another header is rejected.
uint64_t info_hash(const LogitCacheInfo& info) {
    const std::string s = info_to_json(info).dump();
    return hash64(s.data(), s.size());
}

LogitCacheInfo info_from_json_file(const std::string& path) {
    const std::string what = "delete the cache directory and run capture again";
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(read_file(path));
    } catch (const nlohmann::json::exception& e) {
        throw Error(
            str_cat("logit cache header '", path, "' is not valid JSON (", e.what(), "): ", what));
    }
    DISTILL_CHECK(j.is_object() && j.contains("format") && j["format"] == "distill-logit-cache",
                  "'", path,
                  "' is not a distill logit cache header (no \"format\": "
                  "\"distill-logit-cache\"): ",
                  what);
    LogitCacheInfo info;
    try {
        // Integers only, range-checked before narrowing (a float or a 2^32+4 is not a 4).
        auto get_int = [&](const char* key, int64_t hi) {
            const auto& v = j.at(key);
            DISTILL_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 &&
                              !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(hi)) &&
                              v.get<int64_t>() <= hi,
                          "logit cache header '", path, "': \"", key,
                          "\" has a wrong type or value (", v.dump(), "): expected an integer in [0, ",
                          hi, "]: ", what);
            return v.get<int64_t>();
        };
        const int64_t kIntMax = std::numeric_limits<int>::max();
        int version = int(get_int("format_version", kIntMax));
        DISTILL_CHECK(version == kLogitCacheFormatVersion, "logit cache '", path,
                      "' has format_version ", version, " but this build reads version ",
                      kLogitCacheFormatVersion, ": use a matching distill build or ", what);
        info.top_k = int(get_int("top_k", kIntMax));
        info.vocab_size = int(get_int("vocab_size", kIntMax));
        info.window = int(get_int("window", kIntMax));
        info.num_windows = get_int("num_windows", std::numeric_limits<int64_t>::max());
        info.teacher_fingerprint = j.at("teacher_fingerprint").get<std::string>();
        info.tokenizer_fingerprint = j.at("tokenizer_fingerprint").get<std::string>();
        info.data_fingerprint = j.at("data_fingerprint").get<std::string>();
        DISTILL_CHECK(j.at("quant_grid") == grid_json(), "logit cache '", path,
                      "' uses a quantisation grid this build does not know: ", what);
    } catch (const nlohmann::json::exception& e) {
        throw Error(str_cat("logit cache header '", path,
                            "' is missing a field or has a wrong "
                            "type (",
                            e.what(), "): ", what));
    }
    validate_info(info, str_cat("logit cache header '", path, "'"));
    return info;
}

std::string errno_str() {
    return std::strerror(errno);
}

void pread_all(int fd, void* buf, size_t n, uint64_t off, const std::string& path) {
    auto* p = static_cast<uint8_t*>(buf);
    while (n > 0) {
        ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
        if (r < 0 && errno == EINTR) continue;
        DISTILL_CHECK(r > 0, "cannot read ", n, " bytes at offset ", off, " of '", path,
                      "': ", r == 0 ? "unexpected end of file (was it truncated?)" : errno_str());
        p += r;
        n -= size_t(r);
        off += uint64_t(r);
    }
}

void pwrite_all(int fd, const void* buf, size_t n, uint64_t off, const std::string& path) {
    auto* p = static_cast<const uint8_t*>(buf);
    while (n > 0) {
        ssize_t r = ::pwrite(fd, p, n, static_cast<off_t>(off));
        if (r < 0 && errno == EINTR) continue;
        DISTILL_CHECK(r > 0, "cannot write '", path, "': ", errno_str(), " (is the disk full?)");
        p += r;
        n -= size_t(r);
        off += uint64_t(r);
    }
}

void fsync_or_throw(int fd, const std::string& path) {
    DISTILL_CHECK(::fsync(fd) == 0, "cannot fsync '", path, "': ", errno_str());
}

uint64_t file_size_of(int fd, const std::string& path) {
    struct stat st;
    DISTILL_CHECK(::fstat(fd, &st) == 0, "cannot stat '", path, "': ", errno_str());
    DISTILL_CHECK(S_ISREG(st.st_mode), "'", path, "' is not a regular file");
    return uint64_t(st.st_size);
}

std::array<uint8_t, kFileHeaderBytes> make_file_header(const LogitCacheInfo& info) {
    std::array<uint8_t, kFileHeaderBytes> h{};
    std::memcpy(h.data(), kFileMagic, 8);
    put_u32(h.data() + 8, kLogitCacheFormatVersion);
    put_u32(h.data() + 12, uint32_t(kFileHeaderBytes));
    put_u64(h.data() + 16, info_hash(info));
    put_u64(h.data() + 24, hash64(h.data(), 24));
    return h;
}

void check_file_header(int fd, const std::string& path, const LogitCacheInfo& info) {
    const std::string what = "delete the cache directory and run capture again";
    uint8_t h[kFileHeaderBytes];
    pread_all(fd, h, kFileHeaderBytes, 0, path);
    DISTILL_CHECK(std::memcmp(h, kFileMagic, 8) == 0, "'", path,
                  "' is not a distill logit cache data file (bad magic): ", what);
    DISTILL_CHECK(get_u64(h + 24) == hash64(h, 24), "'", path,
                  "': the file header checksum does not match (corrupt file): ", what);
    DISTILL_CHECK(get_u32(h + 8) == uint32_t(kLogitCacheFormatVersion), "'", path,
                  "' has format version ", get_u32(h + 8), ", this build reads ",
                  kLogitCacheFormatVersion, ": ", what);
    DISTILL_CHECK(
        get_u64(h + 16) == info_hash(info), "'", path,
        "' does not belong to the header.json beside it (fingerprint hash differs): ", what);
}

struct ChunkHeader {
    int64_t num_windows = 0, first_window = 0;
    uint64_t payload_bytes = 0, checksum = 0;
};

void encode_chunk_header(const ChunkHeader& c, uint8_t* h, const uint8_t* payload) {
    std::memcpy(h, kChunkMagic, 4);
    put_u32(h + 4, uint32_t(c.num_windows));
    put_u64(h + 8, uint64_t(c.first_window));
    put_u64(h + 16, c.payload_bytes);
    put_u64(h + 24, hash64(payload, c.payload_bytes, hash64(h, 24)));
}

// Parses a chunk header and checks it against what may come next: empty when sane, else what
// is wrong. Every size is bounded before anything is allocated from it.
std::string parse_chunk_header(const uint8_t* h, const LogitCacheInfo& info, int64_t expect_first,
                               ChunkHeader* c) {
    if (std::memcmp(h, kChunkMagic, 4) != 0) return "bad chunk magic";
    c->num_windows = get_u32(h + 4);
    c->first_window = int64_t(get_u64(h + 8));
    c->payload_bytes = get_u64(h + 16);
    c->checksum = get_u64(h + 24);
    if (c->first_window != expect_first)
        return str_cat("chunk starts at window ", c->first_window, ", expected ", expect_first);
    if (c->num_windows < 1 || c->num_windows > info.num_windows - expect_first)
        return str_cat("chunk holds ", c->num_windows, " windows but only ",
                       info.num_windows - expect_first, " remain to be stored");
    if (c->num_windows * int64_t(info.window) * info.top_k > kMaxChunkItems)
        return str_cat("chunk of ", c->num_windows, " windows exceeds the size limit");
    if (c->payload_bytes < 4 * kNumStreams ||
        c->payload_bytes > max_payload_bytes(info, c->num_windows * info.window))
        return str_cat("chunk payload size ", c->payload_bytes, " is impossible");
    return "";
}

uint64_t chunk_checksum(const uint8_t* h, const std::vector<uint8_t>& payload) {
    return hash64(payload.data(), payload.size(), hash64(h, 24));
}

// Sorted-by-descending-log-p ids and codes of npos positions -> payload.
std::vector<uint8_t> encode_payload(const LogitCacheInfo& info, int64_t npos, const int32_t* ids,
                                    const uint8_t* codes, int level) {
    const int K = info.top_k;
    const uint64_t items = uint64_t(npos) * K;
    const auto sizes = stream_sizes(info, npos);
    std::array<std::vector<uint8_t>, kNumStreams> raw;
    for (int s = 0; s < kNumStreams; ++s) raw[s].assign(sizes[s], 0);
    for (int j = 0; j < num_planes(info.vocab_size); ++j) {
        const bool packed = plane_packed(info.vocab_size, j);
        for (uint64_t i = 0; i < items; ++i) {
            uint8_t b = uint8_t(uint32_t(ids[i]) >> (8 * j));
            if (packed)
                raw[j][i / 2] |= uint8_t((b & 0xF) << (4 * (i & 1)));
            else
                raw[j][i] = b;
        }
    }
    for (int64_t t = 0; t < npos; ++t) {
        const uint8_t* c = codes + t * (K + 1);
        uint8_t* d = raw[3].data() + t * K;
        d[0] = c[0];
        for (int k = 1; k < K; ++k) d[k] = uint8_t(c[k] - c[k - 1]);  // codes are non-decreasing
        raw[4][t] = c[K];
    }
    std::vector<uint8_t> out(4 * kNumStreams);
    for (int s = 0; s < kNumStreams; ++s) {
        uint32_t n = 0;
        if (!raw[s].empty()) {
            size_t off = out.size();
            out.resize(off + ZSTD_compressBound(raw[s].size()));
            size_t r = ZSTD_compress(out.data() + off, out.size() - off, raw[s].data(),
                                     raw[s].size(), level);
            DISTILL_ASSERT(!ZSTD_isError(r), ZSTD_getErrorName(r));
            out.resize(off + r);
            n = uint32_t(r);
        }
        put_u32(out.data() + 4 * s, n);
    }
    return out;
}

// payload -> its decompressed streams (id planes, code deltas, rest codes), sizes checked.
// `where` names the chunk for errors.
std::array<std::vector<uint8_t>, kNumStreams> decompress_payload(const LogitCacheInfo& info, int64_t npos,
                                                                 const std::vector<uint8_t>& payload,
                                                                 const std::string& where) {
    const std::string what = "; run capture again on this cache to rewrite it, or delete it";
    const auto sizes = stream_sizes(info, npos);
    std::array<std::vector<uint8_t>, kNumStreams> raw;
    uint64_t off = 4 * kNumStreams;
    DISTILL_CHECK(payload.size() >= off, where, ": payload too short", what);
    for (int s = 0; s < kNumStreams; ++s) {
        uint64_t n = get_u32(payload.data() + 4 * s);
        DISTILL_CHECK((n == 0) == (sizes[s] == 0) && n <= payload.size() - off, where, ": stream ",
                      s, " has an impossible size ", n, what);
        if (n == 0) continue;
        unsigned long long content = ZSTD_getFrameContentSize(payload.data() + off, n);
        DISTILL_CHECK(content == sizes[s], where, ": stream ", s, " decompresses to ",
                      content == ZSTD_CONTENTSIZE_UNKNOWN || content == ZSTD_CONTENTSIZE_ERROR
                          ? std::string("an unknown size")
                          : std::to_string(content),
                      " bytes, expected ", sizes[s], what);
        raw[s].resize(sizes[s]);
        size_t r = ZSTD_decompress(raw[s].data(), raw[s].size(), payload.data() + off, n);
        DISTILL_CHECK(!ZSTD_isError(r) && r == sizes[s], where, ": stream ", s,
                      " does not decompress (",
                      ZSTD_isError(r) ? ZSTD_getErrorName(r) : "wrong size", ")", what);
        off += n;
    }
    DISTILL_CHECK(off == payload.size(), where, ": ", payload.size() - off,
                  " unexpected bytes after the streams", what);
    return raw;
}

// Positions [t0, t1) of decompressed streams -> ids (t1-t0, K) and codes (t1-t0, K+1), each
// checked: an id below vocab_size, a running code within the grid.
void decode_positions(const LogitCacheInfo& info, const std::array<std::vector<uint8_t>, kNumStreams>& raw,
                      int64_t t0, int64_t t1, const std::string& where, int32_t* ids, uint8_t* codes) {
    const std::string what = "; run capture again on this cache to rewrite it, or delete it";
    const int K = info.top_k;
    const uint64_t i0 = uint64_t(t0) * K, items = uint64_t(t1 - t0) * K;
    std::fill(ids, ids + items, 0);
    for (int j = 0; j < num_planes(info.vocab_size); ++j) {
        const uint8_t* plane = raw[j].data();
        if (plane_packed(info.vocab_size, j)) {
            for (uint64_t i = 0; i < items; ++i)
                ids[i] |= int32_t(((plane[(i0 + i) / 2] >> (4 * ((i0 + i) & 1))) & 0xF) << (8 * j));
        } else {
            for (uint64_t i = 0; i < items; ++i) ids[i] |= int32_t(uint32_t(plane[i0 + i]) << (8 * j));
        }
    }
    for (uint64_t i = 0; i < items; ++i)
        DISTILL_CHECK(ids[i] < info.vocab_size, where, ": token id ", ids[i], " >= vocab_size ",
                      info.vocab_size, what);
    for (int64_t t = t0; t < t1; ++t) {
        const uint8_t* d = raw[3].data() + t * K;
        uint8_t* c = codes + (t - t0) * (K + 1);
        int acc = 0;
        for (int k = 0; k < K; ++k) {
            acc += d[k];
            DISTILL_CHECK(acc <= 255, where, ": log-prob code out of range", what);
            c[k] = uint8_t(acc);
        }
        c[K] = raw[4][t];
    }
}

// Codes of one position (K + rest) -> renormalised log-probs with sum exp <= 1.
void dequantize_position(const uint8_t* codes, int K, float* out, const std::string& where) {
    const GridTables& g = grid();
    double z = 0;
    for (int k = 0; k <= K; ++k) z += g.p[codes[k]];
    DISTILL_CHECK(z > 0, where, ": a position has no probability mass (corrupt data)");
    const double log_z = std::log(z);
    double s = 0;
    for (int k = 0; k < K; ++k) {
        out[k] = codes[k] == kZeroCode ? -INFINITY : float(-g.x[codes[k]] - log_z);
        s += std::exp(double(out[k]));
    }
    // float rounding can push the sum a hair over 1 when the rest mass is 0: nudge down.
    for (int it = 0; s > 1.0 && it < 4; ++it) {
        s = 0;
        for (int k = 0; k < K; ++k) {
            out[k] = std::nextafter(out[k], -INFINITY);
            s += std::exp(double(out[k]));
        }
    }
}

}  // namespace

int logit_cache_quantize(double x) {
    if (std::isnan(x) || x == INFINITY) return kZeroCode;
    if (x <= 0) return 0;
    // Within a region the grid is uniform and ends exactly on the next region's start, so the
    // nearest point is a rounding away.
    int code = 0;
    for (size_t r = 0; r < kGrid.size(); ++r) {
        const double start = kGrid[r][0], step = kGrid[r][1];
        const double end = r + 1 < kGrid.size() ? kGrid[r + 1][0] : INFINITY;
        if (x < end) {
            const double i = std::floor((x - start) / step + 0.5);
            return int(std::min<double>(code + i, kNumCodes - 1));
        }
        code += int((end - start) / step);
    }
    return kNumCodes - 1;
}

double logit_cache_dequantize(int code) {
    DISTILL_ASSERT(code >= 0 && code <= 255, code);
    return code == kZeroCode ? INFINITY : grid().x[code];
}

// ---------------------------------------------------------------------------------------------
// Writer

LogitCacheWriter::LogitCacheWriter(const std::string& dir, const LogitCacheInfo& info,
                                   const LogitCacheOptions& options)
    : dir_(dir), data_path_(path_join(dir, kDataName)), info_(info), options_(options) {
    validate_info(info_, str_cat("logit cache '", dir, "'"));
    DISTILL_CHECK(options_.zstd_level >= 1 && options_.zstd_level <= 19, "logit cache zstd_level ",
                  options_.zstd_level, " must be in [1, 19]");
    const int64_t max_wpc = kMaxChunkItems / (int64_t(info_.window) * info_.top_k);
    if (options_.windows_per_chunk <= 0)
        // 2048 positions: a random window read that must decompress its chunk (a cache larger
        // than the reader's memory) decompresses 16 windows at T = 128, not 64; on the demo's cache
        // that made such a read 5x cheaper for 1 % more bytes (49.70 -> 50.21 a position)
        options_.windows_per_chunk = int(std::max<int64_t>(1, 2048 / info_.window));
    options_.windows_per_chunk = int(std::min<int64_t>(options_.windows_per_chunk, max_wpc));

    make_dirs(dir_);
    const std::string header_path = path_join(dir_, kHeaderName);
    if (file_exists(header_path)) {
        LogitCacheInfo old = info_from_json_file(header_path);
        auto differ = [&](const char* field, const std::string& was, const std::string& now) {
            DISTILL_CHECK(was == now, "logit cache '", dir_, "' was captured with ", field, " = ",
                          was, " but this run has ", field, " = ", now,
                          ": the cached logits do not match this run. Delete '", dir_,
                          "' to capture again, or pass another cache path");
        };
        differ("top_k", std::to_string(old.top_k), std::to_string(info_.top_k));
        differ("vocab_size", std::to_string(old.vocab_size), std::to_string(info_.vocab_size));
        differ("window", std::to_string(old.window), std::to_string(info_.window));
        differ("num_windows", std::to_string(old.num_windows), std::to_string(info_.num_windows));
        differ("teacher_fingerprint", old.teacher_fingerprint, info_.teacher_fingerprint);
        differ("tokenizer_fingerprint", old.tokenizer_fingerprint, info_.tokenizer_fingerprint);
        differ("data_fingerprint", old.data_fingerprint, info_.data_fingerprint);
    } else {
        struct stat st;
        DISTILL_CHECK(::stat(data_path_.c_str(), &st) != 0 || st.st_size == 0, "logit cache '",
                      dir_, "' has ", kDataName, " but no ", kHeaderName,
                      ": it cannot be trusted. Delete '", dir_, "' and run capture again");
        write_file_atomic(header_path, info_to_json(info_).dump(2) + "\n");
    }

    fd_ = ::open(data_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    DISTILL_CHECK(fd_ >= 0, "cannot open '", data_path_, "': ", errno_str());
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
        ::close(fd_);
        fd_ = -1;
        throw Error(str_cat("logit cache '", dir_,
                            "' is being written by another process; wait "
                            "for it or use another cache path"));
    }
    try {
        uint64_t size = file_size_of(fd_, data_path_);
        if (size < kFileHeaderBytes) {
            // New, or killed while creating it: nothing committed yet.
            auto h = make_file_header(info_);
            DISTILL_CHECK(::ftruncate(fd_, 0) == 0, "cannot truncate '", data_path_,
                          "': ", errno_str());
            pwrite_all(fd_, h.data(), h.size(), 0, data_path_);
            fsync_or_throw(fd_, data_path_);
            fsync_dir(dir_);
            dropped_bytes_ = size;
            file_size_ = kFileHeaderBytes;
            return;
        }
        check_file_header(fd_, data_path_, info_);
        // Walk the chunks, verifying each checksum. The writer fsyncs every chunk before starting
        // the next, so only the last one can be torn; a bad chunk followed by a good one is
        // corruption of committed data and is reported rather than truncated.
        uint64_t off = kFileHeaderBytes;
        std::vector<uint8_t> payload;
        while (off < size) {
            std::string bad;
            ChunkHeader c;
            uint8_t h[kChunkHeaderBytes];
            uint64_t end = 0;
            if (size - off < kChunkHeaderBytes) {
                bad = "incomplete chunk header";
            } else {
                pread_all(fd_, h, kChunkHeaderBytes, off, data_path_);
                bad = parse_chunk_header(h, info_, committed_windows_, &c);
                if (bad.empty()) {
                    end = off + kChunkHeaderBytes + c.payload_bytes;
                    if (end > size) {
                        bad = "incomplete chunk payload";
                    } else {
                        payload.resize(c.payload_bytes);
                        pread_all(fd_, payload.data(), payload.size(), off + kChunkHeaderBytes,
                                  data_path_);
                        if (chunk_checksum(h, payload) != c.checksum) bad = "checksum mismatch";
                    }
                }
            }
            if (!bad.empty()) {
                if (end != 0 && end + kChunkHeaderBytes <= size) {
                    uint8_t next[kChunkHeaderBytes];
                    ChunkHeader nc;
                    pread_all(fd_, next, kChunkHeaderBytes, end, data_path_);
                    DISTILL_CHECK(
                        !parse_chunk_header(next, info_, c.first_window + c.num_windows, &nc)
                             .empty(),
                        "logit cache '", data_path_, "': the chunk at offset ", off, " (windows ",
                        c.first_window, "..", c.first_window + c.num_windows - 1, ") is corrupt (",
                        bad,
                        ") but later chunks are intact, so this is damage to committed "
                        "data, not an interrupted write. Delete '",
                        dir_, "' and run capture again");
                }
                DISTILL_CHECK(::ftruncate(fd_, off_t(off)) == 0, "cannot truncate '", data_path_,
                              "': ", errno_str());
                fsync_or_throw(fd_, data_path_);
                dropped_bytes_ = size - off;
                size = off;
                break;
            }
            committed_windows_ += c.num_windows;
            off = end;
        }
        file_size_ = size;
    } catch (...) {
        ::close(fd_);
        fd_ = -1;
        throw;
    }
}

LogitCacheWriter::~LogitCacheWriter() {
    if (fd_ < 0) return;
    if (!finished_ && buffered_windows_ > 0) {
        try {
            flush();
        } catch (...) {
        }
    }
    ::close(fd_);
}

void LogitCacheWriter::append_window(const int32_t* ids, const float* logprobs) {
    DISTILL_CHECK(!finished_, "logit cache '", dir_, "': append_window after finish()");
    DISTILL_CHECK(windows_done() < info_.num_windows, "logit cache '", dir_, "': all ",
                  info_.num_windows, " planned windows are already stored");
    const int T = info_.window, K = info_.top_k;
    std::vector<int32_t> order(K), sorted_ids(K);
    for (int t = 0; t < T; ++t) {
        const int32_t* id = ids + int64_t(t) * K;
        const float* lp = logprobs + int64_t(t) * K;
        double sum_p = 0;
        for (int k = 0; k < K; ++k) {
            DISTILL_CHECK(id[k] >= 0 && id[k] < info_.vocab_size, "logit cache: window ",
                          windows_done(), " position ", t, ": token id ", id[k], " is outside [0, ",
                          info_.vocab_size, ")");
            DISTILL_CHECK(!std::isnan(lp[k]) && lp[k] <= 1e-3f, "logit cache: window ",
                          windows_done(), " position ", t, ": log-prob ", lp[k],
                          " is not a log-probability (pass log_softmax at temperature 1)");
            sum_p += std::exp(std::min(0.0, double(lp[k])));
            sorted_ids[k] = id[k];
        }
        DISTILL_CHECK(sum_p <= 1.0 + 1e-3, "logit cache: window ", windows_done(), " position ", t,
                      ": the top-", K, " probabilities sum to ", sum_p,
                      " > 1 (pass log_softmax at temperature 1)");
        std::sort(sorted_ids.begin(), sorted_ids.end());
        DISTILL_CHECK(std::adjacent_find(sorted_ids.begin(), sorted_ids.end()) == sorted_ids.end(),
                      "logit cache: window ", windows_done(), " position ", t,
                      ": a token id appears twice in the top-", K);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return lp[a] > lp[b]; });
        for (int k = 0; k < K; ++k) {
            buf_ids_.push_back(id[order[k]]);
            buf_codes_.push_back(
                uint8_t(logit_cache_quantize(-std::min(0.0, double(lp[order[k]])))));
        }
        const double rest = 1.0 - sum_p;
        buf_codes_.push_back(uint8_t(rest > 0 ? logit_cache_quantize(-std::log(rest)) : kZeroCode));
    }
    ++buffered_windows_;
    if (buffered_windows_ >= options_.windows_per_chunk) flush();
}

void LogitCacheWriter::flush() {
    DISTILL_CHECK(fd_ >= 0, "logit cache '", dir_, "' is closed");
    if (buffered_windows_ == 0) return;
    const int64_t npos = buffered_windows_ * info_.window;
    std::vector<uint8_t> payload =
        encode_payload(info_, npos, buf_ids_.data(), buf_codes_.data(), options_.zstd_level);
    ChunkHeader c;
    c.num_windows = buffered_windows_;
    c.first_window = committed_windows_;
    c.payload_bytes = payload.size();
    std::vector<uint8_t> out(kChunkHeaderBytes + payload.size());
    std::memcpy(out.data() + kChunkHeaderBytes, payload.data(), payload.size());
    encode_chunk_header(c, out.data(), payload.data());
    pwrite_all(fd_, out.data(), out.size(), file_size_, data_path_);
    fsync_or_throw(fd_, data_path_);
    file_size_ += out.size();
    committed_windows_ += buffered_windows_;
    buffered_windows_ = 0;
    buf_ids_.clear();
    buf_codes_.clear();
}

void LogitCacheWriter::finish() {
    flush();
    finished_ = true;
}

// ---------------------------------------------------------------------------------------------
// Reader

LogitCacheReader::LogitCacheReader(const std::string& path, uint64_t cache_bytes) : cache_bytes_(cache_bytes) {
    dir_ = path;
    if (file_exists(path)) {  // header.json or data.bin named directly
        auto slash = path.find_last_of('/');
        dir_ = slash == std::string::npos ? "." : path.substr(0, slash);
    }
    const std::string header_path = path_join(dir_, kHeaderName);
    data_path_ = path_join(dir_, kDataName);
    DISTILL_CHECK(dir_exists(dir_) && file_exists(header_path), "'", path,
                  "' is not a logit cache (no ", kHeaderName, "): run `distill capture` first");
    info_ = info_from_json_file(header_path);
    fd_ = ::open(data_path_.c_str(), O_RDONLY | O_CLOEXEC);
    DISTILL_CHECK(fd_ >= 0, "cannot open '", data_path_, "': ", errno_str(),
                  " (the capture never started: run it again)");
    try {
        const uint64_t size = file_size_of(fd_, data_path_);
        DISTILL_CHECK(size >= kFileHeaderBytes, "'", data_path_, "' is truncated (", size,
                      " bytes): run capture again to rewrite it");
        check_file_header(fd_, data_path_, info_);
        uint64_t off = kFileHeaderBytes;
        while (size - off >= kChunkHeaderBytes) {
            uint8_t h[kChunkHeaderBytes];
            pread_all(fd_, h, kChunkHeaderBytes, off, data_path_);
            ChunkHeader c;
            std::string bad = parse_chunk_header(h, info_, num_windows_, &c);
            DISTILL_CHECK(bad.empty(), "logit cache '", data_path_, "': bad chunk at offset ", off,
                          " (", bad,
                          "). Run capture again on this cache (it drops a torn "
                          "tail) or delete it");
            if (c.payload_bytes > size - off - kChunkHeaderBytes) break;  // still being written
            chunks_.push_back({c.first_window, c.num_windows, off, c.payload_bytes});
            num_windows_ += c.num_windows;
            off += kChunkHeaderBytes + c.payload_bytes;
        }
        data_bytes_ = off;
    } catch (...) {
        ::close(fd_);
        fd_ = -1;
        throw;
    }
}

LogitCacheReader::~LogitCacheReader() {
    if (fd_ >= 0) ::close(fd_);
}

std::string LogitCacheReader::chunk_where(int64_t ci) const {
    const Chunk& c = chunks_[size_t(ci)];
    return str_cat("logit cache '", data_path_, "' chunk ", ci, " (offset ", c.offset, ", windows ", c.first_window,
                   "..", c.first_window + c.num_windows - 1, ")");
}

std::shared_ptr<const LogitCacheReader::Streams> LogitCacheReader::chunk_streams(int64_t ci) const {
    {
        std::lock_guard<std::mutex> lock(mu_);
        const auto at = lru_index_.find(ci);
        if (at != lru_index_.end()) {
            lru_.splice(lru_.begin(), lru_, at->second);  // most recent first
            return *at->second;
        }
    }
    const Chunk& c = chunks_[size_t(ci)];
    uint8_t h[kChunkHeaderBytes];
    pread_all(fd_, h, kChunkHeaderBytes, c.offset, data_path_);
    std::vector<uint8_t> payload(c.payload_bytes);
    pread_all(fd_, payload.data(), payload.size(), c.offset + kChunkHeaderBytes, data_path_);
    DISTILL_CHECK(chunk_checksum(h, payload) == get_u64(h + 24), chunk_where(ci),
                  ": checksum mismatch (the file is corrupt). Delete the cache and run capture "
                  "again");
    auto d = std::make_shared<Streams>();
    d->chunk = ci;
    d->raw = decompress_payload(info_, c.num_windows * info_.window, payload, chunk_where(ci));
    for (const auto& r : d->raw) d->bytes += r.size();
    std::lock_guard<std::mutex> lock(mu_);
    const auto at = lru_index_.find(ci);
    if (at != lru_index_.end()) return *at->second;  // another thread decoded it meanwhile
    lru_.push_front(d);
    lru_index_[ci] = lru_.begin();
    lru_bytes_ += d->bytes;
    while (lru_.size() > 1 && lru_bytes_ > cache_bytes_) {
        lru_bytes_ -= lru_.back()->bytes;
        lru_index_.erase(lru_.back()->chunk);
        lru_.pop_back();
    }
    return d;
}

void LogitCacheReader::decode_window(const Streams& s, int64_t t0, int32_t* ids, float* logprobs) const {
    const int64_t T = info_.window;
    const int K = info_.top_k;
    std::vector<uint8_t> codes(size_t(T) * (K + 1));
    const std::string where = chunk_where(s.chunk);
    decode_positions(info_, s.raw, t0, t0 + T, where, ids, codes.data());
    for (int64_t t = 0; t < T; ++t) dequantize_position(codes.data() + t * (K + 1), K, logprobs + t * K, where);
}

void LogitCacheReader::read_window(int64_t w, int32_t* ids, float* logprobs) const {
    DISTILL_CHECK(w >= 0 && w < num_windows_, "logit cache '", dir_, "': window ", w,
                  " is out of range (", num_windows_, " windows stored of ", info_.num_windows,
                  " planned)");
    auto it = std::upper_bound(chunks_.begin(), chunks_.end(), w,
                               [](int64_t v, const Chunk& c) { return v < c.first_window; });
    const int64_t ci = int64_t(it - chunks_.begin()) - 1;
    // only this window's positions are decoded: a chunk holds about 64 windows, and training
    // reads them in random order
    decode_window(*chunk_streams(ci), (w - chunks_[size_t(ci)].first_window) * info_.window, ids, logprobs);
}

void LogitCacheReader::verify() const {
    const size_t n = size_t(info_.window) * info_.top_k;
    std::vector<int32_t> ids(n);
    std::vector<float> lp(n);
    for (int64_t c = 0; c < num_chunks(); ++c) {
        auto s = chunk_streams(c);
        for (int64_t w = 0; w < chunks_[size_t(c)].num_windows; ++w)
            decode_window(*s, w * info_.window, ids.data(), lp.data());
    }
}

double LogitCacheReader::bytes_per_position() const {
    const int64_t npos = num_windows_ * info_.window;
    return npos == 0 ? 0.0 : double(data_bytes_) / double(npos);
}

}  // namespace distill
