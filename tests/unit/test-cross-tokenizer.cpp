// Distillation across tokenizers (src/distill/cross-tokenizer.cpp): the loss against an
// independent Python reference (tests/ref/xtok_ref.py), and `distill train --teacher-data` from
// the command line, with its errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <numeric>
#include <random>

#include "distill/api-capture.h"
#include "distill/cross-tokenizer.h"
#include "distill/sequences.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "test-server.h"
#include "test-util.h"
#include "util/file.h"
#include "util/utf8.h"

using namespace distill;
using namespace distill::testing_util;

namespace {

const std::vector<std::string> kWords = {"the", "house", "was", "quiet", "and", "Anne", "walked", "to",
                                         "Bath", "with", "her", "sister", "café", "naïve", "—", "at",
                                         "evening", "letters", "Captain", "Wentworth", "said", "nothing"};

// Two tokenizers of different sizes, learnt from different texts (so their vocabularies differ
// both ways), and the same text in each one's tokens.
struct TwoTokenizations {
    std::string dir, text;
    Tokenizer teacher_tok, student_tok;
    std::string teacher_shard, student_shard;  // prefixes
};

TwoTokenizations make_tokenizations(const std::string& dir) {
    TwoTokenizations t;
    t.dir = dir;
    t.text = word_text(40000, 7, kWords);
    TokenizerTrainOptions to;
    to.vocab_size = 600;
    t.teacher_tok = Tokenizer::train(t.text, to);
    to.vocab_size = 420;
    t.student_tok = Tokenizer::train(word_text(40000, 99, kWords), to);
    t.teacher_tok.save(dir + "/teacher-tok.json");
    t.student_tok.save(dir + "/student-tok.json");
    write_file_atomic(dir + "/text.txt", t.text);
    auto shard = [&](const Tokenizer& tok, const std::string& prefix) {
        write_shard(prefix, tok.encode(t.text), tok.vocab_size(), tok.fingerprint(), "text.txt",
                    static_cast<int64_t>(t.text.size()));
        return prefix;
    };
    t.teacher_shard = shard(t.teacher_tok, dir + "/teacher");
    t.student_shard = shard(t.student_tok, dir + "/student");
    return t;
}

// A teacher cache over the teacher shard with random top-K distributions (distinct ids, mass <= 1).
void write_synthetic_cache(const std::string& dir, const TwoTokenizations& t, int K, int T) {
    TokenShard shard(t.teacher_shard);
    LogitCacheInfo info;
    info.top_k = K;
    info.vocab_size = t.teacher_tok.vocab_size();
    info.window = T;
    info.num_windows = num_aligned_windows(shard.size(), T);
    info.teacher_fingerprint = "synthetic-teacher";
    info.tokenizer_fingerprint = t.teacher_tok.fingerprint();
    info.data_fingerprint = shard.info().fingerprint;
    LogitCacheWriter w(dir, info);
    std::mt19937_64 rng(5);
    std::vector<int32_t> ids(static_cast<size_t>(T * K));
    std::vector<float> lps(static_cast<size_t>(T * K));
    for (int64_t win = 0; win < info.num_windows; ++win) {
        for (int p = 0; p < T; ++p) {
            std::vector<int32_t> row;
            // the true next token among them most of the time, as a trained teacher would have it
            const int64_t next = shard.at(win * T + p + 1);
            if (rng() % 4 != 0) row.push_back(static_cast<int32_t>(next));
            while (static_cast<int>(row.size()) < K) {
                const int32_t v = static_cast<int32_t>(rng() % static_cast<uint64_t>(info.vocab_size));
                if (std::find(row.begin(), row.end(), v) == row.end()) row.push_back(v);
            }
            std::vector<double> wts(static_cast<size_t>(K));
            double sum = 0;
            for (auto& x : wts) sum += (x = std::exponential_distribution<double>(1.0)(rng) + 1e-3);
            const double keep = 0.5 + 0.45 * std::uniform_real_distribution<double>(0, 1)(rng);
            for (int k = 0; k < K; ++k) {
                ids[static_cast<size_t>(p * K + k)] = row[static_cast<size_t>(k)];
                lps[static_cast<size_t>(p * K + k)] = static_cast<float>(std::log(keep * wts[static_cast<size_t>(k)] / sum));
            }
        }
        w.append_window(ids.data(), lps.data());
    }
    w.finish();
}

torch::Tensor spelled_bytes(const Tokenizer& tok, torch::Tensor* offsets, torch::Tensor* special) {
    std::string all;
    std::vector<int64_t> offs = {0};
    std::vector<uint8_t> sp;
    for (int32_t id = 0; id < tok.vocab_size(); ++id) {
        all += tok.token_bytes(id);
        offs.push_back(static_cast<int64_t>(all.size()));
        sp.push_back(tok.is_special(id) ? 1 : 0);
    }
    *offsets = torch::tensor(offs, torch::kInt64);
    *special = torch::tensor(std::vector<int64_t>(sp.begin(), sp.end()), torch::kInt64).to(torch::kUInt8);
    std::vector<int64_t> b(all.begin(), all.end());
    for (auto& x : b) x &= 0xFF;
    return torch::tensor(b, torch::kInt64).to(torch::kUInt8);
}

torch::Tensor shard_ids(const std::string& prefix) {
    TokenShard s(prefix);
    return s.slice(0, s.size());
}

}  // namespace

// The loss of a batch equals xtok_ref.py's, which aligns the two tokenizations by their spelled
// bytes, maps the teacher's top-K onto student ids and takes losses_ref.py's sparse losses, in
// float64, for both mappings, three losses and temperatures, with and without cross-entropy.
TEST(CrossTokenizerRef, LossMatchesPython) {
    const std::string dir = temp_dir("xtok-ref");
    const TwoTokenizations t = make_tokenizations(dir);
    const int K = 6, Tt = 16;
    write_synthetic_cache(dir + "/cache", t, K, Tt);
    LogitCacheReader cache(dir + "/cache");
    TokenShard student_shard(t.student_shard), teacher_shard(t.teacher_shard);

    std::map<std::string, torch::Tensor> in;
    torch::Tensor offs, special;
    in["student_bytes"] = spelled_bytes(t.student_tok, &offs, &special);
    in["student_offsets"] = offs;
    in["student_special"] = special;
    in["teacher_bytes"] = spelled_bytes(t.teacher_tok, &offs, &special);
    in["teacher_offsets"] = offs;
    in["teacher_special"] = special;
    in["student_ids"] = shard_ids(t.student_shard);
    in["teacher_ids"] = shard_ids(t.teacher_shard);
    const int64_t W = cache.num_windows();
    auto cids = torch::empty({W, Tt, K}, torch::kInt32), clps = torch::empty({W, Tt, K}, torch::kFloat32);
    for (int64_t w = 0; w < W; ++w) cache.read_window(w, cids[w].data_ptr<int32_t>(), clps[w].data_ptr<float>());
    in["cache_ids"] = cids.to(torch::kInt64);
    in["cache_logprobs"] = clps.to(torch::kFloat64);

    ModelConfig c;
    c.vocab_size = t.student_tok.vocab_size();
    c.hidden_size = 32;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.intermediate_size = 48;
    c.max_position_embeddings = 64;
    Llama student(c);
    student->init_weights(3);

    struct Case {
        std::string name, loss, mapping;
        double tau, ce;
    };
    const std::vector<Case> cases = {{"fkl_first", "fkl", "first", 1.0, 0.5},
                                     {"jsd_exact", "jsd", "exact", 2.0, 0.0},
                                     {"rkl_first", "rkl", "first", 1.0, 0.2},
                                     {"tv_exact", "tv", "exact", 0.5, 0.3}};
    std::map<std::string, std::string> meta;
    std::map<std::string, double> got;
    std::map<std::string, int64_t> mapped_more;
    const int64_t B = 4, T = 24;
    for (size_t ci = 0; ci < cases.size(); ++ci) {
        const Case& k = cases[ci];
        const CrossTokenizerMap map = build_cross_tokenizer_map(student_shard, t.student_tok, teacher_shard,
                                                                t.teacher_tok, cache,
                                                                cross_tokenizer_mapping_from_string(k.mapping));
        // the case must exercise what it claims: some positions align and some do not; "first"
        // maps ids beyond the exact matches
        ASSERT_GT(map.aligned, student_shard.size() / 5);
        ASSERT_LT(map.aligned, student_shard.size());
        if (k.mapping == "first") {
            EXPECT_GT(map.mapped_ids, map.exact_ids);
        } else {
            EXPECT_EQ(map.mapped_ids, map.exact_ids);
        }
        LossOptions lo;
        lo.kind = loss_kind_from_string(k.loss);
        lo.temperature = k.tau;
        lo.ce_weight = k.ce;
        BatchSpec spec{B, T, 11 + ci, false};
        LossFn fn = make_cross_tokenizer_loss(student, student_shard, spec, lo, cache, map);
        StepLoss sl = fn(0, 0);
        got[k.name] = sl.loss.item<double>();
        EXPECT_GT(sl.extras.at("aligned_fraction"), 0.1);
        // the same batch, for the reference
        Batch b = sample_batch(student_shard, spec, 0, 0);
        torch::NoGradGuard ng;
        auto logits = student->forward(b.tokens.narrow(1, 0, T)).reshape({B * T, -1});
        in[k.name + ".starts"] = torch::tensor(b.starts, torch::kInt64);
        in[k.name + ".logits"] = logits.to(torch::kFloat64);
        std::vector<int64_t> ts(map.to_student.begin(), map.to_student.end());
        in[k.name + ".to_student"] = torch::tensor(ts, torch::kInt64);
        meta[k.name] = nlohmann::json{{"kind", k.loss}, {"tau", k.tau}, {"ce_weight", k.ce}, {"beta", lo.beta},
                                      {"alpha", lo.alpha}, {"rest_eps", 1.1920928955078125e-07},
                                      {"mapping", k.mapping}, {"seq_len", T}}
                           .dump();
    }
    save_safetensors(dir + "/in.safetensors", in, meta);
    ASSERT_EQ(run_python("tests/ref/xtok_ref.py", dir + "/in.safetensors " + dir + "/out.safetensors"), 0)
        << "the reference failed (needs python3-torch and python3-numpy)";
    SafetensorsFile ref(dir + "/out.safetensors");
    for (const Case& k : cases) {
        const double want = ref.get(k.name + ".loss", torch::kFloat64).item<double>();
        EXPECT_GT(ref.get(k.name + ".rows", torch::kFloat64).item<double>(), 0) << k.name;
        // float32 logits and log-probs against float64: 2e-5 relative, as test-losses allows
        EXPECT_NEAR(got[k.name], want, 2e-5 * std::max(1.0, std::abs(want))) << k.name;
    }
}

// From the command line: a student with its own tokenizer learns from a cache of the teacher's
// tokens (it trains, its loss falls, run.json records the alignment), and the mistakes a user can
// make get errors that say what to do.
TEST(CrossTokenizer, TrainFromTheCommandLineAndItsErrors) {
    const std::string dir = temp_dir("xtok-cli");
    const TwoTokenizations t = make_tokenizations(dir);
    write_synthetic_cache(dir + "/cache", t, 6, 16);
    write_file_atomic(dir + "/student-config.json",
                      nlohmann::json{{"hidden_size", 32}, {"num_hidden_layers", 1}, {"num_attention_heads", 4},
                                     {"num_key_value_heads", 2}, {"intermediate_size", 48},
                                     {"max_position_embeddings", 64}}
                          .dump());
    const std::string base = "train --config " + dir + "/student-config.json --tokenizer " + dir + "/student-tok.json --data " +
                             t.student_shard + " --cache " + dir + "/cache --steps 30 --batch-size 4 --seq-len 24 --lr 0.01 " +
                             "--warmup 2 --log-every 1 --checkpoint-every 6";
    const std::string xt = " --teacher-data " + t.teacher_shard + " --teacher-tokenizer " + dir + "/teacher-tok.json";
    ASSERT_EQ(run_distill(base + xt + " --run-dir " + dir + "/run", "", dir + "/err"), 0) << read_file(dir + "/err");
    const auto run = read_json_file(dir + "/run/run.json");
    EXPECT_EQ(run["teacher"]["cross_tokenizer"]["mapping"], "first") << run.dump();
    std::vector<double> losses;
    std::ifstream m(dir + "/run/metrics.jsonl");
    std::string line;
    while (std::getline(m, line)) {
        auto j = nlohmann::json::parse(line);
        losses.push_back(j["loss"].get<double>());
        EXPECT_GT(j["aligned_fraction"].get<double>(), 0.1);
    }
    ASSERT_EQ(losses.size(), 30u);
    // the last five steps below the first five
    EXPECT_LT(std::accumulate(losses.end() - 5, losses.end(), 0.0), std::accumulate(losses.begin(), losses.begin() + 5, 0.0));

    // on 2 data-parallel ranks (distill launch): the KD term's denominator is the whole batch's
    // aligned positions, so the job ends with one process's weights (float rounding: the order of
    // the sums differs)
    {
        const std::string dp = "train --config " + dir + "/student-config.json --tokenizer " + dir + "/student-tok.json --data " +
                               t.student_shard + " --cache " + dir + "/cache --steps 10 --batch-size 4 --seq-len 24 " +
                               "--lr 0.003 --warmup 2 --threads 1" + xt;
        ASSERT_EQ(run_distill(dp + " --run-dir " + dir + "/dp1", "", dir + "/dp1.err"), 0) << read_file(dir + "/dp1.err");
        ASSERT_EQ(testing_util::run(std::string(DISTILL_BINARY) + " --quiet launch -n 2 " + dp + " --run-dir " + dir + "/dp2 > /dev/null 2> " +
                      dir + "/dp2.err"),
                  0)
            << read_file(dir + "/dp2.err");
        SafetensorsFile a(dir + "/dp1/model/model.safetensors"), b(dir + "/dp2/model/model.safetensors");
        double d = 0;
        for (const auto& [name, e] : a.entries())
            d = std::max(d, (a.get(name, torch::kFloat64) - b.get(name, torch::kFloat64)).abs().max().item<double>());
        EXPECT_LT(d, 1e-5);
    }

    auto fails_with = [&](const std::string& args, int rc, const std::string& says) {
        const int got = run_distill(args, "", dir + "/err");
        const std::string err = read_file(dir + "/err");
        EXPECT_EQ(got, rc) << args << "\n" << err;
        EXPECT_NE(err.find(says), std::string::npos) << args << "\n" << err;
    };
    // a cache of another tokenizer, without saying where its text is
    fails_with(base + " --run-dir " + dir + "/r1", 1, "--teacher-data");
    fails_with(base + " --teacher-data " + t.teacher_shard + " --run-dir " + dir + "/r2", 2, "--teacher-tokenizer");
    // the teacher shard of another text
    const std::string other = word_text(30000, 3, kWords);
    write_shard(dir + "/other", t.teacher_tok.encode(other), t.teacher_tok.vocab_size(), t.teacher_tok.fingerprint(),
                "other.txt", static_cast<int64_t>(other.size()));
    fails_with(base + " --teacher-data " + dir + "/other --teacher-tokenizer " + dir + "/teacher-tok.json --run-dir " +
                   dir + "/r3",
               1, "captured on other data");
    // the student's own text in the teacher's tokens, but the shard is not the cache's: a student
    // shard of another text is refused for not spelling the same bytes
    write_shard(dir + "/other-s", t.student_tok.encode(other), t.student_tok.vocab_size(), t.student_tok.fingerprint(),
                "other.txt", static_cast<int64_t>(other.size()));
    fails_with("train --config " + dir + "/student-config.json --tokenizer " + dir + "/student-tok.json --data " + dir +
                   "/other-s --cache " + dir + "/cache --steps 2 --batch-size 4 --seq-len 24" + xt + " --run-dir " +
                   dir + "/r4",
               1, "do not hold the same text");
    fails_with(base + xt + " --loss ce --run-dir " + dir + "/r5", 2, "--loss ce");
    fails_with(base + xt + " --xtok-map nearest --run-dir " + dir + "/r6", 2, "xtok-map");
}

// Across tokenizers through an API: a teacher with one tokenizer served by `distill serve`, its
// chat completions and top-5 log-probs captured (with each token's bytes), and a student with
// another tokenizer. `train --sequences` aligns the two tokenizations of each
// completion on bytes and gives each teacher alternative's probability to the student token its
// bytes start with; xtok_ref.py rebuilds those targets from the dataset and the student's
// spellings alone. Then the student trains on them from the command line.
TEST(CrossTokenizerRef, ApiTopLogprobsAlignOnBytes) {
    const std::string dir = temp_dir("xtok-api");
    const TwoTokenizations t = make_tokenizations(dir);
    ModelConfig c;
    c.vocab_size = t.teacher_tok.vocab_size();
    c.hidden_size = 32;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.intermediate_size = 64;
    c.max_position_embeddings = 256;
    Llama teacher(c);
    teacher->init_weights(3);
    {
        torch::NoGradGuard ng;  // peaked distributions over the teacher's words
        for (auto& p : teacher->parameters())
            if (p.dim() >= 2) p.mul_(5.0);
    }
    save_model_dir(dir + "/teacher", teacher, &t.teacher_tok);
    // chat prompts: the chat format gives each token's bytes, where the legacy one gives texts (a
    // token that is part of a character reads U+FFFD there, and such a sample cannot be aligned)
    std::string prompts;
    for (int i = 0; i < 12; ++i) {
        const std::string say = std::vector<std::string>{"Anne walked", "the café was", "Captain"}[i % 3];
        prompts += nlohmann::json({{"messages", {{{"role", "user"}, {"content", say}}}}}).dump() + "\n";
    }
    write_file_atomic(dir + "/prompts.jsonl", prompts);
    {
        ServerProcess s(dir + "/teacher", {"--parallel", "2"});
        ASSERT_EQ(run_distill("capture --teacher-url " + s.base_url() + " --prompts " + dir +
                              "/prompts.jsonl --max-tokens 40 --top-logprobs 5 --concurrency 2 --seed 4 -o " + dir +
                              "/data"),
                  0);
    }
    // a student tokenizer of few merges, so that most of the teacher's tokens are not one of its
    TokenizerTrainOptions to;
    to.vocab_size = 290;
    const Tokenizer student_tok = Tokenizer::train(word_text(20000, 41, kWords), to);
    student_tok.save(dir + "/small-tok.json");
    const SequenceSet set = load_sequences(dir + "/data", student_tok, 128);
    const std::vector<ApiSample> samples = read_api_dataset(dir + "/data");
    ASSERT_EQ(set.samples, 12);
    ASSERT_EQ(set.seqs.size(), samples.size());
    // each sample whose tokens spell valid UTF-8 either maps token for token (every teacher token
    // is a student token) or aligns; this random teacher also emits stray bytes, whose text the API
    // repairs with U+FFFD, and those samples fall back to sequence-level
    int64_t valid = 0;
    for (const ApiSample& smp : samples) {
        std::string spelled;
        for (const auto& e : smp.record["logprobs"])
            for (const auto& b : e["bytes"]) spelled.push_back(static_cast<char>(b.get<int>()));
        valid += utf8_valid(spelled);
    }
    EXPECT_GE(set.mapped + set.cross_samples, valid);
    EXPECT_GE(set.cross_samples, 6);

    // what the reference needs: the student's spellings, its encoding of each completion and of
    // each alternative's bytes
    nlohmann::json in = {{"spellings", nlohmann::json::array()}, {"special", nlohmann::json::array()},
                         {"first_of", nlohmann::json::object()}, {"samples", nlohmann::json::array()}};
    auto hexs = [](const std::string& b) {
        static const char* d = "0123456789abcdef";
        std::string h;
        for (unsigned char ch : b) {
            h += d[ch >> 4];
            h += d[ch & 15];
        }
        return h;
    };
    for (int32_t id = 0; id < student_tok.vocab_size(); ++id) {
        in["spellings"].push_back(hexs(student_tok.token_bytes(id)));
        in["special"].push_back(student_tok.is_special(id) ? 1 : 0);
    }
    auto bytes_of = [](const nlohmann::json& b) {
        std::string s;
        for (const auto& x : b) s.push_back(static_cast<char>(x.get<int>()));
        return s;
    };
    for (const ApiSample& smp : samples) {
        nlohmann::json entries = nlohmann::json::array();
        for (const auto& e : smp.record["logprobs"]) {
            nlohmann::json top = nlohmann::json::array();
            for (const auto& a : e["top"]) {
                top.push_back({a[2], a[1]});
                const std::string b = bytes_of(a[2]);
                const std::vector<int32_t> first = student_tok.encode(b);
                in["first_of"][hexs(b)] = first.empty() ? -1 : first[0];
            }
            entries.push_back({{"bytes", e["bytes"]}, {"top", top}});
        }
        std::vector<int64_t> ids;
        for (int32_t x : student_tok.encode(smp.record["text"].get<std::string>())) ids.push_back(x);
        in["samples"].push_back({{"entries", entries}, {"student_ids", ids}});
    }
    write_file_atomic(dir + "/api-in.json", in.dump());
    ASSERT_EQ(run_python("tests/ref/xtok_ref.py", "api " + dir + "/api-in.json " + dir + "/api-out.json"), 0);
    const nlohmann::json want = nlohmann::json::parse(read_file(dir + "/api-out.json"));
    int64_t rows = 0, compared = 0;
    for (size_t i = 0; i < samples.size(); ++i) {
        const SequenceSet::Seq& q = set.seqs[i];
        if (!q.cross) continue;  // mapped token for token: the same-tokenizer path, tested elsewhere
        const nlohmann::json& w = want[i];
        ASSERT_EQ(q.top_from, q.completion_from);
        for (size_t j = 0; j < w.size(); ++j) {
            ASSERT_LT(q.top_from + int64_t(j), int64_t(q.ids.size()));
            EXPECT_EQ(q.ids[size_t(q.top_from) + j], in["samples"][i]["student_ids"][j].get<int64_t>());
            const auto& got = q.top[j];
            ASSERT_EQ(got.size(), w[j].size()) << "sample " << i << " token " << j;
            for (size_t k = 0; k < got.size(); ++k) {
                EXPECT_EQ(got[k].first, w[j][k][0].get<int64_t>()) << "sample " << i << " token " << j;
                EXPECT_NEAR(got[k].second, w[j][k][1].get<double>(), 1e-5) << "sample " << i << " token " << j;
                ++compared;
            }
            rows += !got.empty();
        }
    }
    EXPECT_EQ(rows, set.cross_aligned);
    EXPECT_GT(compared, 100);
    std::printf("[xtok-api] %lld aligned positions, %lld targets compared, %lld KD positions\n", (long long)rows,
                (long long)compared, (long long)set.kd_positions);

    // the student trains on them: the KD loss over the aligned positions
    write_file_atomic(dir + "/student.json",
                      R"({"model_type":"llama","hidden_size":32,"num_hidden_layers":1,"num_attention_heads":4,
                          "num_key_value_heads":2,"intermediate_size":64,"max_position_embeddings":256})");
    ASSERT_EQ(run_distill("--threads 1 train --sequences " + dir + "/data --config " + dir + "/student.json --tokenizer " +
                              dir + "/small-tok.json --loss fkl --ce-weight 0.5 --steps 4 --batch-size 4 --seq-len 64 "
                              "--warmup 1 --log-every 1 --run-dir " + dir + "/run",
                          "", dir + "/train.err"),
              0)
        << read_file(dir + "/train.err");
    EXPECT_NE(read_file(dir + "/train.err").find(std::to_string(set.cross_samples) + " more are another tokenizer's"),
              std::string::npos)
        << read_file(dir + "/train.err");
}
