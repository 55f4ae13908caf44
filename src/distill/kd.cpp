#include "distill/kd.h"

#include <torch/torch.h>

#include "util/device.h"
#include "util/error.h"

namespace distill {

void check_cache_fits(const LogitCacheReader& cache, const std::string& student_tokenizer_fp,
                      int64_t student_vocab, const TokenShard& shard, int64_t seq_len) {
    const LogitCacheInfo& info = cache.info();
    DISTILL_CHECK(info.tokenizer_fingerprint == student_tokenizer_fp,
                  "the student's tokenizer (fingerprint ", student_tokenizer_fp,
                  ") differs from the one the teacher cache was captured with (",
                  info.tokenizer_fingerprint,
                  "): token ids would mean different things. Use the teacher's tokenizer.json for "
                  "the student, or learn across tokenizers (--teacher-data SHARD --teacher-tokenizer T: "
                  "the shard the cache was captured on)");
    DISTILL_CHECK(info.data_fingerprint == shard.info().fingerprint,
                  "the teacher cache was captured on other data (fingerprint ", info.data_fingerprint,
                  ") than --data (", shard.info().fingerprint,
                  "); pass the shard it was captured on, or capture again");
    DISTILL_CHECK(info.window == seq_len, "the teacher cache holds windows of ", info.window,
                  " tokens; train with --seq-len ", info.window);
    DISTILL_CHECK(info.vocab_size <= student_vocab, "the teacher cache has ids up to ",
                  info.vocab_size, " but the student's vocab_size is ", student_vocab);
    DISTILL_CHECK(cache.complete(), "the teacher cache is incomplete (", cache.num_windows(), " of ",
                  info.num_windows, " windows): re-run `distill capture` to finish it");
}

LossFn make_student_loss(Llama& student, const TokenShard& shard, const BatchSpec& spec_in,
                         const LossOptions& loss, const LogitCacheReader* cache, Llama* teacher,
                         int64_t online_top_k) {
    BatchSpec spec = spec_in;
    if (cache) spec.aligned = true;
    const bool teacher_loss = loss.kind != LossKind::kCrossEntropy;
    DISTILL_CHECK(!teacher_loss || cache || teacher,
                  "loss '", loss_kind_name(loss.kind), "' needs a teacher: pass --cache or --teacher");
    if (cache || online_top_k > 0) spec.aligned = true;  // same windows as a cache would give
    spec.device = student->parameters().front().device();
    return [&student, &shard, spec, loss, cache, teacher, teacher_loss, online_top_k](int64_t step,
                                                                                     int64_t micro) {
        Batch b = sample_batch(shard, spec, step, micro);
        const int64_t B = b.tokens.size(0), T = spec.seq_len;  // B: this rank's rows
        auto inputs = b.tokens.narrow(1, 0, T);
        auto targets = b.tokens.narrow(1, 1, T).reshape({-1});  // (B*T)
        auto logits = student->forward_for_loss(inputs);         // (B, T, V)
        const int64_t V = logits.size(-1);
        auto flat = logits.reshape({-1, V});
        StepLoss out;
        out.tokens = B * T;
        if (!teacher_loss) {
            out.loss = loss_cross_entropy(flat, targets);
        } else if (cache) {
            const int64_t K = cache->info().top_k;
            auto ids32 = torch::empty({B, T, K}, torch::kInt32);
            auto lps = torch::empty({B, T, K}, torch::kFloat32);
            for (int64_t i = 0; i < B; ++i)
                cache->read_window(b.windows[i], ids32[i].data_ptr<int32_t>(), lps[i].data_ptr<float>());
            // decoded on the host, then moved to the student's device
            out.loss = loss_sparse(flat, ids32.reshape({-1, K}).to(spec.device, torch::kInt64),
                                   lps.reshape({-1, K}).to(spec.device), targets, loss);
        } else {
            torch::Tensor t_logits;
            {
                torch::NoGradGuard ng;
                // under --precision bf16 the teacher's products run in bf16 too, as under autocast
                Bf16Forward bf16(train_precision() == Precision::kBFloat16);
                t_logits = (*teacher)->forward(inputs).reshape({-1, V});
            }
            if (online_top_k > 0) {
                torch::Tensor top_lp, top_ids;
                {
                    torch::NoGradGuard ng;
                    std::tie(top_lp, top_ids) = torch::log_softmax(t_logits, -1).topk(online_top_k, -1);
                }
                out.loss = loss_sparse(flat, top_ids, top_lp, targets, loss);
            } else {
                out.loss = loss_dense(flat, t_logits, targets, loss);
            }
        }
        return out;
    };
}

}  // namespace distill
