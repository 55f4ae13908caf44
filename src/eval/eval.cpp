#include "eval/eval.h"

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

// The rows of logp (len, V) of window `win` that predict its scored targets.
torch::Tensor scored_rows(const torch::Tensor& logp, const Window& win) {
    return logp.narrow(0, win.score_from - 1 - win.begin, win.end - win.score_from);
}

}  // namespace

void for_each_window(Llama& model, const std::vector<int64_t>& ids, const WindowOptions& opts,
                     const WindowVisitor& visit, const std::string& progress_label) {
    check_window_options(model, opts);
    const int64_t N = static_cast<int64_t>(ids.size());
    if (N < 2) return;
    const auto wins = plan_windows(N, opts);
    torch::NoGradGuard ng;
    auto ids_t = torch::tensor(ids, torch::kInt64).to(model->parameters().front().device());
    for_each_batch(wins, ids_t, opts, progress_label, [&](size_t i, size_t j, const torch::Tensor& batch) {
        auto logp = torch::log_softmax(model->forward(batch), -1);  // (b, len, V)
        for (size_t w = i; w < j; ++w) {
            const Window& win = wins[w];
            visit(win.score_from, scored_rows(logp[w - i], win),
                  ids_t.narrow(0, win.score_from, win.end - win.score_from));
        }
    });
}

BpbResult eval_bpb(Llama& model, const Tokenizer& tokenizer, const std::string& text,
                   const WindowOptions& opts, const std::string& progress_label) {
    DISTILL_CHECK(!text.empty(), "cannot evaluate bits per byte on empty text");
    const double t0 = now_seconds();
    auto ids = encode_for_eval(tokenizer, text);
    torch::Tensor nats_t;  // summed on the model's device: one host copy at the end
    int64_t tokens = 0;
    for_each_window(
        model, ids, opts,
        [&](int64_t, const torch::Tensor& lp, const torch::Tensor& targets) {
            auto s = lp.gather(1, targets.unsqueeze(1)).sum().to(torch::kFloat64);
            nats_t = nats_t.defined() ? nats_t - s : -s;
            tokens += targets.size(0);
        },
        progress_label);
    double nats = nats_t.defined() ? nats_t.item<double>() : 0.0;
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

CompareResult eval_compare(Llama& teacher, Llama& student, const std::vector<int64_t>& ids,
                           const WindowOptions& opts) {
    DISTILL_CHECK(teacher->config().vocab_size == student->config().vocab_size,
                  "teacher and student vocabularies differ (", teacher->config().vocab_size, " vs ",
                  student->config().vocab_size, "): compare needs the same tokenizer");
    check_window_options(teacher, opts);
    check_window_options(student, opts);
    CompareResult r;
    const int64_t N = static_cast<int64_t>(ids.size());
    if (N < 2) return r;
    const auto wins = plan_windows(N, opts);
    torch::NoGradGuard ng;
    const torch::Device dev = teacher->parameters().front().device();
    DISTILL_CHECK(student->parameters().front().device() == dev, "teacher and student are on different devices");
    auto ids_t = torch::tensor(ids, torch::kInt64).to(dev);
    auto acc = torch::zeros({2}, torch::TensorOptions().dtype(torch::kFloat64).device(dev));  // agree, kl
    for_each_batch(wins, ids_t, opts, "", [&](size_t i, size_t j, const torch::Tensor& batch) {
        auto lp = torch::log_softmax(teacher->forward(batch), -1);  // (b, len, V)
        auto lq = torch::log_softmax(student->forward(batch), -1);
        for (size_t w = i; w < j; ++w) {
            auto p = scored_rows(lp[w - i], wins[w]);
            auto q = scored_rows(lq[w - i], wins[w]);
            acc[0] += (p.argmax(-1) == q.argmax(-1)).sum().to(torch::kFloat64);
            acc[1] += (p.exp() * (p - q)).sum().to(torch::kFloat64);
            r.positions += p.size(0);
        }
    });
    auto host = acc.to(torch::kCPU);
    const double agree = host[0].item<double>(), kl = host[1].item<double>();
    r.top1_agreement = r.positions ? agree / r.positions : 0;
    r.kl_to_teacher = r.positions ? kl / r.positions : 0;
    return r;
}

}  // namespace distill
