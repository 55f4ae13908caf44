// distill — distillation across tokenizers: a teacher cache captured with the teacher's own
// tokenizer, used by a student with another one. Both tokenizations of the same text are aligned
// on byte offsets; the loss is taken at the student positions whose context ends at a byte where
// the teacher's tokens also have a boundary, with the teacher's top-K mapped onto student tokens
// (docs/losses.md, "Across tokenizers").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "distill/losses.h"
#include "io/logit-cache.h"
#include "io/shards.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "train/batches.h"
#include "train/trainer.h"

namespace distill {

class Distributed;

// How a teacher token's probability is given to the student's tokens:
//   kFirst  to the student token that starts the teacher token's bytes (the student's first
//           token of that text): the probability that the student's next token is u is the sum
//           over the teacher tokens whose spelling begins with u;
//   kExact  only where the teacher token's bytes are one student token;
// and in both, everything else (and the teacher's mass outside its top K) to the rest bucket.
enum class CrossTokenizerMapping { kFirst, kExact };
CrossTokenizerMapping cross_tokenizer_mapping_from_string(const std::string& name);  // "first", "exact"
std::string cross_tokenizer_mapping_name(CrossTokenizerMapping m);

struct CrossTokenizerMap {
    CrossTokenizerMapping mapping = CrossTokenizerMapping::kFirst;
    int64_t teacher_window = 0;  // T of the teacher cache
    int64_t cached_positions = 0;  // teacher positions that have a cache entry
    // For each student position j (predicting student token j + 1): the teacher position whose
    // token ends at the same byte as student token j (it predicts the teacher's next token from
    // the same text), or -1 where the teacher has no boundary there or no cache entry.
    std::vector<int64_t> teacher_pos;
    // For each teacher id: the student id its probability goes to, or -1 (the rest bucket).
    std::vector<int32_t> to_student;
    int64_t aligned = 0;           // student positions with a teacher position
    int64_t exact_ids = 0;         // teacher ids whose bytes are one student token
    int64_t mapped_ids = 0;        // teacher ids with a student id under the mapping
    std::string fingerprint;       // of the mapping, both shards and both tokenizers
};

// Checks that the two shards hold the same text (the bytes their tokens spell, by length and
// hash), that `cache` was captured on teacher_shard with teacher_tok, and builds the alignment.
// Throws Error saying what differs.
CrossTokenizerMap build_cross_tokenizer_map(const TokenShard& student_shard, const Tokenizer& student_tok,
                                            const TokenShard& teacher_shard, const Tokenizer& teacher_tok,
                                            const LogitCacheReader& cache, CrossTokenizerMapping mapping);

// The loss of a micro-batch of student windows (any offset, drawn as BatchSpec says):
// (1 - ce_weight) x the sparse KD loss over the aligned positions + ce_weight x cross-entropy over
// all positions. Extras: the fraction of positions aligned. With `dist` (spec holding this rank's
// rows), the KD term is this rank's sum over the global number of aligned positions (times the
// world size, as the ranks' losses are averaged): the loss of one process over the whole batch.
LossFn make_cross_tokenizer_loss(Llama& student, const TokenShard& shard, const BatchSpec& spec,
                                 const LossOptions& loss, const LogitCacheReader& cache,
                                 const CrossTokenizerMap& map, Distributed* dist = nullptr);

// The sparse KD loss over rows of `flat` (N, V) whose teacher targets have different lengths:
// tops[i] the (student id, log p) of row rows[i] (ids distinct), the rest of the teacher's mass
// its rest bucket. Rows are grouped by length (padding with ids of probability 0 would split the
// student's rest bucket). Returns the sum over the rows of their loss (divide by the count).
torch::Tensor loss_sparse_rows(const torch::Tensor& flat, const std::vector<int64_t>& rows,
                               const std::vector<std::vector<std::pair<int64_t, float>>>& tops,
                               const torch::Tensor& targets, const LossOptions& kd);

// The teacher's targets for one batch, as the loss takes them: the aligned positions (rows of the
// flattened (B*T) batch, ascending) where at least one of the teacher's top K maps onto a student
// token, and there the student ids with the log of the teacher mass they get (distinct ids, most
// likely first). Everything else of the teacher's mass is the rest bucket. Exposed for tests.
struct CrossTokenizerTargets {
    std::vector<int64_t> rows;
    std::vector<std::vector<std::pair<int64_t, float>>> top;
    int64_t aligned = 0;  // aligned positions, with or without a mapped id
};
CrossTokenizerTargets cross_tokenizer_targets(const LogitCacheReader& cache, const CrossTokenizerMap& map,
                                              const std::vector<int64_t>& starts, int64_t seq_len,
                                              int64_t student_vocab);

}  // namespace distill
