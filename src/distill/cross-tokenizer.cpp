#include "distill/cross-tokenizer.h"

#include <torch/torch.h>
#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <unordered_map>

#include "train/distributed.h"
#include "util/error.h"
#include "util/file.h"

namespace distill {

CrossTokenizerMapping cross_tokenizer_mapping_from_string(const std::string& name) {
    if (name == "first") return CrossTokenizerMapping::kFirst;
    if (name == "exact") return CrossTokenizerMapping::kExact;
    throw Error(str_cat("unknown cross-tokenizer mapping '", name, "': use first or exact"));
}

std::string cross_tokenizer_mapping_name(CrossTokenizerMapping m) {
    return m == CrossTokenizerMapping::kFirst ? "first" : "exact";
}

namespace {

// The byte offset where each token of a shard ends, and the length and hash of the text spelled.
struct Spelling {
    std::vector<int64_t> ends;
    int64_t bytes = 0;
    uint64_t hash = 0;
};

Spelling spell(const TokenShard& shard, const Tokenizer& tok) {
    std::vector<std::string> spelled(static_cast<size_t>(tok.vocab_size()));
    for (int32_t id = 0; id < tok.vocab_size(); ++id) spelled[id] = tok.token_bytes(id);
    Spelling s;
    s.ends.resize(static_cast<size_t>(shard.size()));
    XXH3_state_t* h = XXH3_createState();
    DISTILL_ASSERT(h != nullptr, "out of memory");
    XXH3_64bits_reset(h);
    for (int64_t i = 0; i < shard.size(); ++i) {
        const int64_t id = shard.at(i);
        DISTILL_CHECK(id < tok.vocab_size(), "shard '", shard.info().source, "' has id ", id,
                      " beyond its tokenizer's vocabulary (", tok.vocab_size(), ")");
        const std::string& b = spelled[static_cast<size_t>(id)];
        XXH3_64bits_update(h, b.data(), b.size());
        s.bytes += static_cast<int64_t>(b.size());
        s.ends[static_cast<size_t>(i)] = s.bytes;
    }
    s.hash = XXH3_64bits_digest(h);
    XXH3_freeState(h);
    return s;
}

}  // namespace

CrossTokenizerMap build_cross_tokenizer_map(const TokenShard& student_shard, const Tokenizer& student_tok,
                                            const TokenShard& teacher_shard, const Tokenizer& teacher_tok,
                                            const LogitCacheReader& cache, CrossTokenizerMapping mapping) {
    const LogitCacheInfo& info = cache.info();
    DISTILL_CHECK(info.tokenizer_fingerprint == teacher_tok.fingerprint(),
                  "the teacher cache was captured with another tokenizer (fingerprint ", info.tokenizer_fingerprint,
                  ") than --teacher-tokenizer (", teacher_tok.fingerprint(), "); pass the teacher's tokenizer");
    DISTILL_CHECK(teacher_shard.info().tokenizer_fingerprint == teacher_tok.fingerprint(),
                  "--teacher-data was made with another tokenizer than --teacher-tokenizer");
    DISTILL_CHECK(info.data_fingerprint == teacher_shard.info().fingerprint,
                  "the teacher cache was captured on other data (fingerprint ", info.data_fingerprint,
                  ") than --teacher-data (", teacher_shard.info().fingerprint,
                  "); pass the shard the cache was captured on");
    DISTILL_CHECK(student_shard.info().tokenizer_fingerprint == student_tok.fingerprint(),
                  "--data was made with another tokenizer than the student's");
    DISTILL_CHECK(cache.complete(), "the teacher cache is incomplete (", cache.num_windows(), " of ",
                  info.num_windows, " windows): re-run `distill capture` to finish it");

    const Spelling s = spell(student_shard, student_tok), t = spell(teacher_shard, teacher_tok);
    DISTILL_CHECK(s.bytes == t.bytes && s.hash == t.hash,
                  "--data and --teacher-data do not hold the same text (", s.bytes, " and ", t.bytes, " bytes",
                  s.bytes == t.bytes ? ", other content" : "",
                  "): prepare both shards from the same text file with `distill prepare`");

    CrossTokenizerMap m;
    m.mapping = mapping;
    m.teacher_window = info.window;
    m.cached_positions = info.num_windows * info.window;

    // Alignment: student token j and teacher token i end at the same byte.
    const int64_t Ns = student_shard.size(), Nt = teacher_shard.size();
    m.teacher_pos.assign(static_cast<size_t>(Ns), -1);
    for (int64_t i = 0, j = 0; i < Nt && j < Ns;) {
        const int64_t te = t.ends[static_cast<size_t>(i)], se = s.ends[static_cast<size_t>(j)];
        if (te == se) {
            // the teacher's prediction there is in the cache (it predicts teacher token i + 1)
            if (i < m.cached_positions && j + 1 < Ns) {
                m.teacher_pos[static_cast<size_t>(j)] = i;
                ++m.aligned;
            }
            ++i;
            ++j;
        } else if (te < se) {
            ++i;
        } else {
            ++j;
        }
    }

    // Teacher ids onto student ids.
    std::unordered_map<std::string, int32_t> by_bytes;
    for (int32_t id = 0; id < student_tok.vocab_size(); ++id)
        if (!student_tok.is_special(id)) by_bytes.emplace(student_tok.token_bytes(id), id);
    m.to_student.assign(static_cast<size_t>(info.vocab_size), -1);
    for (int32_t v = 0; v < info.vocab_size && v < teacher_tok.vocab_size(); ++v) {
        if (teacher_tok.is_special(v)) continue;
        const std::string b = teacher_tok.token_bytes(v);
        if (b.empty()) continue;
        auto it = by_bytes.find(b);
        if (it != by_bytes.end()) ++m.exact_ids;
        int32_t u = -1;
        if (mapping == CrossTokenizerMapping::kExact) {
            if (it != by_bytes.end()) u = it->second;
        } else if (it != by_bytes.end()) {
            u = it->second;
        } else {
            // the student's first token of this spelling; kept only when it is a prefix of it
            // (a piece of broken UTF-8 may be encoded otherwise)
            const std::vector<int32_t> ids = student_tok.encode(b);
            if (!ids.empty() && !student_tok.is_special(ids[0])) {
                const std::string first = student_tok.token_bytes(ids[0]);
                if (!first.empty() && b.compare(0, first.size(), first) == 0) u = ids[0];
            }
        }
        m.to_student[static_cast<size_t>(v)] = u;
        if (u >= 0) ++m.mapped_ids;
    }
    m.fingerprint = hash_hex(str_cat("cross-tokenizer v1 ", cross_tokenizer_mapping_name(mapping), " ",
                                     student_shard.info().fingerprint, " ", student_tok.fingerprint(), " ",
                                     teacher_shard.info().fingerprint, " ", teacher_tok.fingerprint(), " ",
                                     info.teacher_fingerprint, " ", info.top_k));
    return m;
}

CrossTokenizerTargets cross_tokenizer_targets(const LogitCacheReader& cache, const CrossTokenizerMap& map,
                                              const std::vector<int64_t>& starts, int64_t seq_len,
                                              int64_t student_vocab) {
    const int64_t K = cache.info().top_k, Tt = map.teacher_window;
    // the teacher windows this batch touches, each decoded once
    std::map<int64_t, std::pair<std::vector<int32_t>, std::vector<float>>> windows;
    auto window = [&](int64_t w) -> const std::pair<std::vector<int32_t>, std::vector<float>>& {
        auto it = windows.find(w);
        if (it != windows.end()) return it->second;
        auto& e = windows[w];
        e.first.resize(static_cast<size_t>(Tt * K));
        e.second.resize(static_cast<size_t>(Tt * K));
        cache.read_window(w, e.first.data(), e.second.data());
        return e;
    };
    CrossTokenizerTargets out;
    for (size_t b = 0; b < starts.size(); ++b) {
        for (int64_t p = 0; p < seq_len; ++p) {
            const int64_t j = starts[b] + p;
            DISTILL_ASSERT(j >= 0 && j < static_cast<int64_t>(map.teacher_pos.size()), "window outside the shard");
            const int64_t i = map.teacher_pos[static_cast<size_t>(j)];
            if (i < 0) continue;
            ++out.aligned;
            const auto& w = window(i / Tt);
            const int64_t at = (i % Tt) * K;
            std::vector<std::pair<int64_t, double>> row;  // (student id, teacher mass)
            for (int64_t k = 0; k < K; ++k) {
                const int32_t tid = w.first[static_cast<size_t>(at + k)];
                const float lp = w.second[static_cast<size_t>(at + k)];
                if (tid < 0 || tid >= static_cast<int32_t>(map.to_student.size())) continue;
                const int32_t u = map.to_student[static_cast<size_t>(tid)];
                if (u < 0 || u >= student_vocab || !std::isfinite(lp)) continue;
                auto it = std::find_if(row.begin(), row.end(), [&](const auto& e) { return e.first == u; });
                if (it == row.end()) {
                    row.emplace_back(u, std::exp(double(lp)));
                } else {
                    it->second += std::exp(double(lp));
                }
            }
            if (row.empty()) continue;  // all of it in the rest: nothing to learn there
            std::sort(row.begin(), row.end(), [](const auto& x, const auto& y) { return x.second > y.second; });
            std::vector<std::pair<int64_t, float>> top;
            top.reserve(row.size());
            for (const auto& [u, mass] : row) top.emplace_back(u, static_cast<float>(std::log(std::min(1.0, mass))));
            out.rows.push_back(static_cast<int64_t>(b) * seq_len + p);
            out.top.push_back(std::move(top));
        }
    }
    return out;
}

torch::Tensor loss_sparse_rows(const torch::Tensor& flat, const std::vector<int64_t>& rows_in,
                               const std::vector<std::vector<std::pair<int64_t, float>>>& tops,
                               const torch::Tensor& targets, const LossOptions& kd) {
    DISTILL_CHECK(rows_in.size() == tops.size() && !rows_in.empty(), "loss_sparse_rows: one target list per row");
    std::map<size_t, std::vector<size_t>> by_k;
    for (size_t r = 0; r < tops.size(); ++r) by_k[tops[r].size()].push_back(r);
    const torch::Device dev = flat.device();
    torch::Tensor sum;
    for (const auto& [k, members] : by_k) {
        DISTILL_CHECK(k > 0, "loss_sparse_rows: a row without targets");
        const int64_t m = static_cast<int64_t>(members.size()), kk = static_cast<int64_t>(k);
        std::vector<int64_t> rows, ids;
        std::vector<float> lps;
        for (size_t r : members) {
            rows.push_back(rows_in[r]);
            for (const auto& [u, lp] : tops[r]) {
                ids.push_back(u);
                lps.push_back(lp);
            }
        }
        auto rt = torch::tensor(rows, torch::kInt64).to(dev);
        auto g = loss_sparse(flat.index_select(0, rt), torch::tensor(ids, torch::kInt64).reshape({m, kk}).to(dev),
                             torch::tensor(lps, torch::kFloat32).reshape({m, kk}).to(dev), targets.index_select(0, rt),
                             kd) *
                 double(m);
        sum = sum.defined() ? sum + g : g;
    }
    return sum;
}

LossFn make_cross_tokenizer_loss(Llama& student, const TokenShard& shard, const BatchSpec& spec_in,
                                 const LossOptions& loss, const LogitCacheReader& cache,
                                 const CrossTokenizerMap& map, Distributed* dist) {
    DISTILL_CHECK(loss.kind != LossKind::kCrossEntropy, "a cross-tokenizer student needs a KD loss, not ce");
    DISTILL_CHECK(static_cast<int64_t>(map.teacher_pos.size()) == shard.size(),
                  "the cross-tokenizer alignment was built for another shard");
    BatchSpec spec = spec_in;
    spec.aligned = false;  // any offset: the teacher's windows are found by byte
    spec.device = student->parameters().front().device();
    LossOptions kd = loss;
    kd.ce_weight = 0;
    return [&student, &shard, &cache, &map, spec, loss, kd, dist](int64_t step, int64_t micro) {
        Batch b = sample_batch(shard, spec, step, micro);
        const int64_t B = b.tokens.size(0), T = spec.seq_len;  // B: this rank's rows
        auto inputs = b.tokens.narrow(1, 0, T);
        auto targets = b.tokens.narrow(1, 1, T).reshape({-1});
        auto logits = student->forward(inputs);
        const int64_t V = logits.size(-1);
        auto flat = logits.reshape({-1, V});
        const CrossTokenizerTargets tg = cross_tokenizer_targets(cache, map, b.starts, T, V);
        const int64_t n = static_cast<int64_t>(tg.rows.size());
        // the KD term's denominator: the aligned positions of the whole batch, over every rank
        double denom = double(n);
        if (dist) {
            std::vector<double> count{double(n)};
            dist->all_reduce_sum(count);
            denom = count[0] / double(dist->world());
        }
        StepLoss out;
        out.tokens = B * T;
        out.extras["aligned_fraction"] = double(tg.aligned) / double(B * T);
        torch::Tensor total = loss.ce_weight > 0 ? loss.ce_weight * torch::nn::functional::cross_entropy(flat, targets)
                                                 : flat.sum() * 0.0;
        if (n > 0) {
            double mass = 0;
            for (const auto& row : tg.top)
                for (const auto& e : row) mass += std::exp(double(e.second));
            out.extras["mapped_mass"] = mass / double(n);
            const torch::Tensor kd_sum = loss_sparse_rows(flat, tg.rows, tg.top, targets, kd);
            total = total + (1.0 - loss.ce_weight) / denom * kd_sum;
        }
        out.loss = total;
        return out;
    };
}

}  // namespace distill
