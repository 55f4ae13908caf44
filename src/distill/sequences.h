// distill — students from what an API returned (a dataset of `distill capture --teacher-url`):
// sequence-level distillation (cross-entropy on the teacher's completions, the prompt as context
// only) and, where the teacher's tokens map onto the student's tokenizer, the usual KD losses on
// the returned top log-probs (K <= 20 plus the rest mass). docs/api-capture.md.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "distill/losses.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "train/trainer.h"

namespace distill {

class Distributed;

struct SequenceSet {
    struct Seq {
        std::vector<int64_t> ids;  // prompt then completion (then EOS when the teacher stopped)
        int64_t completion_from = 0;  // ids[completion_from..] are the teacher's tokens
        // top[i]: the teacher's top alternatives (student ids, log p) at ids[top_from + i]; empty
        // where the returned tokens did not map onto the student's vocabulary. top_from is
        // completion_from, or earlier when the prompt was scored (capture --score-prompts)
        int64_t top_from = 0;
        bool cross = false;  // the teacher's tokens were another tokenizer's, aligned on bytes
        std::vector<std::vector<std::pair<int64_t, float>>> top;
        bool has_top() const {
            return std::any_of(top.begin(), top.end(), [](const auto& a) { return !a.empty(); });
        }
    };
    std::vector<Seq> seqs;
    int64_t samples = 0;            // in the dataset
    int64_t mapped = 0;             // samples whose every returned token is one student token
    int64_t cross_samples = 0;      // samples of another tokenizer, aligned on bytes (docs/losses.md)
    int64_t cross_aligned = 0;      // positions that got the teacher's alternatives by that alignment
    int64_t prompts_scored = 0;     // samples whose scored prompt maps onto the student's tokens
    int64_t completion_tokens = 0;  // targets over all sequences
    int64_t kd_positions = 0;       // positions with the teacher's top log-probs (prompt and completion)
    int64_t top_k = 0;              // most alternatives any position has
    int64_t teacher_tokens = 0;     // prompt + completion tokens the API reported
    std::string fingerprint;        // of the dataset's samples and the student's tokenizer
};

// Reads a dataset for a student with tokenizer `tok`; sequences longer than seq_len + 1 keep
// their last seq_len + 1 tokens. Chat samples are rendered with distill's ChatML.
SequenceSet load_sequences(const std::string& dataset, const Tokenizer& tok, int64_t seq_len);

// The loss of a micro-batch: B sequences drawn with the run's seed; cross-entropy on the
// completion tokens (LossKind::kCrossEntropy), or the sparse KD loss on the teacher's returned
// top log-probs mixed with ce_weight of cross-entropy, at every position that has them (the
// scored prompt's too; only sequences with some are drawn).
// With `dist` every rank draws the same batch of t.batch_size sequences and keeps its rows
// (rank_rows); its loss is scaled by its share of the batch's completion tokens (one scalar
// all-reduce), so the ranks' averaged loss is one process's mean over all of them.
LossFn make_sequence_loss(Llama& student, const SequenceSet& set, const TrainOptions& t, const LossOptions& lo,
                          Distributed* dist = nullptr);

}  // namespace distill
