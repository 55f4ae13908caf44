// On-policy distillation (src/distill/on-policy.cpp): the GKD loss on fixed samples against an
// independent reference (tests/ref/gkd_ref.py, TRL's generalized JSD), the batched sampler
// against generate(), and `distill train --on-policy` from the command line, with its errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <set>
#include <unordered_map>

#include "distill/api-logprobs.h"
#include "distill/on-policy.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "test-server.h"
#include "test-util.h"
#include "util/utf8.h"
#include "util/error.h"
#include "util/file.h"

using namespace distill;
using namespace distill::testing_util;

namespace {

ModelConfig tiny(int64_t vocab, int64_t hidden, int64_t layers) {
    ModelConfig c;
    c.vocab_size = vocab;
    c.hidden_size = hidden;
    c.num_hidden_layers = layers;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.intermediate_size = hidden * 3 / 2;
    c.max_position_embeddings = 64;
    return c;
}

// In `dir`: `text` as a token shard (data) with its own 300-token tokenizer (tok.json), a random
// teacher of that vocabulary (teacher/, seeded) and a one-layer student's config
// (student-config.json).
std::pair<Tokenizer, Llama> write_gkd_fixture(const std::string& dir, const std::string& text, uint64_t teacher_seed) {
    TokenizerTrainOptions to;
    to.vocab_size = 300;
    Tokenizer tok = Tokenizer::train(text, to);
    tok.save(dir + "/tok.json");
    write_shard(dir + "/data", tok.encode(text), tok.vocab_size(), tok.fingerprint(), "text.txt",
                static_cast<int64_t>(text.size()));
    Llama teacher(tiny(tok.vocab_size(), 48, 2));
    teacher->init_weights(teacher_seed);
    save_model_dir(dir + "/teacher", teacher, &tok);
    write_file_atomic(dir + "/student-config.json",
                      nlohmann::json{{"hidden_size", 32}, {"num_hidden_layers", 1}, {"num_attention_heads", 4},
                                     {"num_key_value_heads", 2}, {"intermediate_size", 48},
                                     {"max_position_embeddings", 64}}
                          .dump());
    return {std::move(tok), teacher};
}

}  // namespace

// The loss and its gradient on fixed student samples equal TRL's generalized JSD (gkd_ref.py) for
// JSD at TRL's default beta = 0.5 and at 0.1, and forward / reverse KL (TRL's beta = 0 and 1),
// at three temperatures.
TEST(OnPolicyRef, LossMatchesTrlFormula) {
    const std::string dir = temp_dir("gkd-ref");
    Llama student(tiny(37, 32, 1)), teacher(tiny(37, 48, 2));
    student->init_weights(1);
    teacher->init_weights(2);
    const int64_t B = 3, P = 7, N = 9, L = P + N;
    auto prompts = torch::randint(0, 37, {B, P}, torch::TensorOptions().dtype(torch::kInt64));
    SamplingOptions so;
    so.temperature = 1.0;
    const torch::Tensor seqs = sample_continuations(student, prompts, N, so, 42);
    ASSERT_EQ(seqs.size(1), L);
    struct Case {
        std::string name, kind;
        double beta, tau;
    };
    const std::vector<Case> cases = {{"jsd05", "jsd", 0.5, 1.0},
                                     {"jsd01_t2", "jsd", 0.1, 2.0},
                                     {"fkl", "fkl", 0.0, 1.0},
                                     {"rkl_t05", "rkl", 1.0, 0.5}};
    std::map<std::string, torch::Tensor> in;
    std::map<std::string, std::string> meta;
    std::map<std::string, std::pair<double, torch::Tensor>> got;
    torch::Tensor t_full;
    {
        torch::NoGradGuard ng;
        t_full = teacher->forward(seqs).to(torch::kFloat64);
    }
    for (const Case& k : cases) {
        // float64 logits, so that the comparison sees the loss, not float32 rounding
        auto s_full = student->forward(seqs).detach().to(torch::kFloat64).requires_grad_(true);
        LossOptions lo;
        lo.kind = loss_kind_from_string(k.kind);
        lo.beta = k.kind == "jsd" ? k.beta : lo.beta;
        lo.temperature = k.tau;
        lo.ce_weight = 0.5;  // ignored on sampled tokens: the reference has none
        auto loss = on_policy_loss(s_full.narrow(1, 0, L - 1), t_full.narrow(1, 0, L - 1), seqs, P, lo);
        loss.backward();
        got[k.name] = {loss.item<double>(), s_full.grad().clone()};
        in[k.name + ".seqs"] = seqs;
        in[k.name + ".student"] = s_full.detach();
        in[k.name + ".teacher"] = t_full;
        meta[k.name] = nlohmann::json{{"beta", k.beta}, {"tau", k.tau}, {"prompt_len", P}}.dump();
    }
    save_safetensors(dir + "/in.safetensors", in, meta);
    ASSERT_EQ(run_python("tests/ref/gkd_ref.py", dir + "/in.safetensors " + dir + "/out.safetensors"), 0)
        << "the reference failed (needs python3-torch)";
    SafetensorsFile ref(dir + "/out.safetensors");
    for (const Case& k : cases) {
        const double want = ref.get(k.name + ".loss", torch::kFloat64).item<double>();
        EXPECT_GT(want, 1e-3) << k.name;  // the two models differ: a loss of 0 would prove nothing
        EXPECT_NEAR(got[k.name].first, want, 1e-10 * std::max(1.0, want)) << k.name;
        const auto g = ref.get(k.name + ".grad", torch::kFloat64);
        const double scale = g.abs().max().item<double>();
        EXPECT_LT((got[k.name].second - g).abs().max().item<double>(), 1e-10 * scale) << k.name;
        // no gradient on the prompt's predictions
        EXPECT_EQ(got[k.name].second.narrow(1, 0, P - 1).abs().max().item<double>(), 0.0) << k.name;
    }
}

// The batched sampler keeps the prompts, is greedy where asked exactly as generate() is row by
// row, and draws each row from its own stream: the same seed gives the same rows whatever the
// batch, another seed other rows.
TEST(OnPolicy, SamplerAgreesWithGenerate) {
    Llama m(tiny(41, 32, 2));
    m->init_weights(3);
    const int64_t B = 4, P = 5, N = 12;
    auto prompts = torch::randint(0, 41, {B, P}, torch::TensorOptions().dtype(torch::kInt64));
    SamplingOptions greedy;
    greedy.temperature = 0;
    const torch::Tensor g = sample_continuations(m, prompts, N, greedy, 1);
    EXPECT_TRUE(torch::equal(g.narrow(1, 0, P), prompts));
    for (int64_t b = 0; b < B; ++b) {
        std::vector<int64_t> p(prompts[b].data_ptr<int64_t>(), prompts[b].data_ptr<int64_t>() + P);
        SamplingOptions one = greedy;
        one.max_new_tokens = N;
        const auto want = generate(m, p, one);
        ASSERT_EQ(static_cast<int64_t>(want.size()), N);
        for (int64_t i = 0; i < N; ++i) EXPECT_EQ(g[b][P + i].item<int64_t>(), want[static_cast<size_t>(i)]) << b << " " << i;
    }
    SamplingOptions warm;
    warm.temperature = 1.5;
    const torch::Tensor a = sample_continuations(m, prompts, N, warm, 7);
    EXPECT_TRUE(torch::equal(a, sample_continuations(m, prompts, N, warm, 7)));
    EXPECT_TRUE(torch::equal(a.narrow(0, 0, 2), sample_continuations(m, prompts.narrow(0, 0, 2), N, warm, 7)));
    EXPECT_FALSE(torch::equal(a, sample_continuations(m, prompts, N, warm, 8)));
    EXPECT_FALSE(torch::equal(a, g));  // temperature 1.5 is not greedy
    EXPECT_FALSE(on_policy_batch(1, 5, 0, 0.0));
    EXPECT_TRUE(on_policy_batch(1, 5, 0, 1.0));
}

// `distill train --on-policy`: λ = 1 trains on the student's own samples only, λ = 0.5 on both
// kinds of batch, and the mistakes a user can make get errors that say what to do.
TEST(OnPolicy, TrainFromTheCommandLineAndItsErrors) {
    const std::string dir = temp_dir("gkd-cli");
    const std::string text = word_text(60000, 5, {"the", "house", "was", "quiet", "and", "Anne", "walked", "to",
                                                  "Bath", "with", "her", "sister", "at", "evening"});
    auto [tok, teacher] = write_gkd_fixture(dir, text, 9);
    const std::string base = "train --config " + dir + "/student-config.json --tokenizer " + dir + "/tok.json --data " +
                             dir + "/data --teacher " + dir + "/teacher --batch-size 4 --seq-len 24 --warmup 1 " +
                             "--log-every 1";
    const std::string gkd = base + " --loss jsd --max-new-tokens 8";
    auto on_policy_flags = [&](const std::string& run) {
        std::vector<double> v;
        std::ifstream m(run + "/metrics.jsonl");
        std::string line;
        while (std::getline(m, line)) {
            auto j = nlohmann::json::parse(line);
            if (j.contains("on_policy")) v.push_back(j["on_policy"].get<double>());
            EXPECT_TRUE(std::isfinite(j["loss"].get<double>())) << line;
        }
        return v;
    };
    ASSERT_EQ(run_distill(gkd + " --on-policy 1 --steps 6 --run-dir " + dir + "/all", "", dir + "/err"), 0)
        << read_file(dir + "/err");
    EXPECT_EQ(on_policy_flags(dir + "/all"), std::vector<double>(6, 1.0));
    const auto run = read_json_file(dir + "/all/run.json");
    EXPECT_EQ(run["teacher"]["on_policy"]["lambda"], 1.0) << run.dump();
    EXPECT_EQ(run["teacher"]["on_policy"]["max_new_tokens"], 8) << run.dump();
    ASSERT_EQ(run_distill(gkd + " --on-policy 0.5 --steps 16 --run-dir " + dir + "/half", "", dir + "/err"), 0)
        << read_file(dir + "/err");
    const auto half = on_policy_flags(dir + "/half");
    ASSERT_EQ(half.size(), 16u);
    EXPECT_GT(std::count(half.begin(), half.end(), 1.0), 2);
    EXPECT_GT(std::count(half.begin(), half.end(), 0.0), 2);

    auto fails_with = [&](const std::string& args, int rc, const std::string& says) {
        const int got = run_distill(args, "", dir + "/err");
        const std::string err = read_file(dir + "/err");
        EXPECT_EQ(got, rc) << args << "\n" << err;
        EXPECT_NE(err.find(says), std::string::npos) << args << "\n" << err;
    };
    const std::string no_teacher = "train --config " + dir + "/student-config.json --tokenizer " + dir +
                                   "/tok.json --data " + dir + "/data --steps 2 --batch-size 4 --seq-len 24";
    fails_with(no_teacher + " --on-policy 0.5 --run-dir " + dir + "/e1", 2, "--on-policy needs --teacher");
    fails_with(base + " --on-policy 1.5 --steps 2 --run-dir " + dir + "/e2", 2, "--on-policy");
    fails_with(base + " --on-policy 1 --max-new-tokens 24 --steps 2 --run-dir " + dir + "/e3", 1, "--max-new-tokens");
    fails_with(base + " --on-policy 1 --loss ce --steps 2 --run-dir " + dir + "/e4", 1, "--loss ce");
    fails_with(no_teacher + " --max-new-tokens 4 --run-dir " + dir + "/e5", 2, "--max-new-tokens goes with --on-policy");
}

// An API teacher (--teacher-url): `distill serve` scores the student's samples through
// /completions with echo and logprobs. What the API answers, mapped back onto token ids, is the
// teacher's own log-probs (its local forward, within float rounding): its top K at every
// position plus the token there, without the texts that several tokens share (byte tokens that are
// not UTF-8 all read U+FFFD). Then `train --teacher-url` end to end, and its usage errors.
TEST(OnPolicy, ApiTeacherThroughServe) {
    const std::string dir = temp_dir("gkd-api");
    const std::string text = word_text(40000, 7, {"the", "house", "was", "quiet", "and", "Anne", "walked", "to",
                                                  "Bath", "with", "her", "sister"});
    auto [tok, teacher] = write_gkd_fixture(dir, text, 11);
    ServerProcess server(dir + "/teacher", {});

    // the API's answer for one sequence against the teacher's local log-probs
    const std::vector<int32_t> ids32 = tok.encode("Anne walked to Bath with her sister and the house was quiet");
    const std::vector<int64_t> seq(ids32.begin(), ids32.end());
    ASSERT_GE(seq.size(), 8u);
    const int K = 5;
    std::unordered_map<std::string, int64_t> by_text;
    for (int32_t id = 0; id < tok.vocab_size(); ++id) {
        if (tok.is_special(id)) continue;
        auto [it, fresh] = by_text.emplace(utf8_lossy(tok.token_bytes(id)), id);
        if (!fresh) it->second = -1;
    }
    const ApiTokenMap text_map(by_text, tok.vocab_size());
    torch::NoGradGuard ng;
    teacher->eval();
    const auto lp = torch::log_softmax(teacher->forward(torch::tensor(seq).view({1, -1}))[0].to(torch::kFloat64), -1);
    // tokens named by their text (the legacy format), then by id (return_tokens_as_token_ids):
    // by id every entry maps, by text those whose text is one token's
    for (bool as_ids : {false, true}) {
        SCOPED_TRACE(as_ids ? "token ids" : "texts");
        auto r = server.client().Post("/v1/completions",
                                      nlohmann::json{{"prompt", seq}, {"echo", true}, {"max_tokens", 0}, {"logprobs", K},
                                                     {"return_tokens_as_token_ids", as_ids}}
                                          .dump(),
                                      "application/json");
        ASSERT_TRUE(r && r->status == 200) << (r ? r->body : "no answer");
        const auto answer = nlohmann::json::parse(r->body);
        const auto got = remote_top_targets(answer["choices"][0]["logprobs"], as_ids ? ApiTokenMap(tok) : text_map, 1,
                                            seq.size());
        for (size_t t = 1; t < seq.size(); ++t) {
            const auto top = std::get<1>(lp[int64_t(t) - 1].topk(K));
            std::set<int64_t> want;
            for (int64_t k = 0; k < K; ++k) want.insert(top[k].item<int64_t>());
            want.insert(seq[t]);
            std::set<int64_t> mapped;
            for (int64_t id : want)
                if (as_ids || by_text.at(utf8_lossy(tok.token_bytes(static_cast<int32_t>(id)))) >= 0) mapped.insert(id);
            std::set<int64_t> have;
            for (const auto& [id, v] : got[t - 1]) {
                have.insert(id);
                EXPECT_NEAR(v, lp[int64_t(t) - 1][id].item<double>(), 2e-5) << "position " << t << " id " << id;
            }
            EXPECT_EQ(have, mapped) << "position " << t;
        }
    }
    // malformed answers are errors that say what is missing
    EXPECT_THROW(remote_top_targets(nlohmann::json{{"tokens", nlohmann::json::array()}}, text_map, 1, 4), distill::Error);
    EXPECT_THROW(remote_top_targets(nlohmann::json{{"top_logprobs", {nullptr, {{"a", "x"}}}}}, text_map, 1, 2),
                 distill::Error);

    const std::string base = "train --config " + dir + "/student-config.json --tokenizer " + dir + "/tok.json --data " +
                             dir + "/data --batch-size 4 --seq-len 24 --warmup 1 --log-every 1 --loss jsd --max-new-tokens 8";
    ASSERT_EQ(run_distill(base + " --on-policy 1 --steps 4 --online-top-logprobs 8 --teacher-url " + server.base_url() +
                              " --run-dir " + dir + "/api",
                          "", dir + "/err"),
              0)
        << read_file(dir + "/err");
    std::ifstream m(dir + "/api/metrics.jsonl");
    std::string line;
    int lines = 0;
    while (std::getline(m, line)) {
        const auto j = nlohmann::json::parse(line);
        ++lines;
        EXPECT_EQ(j["on_policy"], 1.0) << line;
        EXPECT_GT(j["mapped_fraction"].get<double>(), 0.99) << line;  // words of ASCII letters: one token a text
        EXPECT_TRUE(std::isfinite(j["loss"].get<double>())) << line;
    }
    EXPECT_EQ(lines, 4);
    EXPECT_EQ(read_json_file(dir + "/api/run.json")["teacher"]["teacher_url"]["top_logprobs"], 8);
    // usage errors
    auto fails_with = [&](const std::string& args, int rc, const std::string& says) {
        const int got_rc = run_distill(args, "", dir + "/err");
        const std::string err = read_file(dir + "/err");
        EXPECT_EQ(got_rc, rc) << args << "\n" << err;
        EXPECT_NE(err.find(says), std::string::npos) << args << "\n" << err;
    };
    fails_with("train --config " + dir + "/student-config.json --tokenizer " + dir + "/tok.json --data " + dir +
                   "/data --batch-size 4 --seq-len 24 --steps 2 --teacher-url " + server.base_url() + " --run-dir " + dir + "/e1",
               2,
               "--teacher-url goes with --on-policy");
    fails_with(base + " --on-policy 1 --steps 2 --teacher " + dir + "/teacher --teacher-url " + server.base_url() +
                   " --run-dir " + dir + "/e2",
               2, "not both");
}
