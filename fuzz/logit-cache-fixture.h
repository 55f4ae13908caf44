// The fixed logit cache the logit-cache fuzzer and its seed maker share: a header.json written by
// LogitCacheWriter, whose data.bin then holds the fuzzed chunks.
#pragma once

#include <cstdlib>
#include <string>

#include "io/logit-cache.h"

namespace fuzz {

inline distill::LogitCacheInfo logit_cache_info() {
    distill::LogitCacheInfo info;
    info.top_k = 4;
    info.vocab_size = 3000;  // 12-bit ids: one full byte plane and one packed 4-bit plane
    info.window = 8;
    info.num_windows = 6;
    info.teacher_fingerprint = info.tokenizer_fingerprint = info.data_fingerprint = "fuzz";
    return info;
}

// A fresh directory in memory where there is /dev/shm.
inline std::string temp_dir(const char* name) {
    std::string t = std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/dev/shm") +
                    "/" + name + "-XXXXXX";
    if (!::mkdtemp(t.data())) {
        t = std::string("/tmp/") + name + "-XXXXXX";
        if (!::mkdtemp(t.data())) std::abort();
    }
    return t;
}

}  // namespace fuzz
