#include "util/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <new>
#include <nlohmann/json.hpp>

#include "util/error.h"

namespace distill {

[[noreturn]] void assert_fail(const char* expr, const char* file, int line, const std::string& msg) {
    std::fprintf(stderr, "distill: internal error at %s:%d: %s %s\n", file, line, expr, msg.c_str());
    std::abort();
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    DISTILL_CHECK(in, "cannot open '", path, "': ", std::strerror(errno));
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    DISTILL_CHECK(!in.bad(), "error reading '", path, "'");
    return s;
}

nlohmann::json read_json_file(const std::string& path) {
    const std::string text = read_file(path);
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw Error(str_cat(path, ": not valid JSON: ", e.what()));
    }
}

// The folder that holds `path` ("." for a bare file name).
static std::string parent_dir(const std::string& path) {
    const std::string p = std::filesystem::path(path).parent_path().string();
    return p.empty() ? "." : p;
}

void fsync_dir(const std::string& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DISTILL_CHECK(fd >= 0, "cannot open directory '", dir, "': ", std::strerror(errno));
    const int rc = ::fsync(fd);
    const int e = errno;
    ::close(fd);
    // Some file systems cannot sync a directory (EINVAL); the rename itself has still happened.
    DISTILL_CHECK(rc == 0 || e == EINVAL, "cannot sync directory '", dir, "': ", std::strerror(e));
}

AtomicFileWriter::AtomicFileWriter(const std::string& path)
    : path_(path), tmp_(path + ".tmp." + std::to_string(::getpid())) {
    // Outputs may name folders that do not exist yet (`prepare --out data/train`).
    make_dirs(parent_dir(path));
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    DISTILL_CHECK(fd_ >= 0, "cannot create '", tmp_, "': ", std::strerror(errno));
}

AtomicFileWriter::~AtomicFileWriter() {
    if (fd_ >= 0) {
        ::close(fd_);
        ::unlink(tmp_.c_str());
    }
}

void AtomicFileWriter::append(const void* data, size_t n) {
    DISTILL_CHECK(fd_ >= 0, "'", tmp_, "' is already closed");
    const char* p = static_cast<const char*>(data);
    size_t off = 0;
    while (off < n) {
        ssize_t w = ::write(fd_, p + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        DISTILL_CHECK(w > 0, "cannot write '", tmp_, "': ", std::strerror(errno),
                      " (is the disk full?)");
        off += static_cast<size_t>(w);
    }
    size_ += n;
}

void AtomicFileWriter::commit() {
    DISTILL_CHECK(fd_ >= 0, "'", tmp_, "' is already closed");
    const int fd = fd_;
    fd_ = -1;
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
        const int e = errno;
        ::unlink(tmp_.c_str());
        throw Error(str_cat("cannot flush '", tmp_, "': ", std::strerror(e)));
    }
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
        const int e = errno;
        ::unlink(tmp_.c_str());
        throw Error(str_cat("cannot rename '", tmp_, "' to '", path_, "': ", std::strerror(e)));
    }
    // The rename is durable only once the directory entry is on disk too.
    fsync_dir(parent_dir(path_));
}

void write_file_atomic(const std::string& path, std::string_view data) {
    AtomicFileWriter w(path);
    w.append(data);
    w.commit();
}

bool file_exists(const std::string& path) {
    struct stat st;
    // A pipe counts: `--config <(...)` hands over /dev/fd/N, and read_file reads it like a file
    // (MappedFile opens without blocking and refuses it with an error).
    return ::stat(path.c_str(), &st) == 0 && (S_ISREG(st.st_mode) || S_ISFIFO(st.st_mode));
}

bool dir_exists(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_dirs(const std::string& path) {
    std::error_code ec;
    std::filesystem::create_directories(path, ec);
    DISTILL_CHECK(!ec, "cannot create directory '", path, "': ", ec.message());
}

std::string path_join(const std::string& a, const std::string& b) {
    if (a.empty()) return b;
    return (std::filesystem::path(a) / b).string();
}

void recover_dir(const std::string& dir) {
    const std::string old = dir + ".old";
    if (!dir_exists(dir) && dir_exists(old)) {
        std::error_code ec;
        std::filesystem::rename(old, dir, ec);
        DISTILL_CHECK(!ec, "cannot restore '", dir, "' from '", old, "': ", ec.message());
    }
}

void replace_dir(const std::string& tmp, const std::string& dir) {
    const std::string old = dir + ".old";
    std::error_code ec;
    std::filesystem::remove_all(old, ec);
    if (dir_exists(dir)) {
        std::filesystem::rename(dir, old, ec);
        DISTILL_CHECK(!ec, "cannot move '", dir, "' aside: ", ec.message());
    }
    std::filesystem::rename(tmp, dir, ec);
    DISTILL_CHECK(!ec, "cannot rename '", tmp, "' to '", dir, "': ", ec.message());
    fsync_dir(parent_dir(dir));  // the swap is on disk before the old copy goes
    std::filesystem::remove_all(old, ec);
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    DISTILL_CHECK(fd >= 0, "cannot open '", path, "': ", std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw Error(str_cat("'", path, "' is not a regular file"));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
        void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            ::close(fd);
            throw Error(str_cat("cannot map '", path, "': ", std::strerror(e)));
        }
        data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
}

MappedFile::~MappedFile() { reset(); }

MappedFile::MappedFile(MappedFile&& o) noexcept
    : data_(o.data_), size_(o.size_), path_(std::move(o.path_)) {
    o.data_ = nullptr;
    o.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
    if (this != &o) {
        reset();
        data_ = o.data_;
        size_ = o.size_;
        path_ = std::move(o.path_);
        o.data_ = nullptr;
        o.size_ = 0;
    }
    return *this;
}

void MappedFile::reset() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
}

uint64_t hash64(const void* data, size_t n, uint64_t seed) { return XXH3_64bits_withSeed(data, n, seed); }

Hash64Stream::Hash64Stream(uint64_t seed) : state_(XXH3_createState()) {
    if (!state_) throw std::bad_alloc();
    XXH3_64bits_reset_withSeed(static_cast<XXH3_state_t*>(state_), seed);
}
Hash64Stream::~Hash64Stream() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void Hash64Stream::update(const void* data, size_t n) {
    XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), data, n);
}
uint64_t Hash64Stream::digest() const { return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_)); }

static std::string hex64(uint64_t h) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
}

void MappedFile::drop(size_t offset, size_t n) const {
    if (!data_ || offset >= size_) return;
    n = std::min(n, size_ - offset);
    const size_t page = size_t(::sysconf(_SC_PAGESIZE));
    // Only whole pages inside the range: a neighbour's bytes may still be wanted.
    const size_t begin = (offset + page - 1) / page * page, end = (offset + n) / page * page;
    if (end > begin)
        ::madvise(const_cast<uint8_t*>(data_) + begin, end - begin, MADV_DONTNEED);
}

std::string hash_hex(std::string_view bytes) { return hex64(hash64(bytes.data(), bytes.size())); }

std::string hash_file_hex(const std::string& path) {
    MappedFile f(path);
    return hex64(hash64(f.data(), f.size()));
}

}  // namespace distill
