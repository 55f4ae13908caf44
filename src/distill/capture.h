// distill — `distill capture`: run a teacher over a token shard in aligned windows and store its
// top-K per position in a logit cache (src/io/logit-cache.h). Resumable: a killed capture
// re-run with the same inputs continues at the first window not yet committed.
#pragma once

#include <string>

#include "io/shards.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace distill {

class Distributed;

struct CaptureOptions {
    int top_k = 32;
    int64_t window = 128;      // T: positions per window (= the students' sequence length)
    int64_t batch = 8;         // windows per teacher forward
    int64_t max_windows = 0;   // 0 = every aligned window of the shard
    int64_t check_windows = 32;  // windows re-read after capture to measure the stored error
};

struct CaptureResult {
    int64_t windows = 0;       // stored in the cache
    int64_t new_windows = 0;   // captured by this call
    int64_t positions = 0;
    double bytes_per_token = 0;
    // On `check_windows` windows spread over the cache, read back from disk:
    double kl_full_to_stored = 0;  // KL(teacher || stored top-K + rest spread evenly), nats/pos
    double kl_quantization = 0;    // KL((K+1)-bucket exact || (K+1)-bucket stored), nats/pos
    double max_abs_logprob_error = 0;
    double seconds = 0;            // all of it, the read-back check included
    double capture_seconds = 0;    // the teacher's forwards and the writes alone
};

// With `dist` (a data-parallel job), every rank runs the teacher on its share of the windows
// (opts.batch windows per rank and forward) and rank 0 writes them, in order, to the cache; the
// read-back check runs on rank 0 alone. The cache is the one a single process writes.
CaptureResult capture_teacher(Llama& teacher, const std::string& teacher_fingerprint,
                              const Tokenizer& tokenizer, const TokenShard& shard,
                              const std::string& cache_dir, const CaptureOptions& opts,
                              Distributed* dist = nullptr);

}  // namespace distill
