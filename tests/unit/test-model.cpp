// The Llama / Qwen2 model against an independent float64 PyTorch reference (tests/ref/llama_ref.py),
// cached generation against the uncached forward, and bad model directories.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "test-util.h"
#include "util/error.h"
#include "util/file.h"

using namespace distill;
using namespace distill::testing_util;

namespace {

ModelConfig small_config(const std::string& arch, bool tied, int64_t kv_heads) {
    ModelConfig c;
    c.architecture = arch;
    c.attention_bias = arch == "qwen2";
    c.vocab_size = 97;
    c.hidden_size = 48;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 6;
    c.num_key_value_heads = kv_heads;
    c.intermediate_size = 80;
    c.max_position_embeddings = 64;
    c.rope_theta = 5000.0;
    c.rms_norm_eps = 1e-6;
    c.tie_word_embeddings = tied;
    return c;
}

// Random weights large enough that every part of the network matters.
void randomize(Llama& m, uint64_t seed) {
    torch::manual_seed(seed);
    torch::NoGradGuard ng;
    for (auto& p : m->named_parameters()) {
        if (p.key().find("norm") != std::string::npos)
            p.value().uniform_(0.5, 1.5);
        else
            p.value().normal_(0.0, 0.15);
    }
}

}  // namespace

class ModelRef : public ::testing::TestWithParam<std::tuple<std::string, bool, int64_t>> {};

TEST_P(ModelRef, LogitsAndGradientsMatchPyTorch) {
    auto [arch, tied, kv] = GetParam();
    ModelConfig cfg = small_config(arch, tied, kv);
    Llama model(cfg);
    randomize(model, 7);
    const std::string dir = temp_dir("model-ref-" + arch);
    save_model_dir(dir + "/m", model, nullptr);

    torch::manual_seed(11);
    auto ids = torch::randint(cfg.vocab_size, {3, 21}, torch::kInt64);
    auto targets = torch::randint(cfg.vocab_size, {3, 21}, torch::kInt64);
    save_safetensors(dir + "/in.safetensors", {{"ids", ids}, {"targets", targets}});

    model->train();
    auto logits = model->forward(ids);
    auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, cfg.vocab_size}),
                                                     targets.reshape({-1}));
    loss.backward();

    ASSERT_EQ(run_python("tests/ref/llama_ref.py",
                         dir + "/m " + dir + "/in.safetensors " + dir + "/out.safetensors"),
              0);
    SafetensorsFile ref(dir + "/out.safetensors");
    auto ref_logits = ref.get("logits", torch::kFloat64);
    const double logit_diff = (logits.to(torch::kFloat64) - ref_logits).abs().max().item<double>();
    EXPECT_LE(logit_diff, 1e-4) << "max |logits - reference|";
    EXPECT_NEAR(loss.item<double>(), ref.get("loss", torch::kFloat64).item<double>(), 1e-5);
    int checked = 0;
    for (auto& p : model->named_parameters()) {
        const std::string key = "grad." + p.key();
        ASSERT_TRUE(ref.has(key)) << key;
        auto g_ref = ref.get(key, torch::kFloat64);
        auto g = p.value().grad().to(torch::kFloat64);
        const double scale = std::max(1.0, g_ref.abs().max().item<double>());
        const double diff = (g - g_ref).abs().max().item<double>();
        EXPECT_LE(diff / scale, 1e-4) << p.key() << ": max |grad - reference| = " << diff;
        ++checked;
    }
    EXPECT_EQ(checked, static_cast<int>(model->named_parameters().size()));
    std::printf("[ %s tied=%d kv=%lld ] max |Δlogit| = %.3g\n", arch.c_str(), int(tied),
                static_cast<long long>(kv), logit_diff);
}

INSTANTIATE_TEST_SUITE_P(Architectures, ModelRef,
                         ::testing::Values(std::make_tuple("llama", true, 6),
                                           std::make_tuple("llama", false, 2),
                                           std::make_tuple("qwen2", false, 3),
                                           std::make_tuple("qwen2", true, 1)));
