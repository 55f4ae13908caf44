// The teacher logit cache: round trip, quantisation error and size on Zipf-like teacher
// distributions, resume after kill -9 / torn tails / garbage, fingerprints, hostile files.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <thread>

#include "io/logit-cache.h"
#include "util/error.h"
#include "util/file.h"
#include "test-util.h"

using namespace distill;
namespace fs = std::filesystem;

namespace {

std::string fresh_dir(const std::string& name) {
    // a path inside a directory of this test's own; the cache itself is created by the writer
    return distill::testing_util::temp_dir("logit-cache-" + name) + "/cache";
}

// A synthetic teacher: logits = (Zipf unigram prior over a random permutation of the vocab +
// sigma * noise) / tau, tau log-uniform in [0.3, 3] (entropy from ~0 to ~7 nats), and on one
// position in five a strongly predicted token. Top-K of the exact softmax, sorted descending.
struct Teacher {
    int V, K;
    std::vector<double> prior;
    explicit Teacher(int vocab, int k, uint64_t seed = 1) : V(vocab), K(k), prior(vocab) {
        std::mt19937_64 rng(seed);
        std::vector<int> perm(V);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng);
        for (int r = 0; r < V; ++r) prior[perm[r]] = -1.1 * std::log(r + 1.0);
    }
    // One window of T positions, deterministic in (seed): ids, logprobs (T,K); rest (T).
    void window(uint64_t seed, int T, int32_t* ids, float* lps, double* entropy = nullptr) const {
        std::mt19937_64 rng(seed * 7919 + 17);
        std::normal_distribution<double> nd;
        std::uniform_real_distribution<double> ud;
        std::vector<double> z(V);
        std::vector<int> o(V);
        for (int t = 0; t < T; ++t) {
            double tau = std::exp(std::log(0.3) + ud(rng) * std::log(10.0));
            double sig = 1.0 + 2.0 * ud(rng);
            for (int v = 0; v < V; ++v) z[v] = (prior[v] + sig * nd(rng)) / tau;
            if (ud(rng) < 0.2) z[rng() % V] += 8 + 8 * ud(rng);
            double m = *std::max_element(z.begin(), z.end()), s = 0;
            for (double v : z) s += std::exp(v - m);
            double lz = m + std::log(s);
            if (entropy) {
                double h = 0;
                for (double v : z) h -= std::exp(v - lz) * (v - lz);
                entropy[t] = h;
            }
            std::iota(o.begin(), o.end(), 0);
            std::partial_sort(o.begin(), o.begin() + K, o.end(),
                              [&](int a, int b) { return z[a] > z[b]; });
            for (int k = 0; k < K; ++k) {
                ids[t * K + k] = o[k];
                lps[t * K + k] = float(z[o[k]] - lz);
            }
        }
    }
};

LogitCacheInfo make_info(int V, int K, int T, int64_t n) {
    LogitCacheInfo info;
    info.vocab_size = V;
    info.top_k = K;
    info.window = T;
    info.num_windows = n;
    info.teacher_fingerprint = "teacher-0123456789abcdef";
    info.tokenizer_fingerprint = "tok-fedcba9876543210";
    info.data_fingerprint = "data-00000000deadbeef";
    return info;
}

void write_windows(LogitCacheWriter& w, const Teacher& teacher, int64_t upto) {
    const auto& info = w.info();
    std::vector<int32_t> ids(size_t(info.window) * info.top_k);
    std::vector<float> lps(ids.size());
    for (int64_t i = w.windows_done(); i < upto; ++i) {
        teacher.window(uint64_t(i), info.window, ids.data(), lps.data());
        w.append_window(ids.data(), lps.data());
    }
}

// All windows of a cache, decoded.
struct Contents {
    std::vector<int32_t> ids;
    std::vector<float> lps;
};
Contents read_all(const std::string& dir) {
    LogitCacheReader r(dir);
    const size_t n = size_t(r.info().window) * r.info().top_k;
    Contents c;
    c.ids.resize(n * size_t(r.num_windows()));
    c.lps.resize(c.ids.size());
    for (int64_t w = 0; w < r.num_windows(); ++w)
        r.read_window(w, c.ids.data() + w * n, c.lps.data() + w * n);
    return c;
}

void truncate_to(const std::string& p, uint64_t n) {
    fs::resize_file(p, n);
}

std::string slurp(const std::string& p) {
    return read_file(p);
}
void spit(const std::string& p, const std::string& s) {
    std::ofstream(p, std::ios::binary | std::ios::trunc) << s;
}

template <typename F>
void expect_error(F&& f, std::initializer_list<const char*> needles) {
    try {
        f();
        ADD_FAILURE() << "expected distill::Error";
    } catch (const Error& e) {
        for (const char* n : needles)
            EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
                << "'" << n << "' not in: " << e.what();
    }
}

// Offsets of the chunks in a data.bin (format in docs/logit-cache.md).
std::vector<uint64_t> chunk_offsets(const std::string& data) {
    std::vector<uint64_t> offs;
    uint64_t off = 32;
    while (off + 32 <= data.size()) {
        uint64_t payload;
        std::memcpy(&payload, data.data() + off + 16, 8);
        if (off + 32 + payload > data.size()) break;
        offs.push_back(off);
        off += 32 + payload;
    }
    return offs;
}

void rechecksum(std::string& data, uint64_t off) {
    uint64_t payload;
    std::memcpy(&payload, data.data() + off + 16, 8);
    uint64_t h = hash64(data.data() + off + 32, payload, hash64(data.data() + off, 24));
    std::memcpy(&data[off + 24], &h, 8);
}

}  // namespace

TEST(LogitCache, QuantizerGrid) {
    // Monotone, and within half a step of the input everywhere on the grid.
    double prev = -1;
    for (int c = 0; c < 255; ++c) {
        double x = logit_cache_dequantize(c);
        EXPECT_GT(x, prev);
        prev = x;
        EXPECT_EQ(logit_cache_quantize(x), c);
    }
    EXPECT_EQ(logit_cache_dequantize(0), 0.0);
    EXPECT_EQ(logit_cache_dequantize(48), 1.5);
    EXPECT_EQ(logit_cache_dequantize(72), 3.0);
    EXPECT_EQ(logit_cache_dequantize(240), 24.0);
    EXPECT_EQ(logit_cache_dequantize(254), 38.0);
    EXPECT_TRUE(std::isinf(logit_cache_dequantize(255)));
    std::mt19937_64 rng(3);
    std::uniform_real_distribution<double> ud(0, 24);
    for (int i = 0; i < 100000; ++i) {
        double x = ud(rng);
        double step = x < 1.5 ? 1.0 / 32 : x < 3 ? 1.0 / 16 : 1.0 / 8;
        EXPECT_LE(std::fabs(logit_cache_dequantize(logit_cache_quantize(x)) - x), step / 2 + 1e-12)
            << x;
    }
    // Nearest grid point everywhere, against a brute-force search (beyond 38: clamped).
    std::uniform_real_distribution<double> wide(-1, 45);
    for (int i = 0; i < 20000; ++i) {
        double x = wide(rng), best = INFINITY;
        for (int c = 0; c < 255; ++c)
            best = std::min(best, std::fabs(logit_cache_dequantize(c) - x));
        EXPECT_LE(std::fabs(logit_cache_dequantize(logit_cache_quantize(x)) - x), best + 1e-12)
            << x;
    }
    EXPECT_EQ(logit_cache_quantize(INFINITY), 255);
    EXPECT_EQ(logit_cache_quantize(1e9), 254);
    EXPECT_EQ(logit_cache_quantize(-0.5), 0);
}

TEST(LogitCache, RoundTrip) {
    const std::string dir = fresh_dir("rt");
    const int V = 4096, K = 32, T = 16, N = 10;
    Teacher teacher(V, K);
    {
        LogitCacheOptions opt;
        opt.windows_per_chunk = 3;
        LogitCacheWriter w(dir, make_info(V, K, T, N), opt);
        EXPECT_EQ(w.windows_done(), 0);
        write_windows(w, teacher, N);
        w.finish();
        EXPECT_EQ(w.windows_committed(), N);
    }
    LogitCacheReader r(dir);
    EXPECT_EQ(r.num_windows(), N);
    EXPECT_TRUE(r.complete());
    EXPECT_EQ(r.num_chunks(), 4);
    EXPECT_EQ(r.info().teacher_fingerprint, "teacher-0123456789abcdef");
    EXPECT_EQ(r.info().window, T);
    r.verify();
    std::vector<int32_t> ids(T * K), got_ids(T * K);
    std::vector<float> lps(T * K), got(T * K);
    for (int64_t w = N - 1; w >= 0; --w) {  // random access, backwards
        teacher.window(uint64_t(w), T, ids.data(), lps.data());
        r.read_window(w, got_ids.data(), got.data());
        EXPECT_EQ(ids, got_ids) << "window " << w;
        for (int t = 0; t < T; ++t) {
            double sum = 0;
            for (int k = 0; k < K; ++k) {
                const int i = t * K + k;
                if (lps[i] >= -24) {
                    EXPECT_LE(std::fabs(got[i] - lps[i]), 0.125) << w << " " << t << " " << k;
                }
                if (k > 0) {
                    EXPECT_LE(got[i], got[i - 1]);
                }
                sum += std::exp(double(got[i]));
            }
            EXPECT_LE(sum, 1.0);
        }
    }
    expect_error([&] { r.read_window(N, got_ids.data(), got.data()); }, {"out of range"});
    // A finished cache takes no more windows; the reader also accepts the file paths.
    LogitCacheReader r2(dir + "/data.bin");
    EXPECT_EQ(r2.num_windows(), N);
    LogitCacheWriter again(dir, make_info(V, K, T, N));
    EXPECT_EQ(again.windows_done(), N);
    expect_error([&] { again.append_window(ids.data(), lps.data()); }, {"already stored"});
}

TEST(LogitCache, LargeVocabAndEdgeValues) {
    // V = 2^20 (three id planes, the last nibble-packed), K = 1 and K = V, p = 0 entries.
    for (int V : {1 << 20, 3, 257, 65536}) {
        for (int K : {1, 3}) {
            const std::string dir = fresh_dir("edge");
            const int T = 5;
            std::mt19937 rng(V + K);
            std::vector<int32_t> ids(T * K);
            std::vector<float> lps(T * K);
            for (int t = 0; t < T; ++t) {
                std::vector<int32_t> pick;
                while (int(pick.size()) < K) {
                    int32_t id = t == 0 ? V - 1 - int(pick.size()) : int32_t(rng() % V);
                    if (std::find(pick.begin(), pick.end(), id) == pick.end()) pick.push_back(id);
                }
                for (int k = 0; k < K; ++k) {
                    ids[t * K + k] = pick[k];
                    lps[t * K + k] = k == 0 ? (t == 1 ? 0.0f : std::log(0.5f))
                                            : (t == 1 || t == 2 ? -INFINITY : -2.0f - k);
                }
            }
            {
                LogitCacheWriter w(dir, make_info(V, K, T, 1));
                w.append_window(ids.data(), lps.data());
                w.finish();
            }
            LogitCacheReader r(dir);
            std::vector<int32_t> gi(T * K);
            std::vector<float> gl(T * K);
            r.read_window(0, gi.data(), gl.data());
            EXPECT_EQ(gi, ids) << "V=" << V << " K=" << K;
            for (int i = 0; i < T * K; ++i) {
                if (std::isinf(lps[i]))
                    EXPECT_TRUE(std::isinf(gl[i]) && gl[i] < 0);
                else
                    EXPECT_NEAR(gl[i], lps[i], 0.07) << "V=" << V << " K=" << K << " i=" << i;
            }
        }
    }
}

TEST(LogitCache, BadWindowInput) {
    const std::string dir = fresh_dir("badin");
    LogitCacheWriter w(dir, make_info(100, 2, 1, 5));
    int32_t ids[2] = {1, 2};
    float lps[2] = {-1, -2};
    ids[1] = 100;
    expect_error([&] { w.append_window(ids, lps); }, {"token id 100"});
    ids[1] = -1;
    expect_error([&] { w.append_window(ids, lps); }, {"token id -1"});
    ids[1] = 1;
    expect_error([&] { w.append_window(ids, lps); }, {"appears twice"});
    ids[1] = 2;
    lps[0] = NAN;
    expect_error([&] { w.append_window(ids, lps); }, {"log_softmax"});
    lps[0] = -0.1f;
    lps[1] = -0.2f;
    expect_error([&] { w.append_window(ids, lps); }, {"sum to"});
    lps[0] = 2.0f;
    expect_error([&] { w.append_window(ids, lps); }, {"not a log-probability"});
    EXPECT_EQ(w.windows_done(), 0);
    expect_error([&] { LogitCacheWriter(fresh_dir("badinfo"), make_info(100, 200, 1, 5)); },
                 {"top_k"});
    expect_error([&] { LogitCacheWriter(fresh_dir("badinfo"), make_info(1 << 21, 2, 1, 5)); },
                 {"vocab_size"});
}

TEST(LogitCache, SizeAndReconstructionError) {
    // The target: <= 64 bytes/position at K = 32, V = 4096, with no measurable loss.
    struct Case {
        int V, T, N;
        double max_bytes;
    };
    for (Case cs : {Case{4096, 256, 32, 64.0}, Case{65536, 256, 4, 96.0}}) {
        const int K = 32;
        const std::string dir = fresh_dir("size");
        Teacher teacher(cs.V, K, 11);
        const size_t n = size_t(cs.T) * K;
        std::vector<int32_t> all_ids(n * cs.N), gi(n);
        std::vector<float> all_lps(n * cs.N), gl(n);
        std::vector<double> all_ent(size_t(cs.T) * cs.N);
        for (int64_t w = 0; w < cs.N; ++w)
            teacher.window(uint64_t(w), cs.T, all_ids.data() + w * n, all_lps.data() + w * n,
                           all_ent.data() + w * cs.T);
        auto t0 = std::chrono::steady_clock::now();
        {
            LogitCacheWriter w(dir, make_info(cs.V, K, cs.T, cs.N));
            for (int64_t i = 0; i < cs.N; ++i)
                w.append_window(all_ids.data() + i * n, all_lps.data() + i * n);
            w.finish();
        }
        auto t1 = std::chrono::steady_clock::now();
        {
            LogitCacheReader r(dir);
            for (int64_t w = 0; w < cs.N; ++w) r.read_window(w, gi.data(), gl.data());
        }
        auto t2 = std::chrono::steady_clock::now();
        const double write_s = std::chrono::duration<double>(t1 - t0).count();
        const double read_s = std::chrono::duration<double>(t2 - t1).count();
        LogitCacheReader r(dir);
        double kl = 0, kl_max = 0, max_d = 0, h = 0, rest_sum = 0;
        int64_t npos = 0;
        for (int64_t w = 0; w < cs.N; ++w) {
            const int32_t* ids = all_ids.data() + w * n;
            const float* lps = all_lps.data() + w * n;
            const double* ent = all_ent.data() + w * cs.T;
            r.read_window(w, gi.data(), gl.data());
            ASSERT_TRUE(std::equal(gi.begin(), gi.end(), ids));
            for (int t = 0; t < cs.T; ++t) {
                // KL(P || Q) over the K+1 buckets (top-K and the rest).
                double sp = 0, sq = 0, klp = 0;
                for (int k = 0; k < K; ++k) {
                    double lp = lps[t * K + k], lq = gl[t * K + k], p = std::exp(lp);
                    sp += p;
                    sq += std::exp(lq);
                    klp += p * (lp - lq);
                    if (lp >= -24) max_d = std::max(max_d, std::fabs(lp - lq));
                }
                double rp = std::max(0.0, 1 - sp), rq = std::max(0.0, 1 - sq);
                ASSERT_LE(sq, 1.0);
                if (rp > 0) klp += rp * (std::log(rp) - std::log(rq));
                kl += klp;
                kl_max = std::max(kl_max, klp);
                h += ent[t];
                rest_sum += rp;
                ++npos;
            }
        }
        kl /= double(npos);
        const double bpp = r.bytes_per_position();
        std::printf(
            "[logit-cache] V=%d K=%d positions=%lld mean teacher entropy=%.2f nats, mean "
            "rest mass=%.3f: %.2f bytes/position (raw fp32 id+logp: %d), reconstruction "
            "KL mean=%.2e max=%.2e nats, max|dlogp|=%.4f; write %.2f M positions/s (with fsync), "
            "read %.2f M positions/s\n",
            cs.V, K, (long long)npos, h / double(npos), rest_sum / double(npos), bpp, K * 8, kl,
            kl_max, max_d, double(npos) / write_s / 1e6, double(npos) / read_s / 1e6);
        RecordProperty(("bytes_per_position_V" + std::to_string(cs.V)).c_str(),
                       std::to_string(bpp));
        RecordProperty(("kl_mean_V" + std::to_string(cs.V)).c_str(), std::to_string(kl));
        EXPECT_LE(bpp, cs.max_bytes);
        EXPECT_LT(kl, 3e-4);
        EXPECT_LT(kl_max, 3e-3);
        EXPECT_LE(max_d, 0.125);
    }
}

TEST(LogitCache, FingerprintMismatch) {
    const std::string dir = fresh_dir("fp");
    const auto info = make_info(4096, 8, 4, 3);
    Teacher teacher(4096, 8);
    {
        LogitCacheWriter w(dir, info);
        write_windows(w, teacher, 2);
    }
    auto other = info;
    other.teacher_fingerprint = "teacher-ffff";
    expect_error([&] { LogitCacheWriter w(dir, other); },
                 {"teacher_fingerprint", "teacher-0123456789abcdef", "teacher-ffff", "Delete",
                  "another cache path"});
    other = info;
    other.top_k = 16;
    expect_error([&] { LogitCacheWriter w(dir, other); }, {"top_k = 8", "top_k = 16"});
    other = info;
    other.data_fingerprint = "x";
    expect_error([&] { LogitCacheWriter w(dir, other); }, {"data_fingerprint"});
    other = info;
    other.num_windows = 4;
    expect_error([&] { LogitCacheWriter w(dir, other); }, {"num_windows"});
    // The matching fingerprint resumes.
    LogitCacheWriter w(dir, info);
    EXPECT_EQ(w.windows_done(), 2);
    // A data.bin moved beside a different header is rejected.
    const std::string dir2 = fresh_dir("fp2");
    { LogitCacheWriter w2(dir2, other); }
    fs::copy_file(dir + "/data.bin", dir2 + "/data.bin", fs::copy_options::overwrite_existing);
    expect_error([&] { LogitCacheReader r(dir2); }, {"does not belong"});
}

TEST(LogitCache, ResumeAfterTornTail) {
    const int V = 4096, K = 8, T = 4, N = 10;
    const auto info = make_info(V, K, T, N);
    Teacher teacher(V, K);
    LogitCacheOptions opt;
    opt.windows_per_chunk = 2;
    const std::string ref = fresh_dir("ref");
    {
        LogitCacheWriter w(ref, info, opt);
        write_windows(w, teacher, N);
        w.finish();
    }
    const Contents want = read_all(ref);

    struct Damage {
        const char* name;
        int64_t expect_done;
    };
    for (Damage dmg :
         {Damage{"mid-payload", 4}, Damage{"mid-header", 4}, Damage{"garbage", 5},
          Damage{"bit-flip-last", 4}, Damage{"empty-file", 0}, Damage{"short-file-header", 0}}) {
        SCOPED_TRACE(dmg.name);
        const std::string dir = fresh_dir(std::string("torn-") + dmg.name);
        {
            LogitCacheWriter w(dir, info, opt);
            write_windows(w, teacher, 5);  // chunks [0,1] [2,3]; window 4 buffered
            w.flush();                     // chunk [4]
            w.flush();                     // no-op
        }
        const std::string data_path = dir + "/data.bin";
        std::string data = slurp(data_path);
        auto offs = chunk_offsets(data);
        ASSERT_EQ(offs.size(), 3u);
        const std::string name = dmg.name;
        if (name == "mid-payload") truncate_to(data_path, (offs[2] + data.size()) / 2);
        if (name == "mid-header") truncate_to(data_path, offs[2] + 20);
        if (name == "garbage") {
            std::string junk(1000, '\0');
            for (size_t i = 0; i < junk.size(); ++i) junk[i] = char(i * 131 + 7);
            spit(data_path, data + junk);
        }
        if (name == "bit-flip-last") {
            data[data.size() - 3] ^= 0x10;
            spit(data_path, data);
        }
        if (name == "empty-file") truncate_to(data_path, 0);
        if (name == "short-file-header") truncate_to(data_path, 17);
        if (name != "empty-file" && name != "short-file-header" && name != "garbage") {
            // The reader sees only the complete chunks, or reports the bad one.
            try {
                LogitCacheReader r(dir);
                EXPECT_LE(r.num_windows(), 6);
                if (name == "bit-flip-last") {
                    std::vector<int32_t> i(T * K);
                    std::vector<float> l(T * K);
                    expect_error([&] { r.read_window(4, i.data(), l.data()); }, {"checksum"});
                }
            } catch (const Error&) {
                ADD_FAILURE() << "reader should tolerate a torn tail";
            }
        }
        {
            LogitCacheWriter w(dir, info, opt);
            EXPECT_EQ(w.windows_done(), dmg.expect_done);
            if (name != "empty-file") {
                EXPECT_GT(w.dropped_bytes(), 0u);
            }
            write_windows(w, teacher, N);
            w.finish();
        }
        const Contents got = read_all(dir);
        EXPECT_EQ(got.ids, want.ids);
        EXPECT_EQ(got.lps, want.lps);
        LogitCacheReader(dir).verify();
    }
}

TEST(LogitCache, ResumeAfterKill9) {
    // A child process captures with one fsynced chunk per window and is SIGKILLed at a random
    // moment, again and again; each restart continues where the last commit ended. The final
    // cache must equal an uninterrupted capture, window for window.
    const int V = 4096, K = 16, T = 32, N = 40;
    const auto info = make_info(V, K, T, N);
    Teacher teacher(V, K);
    LogitCacheOptions opt;
    opt.windows_per_chunk = 1;
    const std::string ref = fresh_dir("kill-ref");
    {
        LogitCacheWriter w(ref, info, opt);
        write_windows(w, teacher, N);
        w.finish();
    }
    const std::string dir = fresh_dir("kill");
    std::mt19937 rng(5);
    int kills = 0, exits = 0;
    for (int round = 0; round < 200; ++round) {
        int64_t before;
        {
            LogitCacheWriter probe(dir, info, opt);
            before = probe.windows_done();
        }
        if (before == N) break;
        pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            try {
                LogitCacheWriter w(dir, info, opt);
                write_windows(w, teacher, N);
                w.finish();
            } catch (...) {
                _exit(2);
            }
            _exit(0);
        }
        ::usleep(useconds_t(rng() % 20000));
        ::kill(pid, SIGKILL);  // succeeds on a zombie too, so the wait status tells what happened
        int status = 0;
        ASSERT_EQ(::waitpid(pid, &status, 0), pid);
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
            ++kills;
        } else {
            ASSERT_TRUE(WIFEXITED(status)) << "child ended with wait status " << status;
            ASSERT_EQ(WEXITSTATUS(status), 0);
            ++exits;
        }
        LogitCacheWriter after(dir, info, opt);
        EXPECT_GE(after.windows_done(), before);  // committed data is never lost
    }
    LogitCacheWriter last(dir, info, opt);
    write_windows(last, teacher, N);
    last.finish();
    std::printf("[logit-cache] kill -9 resume: %d children killed, %d finished first\n", kills, exits);
    // Kills that really interrupted a child (not ones sent after it had finished): the test only
    // means something if restarts after a SIGKILL happened several times.
    EXPECT_GE(kills, 3);
    const Contents want = read_all(ref), got = read_all(dir);
    EXPECT_EQ(got.ids, want.ids);
    EXPECT_EQ(got.lps, want.lps);
}

TEST(LogitCache, CorruptionDetected) {
    const int V = 4096, K = 8, T = 4, N = 6;
    const auto info = make_info(V, K, T, N);
    Teacher teacher(V, K);
    LogitCacheOptions opt;
    opt.windows_per_chunk = 2;
    const std::string dir = fresh_dir("corrupt");
    {
        LogitCacheWriter w(dir, info, opt);
        write_windows(w, teacher, N);
        w.finish();
    }
    const std::string data_path = dir + "/data.bin";
    std::string data = slurp(data_path);
    auto offs = chunk_offsets(data);
    ASSERT_EQ(offs.size(), 3u);
    // A flipped bit in the middle chunk: the reader reports it when the chunk is read, the other
    // chunks stay readable, and the writer refuses to truncate committed data after it.
    std::string bad = data;
    bad[offs[1] + 40] ^= 0x01;
    spit(data_path, bad);
    {
        LogitCacheReader r(dir);
        std::vector<int32_t> i(T * K);
        std::vector<float> l(T * K);
        r.read_window(0, i.data(), l.data());
        r.read_window(5, i.data(), l.data());
        expect_error([&] { r.read_window(2, i.data(), l.data()); },
                     {"checksum mismatch", "data.bin", "chunk 1", "Delete"});
        expect_error([&] { r.verify(); }, {"checksum"});
    }
    expect_error([&] { LogitCacheWriter w(dir, info, opt); },
                 {"corrupt", "later chunks are intact", "Delete"});
    // A damaged chunk header in the middle: the reader refuses the file.
    bad = data;
    bad[offs[1] + 1] = 'X';
    spit(data_path, bad);
    expect_error([&] { LogitCacheReader r(dir); }, {"bad chunk magic", "offset"});
    // Damaged file header.
    bad = data;
    bad[3] = '?';
    spit(data_path, bad);
    expect_error([&] { LogitCacheReader r(dir); }, {"not a distill logit cache"});
    expect_error([&] { LogitCacheWriter w(dir, info, opt); }, {"not a distill logit cache"});
    bad = data;
    bad[20] ^= 1;
    spit(data_path, bad);
    expect_error([&] { LogitCacheReader r(dir); }, {"checksum"});
    spit(data_path, data);
}

TEST(LogitCache, HostileFiles) {
    const int V = 300, K = 4, T = 3, N = 8;
    const auto info = make_info(V, K, T, N);
    Teacher teacher(V, K);
    LogitCacheOptions opt;
    opt.windows_per_chunk = 3;
    const std::string dir = fresh_dir("hostile");
    {
        LogitCacheWriter w(dir, info, opt);
        write_windows(w, teacher, N);
        w.finish();
    }
    const std::string header = slurp(dir + "/header.json");
    const std::string data = slurp(dir + "/data.bin");

    expect_error([&] { LogitCacheReader r(fresh_dir("nothing")); }, {"not a logit cache"});
    spit(dir + "/header.json", "{not json");
    expect_error([&] { LogitCacheReader r(dir); }, {"not valid JSON", "header.json"});
    spit(dir + "/header.json", "[1,2]");
    expect_error([&] { LogitCacheReader r(dir); }, {"not a distill logit cache header"});
    auto patched = [&](const std::string& from, const std::string& to) {
        std::string h = header;
        size_t at = h.find(from);
        EXPECT_NE(at, std::string::npos) << from;
        spit(dir + "/header.json", h.replace(at, from.size(), to));
    };
    patched("\"vocab_size\": 300", "\"vocab_size\": 99999999");
    expect_error([&] { LogitCacheReader r(dir); }, {"vocab_size"});
    patched("\"vocab_size\": 300", "\"vocab_size\": \"many\"");
    expect_error([&] { LogitCacheReader r(dir); }, {"wrong type"});
    patched("\"format_version\": 1", "\"format_version\": 7");
    expect_error([&] { LogitCacheReader r(dir); }, {"format_version 7"});
    patched("\"window\": 3", "\"window\": 4");
    expect_error([&] { LogitCacheReader r(dir); }, {"does not belong"});
    spit(dir + "/header.json", header);

    // Data without a header is not trusted by the writer.
    const std::string orphan = fresh_dir("orphan");
    fs::create_directories(orphan);
    spit(orphan + "/data.bin", data);
    expect_error([&] { LogitCacheWriter w(orphan, info); }, {"no header.json"});

    // Absurd sizes in a chunk header never allocate: rejected up front.
    auto offs = chunk_offsets(data);
    ASSERT_EQ(offs.size(), 3u);
    for (int field : {4, 16}) {
        std::string bad = data;
        std::memset(&bad[offs[1] + field], 0x7f, field == 4 ? 4 : 8);
        spit(dir + "/data.bin", bad);
        expect_error([&] { LogitCacheReader r(dir); }, {"bad chunk"});
    }

    // Fuzz: random bytes of a payload changed and the checksum recomputed, so the decoder sees
    // them. Every outcome is either a clean read or an Error; ids always stay < V.
    std::mt19937 rng(9);
    int errors = 0;
    for (int iter = 0; iter < 400; ++iter) {
        std::string bad = data;
        const uint64_t c = offs[rng() % offs.size()];
        uint64_t payload;
        std::memcpy(&payload, bad.data() + c + 16, 8);
        for (int m = 0, n = 1 + int(rng() % 4); m < n; ++m)
            bad[c + 32 + rng() % payload] = char(rng());
        rechecksum(bad, c);
        spit(dir + "/data.bin", bad);
        try {
            LogitCacheReader r(dir);
            std::vector<int32_t> ids(T * K);
            std::vector<float> lps(T * K);
            for (int64_t w = 0; w < r.num_windows(); ++w) {
                r.read_window(w, ids.data(), lps.data());
                for (int i = 0; i < T * K; ++i) ASSERT_TRUE(ids[i] >= 0 && ids[i] < V);
            }
        } catch (const Error&) {
            ++errors;
        }
    }
    EXPECT_GT(errors, 0);
    // Random garbage as the whole data file.
    for (int iter = 0; iter < 50; ++iter) {
        std::string junk(rng() % 300, '\0');
        for (char& ch : junk) ch = char(rng());
        if (iter % 2 == 0 && junk.size() >= 32) std::memcpy(&junk[0], data.data(), 32);
        spit(dir + "/data.bin", junk);
        try {
            LogitCacheReader r(dir);
            r.verify();
        } catch (const Error&) {
        }
    }
}

TEST(LogitCache, ConcurrentRandomReads) {
    // Training reads random windows from several loader threads through one reader.
    const int V = 4096, K = 8, T = 16, N = 40;
    const std::string dir = fresh_dir("threads");
    Teacher teacher(V, K);
    LogitCacheOptions opt;
    opt.windows_per_chunk = 3;
    {
        LogitCacheWriter w(dir, make_info(V, K, T, N), opt);
        write_windows(w, teacher, N);
        w.finish();
    }
    const Contents want = read_all(dir);
    LogitCacheReader r(dir, 2500);  // about two chunks decompressed (1008 bytes each)
    std::vector<int> bad(4, 0);
    std::vector<std::thread> threads;
    for (int th = 0; th < 4; ++th) {
        threads.emplace_back([&, th] {
            std::mt19937 rng(th);
            std::vector<int32_t> ids(T * K);
            std::vector<float> lps(T * K);
            for (int i = 0; i < 300; ++i) {
                const int64_t w = rng() % N;
                r.read_window(w, ids.data(), lps.data());
                if (!std::equal(ids.begin(), ids.end(), want.ids.begin() + w * T * K) ||
                    !std::equal(lps.begin(), lps.end(), want.lps.begin() + w * T * K))
                    ++bad[th];
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(bad, std::vector<int>(4, 0));
}
