// Tests for src/guard (the watermark, its detection and statistics; docs/guard.md).
//
// Built twice (tests/CMakeLists.txt):
//   test-guard      (label e2e): the documented test vectors (computed with Python's xxhash), the
//                    green mask and watermark_apply, the binomial tail at the issue's vectors,
//                    de-duplication, the engine against generate() with a watermark, and the
//                    binary: watermarked `distill generate` and `distill serve` detected by
//                    `distill guard detect`, a wrong key, key-file errors, too-short texts,
//                    --jsonl.
//   test-guard-ref  (label ref, DISTILL_GUARD_REF): the green test against Python's xxhash
//                    (Debian python3-xxhash), the binomial tail against scipy.stats.binom.sf and
//                    an exact rational sum deep into the tail, and a KS test (scipy) that the
//                    p-values of clean texts, repetitive ones included, are uniform.
//                    tests/ref/guard_ref.py runs once per test for all cases.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "distill/api-capture.h"
#include "guard/detect.h"
#include "guard/radioactivity.h"
#include "guard/stats.h"
#include "guard/watermark.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "pipeline/pipeline.h"
#include "serve/engine.h"
#include "test-server.h"
#include "test-util.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/file.h"

extern char** environ;

using namespace distill;
using namespace distill::testing_util;
using json = nlohmann::json;

namespace {

const std::string kTestKey = "distill-guard-test-key";  // the key of docs/guard.md's test vectors

WatermarkOptions options(const std::string& key_bytes, int64_t h = 1, double gamma = 0.25,
                         double delta = 2) {
    WatermarkOptions o;
    o.key = watermark_key(key_bytes);
    o.context = h;
    o.gamma = gamma;
    o.delta = delta;
    return o;
}

ModelConfig tiny_config(int64_t vocab, int64_t context) {
    ModelConfig c;
    c.vocab_size = vocab;
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.intermediate_size = 64;
    c.max_position_embeddings = context;
    return c;  // no BOS, no EOS: generation runs to max_new_tokens
}

// Pseudo-words of one to three syllables (4368 of them), so that BPE learns many whole words.
std::string syllable_text(size_t bytes, uint64_t seed) {
    static const char* syl[] = {"ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo",
                                "be", "da", "fe", "gu", "ho", "ji", "pa", "zo"};
    uint64_t s = seed;
    auto next = [&] { return (s = s * 6364136223846793005ull + 1442695040888963407ull) >> 33; };
    std::string out;
    while (out.size() < bytes) {
        const uint64_t n = 1 + next() % 3;
        for (uint64_t i = 0; i < n; ++i) out += syl[next() % 16];
        out += next() % 12 == 0 ? ".\n" : " ";
    }
    return out;
}

// A model directory: a random-weight model that samples (near uniformly) only among the
// tokenizer's whole-word tokens " word" — each of which re-encodes to itself, so that the text it
// writes tokenizes back to the ids it sampled, as a trained model's text mostly does — and a
// tokenizer without special tokens (no EOS ends a generation early). Made once per process.
struct Fixture {
    std::string dir, model, key, other_key;
    Tokenizer tok;
    int64_t words = 0;  // the tokens the model samples from
    Fixture() {
        dir = temp_dir("guard");
        TokenizerTrainOptions o;
        o.vocab_size = 1500;
        o.special_tokens = {};
        tok = Tokenizer::train(syllable_text(300000, 3), o);
        ModelConfig c = tiny_config(tok.vocab_size(), 512);
        c.tie_word_embeddings = false;
        Llama m(c);
        m->init_weights(11);
        {
            // channel 0 of the residual stream is a large constant; the output weights read it as
            // a bias: 0 for whole-word tokens, -5 (about -28 in the logits) for all others
            torch::NoGradGuard ng;
            auto params = m->named_parameters();
            params["model.embed_tokens.weight"].select(1, 0).fill_(10.0);
            torch::Tensor head = params["lm_head.weight"];
            for (int32_t v = 0; v < tok.vocab_size(); ++v) {
                const std::string b = tok.token_bytes(v);
                bool word = b.size() >= 3 && b[0] == ' ';
                for (size_t i = 1; i < b.size() && word; ++i) word = b[i] >= 'a' && b[i] <= 'z';
                word = word && tok.encode(b) == std::vector<int32_t>{v};
                head[v][0] = word ? 0.0 : -5.0;
                words += word;
            }
        }
        model = dir + "/model";
        save_model_dir(model, m, &tok);
        key = dir + "/key";
        write_file_atomic(key, "0123456789abcdef0123456789abcdef-secret");
        other_key = dir + "/other-key";
        write_file_atomic(other_key, "a different key");
    }
};
Fixture& fixture() {
    static Fixture f;
    return f;
}

#ifndef DISTILL_GUARD_REF

json detect_cli(const std::string& dir, const std::string& text, const std::string& key,
                const std::string& extra = "") {
    const std::string in = dir + "/in.txt", out = dir + "/detect.json", err = dir + "/detect.err";
    write_file_atomic(in, text);
    const int rc = run_distill("guard detect --key-file " + key + " --tokenizer " +
                                   fixture().model + " " + extra + " < " + in,
                               out, err);
    EXPECT_EQ(rc, 0) << read_file(err);
    return rc == 0 ? json::parse(read_file(out)) : json();
}


#endif  // !DISTILL_GUARD_REF

}  // namespace

#ifndef DISTILL_GUARD_REF

// docs/guard.md's test vectors: key bytes "distill-guard-test-key", gamma 0.25 (threshold 2^62);
// the hashes come from Python's xxhash (xxh3_64_intdigest), not from distill.
TEST(Guard, DocumentedTestVectors) {
    const WatermarkKey key = watermark_key(kTestKey);
    EXPECT_EQ(key.k, 0x465e3d1bb721f33eull);
    EXPECT_EQ(watermark_key_id_hex(key), "38abe0e7f1e4f2ad");
    EXPECT_EQ(watermark_threshold(0.25), 4611686018427387904ull);
    EXPECT_EQ(watermark_threshold(0.5), 9223372036854775808ull);
    EXPECT_EQ(watermark_threshold(0.1),
              1844674407370955264ull);  // the double nearest 0.1, times 2^64
    struct Vec {
        std::vector<int64_t> context;
        int64_t token;
        uint64_t hash;
        bool green;
    };
    const std::vector<Vec> vecs = {
        {{17}, 40, 0x3a938c3a313b37e5ull, true},
        {{17}, 41, 0xc5bde2bf37e5dd8bull, false},
        {{17}, 42, 0x5bd6af6cbcde7724ull, false},
        {{17}, 44, 0x3cdc1328729f1898ull, true},
        {{2}, 1, 0x15934ac4b9c92198ull, true},
        {{1}, 2, 0xe7ef0c3180b692adull, false},
        {{100, 200}, 5, 0x3e04eaba2f8c90b6ull, true},
        {{100, 200}, 300, 0x739d3a3d921b7400ull, false},
        {{5, 6, 7, 8}, 0, 0x09fe2e0085b9d52eull, true},
        {{5, 6, 7, 8}, 9, 0xabef1d95752b8a8aull, false},
        {{4294967295}, 7, 0xedf671c9df903fceull, false},
        {{0}, 0, 0xaa1fe41bdccf534cull, false},
    };
    for (const Vec& v : vecs) {
        std::vector<int64_t> ids = v.context;
        ids.push_back(v.token);
        EXPECT_EQ(watermark_hash(key.k, ids.data(), static_cast<int64_t>(ids.size())), v.hash)
            << v.token;
        const WatermarkOptions o = options(kTestKey, static_cast<int64_t>(v.context.size()));
        EXPECT_EQ(watermark_green(o, v.context.data(), v.token), v.green) << v.token;
    }
}

TEST(Guard, GreenMaskAndApply) {
    const WatermarkOptions o = options(kTestKey, 2, 0.25, 1.5);
    const std::vector<int64_t> history = {9, 100, 200};  // the context is the last two ids
    const int64_t V = 20000;
    std::vector<uint8_t> mask = watermark_green_mask(o, history.data() + 1, V);
    int64_t green = 0;
    for (int64_t v = 0; v < V; ++v) {
        ASSERT_EQ(mask[v] != 0, watermark_green(o, history.data() + 1, v)) << v;
        green += mask[v];
    }
    // a fraction gamma of the vocabulary: within 5 standard deviations of 0.25 V
    EXPECT_NEAR(double(green), 0.25 * V, 5 * std::sqrt(V * 0.25 * 0.75));

    torch::Tensor logits = torch::randn({V}, torch::kFloat64);
    torch::Tensor before = logits.clone();
    watermark_apply(o, history, logits);
    torch::Tensor diff = logits - before;
    for (int64_t v = 0; v < V; ++v)
        ASSERT_NEAR(diff[v].item<double>(), mask[v] ? 1.5 : 0.0, 1e-12) << v;

    // fewer than h ids: left as they are
    torch::Tensor short_row = before.clone();
    watermark_apply(o, std::vector<int64_t>{100}, short_row);
    EXPECT_TRUE(torch::equal(short_row, before));

    // the batch form equals the row form, row by row, float32 too
    const std::vector<std::vector<int64_t>> hs = {{1, 2}, {3}, {4, 5, 6}};
    torch::Tensor batch = torch::randn({3, V});
    const torch::Tensor orig = batch.clone();
    torch::Tensor want = batch.clone();
    for (int64_t b = 0; b < 3; ++b) {
        torch::Tensor row = want[b];
        watermark_apply(o, hs[b], row);
    }
    watermark_apply(o, hs, batch);
    EXPECT_TRUE(torch::equal(batch, want));
    EXPECT_TRUE(torch::equal(batch[1], orig[1]));  // one id: too short for h = 2
    EXPECT_FALSE(torch::equal(batch[0], orig[0]));
}

TEST(Guard, KeysAndOptionsAreChecked) {
    const std::string dir = temp_dir("guard-keys");
    EXPECT_THROW(watermark_key(""), Error);
    try {
        watermark_key_file(dir + "/missing");
        ADD_FAILURE() << "a missing key file was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("head -c 32 /dev/urandom"), std::string::npos)
            << e.what();
    }
    write_file_atomic(dir + "/empty", "");
    try {
        watermark_key_file(dir + "/empty");
        ADD_FAILURE() << "an empty key file was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("is empty"), std::string::npos) << e.what();
    }
    // the key is the file's bytes, a trailing newline included
    write_file_atomic(dir + "/k", kTestKey);
    EXPECT_EQ(watermark_key_file(dir + "/k").k, 0x465e3d1bb721f33eull);
    write_file_atomic(dir + "/k2", kTestKey + "\n");
    EXPECT_NE(watermark_key_file(dir + "/k2").k, 0x465e3d1bb721f33eull);
    for (double g : {0.0, 1.0, -0.5, 2.0})
        EXPECT_THROW(watermark_check(options(kTestKey, 1, g)), Error) << g;
    for (int64_t h : {0, 5}) EXPECT_THROW(watermark_check(options(kTestKey, h)), Error) << h;
    EXPECT_THROW(watermark_threshold(1.0), Error);
}

// The issue's vectors (T = 200, gamma = 0.25) and the edges; scipy's values in test-guard-ref.
TEST(Guard, BinomialTailAtTheIssuesVectors) {
    auto p = [](int64_t T, int64_t S) { return binomial_tail(T, S, 0.25).p; };
    EXPECT_NEAR(p(200, 59), 0.0843, 0.00005);
    EXPECT_NEAR(p(200, 70) / 1.03e-3, 1, 0.005);
    EXPECT_NEAR(p(200, 100) / 2.69e-14, 1, 0.005);
    EXPECT_EQ(p(200, 0), 1.0);
    EXPECT_EQ(binomial_tail(200, 0, 0.25).log10_p, 0.0);
    EXPECT_NEAR(p(1, 1), 0.25, 1e-15);
    EXPECT_NEAR(p(200, 200) / std::pow(0.25, 200), 1, 1e-9);
    // far below double range: p underflows, log10 p does not
    BinomialTail deep = binomial_tail(2000, 2000, 0.25);
    EXPECT_EQ(deep.p, 0.0);
    EXPECT_NEAR(deep.log10_p, 2000 * std::log10(0.25), 1e-9);
    // just above 1e-300: never 0
    for (int64_t S = 300; S <= 2000; ++S) {
        BinomialTail t = binomial_tail(2000, S, 0.25);
        if (t.log10_p < -300) break;
        ASSERT_GT(t.p, 0.0) << S;
    }
    // z
    EXPECT_NEAR(binomial_z(200, 70, 0.25), 20 / std::sqrt(200 * 0.25 * 0.75), 1e-12);
}

TEST(Guard, RepeatedTextCountsEachTupleOnce) {
    const WatermarkOptions o = options(kTestKey, 1);
    // (2, 1) is green; (1, 2) is not: "2 1 2 1 ..." has two distinct tuples however long it is
    std::vector<int64_t> ids;
    for (int i = 0; i < 1000; ++i) ids.insert(ids.end(), {2, 1});
    DetectResult r = watermark_detect(o, ids);
    EXPECT_EQ(r.tokens, 2000);
    EXPECT_EQ(r.scored, 2);
    EXPECT_EQ(r.green, 1);
    EXPECT_NEAR(r.tail.p, 1 - 0.75 * 0.75, 1e-12);
    // a too-short text: no p, a reason
    DetectResult s = watermark_detect(options(kTestKey, 3), {4, 5, 6});
    EXPECT_FALSE(s.enough);
    EXPECT_EQ(s.scored, 0);
    EXPECT_NE(s.reason.find("not enough tokens"), std::string::npos);
    json j = detect_result_json(options(kTestKey, 3), s);
    EXPECT_TRUE(j["p"].is_null());
    EXPECT_TRUE(j["z"].is_null());
}

// Each engine slot watermarks with its own context: greedy decoding of several requests at once
// gives what generate() gives for each alone, and every position after h ids is green.
TEST(Guard, EngineWatermarksEachSlotLikeGenerate) {
    torch::NoGradGuard ng;
    Llama m(tiny_config(300, 64));
    m->init_weights(5);
    m->eval();
    SamplingOptions greedy;
    greedy.temperature = 0;
    greedy.max_new_tokens = 12;
    greedy.watermark = options(kTestKey, 2);
    const std::vector<std::vector<int64_t>> prompts = {
        {5, 9, 2}, {7, 8, 9, 10, 11}, {12}, {40, 41}};
    std::vector<std::vector<int64_t>> want;
    for (const auto& p : prompts) want.push_back(generate(m, p, greedy));

    Engine engine(m, 3);
    std::vector<std::vector<int64_t>> got(prompts.size());
    std::vector<std::promise<FinishReason>> done(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
        auto r = std::make_shared<GenRequest>();
        r->prompt = prompts[i];
        r->sampling = greedy;
        r->on_token = [&got, i](const TokenLogprob& t) {
            got[i].push_back(t.id);
            return true;
        };
        r->on_done = [&done, i](FinishReason why, const std::string&) { done[i].set_value(why); };
        engine.submit(r);
    }
    SamplingOptions plain = greedy;
    plain.watermark.reset();
    int changed = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
        EXPECT_EQ(done[i].get_future().get(), FinishReason::Length);
        EXPECT_EQ(got[i], want[i]) << "request " << i;
        std::vector<int64_t> all = prompts[i];
        all.insert(all.end(), want[i].begin(), want[i].end());
        // delta = 2 outweighs a random model's logit spread: every watermarked choice is green
        for (size_t t = std::max<size_t>(prompts[i].size(), 2); t < all.size(); ++t)
            EXPECT_TRUE(watermark_green(*greedy.watermark, all.data() + t - 2, all[t]))
                << i << " " << t;
        changed += generate(m, prompts[i], plain) != want[i];
    }
    EXPECT_GT(changed, 0) << "the watermark changed nothing";
}

// A watermarked server scores prompts (echo) with the logits it samples from: the log-prob of
// prompt token i + 1 is log_softmax(logits + delta green(prompt[..i])), raw where fewer than h ids.
TEST(Guard, EngineScoresPromptsWithTheWatermarkedLogits) {
    torch::NoGradGuard ng;
    Llama m(tiny_config(300, 64));
    m->init_weights(6);
    m->eval();
    const WatermarkOptions wm = options(kTestKey, 2, 0.25, 3);
    const std::vector<int64_t> prompt = {3, 17, 40, 44, 9, 100, 5, 250, 17, 41, 2, 1};
    Engine engine(m, 2);
    auto r = std::make_shared<GenRequest>();
    r->prompt = prompt;
    r->sampling.max_new_tokens = 0;
    r->sampling.watermark = wm;
    r->prompt_logprobs = true;
    std::promise<std::vector<TokenLogprob>> got;
    std::promise<FinishReason> done;
    r->on_prompt = [&got](std::vector<TokenLogprob> v) { got.set_value(std::move(v)); };
    r->on_done = [&done](FinishReason why, const std::string&) { done.set_value(why); };
    engine.submit(r);
    const std::vector<TokenLogprob> lps = got.get_future().get();
    EXPECT_EQ(done.get_future().get(), FinishReason::Length);
    ASSERT_EQ(lps.size(), prompt.size() - 1);
    torch::Tensor logits =
        m->forward(torch::tensor(prompt).unsqueeze(0)).squeeze(0).to(torch::kFloat64);  // (T, V)
    int64_t moved = 0;
    for (size_t i = 0; i + 1 < prompt.size(); ++i) {
        torch::Tensor row = logits[i].clone();
        watermark_apply(wm, std::vector<int64_t>(prompt.begin(), prompt.begin() + i + 1), row);
        const double want = torch::log_softmax(row, 0)[prompt[i + 1]].item<double>();
        const double raw = torch::log_softmax(logits[i], 0)[prompt[i + 1]].item<double>();
        EXPECT_NEAR(lps[i].logprob, want, 1e-5) << i;
        if (i == 0) {
            EXPECT_NEAR(lps[i].logprob, raw, 1e-5);  // one id before it: h = 2 leaves it raw
        }
        moved += std::fabs(want - raw) > 0.5;
    }
    EXPECT_GT(moved, 3);
}

TEST(Guard, WatermarkedGenerateIsDetectedAndAWrongKeyIsNot) {
    Fixture& f = fixture();
    const std::string dir = temp_dir("guard-generate");
    std::cerr << "the model samples among " << f.words << " whole-word tokens of "
              << f.tok.vocab_size() << "\n";
    ASSERT_GT(f.words, 300);
    for (int64_t h : {1, 3}) {
        const std::string text = dir + "/text-" + std::to_string(h) + ".txt",
                          err = dir + "/err.txt";
        ASSERT_EQ(run_distill("generate -m " + f.model +
                                  " -p 'kalo mine' -n 250 --seed 4 --watermark-key-file " + f.key +
                                  " --wm-context " + std::to_string(h),
                              text, err),
                  0)
            << read_file(err);
        const std::string out = read_file(text);
        json r = detect_cli(dir, out, f.key, "--wm-context " + std::to_string(h));
        std::cerr << "h=" << h << " watermarked: " << r.dump() << "\n";
        EXPECT_GE(r["scored"].get<int64_t>(), 200) << r.dump();
        EXPECT_LT(r["p"].get<double>(), 1e-6) << r.dump();
        EXPECT_EQ(r["context"], h);
        EXPECT_EQ(r["key_hash"], watermark_key_id_hex(watermark_key_file(f.key)));
        json w = detect_cli(dir, out, f.other_key, "--wm-context " + std::to_string(h));
        std::cerr << "h=" << h << " wrong key: " << w.dump() << "\n";
        EXPECT_GT(w["p"].get<double>(), 1e-3) << w.dump();
        EXPECT_LT(std::fabs(w["z"].get<double>()), 3) << w.dump();
        // the same model without the watermark: no detection
        ASSERT_EQ(
            run_distill("generate -m " + f.model + " -p 'kalo mine' -n 250 --seed 4", text, err),
            0);
        json c = detect_cli(dir, read_file(text), f.key, "--wm-context " + std::to_string(h));
        std::cerr << "h=" << h << " no watermark: " << c.dump() << "\n";
        EXPECT_GT(c["p"].get<double>(), 1e-3) << c.dump();
    }
}

TEST(Guard, WatermarkedServeIsDetected) {
    Fixture& f = fixture();
    const std::string dir = temp_dir("guard-serve");
    ServerProcess s(fixture().model, {"--watermark-key-file", f.key, "--wm-context", "2", "--wm-delta", "2"});
    ASSERT_GT(s.port(), 0);
    httplib::Client c("127.0.0.1", s.port());
    c.set_read_timeout(120);
    json req = {{"model", "model"},
                {"prompt", "she said that"},
                {"max_tokens", 250},
                {"temperature", 1},
                {"seed", 9}};
    auto res = c.Post("/v1/completions", req.dump(), "application/json");
    ASSERT_TRUE(res) << "no answer";
    ASSERT_EQ(res->status, 200) << res->body;
    const std::string text = json::parse(res->body)["choices"][0]["text"].get<std::string>();
    json r = detect_cli(dir, text, f.key, "--wm-context 2");
    std::cerr << "serve, watermarked: " << r.dump() << "\n";
    EXPECT_GE(r["scored"].get<int64_t>(), 200) << r.dump();
    EXPECT_LT(r["p"].get<double>(), 1e-6) << r.dump();
    json w = detect_cli(dir, text, f.key, "--wm-context 1");  // the wrong context is another test
    EXPECT_GT(w["p"].get<double>(), 1e-3) << w.dump();
}

TEST(Guard, KeyFileErrorsAndShortTexts) {
    Fixture& f = fixture();
    const std::string dir = temp_dir("guard-cli");
    write_file_atomic(dir + "/empty", "");
    write_file_atomic(dir + "/in.txt", "the house");
    const std::string err = dir + "/err.txt";
    for (const std::string& cmd :
         {"guard detect --tokenizer " + f.model + " --key-file " + dir + "/missing < " + dir +
              "/in.txt",
          "guard detect --tokenizer " + f.model + " --key-file " + dir + "/empty < " + dir +
              "/in.txt",
          "generate -m " + f.model + " -p hi --watermark-key-file " + dir + "/missing",
          "generate -m " + f.model + " -p hi --watermark-key-file " + dir + "/empty",
          "serve -m " + f.model + " --port 0 --watermark-key-file " + dir + "/empty"}) {
        EXPECT_EQ(run_distill(cmd, "", err), 1) << cmd;
        const std::string e = read_file(err);
        EXPECT_TRUE(e.find("does not exist") != std::string::npos ||
                    e.find("is empty") != std::string::npos)
            << e;
        EXPECT_NE(e.find("head -c 32 /dev/urandom"), std::string::npos) << e;
    }
    // --wm-gamma without a key is a usage error
    EXPECT_EQ(run_distill("generate -m " + f.model + " -p hi --wm-gamma 0.5", "", err), 2)
        << read_file(err);

    // too short for the context: a result without p, and a reason
    json r = detect_cli(dir, "the", f.key, "--wm-context 4");
    EXPECT_TRUE(r["p"].is_null()) << r.dump();
    EXPECT_TRUE(r["log10_p"].is_null()) << r.dump();
    EXPECT_EQ(r["scored"], 0);
    EXPECT_NE(r["reason"].get<std::string>().find("not enough tokens"), std::string::npos)
        << r.dump();
    json e = detect_cli(dir, "", f.key);
    EXPECT_EQ(e["tokens"], 0);
    EXPECT_TRUE(e["p"].is_null());

    // --jsonl: a string, an object, a blank line (skipped), a short text; one line out per text
    const std::string lines =
        "\"she said that the garden was\"\n{\"text\": \"the house\"}\n\n\"a\"\n";
    const std::string in = dir + "/in.jsonl", out = dir + "/out.jsonl";
    write_file_atomic(in, lines);
    ASSERT_EQ(run_distill("guard detect --jsonl --key-file " + f.key + " --tokenizer " + f.model +
                              " < " + in,
                          out, err),
              0)
        << read_file(err);
    std::vector<json> got;
    std::string all = read_file(out);
    size_t pos = 0;
    while (pos < all.size()) {
        size_t nl = all.find('\n', pos);
        got.push_back(json::parse(all.substr(pos, nl - pos)));
        pos = nl + 1;
    }
    ASSERT_EQ(got.size(), 3u) << all;
    EXPECT_TRUE(got[0]["p"].is_number());
    EXPECT_EQ(got[1]["tokens"].get<int64_t>(),
              static_cast<int64_t>(f.tok.encode("the house").size()));
    EXPECT_TRUE(got[2]["p"].is_null());
    // a line that is neither: exit 1, naming the line
    write_file_atomic(in, "\"ok\"\n[1, 2]\n");
    EXPECT_EQ(run_distill("guard detect --jsonl --key-file " + f.key + " --tokenizer " + f.model +
                              " < " + in,
                          out, err),
              1);
    EXPECT_NE(read_file(err).find("stdin line 2"), std::string::npos) << read_file(err);
}

namespace {

// What the guard issue's story needs, small: the fixture's model served as the teacher (with or
// without the watermark), 40 completions of 200 tokens captured through its API, and a student of
// the same tiny shape trained sequence-level on them. Returns the student's run dir.
struct Suspect {
    std::string dataset, run;
};
Suspect distilled_suspect(const std::string& dir, const std::string& name, bool watermarked) {
    Fixture& f = fixture();
    std::string prompts;
    const std::vector<std::string> starts = {"kalo", "mine ru", "sati vo", "beda", "fegu ho"};
    for (int i = 0; i < 40; ++i) prompts += json({{"prompt", starts[i % 5]}}).dump() + "\n";
    write_file_atomic(dir + "/prompts.jsonl", prompts);
    std::vector<std::string> wm;
    if (watermarked) wm = {"--watermark-key-file", f.key, "--wm-delta", "4"};
    Suspect s{dir + "/" + name + "-data", dir + "/" + name};
    {
        ServerProcess teacher(f.model, wm);
        EXPECT_EQ(run_distill("capture --teacher-url " + teacher.base_url() + " --prompts " + dir + "/prompts.jsonl --max-tokens 200 --concurrency 4 --seed 2 -o " +
                              s.dataset),
                  0);
    }
    write_file_atomic(dir + "/student.json",
                      R"({"model_type":"llama","hidden_size":64,"num_hidden_layers":1,"num_attention_heads":4,
                          "num_key_value_heads":2,"intermediate_size":128,"max_position_embeddings":512})");
    EXPECT_EQ(run_distill("--threads 1 train --sequences " + s.dataset + " --config " + dir + "/student.json" +
                          " --tokenizer " + f.model + " --loss ce --steps 300 --batch-size 8 --seq-len 128 --run-dir " +
                          s.run),
              0);
    return s;
}

json radioactivity_cli(const std::string& dir, const std::string& args) {
    const std::string out = dir + "/radio.json", err = dir + "/radio.err";
    const int rc = run_distill("guard radioactivity " + args, out, err);
    EXPECT_EQ(rc, 0) << args << "\n" << read_file(err);
    return rc == 0 ? json::parse(read_file(out)) : json();
}

}  // namespace

// Radioactivity, open and closed, on students distilled through the teacher's API: the one
// trained on watermarked completions is found (p < 1e-6), the one trained on the same teacher
// without the watermark is not, and neither is found with a wrong key.
TEST(Guard, RadioactivityFindsTheStudentOfTheWatermarkedApi) {
    Fixture& f = fixture();
    const std::string dir = temp_dir("guard-radio");
    const Suspect marked = distilled_suspect(dir, "marked", true);
    const Suspect clean = distilled_suspect(dir, "clean", false);
    const std::string ours = " --texts " + marked.dataset + "/samples.jsonl --seq-len 128 --stride 64";
    // the completions themselves carry the watermark; the clean teacher's do not
    std::string marked_text, clean_text;
    for (const ApiSample& x : read_api_dataset(marked.dataset)) marked_text += x.record["text"].get<std::string>();
    for (const ApiSample& x : read_api_dataset(clean.dataset)) clean_text += x.record["text"].get<std::string>();
    EXPECT_LT(detect_cli(dir, marked_text, f.key)["p"].get<double>(), 1e-30);
    EXPECT_GT(detect_cli(dir, clean_text, f.key)["p"].get<double>(), 1e-3);

    json m = radioactivity_cli(dir, "--key-file " + f.key + " --suspect " + marked.run + "/model" + ours);
    json c = radioactivity_cli(dir, "--key-file " + f.key + " --suspect " + clean.run + "/model" + ours);
    json w = radioactivity_cli(dir, "--key-file " + f.other_key + " --suspect " + marked.run + "/model" + ours);
    std::cerr << "open: marked " << m.dump() << "\nopen: clean " << c.dump() << "\nopen: wrong key " << w.dump() << "\n";
    EXPECT_EQ(m["mode"], "open");
    EXPECT_EQ(m["texts"], 40);
    EXPECT_GE(m["scored"].get<int64_t>(), 200) << m.dump();
    EXPECT_LT(m["p"].get<double>(), 1e-6) << m.dump();
    EXPECT_GT(c["p"].get<double>(), 1e-3) << c.dump();
    EXPECT_GT(w["p"].get<double>(), 1e-3) << w.dump();
    // the students' top 5 at each position: more tuples, and still p > 1e-3 where nothing was learned
    json m5 = radioactivity_cli(dir, "--key-file " + f.key + " --suspect " + marked.run + "/model" + ours + " --top-k 5");
    json c5 = radioactivity_cli(dir, "--key-file " + f.key + " --suspect " + clean.run + "/model" + ours + " --top-k 5");
    json w5 = radioactivity_cli(dir, "--key-file " + f.other_key + " --suspect " + marked.run + "/model" + ours + " --top-k 5");
    std::cerr << "open, top 5: marked " << m5.dump() << "\nopen, top 5: clean " << c5.dump()
              << "\nopen, top 5: wrong key " << w5.dump() << "\n";
    EXPECT_GT(m5["scored"].get<int64_t>(), 2 * m["scored"].get<int64_t>()) << m5.dump();
    EXPECT_LT(m5["p"].get<double>(), 1e-6) << m5.dump();
    EXPECT_GT(c5["p"].get<double>(), 1e-3) << c5.dump();
    EXPECT_GT(w5["p"].get<double>(), 1e-3) << w5.dump();

    // soft: each student's whole next-token distribution over a text the key never touched
    write_file_atomic(dir + "/clean.txt", syllable_text(20000, 5));
    const std::string soft = " --score soft --text " + dir + "/clean.txt --seq-len 128 --stride 64";
    json ms = radioactivity_cli(dir, "--key-file " + f.key + " --suspect " + marked.run + "/model" + soft);
    json cs = radioactivity_cli(dir, "--key-file " + f.key + " --suspect " + clean.run + "/model" + soft);
    json ws = radioactivity_cli(dir, "--key-file " + f.other_key + " --suspect " + marked.run + "/model" + soft);
    std::cerr << "soft: marked " << ms.dump() << "\nsoft: clean " << cs.dump() << "\nsoft: wrong key " << ws.dump()
              << "\n";
    EXPECT_EQ(ms["score"], "soft");
    EXPECT_GE(ms["contexts"].get<int64_t>(), 100) << ms.dump();
    EXPECT_LT(ms["log10_p"].get<double>(), -10) << ms.dump();
    EXPECT_GT(ms["green_mass"].get<double>(), 0.3) << ms.dump();
    EXPECT_GT(cs["p"].get<double>(), 1e-3) << cs.dump();
    EXPECT_GT(ws["p"].get<double>(), 1e-3) << ws.dump();

    // closed: only the students' APIs, asked for completions of new prompts
    std::string prompts;
    for (int i = 0; i < 30; ++i) prompts += json({{"prompt", std::vector<std::string>{"zo", "pati", "hoji ne"}[i % 3]}}).dump() + "\n";
    write_file_atomic(dir + "/suspect-prompts.jsonl", prompts);
    for (const auto* s : {&marked, &clean}) {
        ServerProcess api(s->run + "/model", {});
        const std::string args = "--key-file " + f.key + " --tokenizer " + f.model + " --suspect-url " + api.base_url() +
                                 " --prompts " + dir +
                                 "/suspect-prompts.jsonl --max-tokens 100 --seed 7 --dataset " + s->run + "-answers";
        json r = radioactivity_cli(dir, args);
        std::cerr << "closed: " << s->run << " " << r.dump() << "\n";
        EXPECT_EQ(r["mode"], "closed");
        EXPECT_EQ(r["capture"]["written"], 30);
        EXPECT_GE(r["scored"].get<int64_t>(), 200) << r.dump();
        if (s == &marked)
            EXPECT_LT(r["p"].get<double>(), 1e-6) << r.dump();
        else
            EXPECT_GT(r["p"].get<double>(), 1e-3) << r.dump();
        // the same answers again (no new requests), filtered to the contexts of our texts
        json again = radioactivity_cli(dir, "--key-file " + f.key + " --tokenizer " + f.model + " --dataset " + s->run +
                                                "-answers --filter-texts " + marked.dataset + "/samples.jsonl");
        std::cerr << "closed, filtered: " << again.dump() << "\n";
        EXPECT_TRUE(again.find("capture") == again.end());  // nothing asked again
        EXPECT_EQ(again["positions"], r["positions"]);
        EXPECT_GT(again["filter"]["contexts"].get<int64_t>(), 100);
        EXPECT_LE(again["scored"].get<int64_t>() + again["filtered_out"].get<int64_t>(),
                  again["positions"].get<int64_t>() - again["in_prompt"].get<int64_t>());
        if (s == &marked) {
            EXPECT_LT(again["p"].get<double>(), 1e-3) << again.dump();
        }
        // soft through the API: its top-20 on the clean text (echo), as the open mode weighs its own
        json so = radioactivity_cli(dir, "--key-file " + f.key + " --tokenizer " + f.model + " --suspect-url " +
                                             api.base_url() + soft);
        std::cerr << "closed, soft: " << so.dump() << "\n";
        EXPECT_EQ(so["mode"], "closed");
        EXPECT_EQ(so["top_m"], 20);
        EXPECT_EQ(so["contexts"], (s == &marked ? ms : cs)["contexts"]);
        if (s == &marked)
            EXPECT_LT(so["log10_p"].get<double>(), -10) << so.dump();
        else
            EXPECT_GT(so["p"].get<double>(), 1e-3) << so.dump();
    }
}

// Under "the suspect knows nothing of the key" the soft test's p is a valid p-value: with 200
// random keys on a student trained without any watermark, p <= alpha for at most alpha of them
// (Chernoff's bound is conservative: it errs towards larger p).
TEST(Guard, SoftRadioactivityIsCalibratedOnACleanStudent) {
    Fixture& f = fixture();
    const std::string dir = temp_dir("guard-soft-calib");
    const Suspect clean = distilled_suspect(dir, "clean", false);
    LoadedModel m = load_model_for_inference(clean.run + "/model");
    WatermarkOptions o;
    o.key = watermark_key("calibration");
    WindowOptions w;
    w.context = 128;
    w.stride = 64;
    SoftTally tally = soft_tally_open(m.model, f.tok, syllable_text(20000, 6), o, w, 64);
    int below[3] = {0, 0, 0};
    const double alphas[3] = {0.01, 0.05, 0.2};
    double min_p = 1;
    for (int k = 0; k < 200; ++k) {
        WatermarkOptions ok = o;
        ok.key = watermark_key("random key " + std::to_string(k));
        const SoftRadioactivityResult r = tally.result(ok);
        min_p = std::min(min_p, r.p);
        for (int a = 0; a < 3; ++a) below[a] += r.p <= alphas[a];
    }
    std::cerr << "soft p over 200 keys: <= 0.01: " << below[0] << ", <= 0.05: " << below[1] << ", <= 0.2: "
              << below[2] << ", smallest " << min_p << "\n";
    // at most alpha * 200 plus three binomial standard deviations
    for (int a = 0; a < 3; ++a)
        EXPECT_LE(below[a], alphas[a] * 200 + 3 * std::sqrt(200 * alphas[a] * (1 - alphas[a]))) << alphas[a];
    EXPECT_GT(min_p, 1e-4);
}

// Bad radioactivity input: a clear error, never a crash.
TEST(Guard, RadioactivityInputErrors) {
    Fixture& f = fixture();
    const std::string dir = temp_dir("guard-radio-cli");
    write_file_atomic(dir + "/texts.jsonl", "\"kalo mine ru\"\n[1]\n");
    write_file_atomic(dir + "/none.jsonl", "\n\n");
    const std::string err = dir + "/err.txt";
    const std::string base = "guard radioactivity --key-file " + f.key;
    struct Case {
        std::string args, needle;
        int rc;
    };
    for (const Case& c : std::vector<Case>{
             {base + " --suspect " + f.model + " --texts " + dir + "/texts.jsonl", "line 2", 1},
             {base + " --suspect " + f.model + " --texts " + dir + "/none.jsonl", "holds no texts", 1},
             {base + " --suspect " + f.model, "--texts", 2},
             {base + " --tokenizer " + f.model, "--suspect MODEL", 2},
             {base + " --suspect " + f.model + " --dataset " + dir, "not both", 2},
             {base + " --tokenizer " + f.model + " --dataset " + dir + "/missing", "missing", 1},
             {base + " --suspect " + dir + "/texts.jsonl --texts " + dir + "/texts.jsonl", "texts.jsonl", 1},
             {base + " --suspect " + f.model + " --texts " + dir + "/texts.jsonl --seq-len 8 --stride 9", "--stride", 2},
             {base + " --suspect " + f.model + " --texts " + dir + "/texts.jsonl --top-k 0", "--top-k", 2},
             {base + " --tokenizer " + f.model + " --dataset " + dir + " --top-k 3", "open-mode flag", 2},
         }) {
        EXPECT_EQ(run_distill(c.args, "", err), c.rc) << c.args << "\n" << read_file(err);
        EXPECT_NE(read_file(err).find(c.needle), std::string::npos) << c.args << "\n" << read_file(err);
    }
    // texts too short for the context: a result without p, and why
    write_file_atomic(dir + "/short.jsonl", "\"kalo\"\n");
    json r = radioactivity_cli(dir, "--key-file " + f.key + " --suspect " + f.model + " --texts " + dir +
                                        "/short.jsonl --wm-context 4");
    EXPECT_TRUE(r["p"].is_null()) << r.dump();
    EXPECT_EQ(r["scored"], 0);
    EXPECT_NE(r["reason"].get<std::string>().find("nothing to score"), std::string::npos) << r.dump();
}

// Antidistillation input errors: clear messages, no server.
TEST(Guard, AntidistillationInputErrors) {
    Fixture& f = fixture();
    const std::string dir = temp_dir("guard-antidistill-errors");
    const std::string other = dir + "/other-vocab";
    {
        Llama p(tiny_config(300, 512));
        p->init_weights(2);
        save_model_dir(other, p, nullptr);
    }
    const std::string data = dir + "/data.txt", tiny = dir + "/tiny.txt";
    write_file_atomic(data, syllable_text(20000, 5));
    write_file_atomic(tiny, "kalo");
    struct Case {
        std::string flags, says;
    } cases[] = {
        {"--antidistill-proxy " + other + " --antidistill-data " + data, "vocabulary of 300 tokens"},
        {"--antidistill-proxy " + f.model + " --antidistill-data " + tiny, "one window needs 257"},
        {"--antidistill-data " + data, "needs --antidistill-proxy"},
        {"--antidistill-proxy " + f.model, "needs --antidistill-data"},
        {"--antidistill-proxy " + dir + "/missing --antidistill-data " + data, "missing"},
    };
    for (const auto& c : cases) {
        const std::string err = dir + "/err.txt";
        const int rc = run("timeout 60 " + std::string(DISTILL_BINARY) + " --threads 1 serve -m " + f.model +
                           " --port 0 " + c.flags + " > /dev/null 2> " + err);
        EXPECT_NE(rc, 0) << c.flags;
        EXPECT_NE(rc, 124) << "still serving: " << c.flags;
        EXPECT_NE(read_file(err).find(c.says), std::string::npos) << c.flags << "\n" << read_file(err);
    }
}

#else  // DISTILL_GUARD_REF

namespace {

// Generates `n` texts with the engine (batched): each a one-token prompt and `len` sampled
// tokens, with or without a watermark. Returns prompt + sampled ids.
std::vector<std::vector<int64_t>> engine_texts(
    Llama& m, int64_t n, int64_t len, uint64_t seed,
    const std::optional<WatermarkOptions>& wm = std::nullopt) {
    Engine engine(m, 32);
    const int64_t V = m->config().vocab_size;
    std::vector<std::vector<int64_t>> texts(n);
    std::vector<std::promise<FinishReason>> done(n);
    std::mt19937_64 rng(seed);
    for (int64_t i = 0; i < n; ++i) {
        auto r = std::make_shared<GenRequest>();
        r->prompt = {static_cast<int64_t>(rng() % V)};
        texts[i] = r->prompt;
        r->sampling.temperature = 1;
        r->sampling.seed = seed * 100003 + i;
        r->sampling.max_new_tokens = len;
        r->sampling.watermark = wm;
        r->on_token = [&texts, i](const TokenLogprob& t) {
            texts[i].push_back(t.id);
            return true;
        };
        r->on_done = [&done, i](FinishReason why, const std::string&) { done[i].set_value(why); };
        engine.submit(r);
    }
    for (auto& d : done) EXPECT_EQ(d.get_future().get(), FinishReason::Length);
    return texts;
}

// Runs tests/ref/guard_ref.py MODE on `in`; false (with a failure, or a skip outside CI) when
// python3-xxhash or python3-scipy is missing.
bool python_ready() {
    if (run("/usr/bin/python3 -c 'import xxhash, scipy.stats' 2>/dev/null") == 0) return true;
    const std::string why =
        "Python's xxhash or scipy is missing: apt-get install python3-xxhash python3-scipy "
        "(scripts/setup.sh --tests)";
    if (std::getenv("CI"))
        ADD_FAILURE() << "CI is set but " << why;
    else
        std::cerr << "skipped: " << why << "\n";
    return false;
}

json reference(const std::string& mode, const json& in, const std::string& dir) {
    write_file_atomic(dir + "/" + mode + "-in.json", in.dump());
    const int rc =
        run_python("tests/ref/guard_ref.py",
                   mode + " " + dir + "/" + mode + "-in.json " + dir + "/" + mode + "-out.json");
    EXPECT_EQ(rc, 0) << "guard_ref.py " << mode << " failed";
    if (rc != 0) return json();
    json out = json::parse(read_file(dir + "/" + mode + "-out.json"));
    std::cerr << "guard_ref.py " << mode << ": xxhash " << out["xxhash"] << ", scipy "
              << out["scipy"] << "\n";
    return out["result"];
}

std::string hex(const std::string& bytes) {
    static const char* d = "0123456789abcdef";
    std::string s;
    for (unsigned char c : bytes) {
        s += d[c >> 4];
        s += d[c & 15];
    }
    return s;
}

}  // namespace

// A random-weight suspect saved in `model_dir`, over a tokenizer with a BOS (so the offset rule is
// exercised) trained on 5000 two-syllable words (64 of them) drawn in a seeded order; word()
// draws more. Its matrices are scaled by `scale` (above 1: more peaked distributions).
struct RefSuspect {
    uint64_t lcg;
    Tokenizer tok;
    RefSuspect(const std::string& model_dir, uint64_t seed, double scale) : lcg(seed) {
        std::string corpus;
        for (int i = 0; i < 5000; ++i) corpus += word();
        TokenizerTrainOptions to;
        to.vocab_size = 400;
        tok = Tokenizer::train(corpus, to);
        EXPECT_GE(tok.bos_id(), 0);
        Llama m(tiny_config(tok.vocab_size(), 256));
        m->init_weights(5);
        torch::NoGradGuard ng;
        for (auto& p : m->parameters())
            if (p.dim() >= 2) p.mul_(scale);
        save_model_dir(model_dir, m, &tok);
    }
    std::string word() {
        static const std::vector<std::string> syl = {"ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo"};
        lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
        return syl[(lcg >> 40) % 8] + syl[(lcg >> 50) % 8] + " ";
    }
};

// Open-mode radioactivity counted again in Python from the suspect's top-1 predictions as
// `distill score` prints them: the same T, S and p (scipy), at h = 1 and 3.
TEST(GuardRef, RadioactivityOpenModeMatchesPython) {
    if (!python_ready()) GTEST_SKIP();
    const std::string dir = temp_dir("guard-ref-radio");
    RefSuspect suspect(dir + "/suspect", 7, 1.0);
    auto word = [&] { return suspect.word(); };
    write_file_atomic(dir + "/key", "radioactive key");
    std::string texts_jsonl;
    json texts = json::array();
    for (int t = 0; t < 4; ++t) {
        std::string text;
        for (int i = 0; i < 60 + 20 * t; ++i) text += word();
        write_file_atomic(dir + "/t" + std::to_string(t) + ".txt", text);
        texts_jsonl += json(text).dump() + "\n";
        const std::string sc = dir + "/score" + std::to_string(t) + ".jsonl";
        ASSERT_EQ(run_distill("--threads 1 score --model " + dir + "/suspect --text " + dir + "/t" + std::to_string(t) +
                                  ".txt --top-logprobs 3 --seq-len 64 --stride 32",
                              sc),
                  0);
        json lines = json::array();
        std::istringstream in(read_file(sc));
        std::string line;
        while (std::getline(in, line)) lines.push_back(json::parse(line));
        texts.push_back(lines);
    }
    write_file_atomic(dir + "/texts.jsonl", texts_jsonl);
    for (int64_t h : {1, 3})
        for (int64_t k : {1, 3}) {
            const std::string out = dir + "/radio.json";
            ASSERT_EQ(run_distill("--threads 1 guard radioactivity --key-file " + dir + "/key --suspect " + dir +
                                      "/suspect --texts " + dir + "/texts.jsonl --seq-len 64 --stride 32 --wm-context " +
                                      std::to_string(h) + " --top-k " + std::to_string(k),
                                  out),
                      0);
            const json got = json::parse(read_file(out));
            const json want = reference("radio", {{"key", hex("radioactive key")}, {"gamma", 0.25}, {"h", h}, {"offset", 1},
                                                  {"top_k", k}, {"texts", texts}}, dir);
            std::cerr << "h=" << h << " top-" << k << " distill " << got.dump() << "\n  python " << want.dump() << "\n";
            EXPECT_EQ(got["top_k"], k);
            EXPECT_EQ(got["scored"], want["T"]);
            EXPECT_EQ(got["green"], want["S"]);
            EXPECT_NEAR(std::log(got["p"].get<double>()), std::log(want["p"].get<double>()), 1e-9);
            EXPECT_GT(want["T"].get<int64_t>(), 20 * k);
        }
}

// The soft test (--score soft) against tests/ref/guard_ref.py, which recounts it from the same
// suspect's `distill score --top-logprobs 8` lines with Python's xxhash and bounds the tail with
// scipy's minimiser: the same pairs, the same S, the same Chernoff bound.
TEST(GuardRef, SoftRadioactivityMatchesPython) {
    if (!python_ready()) GTEST_SKIP();
    const std::string dir = temp_dir("guard-ref-soft");
    RefSuspect suspect(dir + "/suspect", 9, 4.0);  // peaked distributions: weights well above init's
    auto word = [&] { return suspect.word(); };
    write_file_atomic(dir + "/key", "soft key");
    std::string text;
    for (int i = 0; i < 400; ++i) text += word();
    write_file_atomic(dir + "/text.txt", text);
    ASSERT_EQ(run_distill("--threads 1 score --model " + dir + "/suspect --text " + dir +
                              "/text.txt --top-logprobs 8 --seq-len 64 --stride 32",
                          dir + "/score.jsonl"),
              0);
    json lines = json::array();
    {
        std::istringstream in(read_file(dir + "/score.jsonl"));
        std::string line;
        while (std::getline(in, line)) lines.push_back(json::parse(line));
    }
    for (int64_t h : {1, 2}) {
        const std::string out = dir + "/soft.json";
        ASSERT_EQ(run_distill("--threads 1 guard radioactivity --key-file " + dir + "/key --suspect " + dir +
                                  "/suspect --score soft --text " + dir + "/text.txt --top-m 8 --seq-len 64 --stride 32 "
                                  "--wm-context " + std::to_string(h),
                              out),
                  0);
        const json got = json::parse(read_file(out));
        const json want = reference("soft", {{"key", hex("soft key")}, {"gamma", 0.25}, {"h", h}, {"offset", 1},
                                            {"top_m", 8}, {"lines", lines}}, dir);
        std::cerr << "h=" << h << " distill " << got.dump() << "\n  python " << want.dump() << "\n";
        EXPECT_EQ(got["score"], "soft");
        EXPECT_EQ(got["pairs"], want["pairs"]);
        EXPECT_GT(want["pairs"].get<int64_t>(), 100);
        EXPECT_NEAR(got["S"].get<double>(), want["S"].get<double>(), 1e-6 * want["S"].get<double>());
        EXPECT_NEAR(got["mean"].get<double>(), want["mean"].get<double>(), 1e-6 * want["mean"].get<double>());
        EXPECT_NEAR(got["log10_p"].get<double>(), want["log10_p"].get<double>(), 1e-6);
    }
    // the bound alone against scipy's minimiser, from just above the mean to far into the tail,
    // and its limits: every pair green (gamma^n) and S at or below the mean (1)
    const std::vector<double> w = {0.5, 0.25, 0.8, 0.1, 0.6, 0.9, 0.3, 0.45, 0.7, 0.2};
    std::vector<double> many;
    for (int i = 0; i < 40; ++i) many.insert(many.end(), w.begin(), w.end());
    double total = 0;
    for (double x : many) total += x;
    json cases = json::array();
    for (double frac : {0.27, 0.3, 0.4, 0.6, 0.8, 0.95})
        for (double gamma : {0.25, 0.5}) cases.push_back({{"w", many}, {"gamma", gamma}, {"s", frac * total}});
    const json bounds = reference("chernoff", cases, dir);
    ASSERT_EQ(bounds.size(), cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
        const double ours = chernoff_log10_tail(many, cases[i]["gamma"].get<double>(), cases[i]["s"].get<double>());
        EXPECT_NEAR(ours, bounds[i].get<double>(), 1e-6 * std::max(1.0, std::fabs(ours))) << cases[i]["s"];
    }
    EXPECT_LT(bounds[cases.size() - 2].get<double>(), -50);
    EXPECT_NEAR(chernoff_log10_tail(many, 0.25, total), 400 * std::log10(0.25), 1e-9);
    EXPECT_EQ(chernoff_log10_tail(many, 0.25, 0.2 * total), 0.0);
    EXPECT_LT(chernoff_log10_tail(many, 0.25, 0.9 * total), -100);
}

TEST(GuardRef, GreenTestMatchesPythonXxhash) {
    if (!python_ready()) GTEST_SKIP();
    const std::string dir = temp_dir("guard-ref-green");
    std::mt19937_64 rng(1);
    // keys of every length class XXH3 treats differently (1-3, 4-8, 9-16, 17-128, 129-240, > 240)
    std::vector<std::string> keys = {kTestKey, "k", std::string(1, '\0'), "\n"};
    for (size_t len : {2, 3, 4, 7, 8, 9, 16, 17, 32, 64, 128, 129, 200, 240, 241, 1000, 5000}) {
        std::string k(len, '\0');
        for (char& c : k) c = static_cast<char>(rng() & 0xFF);
        keys.push_back(k);
    }
    const std::vector<double> gammas = {0.25, 0.1, 0.5, 0.9, 1e-3, 0.999, 1.0 / 3, 0.7};
    struct Case {
        std::string key;
        std::vector<int64_t> ids;
        double gamma;
    };
    std::vector<Case> cases;
    json in = json::array();
    for (size_t i = 0; i < 4000; ++i) {
        Case c;
        c.key = keys[i % keys.size()];
        const int64_t h = 1 + static_cast<int64_t>(rng() % kWatermarkMaxContext);
        for (int64_t j = 0; j <= h; ++j) {
            const uint64_t kind = rng() % 4;  // small ids, vocabulary-sized ids, any u32, the edges
            int64_t id = kind == 0   ? int64_t(rng() % 300)
                         : kind == 1 ? int64_t(rng() % 152000)
                         : kind == 2 ? int64_t(rng() & 0xFFFFFFFFull)
                                     : (rng() % 2 ? 0 : 0xFFFFFFFFll);
            c.ids.push_back(id);
        }
        c.gamma = gammas[i % gammas.size()];
        in.push_back({{"key", hex(c.key)}, {"ids", c.ids}, {"gamma", c.gamma}});
        cases.push_back(std::move(c));
    }
    json ref = reference("green", in, dir);
    ASSERT_EQ(ref.size(), cases.size());
    int64_t green = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
        const Case& c = cases[i];
        const WatermarkOptions o = options(c.key, static_cast<int64_t>(c.ids.size()) - 1, c.gamma);
        const int64_t n = static_cast<int64_t>(c.ids.size());
        ASSERT_EQ(o.key.k, ref[i]["k"].get<uint64_t>()) << i;
        ASSERT_EQ(o.key.id, ref[i]["key_id"].get<uint64_t>()) << i;
        ASSERT_EQ(watermark_hash(o.key.k, c.ids.data(), n), ref[i]["hash"].get<uint64_t>()) << i;
        ASSERT_EQ(watermark_threshold(c.gamma), ref[i]["threshold"].get<uint64_t>())
            << "gamma " << c.gamma;
        const bool g = watermark_green(o, c.ids.data(), c.ids.back());
        ASSERT_EQ(g, ref[i]["green"].get<bool>()) << i;
        // the mask over a small vocabulary agrees at the case's token when it is in range
        if (c.ids.back() < 300) {
            std::vector<uint8_t> mask = watermark_green_mask(o, c.ids.data(), 300);
            ASSERT_EQ(mask[c.ids.back()] != 0, g) << i;
        }
        green += g;
    }
    EXPECT_GT(green, 100);  // both outcomes occur
    EXPECT_LT(green, static_cast<int64_t>(cases.size()) - 100);
}

// serve --logprob-noise's normal deviate recomputed in Python from the documented formula; over
// the cases it is a standard normal (mean and variance), and it depends on the last 4 ids only.
TEST(GuardRef, LogprobNoiseMatchesPythonXxhash) {
    if (!python_ready()) GTEST_SKIP();
    const std::string dir = temp_dir("guard-ref-noise");
    std::mt19937_64 rng(2);
    std::vector<std::vector<int64_t>> cases;
    std::vector<uint64_t> keys;
    json in = json::array();
    for (int i = 0; i < 4000; ++i) {
        std::vector<int64_t> ids(1 + rng() % 8);  // context of 0 to 7 ids, then the token
        for (auto& x : ids) x = static_cast<int64_t>(rng() % (i % 2 ? 152000 : 300));
        const uint64_t key = i % 3 ? rng() : uint64_t(i);
        in.push_back({{"key", key}, {"ids", ids}});
        cases.push_back(ids);
        keys.push_back(key);
    }
    json ref = reference("noise", in, dir);
    ASSERT_EQ(ref.size(), cases.size());
    double sum = 0, sq = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
        const auto& ids = cases[i];
        const double z = logprob_noise_z(keys[i], ids.data(), ids.size() - 1, ids.back());
        ASSERT_NEAR(z, ref[i].get<double>(), 1e-12) << i;
        sum += z;
        sq += z * z;
        if (ids.size() > 5) {  // only the last 4 context ids count
            EXPECT_EQ(z, logprob_noise_z(keys[i], ids.data() + 1, ids.size() - 2, ids.back()));
        }
    }
    const double n = double(cases.size()), mean = sum / n, var = sq / n - mean * mean;
    EXPECT_LT(std::abs(mean), 4.0 / std::sqrt(n));        // 4 standard errors
    EXPECT_LT(std::abs(var - 1.0), 4.0 * std::sqrt(2.0 / n));
}

TEST(GuardRef, BinomialTailMatchesScipyAndAnExactSum) {
    if (!python_ready()) GTEST_SKIP();
    const std::string dir = temp_dir("guard-ref-binom");
    struct Case {
        int64_t T, S;
        double gamma;
        bool exact;
    };
    std::vector<Case> cases = {
        {200, 59, 0.25, true}, {200, 70, 0.25, true}, {200, 100, 0.25, true}};
    for (double g : {0.25, 0.1, 0.5, 0.75, 0.9, 0.01}) {
        for (int64_t T : {1, 2, 3, 5, 10, 31, 100, 200, 512, 1000, 2000, 10000, 100000, 1000000}) {
            // every S for small T; otherwise a grid from the bottom through the mean into the far
            // tail
            std::set<int64_t> ss;
            if (T <= 31) {
                for (int64_t S = 0; S <= T; ++S) ss.insert(S);
            } else {
                const double mean = g * T, sd = std::sqrt(T * g * (1 - g));
                for (double k : {-10.0, -3.0, -1.0, -0.3, 0.0, 0.3, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0,
                                 20.0, 30.0, 50.0})
                    ss.insert(std::clamp<int64_t>(static_cast<int64_t>(std::llround(mean + k * sd)),
                                                  0, T));
                for (double frac : {0.0, 0.02, 0.5, 0.6, 0.75, 0.9, 0.99, 1.0})
                    ss.insert(static_cast<int64_t>(frac * T));
                ss.insert(T - 1);
                ss.insert(1);
            }
            for (int64_t S : ss)
                cases.push_back({T, S, g, T <= 1000 || (T <= 2000 && S >= 0.6 * T)});
        }
    }
    json in = json::array();
    for (const Case& c : cases)
        in.push_back({{"T", c.T}, {"S", c.S}, {"gamma", c.gamma}, {"exact", c.exact}});
    json ref = reference("binom", in, dir);
    ASSERT_EQ(ref.size(), cases.size());
    double worst_rel = 0, worst_log = 0;
    int64_t deep = 0, below = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
        const Case& c = cases[i];
        const BinomialTail t = binomial_tail(c.T, c.S, c.gamma);
        const double sf = ref[i]["sf"].get<double>();
        const std::string what = str_cat("T=", c.T, " S=", c.S, " gamma=", c.gamma, ": p=", t.p,
                                         " log10_p=", t.log10_p, " scipy=", sf);
        if (sf >= 1e-300) {
            ASSERT_GT(t.p, 0.0) << what;
            const double rel = std::fabs(t.p / sf - 1);
            worst_rel = std::max(worst_rel, rel);
            EXPECT_LT(rel, c.T >= 100000 ? 1e-7 : 1e-9) << what;
            if (sf < 1e-100) ++deep;
        }
        if (!ref[i]["log10_exact"].is_null()) {
            const double ex = ref[i]["log10_exact"].get<double>();
            const double d = std::fabs(t.log10_p - ex);
            worst_log = std::max(worst_log, d);
            EXPECT_LT(d, 1e-9) << what << " exact log10 " << ex;
            if (ex < -300) ++below;
        }
    }
    std::cerr << cases.size() << " cases; worst relative error against scipy " << worst_rel
              << "; worst |log10 p - exact| " << worst_log << "; " << deep
              << " cases with 1e-300 <= p < 1e-100, " << below << " below 1e-300\n";
    EXPECT_GT(deep, 20);
    EXPECT_GT(below, 20);
}

namespace {
// p-values of texts: the reported one, and a randomized one (p(S+1) + U (p(S) - p(S+1))), which
// is exactly Uniform(0, 1) when S ~ Bin(T, gamma), where the reported one is only conservative.
struct PValues {
    std::vector<double> p, randomized;
};
PValues p_values(const WatermarkOptions& o, const std::vector<std::vector<int64_t>>& texts,
                 uint64_t seed) {
    PValues out;
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(0, 1);
    for (const auto& ids : texts) {
        DetectResult r = watermark_detect(o, ids);
        EXPECT_TRUE(r.enough);
        const double hi = r.tail.p, lo = binomial_tail(r.scored, r.green + 1, o.gamma).p;
        out.p.push_back(hi);
        out.randomized.push_back(lo + u(rng) * (hi - lo));
    }
    return out;
}
}  // namespace

// Clean texts from a small random model (no watermark) and repetitive clean texts (a segment
// repeated five times): their p-values must be uniform (KS), for h = 1 and h = 2.
TEST(GuardRef, CleanTextPValuesAreUniform) {
    if (!python_ready()) GTEST_SKIP();
    const std::string dir = temp_dir("guard-ref-ks");
    torch::NoGradGuard ng;
    Llama m(tiny_config(2048, 256));
    m->init_weights(21);
    m->eval();
    std::vector<std::vector<int64_t>> clean = engine_texts(m, 200, 200, 1);
    std::vector<std::vector<int64_t>> repetitive;
    for (auto& seg : engine_texts(m, 200, 40, 2)) {
        std::vector<int64_t> t;
        for (int r = 0; r < 5; ++r) t.insert(t.end(), seg.begin(), seg.end());
        repetitive.push_back(t);
    }
    json samples;
    const WatermarkOptions key = options("the owner's secret key, 32 bytes", 1);
    for (int64_t h : {1, 2}) {
        WatermarkOptions o = key;
        o.context = h;
        const std::string hs = "h" + std::to_string(h);
        PValues c = p_values(o, clean, 7 + h), r = p_values(o, repetitive, 9 + h);
        samples["clean-" + hs] = c.p;
        samples["clean-randomized-" + hs] = c.randomized;
        samples["repetitive-" + hs] = r.p;
        samples["repetitive-randomized-" + hs] = r.randomized;
    }
    json ks = reference("ks", samples, dir);
    for (auto& [name, v] : ks.items()) {
        std::cerr << name << ": n " << v["n"] << ", KS D " << v["two_sided"]["statistic"] << " (p "
                  << v["two_sided"]["pvalue"] << "), D+ " << v["greater"]["statistic"] << " (p "
                  << v["greater"]["pvalue"] << ")\n";
        EXPECT_GE(v["n"].get<int64_t>(), 200);
        // too many small p-values would be false alarms: never
        EXPECT_GT(v["greater"]["pvalue"].get<double>(), 0.01) << name;
        // the randomized p-values are exactly uniform under the null: two-sided
        if (name.find("randomized") != std::string::npos) {
            EXPECT_GT(v["two_sided"]["pvalue"].get<double>(), 0.01) << name;
        }
    }
    // and the same generator with the watermark: every text detected
    std::vector<std::vector<int64_t>> marked = engine_texts(m, 8, 200, 3, key);
    for (const auto& ids : marked) {
        DetectResult r = watermark_detect(key, ids);
        EXPECT_LT(r.tail.p, 1e-6) << "T " << r.scored << " S " << r.green;
    }
}

// Antidistillation sampling through `distill serve`, against tests/ref/antidistill_ref.py: the
// log-probs the server returns (echoed prompt and sampled tokens, with their top alternatives)
// equal log_softmax(teacher logits + lambda * Delta), Delta computed in Python as the exact
// directional derivative of a proxy student's log-probs along the gradient of its loss on the
// data (the server takes a finite difference at theta +- eps g in float32).
TEST(GuardRef, AntidistillationSamplingMatchesPython) {
    if (!python_ready()) GTEST_SKIP();
    Fixture& f = fixture();
    const std::string dir = temp_dir("guard-antidistill");
    const std::string proxy = dir + "/proxy";
    {
        Llama p(tiny_config(f.tok.vocab_size(), 512));
        p->init_weights(23);
        save_model_dir(proxy, p, &f.tok);
    }
    const std::string data = dir + "/data.txt";
    write_file_atomic(data, syllable_text(20000, 5));
    const int64_t L = 128, n = 1025, W = (n - 1) / L;  // the recipe in guard/antidistill.h
    const double lambda = 30;
    ServerProcess s(f.model, {"--antidistill-proxy", proxy, "--antidistill-data", data, "--antidistill-lambda", "30",
                              "--antidistill-tokens", std::to_string(n), "--antidistill-window", std::to_string(L)});
    ASSERT_GT(s.port(), 0);
    EXPECT_NE(s.log().find("antidistillation sampling with proxy"), std::string::npos) << s.log();

    std::vector<int32_t> prompt32 = f.tok.encode("kalo mine she said that");
    std::vector<int64_t> prompt(prompt32.begin(), prompt32.end());
    json req = {{"model", "model"}, {"prompt", prompt}, {"max_tokens", 12}, {"temperature", 1},
                {"seed", 3},        {"echo", true},    {"logprobs", 5}};
    auto res = s.client().Post("/v1/completions", req.dump(), "application/json");
    ASSERT_TRUE(res) << "no answer";
    ASSERT_EQ(res->status, 200) << res->body;
    const json lp = json::parse(res->body)["choices"][0]["logprobs"];
    std::map<std::string, int64_t> id_of;
    for (int32_t v = 0; v < f.tok.vocab_size(); ++v) id_of.emplace(f.tok.token_bytes(v), v);
    std::vector<int64_t> seq;
    for (const auto& t : lp["tokens"]) {
        ASSERT_TRUE(id_of.count(t.get<std::string>())) << t;
        seq.push_back(id_of.at(t.get<std::string>()));
    }
    ASSERT_EQ(seq.size(), prompt.size() + 12) << lp.dump();
    ASSERT_TRUE(std::equal(prompt.begin(), prompt.end(), seq.begin()));
    {
        // without echo the prompt is not scored (the term is taken at its last position only): the
        // same seed samples the same tokens with the same log-probs
        json plain = req;
        plain.erase("echo");
        auto res2 = s.client().Post("/v1/completions", plain.dump(), "application/json");
        ASSERT_TRUE(res2 && res2->status == 200) << (res2 ? res2->body : "no answer");
        const json lp2 = json::parse(res2->body)["choices"][0]["logprobs"];
        ASSERT_EQ(lp2["tokens"].size(), 12u) << lp2.dump();
        for (size_t k = 0; k < 12; ++k) {
            EXPECT_EQ(lp2["tokens"][k], lp["tokens"][prompt.size() + k]) << k;
            EXPECT_EQ(lp2["token_logprobs"][k], lp["token_logprobs"][prompt.size() + k]) << k;
        }
    }

    std::vector<int32_t> ids = f.tok.encode(read_file(data));
    ASSERT_GE(static_cast<int64_t>(ids.size()), n);
    json windows = json::array();
    for (int64_t w = 0; w < W; ++w) windows.push_back(std::vector<int32_t>(ids.begin() + w * L, ids.begin() + w * L + L + 1));
    write_file_atomic(dir + "/in.json", json{{"windows", windows}, {"sequence", seq}, {"lambda", lambda}}.dump());
    ASSERT_EQ(run_python("tests/ref/antidistill_ref.py", proxy + " " + f.model + " " + dir + "/in.json " + dir + "/out.json"), 0);
    const json ref = json::parse(read_file(dir + "/out.json"));
    std::cerr << "python (torch " << ref["torch"] << "): proxy loss " << ref["loss"] << ", |g| " << ref["grad_norm"] << "\n";
    EXPECT_NE(s.log().find("windows of 128 tokens"), std::string::npos);

    double worst = 0, moved = 0;
    int64_t checked = 0;
    for (size_t i = 1; i < seq.size(); ++i) {
        const json& want = ref["adjusted"][i - 1];
        const double got = lp["token_logprobs"][i].get<double>();
        worst = std::max(worst, std::fabs(got - want[seq[i]].get<double>()));
        moved = std::max(moved, std::fabs(want[seq[i]].get<double>() - ref["plain"][i - 1][seq[i]].get<double>()));
        ++checked;
        if (i < prompt.size()) continue;  // echoed prompt tokens: no alternatives asked for there
        for (const auto& [text, v] : lp["top_logprobs"][i].items()) {
            worst = std::max(worst, std::fabs(v.get<double>() - want[id_of.at(text)].get<double>()));
            ++checked;
        }
    }
    std::cerr << checked << " log-probs: largest difference from Python " << worst
              << "; largest shift antidistillation makes " << moved << "\n";
    EXPECT_LT(worst, 2e-3);
    EXPECT_GT(moved, 0.1) << "the term changed nothing: the comparison would not see it missing";
}

#endif  // DISTILL_GUARD_REF
