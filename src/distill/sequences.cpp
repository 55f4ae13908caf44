#include "distill/sequences.h"

#include <torch/torch.h>
#include <xxhash.h>

#include <algorithm>
#include <random>
#include <unordered_map>

#include "distill/api-capture.h"
#include "eval/eval.h"
#include "train/distributed.h"
#include "tokenizer/chat-template.h"
#include "util/error.h"
#include "util/file.h"
#include "util/utf8.h"

namespace distill {

using json = nlohmann::json;

namespace {

// The bytes a returned token stands for: its `bytes` when given, else its text's UTF-8.
std::string entry_bytes(const json& e, size_t bytes_at) {
    std::string b;
    if (e.is_array() && e.size() > bytes_at && e[bytes_at].is_array()) {
        for (const auto& x : e[bytes_at]) b.push_back(static_cast<char>(x.get<int>()));
    } else if (e.is_object() && e.contains("bytes") && e["bytes"].is_array()) {
        for (const auto& x : e["bytes"]) b.push_back(static_cast<char>(x.get<int>()));
    }
    return b;
}

}  // namespace

SequenceSet load_sequences(const std::string& dataset, const Tokenizer& tok, int64_t seq_len) {
    const std::vector<ApiSample> samples = read_api_dataset(dataset);
    DISTILL_CHECK(!samples.empty(), dataset, " holds no samples yet (capture into it first)");
    // every non-special token of the student, by the bytes it stands for
    std::unordered_map<std::string, int64_t> by_bytes;
    for (int32_t id = 0; id < tok.vocab_size(); ++id)
        if (!tok.is_special(id)) by_bytes.emplace(tok.token_bytes(id), id);
    const ChatTemplate chat = ChatTemplate::distill_chatml();
    const int32_t eos = tok.eos_id();

    SequenceSet set;
    XXH3_state_t* h = XXH3_createState();
    XXH3_64bits_reset(h);
    const std::string fp = tok.fingerprint();
    XXH3_64bits_update(h, fp.data(), fp.size());
    for (const ApiSample& s : samples) {
        const json& r = s.record;
        const std::string dump = r.dump();
        XXH3_64bits_update(h, dump.data(), dump.size());
        if (r.contains("usage") && r["usage"].is_object()) set.teacher_tokens += r["usage"].value("total_tokens", int64_t(0));
        SequenceSet::Seq q;
        if (r.value("kind", "") == "chat") {
            ChatOptions opt;
            opt.add_generation_prompt = true;
            std::string text = chat.render(nlohmann::ordered_json(r["messages"]), opt);
            if (tok.bos_id() >= 0) q.ids.push_back(tok.bos_id());
            for (int32_t t : tok.encode(text)) q.ids.push_back(t);
        } else {
            q.ids = encode_for_eval(tok, r.value("prompt", std::string()));
        }
        q.completion_from = static_cast<int64_t>(q.ids.size());
        const std::string text = r.value("text", std::string());
        // the teacher's own tokens, when each is one student token and together they spell the text
        bool mapped = r.contains("logprobs") && r["logprobs"].is_array() && !r["logprobs"].empty();
        std::vector<int64_t> ids;
        std::vector<std::vector<std::pair<int64_t, float>>> top;
        std::string spelled;
        if (mapped) {
            for (const json& e : r["logprobs"]) {
                const std::string b = entry_bytes(e, 0);
                auto it = by_bytes.find(b);
                if (it == by_bytes.end()) {
                    mapped = false;
                    break;
                }
                spelled += b;
                ids.push_back(it->second);
                std::vector<std::pair<int64_t, float>> alts;
                for (const json& t : e.value("top", json::array())) {
                    auto jt = by_bytes.find(entry_bytes(t, 2));
                    if (jt == by_bytes.end() || !t.is_array() || t.size() < 2 || !t[1].is_number()) continue;
                    if (std::none_of(alts.begin(), alts.end(), [&](const auto& a) { return a.first == jt->second; }))
                        alts.push_back({jt->second, t[1].get<float>()});
                }
                set.top_k = std::max<int64_t>(set.top_k, static_cast<int64_t>(alts.size()));
                top.push_back(std::move(alts));
            }
            // the API's text repairs broken UTF-8 (U+FFFD); the tokens' bytes are the truth
            mapped = mapped && utf8_lossy(spelled) == text;
        }
        if (mapped) {
            ++set.mapped;
        } else {
            ids.clear();
            top.clear();
            for (int32_t t : tok.encode(text)) ids.push_back(t);
        }
        q.ids.insert(q.ids.end(), ids.begin(), ids.end());
        if (r.value("finish_reason", "") == "stop" && eos >= 0) {
            q.ids.push_back(eos);  // the teacher ended here: so should the student
            if (mapped) top.push_back({{eos, 0.0f}});
        }
        q.top = std::move(top);
        // keep the end: the completion matters, the prompt is context
        const int64_t keep = seq_len + 1;
        if (static_cast<int64_t>(q.ids.size()) > keep) {
            const int64_t cut = static_cast<int64_t>(q.ids.size()) - keep;
            q.ids.erase(q.ids.begin(), q.ids.begin() + cut);
            if (cut > q.completion_from) {
                if (!q.top.empty()) q.top.erase(q.top.begin(), q.top.begin() + (cut - q.completion_from));
                q.completion_from = 0;
            } else {
                q.completion_from -= cut;
            }
        }
        if (static_cast<int64_t>(q.ids.size()) < 2 || q.completion_from >= static_cast<int64_t>(q.ids.size())) continue;
        set.completion_tokens += static_cast<int64_t>(q.ids.size()) - std::max<int64_t>(q.completion_from, 1);
        set.seqs.push_back(std::move(q));
    }
    set.samples = static_cast<int64_t>(samples.size());
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(XXH3_64bits_digest(h)));
    XXH3_freeState(h);
    set.fingerprint = buf;
    DISTILL_CHECK(!set.seqs.empty(), dataset, ": no sample has a completion to learn from");
    return set;
}

LossFn make_sequence_loss(Llama& student, const SequenceSet& set, const TrainOptions& t, const LossOptions& lo,
                          Distributed* dist) {
    const bool kd = lo.kind != LossKind::kCrossEntropy;
    std::vector<size_t> pool;
    for (size_t i = 0; i < set.seqs.size(); ++i)
        if (!kd || !set.seqs[i].top.empty()) pool.push_back(i);
    DISTILL_CHECK(!pool.empty(), "no sample's tokens map onto the student's vocabulary, so there are no teacher ",
                  "log-probs to distill from: train with --loss ce (sequence-level), or capture with logprobs");
    const int64_t K = std::max<int64_t>(set.top_k, 1);
    const auto [r0, r1] = dist ? rank_rows(t.batch_size, dist->rank(), dist->world())
                               : std::pair<int64_t, int64_t>{0, t.batch_size};
    return [&student, &set, t, lo, kd, pool, K, dist, r0 = r0, r1 = r1](int64_t step, int64_t micro) {
        std::mt19937_64 rng(t.seed * 1000003ull + static_cast<uint64_t>(step) * 1009ull + static_cast<uint64_t>(micro));
        std::uniform_int_distribution<size_t> pick(0, pool.size() - 1);
        std::vector<const SequenceSet::Seq*> batch;
        int64_t T = 1;
        for (int64_t b = 0; b < t.batch_size; ++b) {
            const SequenceSet::Seq* q = &set.seqs[pool[pick(rng)]];  // every rank draws the whole batch
            if (b < r0 || b >= r1) continue;
            batch.push_back(q);
            T = std::max<int64_t>(T, static_cast<int64_t>(q->ids.size()) - 1);
        }
        const int64_t B = static_cast<int64_t>(batch.size());
        std::vector<int64_t> inputs(B * T, 0), targets(B * T, kIgnoreIndex), tids;
        if (kd) {
            tids.resize(B * T * K);
            for (int64_t r = 0; r < B * T; ++r)
                for (int64_t k = 0; k < K; ++k) tids[r * K + k] = k;  // filler rows (ignored targets)
        }
        std::vector<float> lpf(kd ? B * T * K : 0, 0.0f);
        int64_t tokens = 0;
        for (int64_t b = 0; b < B; ++b) {
            const auto& q = *batch[b];
            const int64_t n = static_cast<int64_t>(q.ids.size()) - 1;
            for (int64_t j = 0; j < n; ++j) {
                inputs[b * T + j] = q.ids[j];
                const int64_t target_at = j + 1;
                if (target_at < q.completion_from) continue;  // a prompt token: context only
                targets[b * T + j] = q.ids[target_at];
                ++tokens;
                if (!kd) continue;
                const int64_t row = b * T + j;
                const auto& alts = q.top[target_at - q.completion_from];
                // the returned alternatives, then unused ids at (almost) no mass
                int64_t k = 0;
                for (; k < static_cast<int64_t>(alts.size()) && k < K; ++k) {
                    tids[row * K + k] = alts[k].first;
                    lpf[row * K + k] = alts[k].second;
                }
                int64_t filler = 0;
                for (; k < K; ++k) {
                    while (std::any_of(alts.begin(), alts.end(), [&](const auto& a) { return a.first == filler; }))
                        ++filler;
                    tids[row * K + k] = filler++;
                    lpf[row * K + k] = -30.0f;
                }
            }
        }
        if (kd)
            for (int64_t r = 0; r < B * T; ++r)
                if (targets[r] == kIgnoreIndex)
                    for (int64_t k = 0; k < K; ++k) lpf[r * K + k] = k == 0 ? 0.0f : -30.0f;
        const torch::Device dev = student->parameters().front().device();
        auto in = torch::tensor(inputs, torch::kInt64).view({B, T}).to(dev);
        auto tg = torch::tensor(targets, torch::kInt64).to(dev);
        torch::Tensor logits = student->forward(in).view({B * T, -1});
        StepLoss out;
        out.tokens = tokens;
        // data parallel: this rank's mean weighted by its share of the batch's completion tokens
        double scale = 1.0;
        if (dist) {
            std::vector<double> all{double(tokens)};
            dist->all_reduce_sum(all);
            scale = all[0] > 0 ? double(tokens) * double(dist->world()) / all[0] : 0.0;
        }
        if (tokens == 0) {
            out.loss = logits.sum() * 0.0;  // no completion token in this rank's rows
        } else if (!kd) {
            out.loss = torch::nn::functional::cross_entropy(
                logits, tg, torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex));
        } else {
            auto ids = torch::tensor(tids, torch::kInt64).view({B * T, K}).to(dev);
            auto lps = torch::from_blob(lpf.data(), {B * T, K}, torch::kFloat32).clone().to(dev);
            out.loss = loss_sparse(logits, ids, lps, tg, lo);
        }
        if (scale != 1.0) out.loss = out.loss * scale;
        return out;
    };
}

}  // namespace distill
