// distill — the per-batch loss of a student: from a captured cache (offline, sparse top-K form),
// from a live teacher (online, dense form), or cross-entropy only (the no-teacher baseline).
#pragma once

#include "distill/losses.h"
#include "io/logit-cache.h"
#include "io/shards.h"
#include "train/batches.h"
#include "model/llama.h"
#include "train/trainer.h"

namespace distill {

// Offline when `cache` is given (batches are the cache's aligned windows), online when `teacher`
// is given, else cross-entropy. The shard must be the one the cache was captured on.
// With a live teacher and online_top_k > 0, the teacher's exact fp32 top-K (+ rest bucket) is
// used with the sparse loss: the unquantised reference for what a cache of that K gives.
LossFn make_student_loss(Llama& student, const TokenShard& shard, const BatchSpec& spec,
                         const LossOptions& loss, const LogitCacheReader* cache, Llama* teacher,
                         int64_t online_top_k = 0);

// Checks that a cache fits a student run: same tokenizer, same data, window = seq_len, and the
// student's vocabulary covers the cache's. Throws Error saying what differs and what to do.
void check_cache_fits(const LogitCacheReader& cache, const std::string& student_tokenizer_fp,
                      int64_t student_vocab, const TokenShard& shard, int64_t seq_len);

}  // namespace distill
