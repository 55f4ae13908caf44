#include "distill/capture.h"

#include <torch/torch.h>

#include <cmath>

#include "io/logit-cache.h"
#include "util/error.h"
#include "train/distributed.h"
#include "util/progress.h"

namespace distill {

namespace {

// The teacher's final hidden states (b, T, C) for windows [w0, w0+b).
torch::Tensor teacher_hidden(Llama& teacher, const TokenShard& shard, int64_t w0, int64_t b, int64_t T) {
    std::vector<torch::Tensor> rows;
    for (int64_t w = w0; w < w0 + b; ++w) rows.push_back(shard.slice(w * T, T));
    return teacher->hidden(torch::stack(rows).to(teacher->device()));
}

}  // namespace

CaptureResult capture_teacher(Llama& teacher, const std::string& teacher_fingerprint,
                              const Tokenizer& tokenizer, const TokenShard& shard,
                              const std::string& cache_dir, const CaptureOptions& opts, Distributed* dist) {
    const int64_t T = opts.window, K = opts.top_k, V = teacher->config().vocab_size;
    DISTILL_CHECK(K >= 1 && K <= 256 && K < V, "--top-logprobs must be in 1 .. min(256, vocab size - 1)");
    DISTILL_CHECK(T >= 1 && T <= teacher->config().max_position_embeddings, "--seq-len ", T,
                  " must be in 1 .. the teacher's max_position_embeddings");
    DISTILL_CHECK(shard.info().tokenizer_fingerprint == tokenizer.fingerprint(),
                  "the token shard was made with another tokenizer than the teacher's; re-run "
                  "`distill prepare` with the teacher's tokenizer.json");
    DISTILL_CHECK(shard.info().vocab_size <= V, "the shard's vocabulary (", shard.info().vocab_size,
                  ") is larger than the teacher's (", V, ")");
    int64_t W = num_aligned_windows(shard.size(), T);
    if (opts.max_windows > 0) W = std::min(W, opts.max_windows);
    DISTILL_CHECK(W > 0, "the shard has too few tokens for one window of ", T);

    LogitCacheInfo info;
    info.top_k = static_cast<int>(K);
    info.vocab_size = static_cast<int>(V);
    info.window = static_cast<int>(T);
    info.num_windows = W;
    info.teacher_fingerprint = teacher_fingerprint;
    info.tokenizer_fingerprint = tokenizer.fingerprint();
    info.data_fingerprint = shard.info().fingerprint;

    const double t0 = now_seconds();
    CaptureResult r;
    torch::NoGradGuard ng;
    teacher->eval();
    const bool writer_rank = !dist || dist->rank() == 0;
    const int world = dist ? dist->world() : 1;
    const int rank = dist ? dist->rank() : 0;
    if (dist) {
        dist->check_same_settings({{"capture", {{"top_k", K}, {"window", T}, {"batch", opts.batch}, {"windows", W}}},
                                   {"teacher", teacher_fingerprint},
                                   {"data", shard.info().fingerprint}});
    }
    {
        // rank 0 alone opens (or resumes) the cache and says where to start
        std::unique_ptr<LogitCacheWriter> writer;
        int64_t start = 0;
        std::string failure;
        if (writer_rank) {
            try {
                writer = std::make_unique<LogitCacheWriter>(cache_dir, info);
                start = writer->windows_done();
            } catch (const Error& e) {
                if (!dist) throw;
                failure = e.what();
                start = -1;
            }
        }
        if (dist) {
            std::vector<torch::Tensor> head{torch::tensor({start}, torch::kInt64)};
            dist->broadcast(head);
            if (!failure.empty()) throw Error(failure);
            start = head[0].item<int64_t>();
            DISTILL_CHECK(start >= 0, "rank ", rank, ": rank 0 could not open the cache '", cache_dir,
                          "' (its message says why)");
        }
        if (writer_rank && start > 0 && start < W)
            log_info(str_cat("capture: resuming at window ", start, " of ", W));
        const bool quiet_before = Progress::quiet;
        if (!writer_rank) Progress::quiet = true;
        Progress progress("capture");
        const int64_t B = opts.batch;
        std::vector<int32_t> ids_buf;
        std::vector<float> vals_buf;
        for (int64_t w = start; w < W; w += B * world) {
            // this rank's windows of the round: [w + rank*B, ... + b)
            const int64_t w0 = std::min(W, w + rank * B);
            const int64_t b = std::min(B, W - w0);
            torch::Tensor ids32 = torch::zeros({B, T, K}, torch::kInt32), vals32 = torch::zeros({B, T, K});
            if (b > 0) {
                auto h = teacher_hidden(teacher, shard, w0, b, T);  // (b, T, C)
                // the top K of each position's log-probs; a packed head streams its vocabulary
                // rather than holding b x T x V logits
                auto [vals, idx] = teacher->head_top_logprobs(h.reshape({b * T, h.size(-1)}), K);  // (b*T, K)
                // to the host (a no-op on the CPU) before the raw pointers are read
                ids32.narrow(0, 0, b).copy_(idx.view({b, T, K}).to(torch::kCPU, torch::kInt32));
                vals32.narrow(0, 0, b).copy_(vals.view({b, T, K}).to(torch::kCPU, torch::kFloat32));
            }
            std::vector<torch::Tensor> all_ids{ids32}, all_vals{vals32};
            if (dist) {
                all_ids = dist->all_gather(ids32);
                all_vals = dist->all_gather(vals32);
            }
            int64_t round = 0;
            for (int q = 0; q < world; ++q) {
                const int64_t rw0 = std::min(W, w + q * B), rb = std::min(B, W - rw0);
                if (writer_rank)
                    for (int64_t i = 0; i < rb; ++i)
                        writer->append_window(all_ids[q][i].data_ptr<int32_t>(), all_vals[q][i].data_ptr<float>());
                round += rb;
            }
            r.new_windows += round;
            progress.update(w + round, W, str_cat(format_count(double(r.new_windows * T) /
                                                               std::max(1e-9, now_seconds() - t0)),
                                                  " tok/s"));
        }
        Progress::quiet = quiet_before;
        if (writer_rank) writer->finish();
        // the cache is whole before any rank reports success
        if (dist) dist->barrier();
        r.capture_seconds = now_seconds() - t0;
    }
    if (!writer_rank) {
        r.windows = W;
        r.positions = W * T;
        r.seconds = now_seconds() - t0;
        return r;
    }

    // Read back what was stored and measure its error against the full teacher distribution.
    LogitCacheReader reader(cache_dir);
    DISTILL_ASSERT(reader.complete(), "capture finished with ", reader.num_windows(), " of ", W);
    r.windows = reader.num_windows();
    r.positions = r.windows * T;
    r.bytes_per_token = reader.bytes_per_position();
    const int64_t n_check = std::min<int64_t>(opts.check_windows, W);
    std::vector<int32_t> ids(T * K);
    std::vector<float> stored(T * K);
    double kl_full = 0, kl_q = 0, max_err = 0;
    for (int64_t c = 0; c < n_check; ++c) {
        const int64_t w = n_check == 1 ? 0 : c * (W - 1) / (n_check - 1);
        reader.read_window(w, ids.data(), stored.data());
        auto h = teacher_hidden(teacher, shard, w, 1, T)[0];  // (T, C)
        // positions a chunk at a time, so that a large vocabulary's float64 rows stay small
        const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 21) / V);
        for (int64_t r0 = 0; r0 < T; r0 += chunk) {
            const int64_t n = std::min(chunk, T - r0);
            auto lp = torch::log_softmax(teacher->head(h.narrow(0, r0, n)).to(torch::kFloat32), -1)
                          .to(torch::kCPU, torch::kFloat64);  // (n, V)
            auto id_t = torch::from_blob(ids.data() + r0 * K, {n, K}, torch::kInt32).to(torch::kInt64);
            auto lq = torch::from_blob(stored.data() + r0 * K, {n, K}, torch::kFloat32).to(torch::kFloat64);
            auto lp_top = lp.gather(1, id_t);                           // exact log p of stored ids
            max_err = std::max(max_err, (lp_top - lq).abs().max().item<double>());
            auto p = lp.exp();
            auto p_top = lp_top.exp();
            auto rest_exact = (1.0 - p_top.sum(1)).clamp_min(1e-30);     // (n)
            auto rest_stored = (1.0 - lq.exp().sum(1)).clamp_min(1e-30);
            // KL over the K+1 buckets: exact vs stored
            kl_q += ((p_top * (lp_top - lq)).sum(1) + rest_exact * (rest_exact.log() - rest_stored.log()))
                        .sum()
                        .item<double>();
            // KL from the full distribution to stored top-K + rest spread evenly over the V-K others
            auto outside = torch::ones_like(lp, torch::kBool).scatter_(1, id_t, false);
            auto spread = (rest_stored / double(V - K)).log().unsqueeze(1).expand_as(lp);
            auto recon = lp.clone().masked_scatter_(outside, spread.masked_select(outside)).scatter_(1, id_t, lq);
            kl_full += (p * (lp - recon)).sum().item<double>();
        }
    }
    if (n_check > 0) {
        r.kl_full_to_stored = kl_full / double(n_check * T);
        r.kl_quantization = kl_q / double(n_check * T);
    }
    r.max_abs_logprob_error = max_err;
    r.seconds = now_seconds() - t0;
    return r;
}

}  // namespace distill
