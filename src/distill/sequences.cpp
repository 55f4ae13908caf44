#include "distill/sequences.h"

#include <torch/torch.h>
#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <unordered_map>

#include "distill/api-capture.h"
#include "distill/cross-tokenizer.h"
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

// Returned tokens (entries {token, bytes, logprob, top: [[token, logprob, bytes], ...]}) as
// student ids with their alternatives: ok when each is one student token and together they
// spell `text` (the API's text repairs broken UTF-8 as U+FFFD; the tokens' bytes are the truth).
struct Mapped {
    bool ok = false;
    std::vector<int64_t> ids;
    std::vector<std::vector<std::pair<int64_t, float>>> top;
};

Mapped map_tokens(const json& entries, const std::unordered_map<std::string, int64_t>& by_bytes,
                  const std::string& text) {
    Mapped m;
    if (!entries.is_array() || entries.empty()) return m;
    std::string spelled;
    for (const json& e : entries) {
        auto it = by_bytes.find(entry_bytes(e, 0));
        if (it == by_bytes.end()) return m;
        spelled += it->first;
        m.ids.push_back(it->second);
        std::vector<std::pair<int64_t, float>> alts;
        for (const json& t : e.value("top", json::array())) {
            if (!t.is_array() || t.size() < 2 || !t[1].is_number()) continue;
            auto jt = by_bytes.find(entry_bytes(t, 2));
            if (jt == by_bytes.end()) continue;
            if (std::none_of(alts.begin(), alts.end(), [&](const auto& a) { return a.first == jt->second; }))
                alts.push_back({jt->second, t[1].get<float>()});
        }
        m.top.push_back(std::move(alts));
    }
    m.ok = utf8_lossy(spelled) == text;
    return m;
}

// The student token a teacher token's probability goes to across tokenizers ("first", as the
// offline cross-tokenizer map does): the student token of exactly those bytes, else the student's
// first token of them when it is a prefix of them; -1 when neither (the rest bucket). Cached by
// the bytes: the same alternatives come back at many positions.
class FirstToken {
public:
    FirstToken(const Tokenizer& tok, const std::unordered_map<std::string, int64_t>& by_bytes)
        : tok_(tok), by_bytes_(by_bytes) {}
    int64_t operator()(const std::string& b) {
        auto c = cache_.find(b);
        if (c != cache_.end()) return c->second;
        int64_t u = -1;
        auto it = by_bytes_.find(b);
        if (it != by_bytes_.end()) {
            u = it->second;
        } else if (!b.empty()) {
            const std::vector<int32_t> ids = tok_.encode(b);
            if (!ids.empty() && !tok_.is_special(ids[0])) {
                const std::string first = tok_.token_bytes(ids[0]);
                if (b.compare(0, first.size(), first) == 0) u = ids[0];
            }
        }
        cache_.emplace(b, u);
        return u;
    }

private:
    const Tokenizer& tok_;
    const std::unordered_map<std::string, int64_t>& by_bytes_;
    std::unordered_map<std::string, int64_t> cache_;
};

// Across tokenizers (docs/losses.md, "Across tokenizers"): the teacher's returned tokens spell
// `text` in its own tokenization, the student encodes the same text in its own. Where the
// student's token j begins at a byte where a teacher token begins, the teacher's alternatives for
// that token (its distribution of the next token, from the same text) become student targets:
// each alternative's probability goes to FirstToken of its bytes, summed where several land on one
// student token; the rest of the teacher's mass stays in the rest bucket. ok when the teacher's
// tokens spell the text; `aligned` counts the positions that got targets.
Mapped align_tokens(const json& entries, const Tokenizer& tok, FirstToken& first, const std::string& text,
                    int64_t* aligned) {
    Mapped m;
    if (!entries.is_array() || entries.empty()) return m;
    std::vector<int64_t> t_start;  // byte where each teacher token begins
    std::string spelled;
    for (const json& e : entries) {
        t_start.push_back(static_cast<int64_t>(spelled.size()));
        spelled += entry_bytes(e, 0);
    }
    if (utf8_lossy(spelled) != text) return m;
    std::unordered_map<int64_t, size_t> teacher_at;  // begin byte -> entry
    for (size_t i = 0; i < t_start.size(); ++i) teacher_at.emplace(t_start[i], i);
    int64_t at = 0;
    for (int32_t id : tok.encode(text)) {
        m.ids.push_back(id);
        std::vector<std::pair<int64_t, float>> alts;
        auto t = teacher_at.find(at);
        if (t != teacher_at.end()) {
            std::unordered_map<int64_t, double> mass;
            for (const json& a : entries[t->second].value("top", json::array())) {
                if (!a.is_array() || a.size() < 2 || !a[1].is_number()) continue;
                const int64_t u = first(entry_bytes(a, 2));
                if (u >= 0) mass[u] += std::exp(a[1].get<double>());
            }
            for (const auto& [u, p] : mass) alts.push_back({u, static_cast<float>(std::min(0.0, std::log(p)))});
            std::sort(alts.begin(), alts.end(), [](const auto& x, const auto& y) { return x.second > y.second; });
            *aligned += !alts.empty();
        }
        m.top.push_back(std::move(alts));
        at += static_cast<int64_t>(tok.token_bytes(id).size());
    }
    m.ok = true;
    return m;
}

}  // namespace

SequenceSet load_sequences(const std::string& dataset, const Tokenizer& tok, int64_t seq_len) {
    // every non-special token of the student, by the bytes it stands for
    std::unordered_map<std::string, int64_t> by_bytes;
    for (int32_t id = 0; id < tok.vocab_size(); ++id)
        if (!tok.is_special(id)) by_bytes.emplace(tok.token_bytes(id), id);
    const ChatTemplate chat = ChatTemplate::distill_chatml();
    const int32_t eos = tok.eos_id();
    FirstToken first(tok, by_bytes);

    // The samples are read one line at a time and kept only as token ids and alternatives (the
    // parsed JSON of a dataset with top-20 log-probs is about ten times the file), then put in
    // (prompt_index, sample) order, the same whatever order the capture wrote them in.
    SequenceSet set;
    using Key = std::pair<int64_t, int64_t>;
    std::vector<std::pair<Key, uint64_t>> record_hashes;  // the fingerprint: each record's hash, in order
    std::vector<std::pair<Key, SequenceSet::Seq>> keyed;
    for_each_api_sample(dataset, [&](ApiSample&& s) {
        const json& r = s.record;
        const Key key{s.prompt_index, s.sample};
        record_hashes.emplace_back(key, s.line_hash);
        ++set.samples;
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
        const std::string text = r.value("text", std::string());
        // a scored prompt (capture --score-prompts): the teacher's own prompt tokens and their
        // alternatives, when each is one student token and together they spell the prompt
        Mapped pm;
        if (r.value("kind", "") != "chat" && r.contains("prompt_logprobs")) {
            pm = map_tokens(r["prompt_logprobs"], by_bytes, r.value("prompt", std::string()));
            if (!pm.ok)  // another tokenizer's tokens: aligned on bytes
                pm = align_tokens(r["prompt_logprobs"], tok, first, r.value("prompt", std::string()), &set.cross_aligned);
        }
        if (pm.ok) {
            ++set.prompts_scored;
            q.ids.clear();
            if (tok.bos_id() >= 0) q.ids.push_back(tok.bos_id());
            q.top_from = static_cast<int64_t>(q.ids.size());
            q.ids.insert(q.ids.end(), pm.ids.begin(), pm.ids.end());
            q.top = std::move(pm.top);
        }
        q.completion_from = static_cast<int64_t>(q.ids.size());
        if (!pm.ok) q.top_from = q.completion_from;
        // the teacher's own tokens, when each is one student token and together they spell the text
        Mapped cm = map_tokens(r.value("logprobs", json()), by_bytes, text);
        bool cross = false;
        if (cm.ok) {
            ++set.mapped;
        } else if ((cm = align_tokens(r.value("logprobs", json()), tok, first, text, &set.cross_aligned)).ok) {
            ++set.cross_samples;  // another tokenizer's tokens: aligned on bytes
            cross = true;
            q.cross = true;
        } else {
            cm.ids.clear();
            for (int32_t t : tok.encode(text)) cm.ids.push_back(t);
            cm.top.assign(cm.ids.size(), {});  // no alternatives on re-encoded text
        }
        q.ids.insert(q.ids.end(), cm.ids.begin(), cm.ids.end());
        const bool with_top = cm.ok || pm.ok;
        if (with_top) q.top.insert(q.top.end(), std::make_move_iterator(cm.top.begin()), std::make_move_iterator(cm.top.end()));
        if (r.value("finish_reason", "") == "stop" && eos >= 0) {
            q.ids.push_back(eos);  // the teacher ended here: so should the student
            // the teacher stopped: p(EOS) = 1 there, for the same tokenizer (across tokenizers the
            // teacher's end-of-text token is not the student's)
            if (with_top) q.top.push_back(cm.ok && !cross ? std::vector<std::pair<int64_t, float>>{{eos, 0.0f}}
                                                          : std::vector<std::pair<int64_t, float>>{});
        }
        // keep the end: the completion matters, the prompt is context
        const int64_t keep = seq_len + 1;
        if (static_cast<int64_t>(q.ids.size()) > keep) {
            const int64_t cut = static_cast<int64_t>(q.ids.size()) - keep;
            q.ids.erase(q.ids.begin(), q.ids.begin() + cut);
            q.completion_from = std::max<int64_t>(q.completion_from - cut, 0);
            const int64_t drop = std::min<int64_t>(std::max<int64_t>(cut - q.top_from, 0), q.top.size());
            q.top.erase(q.top.begin(), q.top.begin() + drop);
            q.top_from = std::max<int64_t>(q.top_from - cut, 0);
        }
        if (!q.top.empty() && q.top_from == 0) q.top[0].clear();  // nothing before it to predict from
        const bool completion = q.completion_from < static_cast<int64_t>(q.ids.size());
        if (static_cast<int64_t>(q.ids.size()) < 2 || (!completion && !q.has_top())) return;
        for (const auto& a : q.top) {
            set.kd_positions += !a.empty();
            set.top_k = std::max<int64_t>(set.top_k, static_cast<int64_t>(a.size()));
        }
        if (completion)
            set.completion_tokens += static_cast<int64_t>(q.ids.size()) - std::max<int64_t>(q.completion_from, 1);
        keyed.emplace_back(key, std::move(q));
    });
    DISTILL_CHECK(set.samples > 0, dataset, " holds no samples yet (capture into it first)");
    const auto by_key = [](const auto& a, const auto& b) { return a.first < b.first; };
    std::stable_sort(keyed.begin(), keyed.end(), by_key);
    std::stable_sort(record_hashes.begin(), record_hashes.end(), by_key);
    set.seqs.reserve(keyed.size());
    for (auto& [key, q] : keyed) set.seqs.push_back(std::move(q));
    XXH3_state_t* h = XXH3_createState();
    XXH3_64bits_reset(h);
    const std::string fp = tok.fingerprint();
    XXH3_64bits_update(h, fp.data(), fp.size());
    for (const auto& [key, hash] : record_hashes) XXH3_64bits_update(h, &hash, sizeof hash);
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(XXH3_64bits_digest(h)));
    XXH3_freeState(h);
    set.fingerprint = buf;
    DISTILL_CHECK(!set.seqs.empty(), dataset, ": no sample has a completion or a scored prompt to learn from");
    return set;
}

LossFn make_sequence_loss(Llama& student, const SequenceSet& set, const TrainOptions& t, const LossOptions& lo,
                          Distributed* dist) {
    const bool kd = lo.kind != LossKind::kCrossEntropy;
    std::vector<size_t> pool;
    for (size_t i = 0; i < set.seqs.size(); ++i)
        if (kd ? set.seqs[i].has_top()
               : set.seqs[i].completion_from < static_cast<int64_t>(set.seqs[i].ids.size()))
            pool.push_back(i);
    DISTILL_CHECK(!pool.empty() || kd, "the dataset has scored prompts but no completions: sequence-level training ",
                  "(--loss ce) learns from completions; use a KD loss, or capture with --max-tokens above 0");
    DISTILL_CHECK(!pool.empty(), "no sample's tokens map onto the student's vocabulary, so there are no teacher ",
                  "log-probs to distill from: train with --loss ce (sequence-level), or capture with logprobs");
    const auto [r0, r1] = dist ? rank_rows(t.batch_size, dist->rank(), dist->world())
                               : std::pair<int64_t, int64_t>{0, t.batch_size};
    return [&student, &set, t, lo, kd, pool, dist, r0 = r0, r1 = r1](int64_t step, int64_t micro) {
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
        std::vector<int64_t> inputs(B * T, 0), targets(B * T, kIgnoreIndex);
        // KD: the rows with the teacher's alternatives, each with its own K (the sparse losses
        // are exact on its K + 1 buckets; padding a row to a common K would take the student's
        // mass on the padding out of the rest bucket). The cross-entropy part (--ce-weight) is
        // taken on every completion token, as the offline cross-tokenizer loss takes it on every
        // position: across tokenizers a student token inside a teacher token has no alternatives
        // (only boundaries align), and it still has to be learned.
        std::vector<int64_t> kd_rows;
        std::vector<std::vector<std::pair<int64_t, float>>> kd_tops;
        int64_t tokens = 0;
        for (int64_t b = 0; b < B; ++b) {
            const auto& q = *batch[b];
            const int64_t n = static_cast<int64_t>(q.ids.size()) - 1;
            for (int64_t j = 0; j < n; ++j) {
                inputs[b * T + j] = q.ids[j];
                const int64_t target_at = j + 1;
                const bool completion = target_at >= q.completion_from;
                if (!kd) {
                    if (!completion) continue;  // a prompt token: context only
                    targets[b * T + j] = q.ids[target_at];
                    ++tokens;
                    continue;
                }
                // wherever the teacher's alternatives are (a scored prompt's tokens too)
                const int64_t at = target_at - q.top_from;
                const bool top = at >= 0 && at < static_cast<int64_t>(q.top.size()) && !q.top[at].empty();
                if (top) {
                    kd_rows.push_back(b * T + j);
                    kd_tops.push_back(q.top[at]);
                }
                if (top || (completion && lo.ce_weight > 0)) {
                    targets[b * T + j] = q.ids[target_at];
                    ++tokens;
                }
            }
        }
        const torch::Device dev = student->parameters().front().device();
        auto in = torch::tensor(inputs, torch::kInt64).view({B, T}).to(dev);
        auto tg = torch::tensor(targets, torch::kInt64).to(dev);
        torch::Tensor logits = student->forward(in).view({B * T, -1});
        StepLoss out;
        out.tokens = tokens;
        // each term's mean over the whole batch: with data parallel, this rank's sum over the
        // batch's count (times the world size, as the ranks' losses are averaged)
        std::vector<double> counts{double(tokens), double(kd_rows.size())};
        double world = 1;
        if (dist) {
            dist->all_reduce_sum(counts);
            world = double(dist->world());
        }
        const auto sum_ce = [&] {
            return torch::nn::functional::cross_entropy(
                logits, tg,
                torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex).reduction(torch::kSum));
        };
        torch::Tensor loss;
        const auto add = [&](const torch::Tensor& term) { loss = loss.defined() ? loss + term : term; };
        if (!kd) {
            if (tokens > 0) add(sum_ce() * (world / counts[0]));
        } else {
            const double w = lo.ce_weight;
            LossOptions div = lo;
            div.ce_weight = 0;
            if (w > 0 && tokens > 0) add(w * world / counts[0] * sum_ce());
            if (w < 1 && !kd_rows.empty())
                add((1.0 - w) * world / counts[1] * loss_sparse_rows(logits, kd_rows, kd_tops, tg, div));
        }
        out.loss = loss.defined() ? loss : logits.sum() * 0.0;  // no target in this rank's rows
        return out;
    };
}

}  // namespace distill
