// Writes the seed corpus of fuzz-logit-cache into the directory given: real data.bin bodies (the
// 32-byte file header stripped) from LogitCacheWriter, complete, partial and torn, and the header.
#include <cmath>
#include <filesystem>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "logit-cache-fixture.h"
#include "util/error.h"
#include "util/file.h"

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: make-logit-cache-seeds OUT_DIR\n");
        return 2;
    }
    const std::string out = argv[1];
    distill::make_dirs(out);
    const distill::LogitCacheInfo info = fuzz::logit_cache_info();
    std::mt19937 rng(1);
    const int T = info.window, K = info.top_k;
    std::vector<int32_t> ids(size_t(T) * K);
    std::vector<float> lp(ids.size());
    for (int wpc : {1, 2, 6}) {
        const std::string dir = fuzz::temp_dir("distill-seeds");
        distill::LogitCacheOptions opt;
        opt.windows_per_chunk = wpc;
        {
            distill::LogitCacheWriter w(dir, info, opt);
            for (int64_t win = 0; win < info.num_windows; ++win) {
                for (int t = 0; t < T; ++t) {
                    // K distinct ids, spread over both byte planes, and probabilities summing < 1
                    const int base = int(rng() % 2000);
                    for (int k = 0; k < K; ++k) {
                        ids[t * K + k] = base + k * 250;
                        lp[t * K + k] = float(std::log(0.6 / (k + 2)));
                    }
                }
                w.append_window(ids.data(), lp.data());
            }
            w.finish();
        }
        const std::string body = distill::read_file(dir + "/data.bin").substr(32);
        const std::string name = out + "/chunks-of-" + std::to_string(wpc);
        distill::write_file_atomic(name, body);
        distill::write_file_atomic(name + "-torn", body.substr(0, body.size() - 7));
        if (wpc == 1) distill::write_file_atomic(out + "/header.json",
                                                 distill::read_file(dir + "/header.json"));
        std::filesystem::remove_all(dir);
    }
    return 0;
}
