// distill — checked file I/O: whole-file reads, atomic writes, read-only memory maps, hashing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

namespace distill {

// Reads a whole file; throws Error naming the path if it cannot.
std::string read_file(const std::string& path);

// Reads and parses a JSON file; throws Error naming the path if it cannot be read or parsed.
nlohmann::json read_json_file(const std::string& path);

// Writes `data` to `path` atomically: a temporary file beside it, flushed and fsynced, renamed
// over the target, then the directory fsynced. A killed process or a power cut leaves either the
// old file or the new one. Missing parent folders are created.
void write_file_atomic(const std::string& path, std::string_view data);

// The same, written piece by piece (for files too big to build in memory): append(), then
// commit() flushes, fsyncs and renames. Destroyed without commit(), it removes the temporary.
class AtomicFileWriter {
public:
    explicit AtomicFileWriter(const std::string& path);
    ~AtomicFileWriter();
    AtomicFileWriter(const AtomicFileWriter&) = delete;
    AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

    void append(const void* data, size_t n);
    void append(std::string_view s) { append(s.data(), s.size()); }
    uint64_t size() const { return size_; }
    void commit();

private:
    std::string path_, tmp_;
    int fd_ = -1;
    uint64_t size_ = 0;
};

// fsyncs a directory, so that renames and new entries in it survive a power cut.
void fsync_dir(const std::string& dir);

// Replaces `dir` by `tmp` (both directories), keeping `dir.old` until the swap is done.
void replace_dir(const std::string& tmp, const std::string& dir);
// If a previous replace_dir was interrupted, restores `dir` from `dir.old`.
void recover_dir(const std::string& dir);

bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);
void make_dirs(const std::string& path);
std::string path_join(const std::string& a, const std::string& b);

// A read-only memory map of a whole file. Movable, not copyable.
class MappedFile {
public:
    MappedFile() = default;
    explicit MappedFile(const std::string& path);
    ~MappedFile();
    MappedFile(MappedFile&& o) noexcept;
    MappedFile& operator=(MappedFile&& o) noexcept;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }
    // Tells the kernel that bytes [offset, offset + n) are not needed for now: their pages leave
    // this process's resident set (they are read again from the file if touched).
    void drop(size_t offset, size_t n) const;

private:
    void reset();
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
    std::string path_;
};

// 64-bit xxh3 of bytes, as 16 lowercase hex digits: the fingerprints every artifact records.
std::string hash_hex(std::string_view bytes);
std::string hash_file_hex(const std::string& path);
uint64_t hash64(const void* data, size_t n, uint64_t seed = 0);

// hash64 of bytes that arrive in pieces: update(a); update(b) then digest() equals
// hash64(a + b, seed).
class Hash64Stream {
public:
    explicit Hash64Stream(uint64_t seed = 0);
    ~Hash64Stream();
    Hash64Stream(const Hash64Stream&) = delete;
    Hash64Stream& operator=(const Hash64Stream&) = delete;
    void update(const void* data, size_t n);
    uint64_t digest() const;

private:
    void* state_;
};

}  // namespace distill
