// distill — evaluation: bits per byte over long text with a sliding window (tokenizer-independent,
// as lm-evaluation-harness's loglikelihood_rolling), per-position scoring, and agreement / KL
// between a teacher and a student.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace distill {

struct WindowOptions {
    int64_t context = 256;  // tokens the model sees at once
    int64_t stride = 128;   // new tokens scored per window after the first (<= context; a window
                            // of `context` tokens scores at most context - 1, so stride = context
                            // acts as context - 1)
    int64_t batch = 8;      // windows evaluated together
};

// One window of the sliding-window plan over N ids: tokens [begin, end) are fed to the model and
// targets score_from .. end-1 are scored. Every target from 1 to N-1 is scored exactly once, with
// a full context window whenever N allows (the plan for_each_window runs, and the remote scorer
// asks an API for).
struct EvalWindow {
    int64_t begin, end, score_from;
};
std::vector<EvalWindow> plan_eval_windows(int64_t N, const WindowOptions& opts);

// Scoring runs in c10::InferenceMode (no autograd state at all) and the head only on the rows
// that are scored:
// logits (n, V) float32 of a (B, T) batch of ids at `rows` (flat indices into B * T). With `buf`,
// the head writes into *buf, whose storage is kept for the next call of the same size or smaller.
torch::Tensor logits_at(Llama& model, const torch::Tensor& ids, const torch::Tensor& rows,
                        torch::Tensor* buf = nullptr);
// log q(target) (n) of logits (n, V) and targets (n): logit_target - logsumexp(logits), without
// the full log_softmax.
torch::Tensor target_logprobs(const torch::Tensor& logits, const torch::Tensor& targets);

// Runs `model` over `ids` (a BOS, if any, already in front) in sliding windows and calls
// `visit(first, log_probs, targets)` for each window: positions first .. first+n-1 of `ids` are
// the scored targets (each scored exactly once, with as much context as the window allows),
// log_probs (n, V) are the model's log-probabilities for them, targets (n) int64.
using WindowVisitor =
    std::function<void(int64_t first, const torch::Tensor& log_probs, const torch::Tensor& targets)>;
void for_each_window(Llama& model, const std::vector<int64_t>& ids, const WindowOptions& opts,
                     const WindowVisitor& visit, const std::string& progress_label = "");

// As for_each_window, with only what a scoring listing needs: each scored position's log-prob of
// its target (n) and its k largest log-probs (n, k) with their ids (k may be 0). A packed head
// streams its vocabulary (LlamaImpl::head_top_logprobs) instead of holding n x V log-probs.
using TopVisitor = std::function<void(int64_t first, const torch::Tensor& target_lp, const torch::Tensor& top_lp,
                                      const torch::Tensor& top_ids, const torch::Tensor& targets)>;
void for_each_window_top(Llama& model, const std::vector<int64_t>& ids, const WindowOptions& opts, int64_t k,
                         const TopVisitor& visit, const std::string& progress_label = "");

struct BpbResult {
    double bits_per_byte = 0;
    double nats_per_token = 0;
    int64_t tokens = 0;  // scored tokens
    int64_t bytes = 0;   // UTF-8 bytes of the text
    double seconds = 0;
};

// Bits per byte of `text`: -sum log2 q(token) / bytes, every token of the text scored once
// (the first conditioned on BOS when the tokenizer has one).
BpbResult eval_bpb(Llama& model, const Tokenizer& tokenizer, const std::string& text,
                   const WindowOptions& opts, const std::string& progress_label = "bpb");

struct CompareResult {
    double top1_agreement = 0;  // fraction of positions where argmax student == argmax teacher
    double kl_to_teacher = 0;   // mean KL(teacher || student) in nats per position
    int64_t positions = 0;
};

// Teacher vs student on the same tokens (same tokenizer required).
CompareResult eval_compare(Llama& teacher, Llama& student, const std::vector<int64_t>& ids,
                           const WindowOptions& opts);
// The same for several students in one pass: the teacher's forward is shared, and each student's
// figures are those eval_compare gives it alone.
std::vector<CompareResult> eval_compare_many(Llama& teacher, const std::vector<Llama*>& students,
                                             const std::vector<int64_t>& ids, const WindowOptions& opts);

// ids of `text` with BOS in front when the tokenizer has one.
std::vector<int64_t> encode_for_eval(const Tokenizer& tokenizer, const std::string& text);

}  // namespace distill
