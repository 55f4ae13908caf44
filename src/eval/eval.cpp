#include "eval/eval.h"

#include <c10/core/InferenceMode.h>
#include <torch/torch.h>

#include <cmath>

#include "util/error.h"
#include "util/progress.h"

namespace distill {

std::vector<int64_t> encode_for_eval(const Tokenizer& tokenizer, const std::string& text) {
    std::vector<int64_t> ids;
    if (tokenizer.bos_id() >= 0) ids.push_back(tokenizer.bos_id());
    for (int32_t t : tokenizer.encode(text)) ids.push_back(t);
    return ids;
}

namespace {

using Window = EvalWindow;

}  // namespace

std::vector<EvalWindow> plan_eval_windows(int64_t N, const WindowOptions& opts) {
    std::vector<Window> wins;
    int64_t scored_to = 1;
    for (int64_t begin = 0; scored_to < N; begin += opts.stride) {
        // the first target not yet scored needs at least one token of context before it (with
        // stride == context the windows would otherwise skip targets context, 2 context, ...)
        begin = std::min(begin, scored_to - 1);
        int64_t end = std::min(begin + opts.context, N);
        if (end - begin < opts.context) begin = std::max<int64_t>(0, end - opts.context);
        wins.push_back({begin, end, std::max(scored_to, begin + 1)});
        scored_to = end;
    }
    return wins;
}

namespace {

std::vector<Window> plan_windows(int64_t N, const WindowOptions& opts) { return plan_eval_windows(N, opts); }

void check_window_options(Llama& model, const WindowOptions& opts) {
    DISTILL_CHECK(opts.context >= 2 && opts.stride >= 1 && opts.stride <= opts.context,
                  "window context must be >= 2 and 1 <= stride <= context");
    DISTILL_CHECK(opts.context <= model->config().max_position_embeddings, "context ",
                  opts.context, " exceeds the model's max_position_embeddings ",
                  model->config().max_position_embeddings);
    DISTILL_CHECK(opts.batch >= 1, "window batch must be >= 1");
}

// Calls visit(wins, i, j, batch) for runs [i, j) of equal-length windows, batch (b, len) ids.
template <typename Fn>
void for_each_batch(const std::vector<Window>& wins, const torch::Tensor& ids_t,
                    const WindowOptions& opts, const std::string& progress_label, Fn&& fn) {
    Progress progress(progress_label.empty() ? "eval" : progress_label);
    for (size_t i = 0; i < wins.size();) {
        size_t j = i;
        const int64_t len = wins[i].end - wins[i].begin;
        std::vector<torch::Tensor> rows;
        while (j < wins.size() && j - i < static_cast<size_t>(opts.batch) &&
               wins[j].end - wins[j].begin == len) {
            rows.push_back(ids_t.narrow(0, wins[j].begin, len));
            ++j;
        }
        fn(i, j, torch::stack(rows));
        i = j;
        if (!progress_label.empty())
            progress.update(static_cast<int64_t>(i), static_cast<int64_t>(wins.size()), "windows");
    }
}

// The rows of a batch of windows [i, j) (b, len) that predict their scored targets, as flat
// indices into b * len, and the targets' positions in ids; window w's rows start at
// offset[w - i] (offset[j - i] = n, the number of scored targets).
struct ScoredRows {
    torch::Tensor rows, targets;  // (n) int64 on the model's device
    std::vector<int64_t> offset;
};

ScoredRows scored_rows(const std::vector<Window>& wins, size_t i, size_t j, const torch::Tensor& ids_t) {
    const int64_t len = wins[i].end - wins[i].begin;
    std::vector<int64_t> rows, pos;
    ScoredRows s;
    for (size_t w = i; w < j; ++w) {
        s.offset.push_back(static_cast<int64_t>(rows.size()));
        for (int64_t t = wins[w].score_from; t < wins[w].end; ++t) {
            rows.push_back(static_cast<int64_t>(w - i) * len + (t - 1 - wins[w].begin));
            pos.push_back(t);
        }
    }
    s.offset.push_back(static_cast<int64_t>(rows.size()));
    s.rows = torch::tensor(rows, torch::kInt64).to(ids_t.device());
    s.targets = ids_t.index_select(0, torch::tensor(pos, torch::kInt64).to(ids_t.device()));
    return s;
}

}  // namespace

// The final hidden states (n, C) of the flattened (B*T) positions `rows` of ids (B, T).
static torch::Tensor hidden_at(Llama& model, const torch::Tensor& ids, const torch::Tensor& rows) {
    auto h = model->hidden(ids);                                // (B, T, C)
    return h.reshape({-1, h.size(-1)}).index_select(0, rows);  // (n, C)
}

torch::Tensor logits_at(Llama& model, const torch::Tensor& ids, const torch::Tensor& rows, torch::Tensor* buf) {
    auto hs = hidden_at(model, ids, rows);
    if (!buf) return model->head(hs).to(torch::kFloat32);
    return model->head_into(hs, buf).to(torch::kFloat32);
}

torch::Tensor target_logprobs(const torch::Tensor& logits, const torch::Tensor& targets) {
    return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - logits.logsumexp(-1);
}

void for_each_window(Llama& model, const std::vector<int64_t>& ids, const WindowOptions& opts,
                     const WindowVisitor& visit, const std::string& progress_label) {
    check_window_options(model, opts);
    const int64_t N = static_cast<int64_t>(ids.size());
    if (N < 2) return;
    const auto wins = plan_windows(N, opts);
    c10::InferenceMode im;
    auto ids_t = torch::tensor(ids, torch::kInt64).to(model->parameters().front().device());
    torch::Tensor buf;
    for_each_batch(wins, ids_t, opts, progress_label, [&](size_t i, size_t j, const torch::Tensor& batch) {
        const ScoredRows s = scored_rows(wins, i, j, ids_t);
        auto logp = torch::log_softmax(logits_at(model, batch, s.rows, &buf), -1);  // (n, V)
        for (size_t w = i; w < j; ++w) {
            const int64_t a = s.offset[w - i], n = s.offset[w - i + 1] - a;
            visit(wins[w].score_from, logp.narrow(0, a, n), s.targets.narrow(0, a, n));
        }
    });
}

void for_each_window_top(Llama& model, const std::vector<int64_t>& ids, const WindowOptions& opts, int64_t k,
                         const TopVisitor& visit, const std::string& progress_label) {
    check_window_options(model, opts);
    const int64_t N = static_cast<int64_t>(ids.size());
    if (N < 2) return;
    const auto wins = plan_windows(N, opts);
    c10::InferenceMode im;
    auto ids_t = torch::tensor(ids, torch::kInt64).to(model->device());
    for_each_batch(wins, ids_t, opts, progress_label, [&](size_t i, size_t j, const torch::Tensor& batch) {
        const ScoredRows s = scored_rows(wins, i, j, ids_t);
        torch::Tensor target_lp;
        auto [top_v, top_i] = model->head_top_logprobs(hidden_at(model, batch, s.rows), k, s.targets, &target_lp);
        for (size_t w = i; w < j; ++w) {
            const int64_t a = s.offset[w - i], n = s.offset[w - i + 1] - a;
            visit(wins[w].score_from, target_lp.narrow(0, a, n), top_v.narrow(0, a, n), top_i.narrow(0, a, n),
                  s.targets.narrow(0, a, n));
        }
    });
}

BpbResult eval_bpb(Llama& model, const Tokenizer& tokenizer, const std::string& text,
                   const WindowOptions& opts, const std::string& progress_label) {
    DISTILL_CHECK(!text.empty(), "cannot evaluate bits per byte on empty text");
    const double t0 = now_seconds();
    auto ids = encode_for_eval(tokenizer, text);
    check_window_options(model, opts);
    const int64_t N = static_cast<int64_t>(ids.size());
    double nats = 0;
    int64_t tokens = 0;
    if (N >= 2) {
        // Only the targets' log-probs are needed: log q(t) = logit_t - logsumexp(logits) on the
        // rows that predict a scored target, summed on the model's device (one host copy at the end).
        const auto wins = plan_windows(N, opts);
        c10::InferenceMode im;
        auto ids_t = torch::tensor(ids, torch::kInt64).to(model->parameters().front().device());
        auto nats_t = torch::zeros({}, ids_t.options().dtype(torch::kFloat64));
        torch::Tensor buf;
        for_each_batch(wins, ids_t, opts, progress_label, [&](size_t i, size_t j, const torch::Tensor& batch) {
            const ScoredRows s = scored_rows(wins, i, j, ids_t);
            nats_t -= model->head_target_logprobs(hidden_at(model, batch, s.rows), s.targets, &buf).sum(torch::kFloat64);
            tokens += s.offset.back();
        });
        nats = nats_t.item<double>();
    }
    // Without BOS the first token has no context: it is charged log(V) (a uniform guess), so
    // that every byte of the text is paid for.
    if (tokenizer.bos_id() < 0 && !ids.empty()) {
        nats += std::log(double(model->config().vocab_size));
        tokens += 1;
    }
    BpbResult r;
    r.tokens = tokens;
    r.bytes = static_cast<int64_t>(text.size());
    r.nats_per_token = tokens ? nats / tokens : 0;
    r.bits_per_byte = nats / std::log(2.0) / double(r.bytes);
    r.seconds = now_seconds() - t0;
    return r;
}

std::vector<CompareResult> eval_compare_many(Llama& teacher, const std::vector<Llama*>& students,
                                             const std::vector<int64_t>& ids, const WindowOptions& opts) {
    check_window_options(teacher, opts);
    const torch::Device dev = teacher->parameters().front().device();
    for (Llama* student : students) {
        DISTILL_CHECK(teacher->config().vocab_size == (*student)->config().vocab_size,
                      "teacher and student vocabularies differ (", teacher->config().vocab_size, " vs ",
                      (*student)->config().vocab_size, "): compare needs the same tokenizer");
        check_window_options(*student, opts);
        DISTILL_CHECK((*student)->parameters().front().device() == dev, "teacher and student are on different devices");
    }
    std::vector<CompareResult> r(students.size());
    const int64_t N = static_cast<int64_t>(ids.size());
    if (N < 2 || students.empty()) return r;
    const auto wins = plan_windows(N, opts);
    c10::InferenceMode im;
    auto ids_t = torch::tensor(ids, torch::kInt64).to(dev);
    // per student: agree, kl
    auto acc = torch::zeros({int64_t(students.size()), 2}, torch::TensorOptions().dtype(torch::kFloat64).device(dev));
    int64_t positions = 0;
    for_each_batch(wins, ids_t, opts, "", [&](size_t i, size_t j, const torch::Tensor& batch) {
        const ScoredRows s = scored_rows(wins, i, j, ids_t);
        auto p = torch::log_softmax(logits_at(teacher, batch, s.rows), -1);  // (n, V), once for all students
        auto p_top = p.argmax(-1), p_prob = p.exp();
        for (size_t k = 0; k < students.size(); ++k) {
            auto q = torch::log_softmax(logits_at(*students[k], batch, s.rows), -1);
            acc[int64_t(k)][0] += (p_top == q.argmax(-1)).sum().to(torch::kFloat64);
            acc[int64_t(k)][1] += (p_prob * (p - q)).sum().to(torch::kFloat64);
        }
        positions += p.size(0);
    });
    auto host = acc.to(torch::kCPU);
    for (size_t k = 0; k < students.size(); ++k) {
        const double agree = host[int64_t(k)][0].item<double>(), kl = host[int64_t(k)][1].item<double>();
        r[k].positions = positions;
        r[k].top1_agreement = positions ? agree / positions : 0;
        r[k].kl_to_teacher = positions ? kl / positions : 0;
    }
    return r;
}

CompareResult eval_compare(Llama& teacher, Llama& student, const std::vector<int64_t>& ids,
                           const WindowOptions& opts) {
    return eval_compare_many(teacher, {&student}, ids, opts)[0];
}

}  // namespace distill
