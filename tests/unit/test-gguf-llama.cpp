// distill's GGUF export against llama.cpp (node-llama-cpp, tests/node/llama-logprobs.mjs).
// A small model is pretrained with `distill pretrain` on the Jane Austen corpus, exported with
// `distill export --format gguf` as F32, F16, Q8_0 and Q4_K, and llama.cpp's next-token
// distributions over held-out text (Persuasion) are compared with distill's on the same file:
// distill dequantizes to float32 on load, llama.cpp computes with the stored types (and, for
// F16 and quantized weights, rounds activations to F16 / Q8 blocks in its CPU matmuls), so only
// F32 must agree to float rounding. llama.cpp's tokenization of the text must equal distill's.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>

#include "eval/eval.h"
#include "model/checkpoint.h"
#include "test-util.h"
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
    if (const char* p = std::getenv("DISTILL_TEST_CORPUS"); p && *p) corpus = read_file(p);
    else corpus = word_text(400000, 3, {"Anne", "Elliot", "Captain", "Wentworth", "the", "of", "and",
                                        "to", "was", "her", "she", "Lady", "Russell", "1814,", "said", "\n"});
    // the held-out piece from the last novel (Persuasion), training text from the start
    const size_t cut = corpus.size() - corpus.size() / 20;
    t.heldout = corpus.substr(cut, 1400);
    t.heldout = t.heldout.substr(t.heldout.find('\n') + 1);
    write_file_atomic(t.dir + "/train.txt", corpus.substr(0, std::min<size_t>(cut, 300000)));
    write_file_atomic(t.dir + "/heldout.txt", t.heldout);
    const bool qwen = arch == "qwen2";
    write_file_atomic(t.dir + "/config.json",
                      json({{"model_type", arch}, {"hidden_size", 256}, {"num_hidden_layers", 2},
                            {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                            {"intermediate_size", 512}, {"max_position_embeddings", 512},
                            {"rope_theta", qwen ? 1000000.0 : 10000.0}, {"rms_norm_eps", qwen ? 1e-6 : 1e-5},
                            {"tie_word_embeddings", !qwen}})
                          .dump());
    EXPECT_EQ(run_distill("train-tokenizer --input " + t.dir + "/train.txt --vocab-size 512 --out " + t.dir +
                          "/tok.json"), 0);
    EXPECT_EQ(run_distill("prepare --tokenizer " + t.dir + "/tok.json --input " + t.dir + "/train.txt --out " +
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
    torch::Tensor lp = torch::log_softmax(
        m.model->forward(torch::tensor(ids, torch::kLong).unsqueeze(0)).squeeze(0).to(torch::kFloat64), -1);
    Agreement a;
    a.positions = int64_t(ids.size());
    const auto& rows = ref["logprobs"];
    EXPECT_EQ(int64_t(rows.size()), a.positions);
    double sum = 0;
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
    a.mean_abs = a.compared ? sum / double(a.compared) : 0;

    // `distill score` on the .gguf (one window over the positions compared): each position's
    // log-prob of its token equals llama.cpp's.
    const std::string scored = t.dir + "/score-" + type + ".jsonl";
    EXPECT_EQ(run_distill(str_cat("score --model ", gguf, " --text ", t.dir, "/heldout.txt --top-k 0 --context ",
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
    // Tolerances: F32 to float rounding; the others are measured agreements with margin
    // (docs/gguf.md has the figures).
    struct Tol {
        const char* type;
        double max_abs, mean_abs;
    };
    for (const Tol& tol : {Tol{"f32", 1e-3, 1e-4}, Tol{"f16", 5e-3, 5e-4}, Tol{"q8_0", 5e-2, 6e-3},
                           Tol{"q4_k", 0.12, 1e-2}}) {
        Agreement a = compare(t, tol.type);
        EXPECT_GE(a.positions, 256);
        EXPECT_GE(a.compared, a.positions * 100);
        EXPECT_LE(a.max_abs, tol.max_abs) << arch << " " << tol.type;
        EXPECT_LE(a.mean_abs, tol.mean_abs) << arch << " " << tol.type;
        EXPECT_LE(a.max_score, tol.max_abs) << arch << " " << tol.type << ": distill score";
    }
}

}  // namespace

TEST(GgufLlamaCpp, LlamaAgreesWithLlamaCpp) { check_arch("llama"); }
TEST(GgufLlamaCpp, Qwen2AgreesWithLlamaCpp) { check_arch("qwen2"); }
