// distill — the teacher logit cache: per position, the teacher's top-K token ids and their
// log-probabilities at temperature 1 (the leftover mass 1 - sum p is kept too), stored compactly.
//
// A cache is a directory with two files (layout byte by byte in docs/logit-cache.md):
//   header.json  what was captured and from what (top_k, vocab, window, fingerprints); written
//   once. data.bin     a 32-byte file header, then append-only chunks of whole windows, each with
//   its own
//                xxh3 checksum; the payload is quantised log-probs + bit-planed ids,
//                zstd-compressed.
// A killed writer loses at most the chunk it was writing: reopening the writer drops a torn tail
// and windows_done() says where to continue. Plain arrays only (no libtorch) so it compiles fast.
#pragma once

#include <array>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace distill {

constexpr int kLogitCacheFormatVersion = 1;
constexpr int kLogitCacheMaxVocab = 1 << 20;

// What a cache holds and where it came from. All fields are fingerprinted: a writer resuming a
// cache with any field different throws Error.
struct LogitCacheInfo {
    int top_k = 0;            // K: entries per position
    int vocab_size = 0;       // V: ids are in [0, V); V <= 2^20
    int window = 0;           // T: positions per window
    int64_t num_windows = 0;  // windows planned (the capture is complete when all are stored)
    std::string teacher_fingerprint;
    std::string tokenizer_fingerprint;
    std::string data_fingerprint;
};

struct LogitCacheOptions {
    int windows_per_chunk = 0;  // 0: about 2048 positions a chunk (at least one window)
    int zstd_level = 9;         // 1..19; 9 measured ~2% larger than 19, several times faster
};

// The quantiser, exposed for tests and docs: codes 0..254 are points x on a grid of -log p
// (step 1/32 for p > e^-1.5, 1/16 to e^-3, 1/8 to e^-24, 1 to e^-38; beyond, clamped);
// code 255 is p = 0.
int logit_cache_quantize(double neg_logp);
double logit_cache_dequantize(int code);  // -log p of a code (+inf for 255)

class LogitCacheWriter {
  public:
    // Creates the cache directory `dir`, or resumes it: checks header.json against `info`
    // (Error naming the differing field), verifies every chunk and truncates a torn tail.
    LogitCacheWriter(const std::string& dir, const LogitCacheInfo& info,
                     const LogitCacheOptions& options = {});
    ~LogitCacheWriter();  // flushes buffered windows (errors are swallowed: call finish())
    LogitCacheWriter(const LogitCacheWriter&) = delete;
    LogitCacheWriter& operator=(const LogitCacheWriter&) = delete;

    // Windows handed over so far: committed + buffered. Right after opening it is the number of
    // committed windows, i.e. the window to continue a capture from.
    int64_t windows_done() const { return committed_windows_ + buffered_windows_; }
    int64_t windows_committed() const { return committed_windows_; }
    // Bytes of a torn or garbage tail that opening dropped (0 for a clean file).
    uint64_t dropped_bytes() const { return dropped_bytes_; }
    const LogitCacheInfo& info() const { return info_; }

    // One window: ids (T,K) in [0,V), distinct within a position; logprobs (T,K) log p at
    // temperature 1, any order (stored sorted by descending log p), sum of p <= 1.
    void append_window(const int32_t* ids, const float* logprobs);
    // Commits buffered windows as one chunk and fsyncs. Called automatically every
    // windows_per_chunk windows.
    void flush();
    // flush(); further appends are errors.
    void finish();

  private:
    std::string dir_, data_path_;
    LogitCacheInfo info_;
    LogitCacheOptions options_;
    int fd_ = -1;
    uint64_t file_size_ = 0;
    uint64_t dropped_bytes_ = 0;
    int64_t committed_windows_ = 0;
    int64_t buffered_windows_ = 0;
    bool finished_ = false;
    std::vector<int32_t> buf_ids_;    // (n,T,K), each position sorted by descending log p
    std::vector<uint8_t> buf_codes_;  // (n,T,K+1): K quantised codes, then the rest-mass code
};

class LogitCacheReader {
  public:
    // Opens `dir` (or its header.json/data.bin). Validates header, file header and every chunk
    // header (not the checksums: those are verified when a chunk is first decoded, or by verify()).
    // Up to `cache_bytes` of decompressed chunks stay in memory (least recently used out first;
    // the demo's top-32 cache needs about 80 MB in all, 81 bytes a position at a 4096 vocabulary).
    explicit LogitCacheReader(const std::string& dir, uint64_t cache_bytes = uint64_t(256) << 20);
    ~LogitCacheReader();
    LogitCacheReader(const LogitCacheReader&) = delete;
    LogitCacheReader& operator=(const LogitCacheReader&) = delete;

    const LogitCacheInfo& info() const { return info_; }
    int64_t num_windows() const { return num_windows_; }  // stored (complete) windows
    bool complete() const { return num_windows_ == info_.num_windows; }

    // Window w: ids (T,K) exact; logprobs (T,K) the dequantised log p, renormalised together with
    // the stored rest mass so that sum exp <= 1. Each position is sorted by descending log p (the
    // order given to the writer when that was already sorted). Thread-safe.
    void read_window(int64_t w, int32_t* ids, float* logprobs) const;
    // Decodes every chunk and checks its checksum; throws Error at the first bad one.
    void verify() const;

    double bytes_per_position() const;  // data.bin size / stored positions
    uint64_t data_bytes() const { return data_bytes_; }
    int64_t num_chunks() const { return static_cast<int64_t>(chunks_.size()); }

  private:
    struct Chunk {
        int64_t first_window, num_windows;
        uint64_t offset, payload_bytes;
    };
    struct Streams {  // a chunk's payload decompressed: id planes, code deltas, rest codes
        int64_t chunk = -1;
        std::array<std::vector<uint8_t>, 5> raw;
        uint64_t bytes = 0;
    };
    std::shared_ptr<const Streams> chunk_streams(int64_t c) const;
    // the window starting at position t0 of a chunk -> ids and log-probs (T,K)
    void decode_window(const Streams& s, int64_t t0, int32_t* ids, float* logprobs) const;
    std::string chunk_where(int64_t c) const;  // names the chunk in errors

    std::string dir_, data_path_;
    LogitCacheInfo info_;
    int fd_ = -1;
    uint64_t data_bytes_ = 0;
    int64_t num_windows_ = 0;
    std::vector<Chunk> chunks_;
    uint64_t cache_bytes_;
    mutable std::mutex mu_;
    mutable std::list<std::shared_ptr<const Streams>> lru_;  // most recent first
    mutable std::unordered_map<int64_t, std::list<std::shared_ptr<const Streams>>::iterator> lru_index_;
    mutable uint64_t lru_bytes_ = 0;
};

}  // namespace distill
