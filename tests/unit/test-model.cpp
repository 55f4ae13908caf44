// The Llama / Qwen2 / Qwen3 model against an independent float64 PyTorch reference
// (tests/ref/llama_ref.py), also from BF16/F16 sharded directories.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "distill/losses.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/fused.h"
#include "model/generate.h"
#include "test-util.h"
#include "util/device.h"
#include "util/error.h"
#include "util/file.h"

using namespace distill;
using namespace distill::testing_util;

namespace {

// arch: "llama", "qwen2", "qwen3" (q/k norm and a head_dim of its own), or "llama-rope3"
// (llama with Llama-3.1 rope scaling, tuned so that all three frequency bands occur).
ModelConfig small_config(const std::string& arch, bool tied, int64_t kv_heads) {
    ModelConfig c;
    c.architecture = arch == "llama-rope3" ? "llama" : arch;
    c.attention_bias = arch == "qwen2";
    if (arch == "qwen3") {
        c.qk_norm = true;
        c.explicit_head_dim = 12;  // 6 heads x 12 = 72 != hidden 48, as in real Qwen3 models
    }
    if (arch == "llama-rope3") {
        c.rope_scaling.type = "llama3";
        c.rope_scaling.factor = 8.0;
        c.rope_scaling.low_freq_factor = 1.0;
        c.rope_scaling.high_freq_factor = 4.0;
        c.rope_scaling.original_max_position_embeddings = 64;
    }
    c.vocab_size = 97;
    c.hidden_size = 48;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 6;
    c.num_key_value_heads = kv_heads;
    c.intermediate_size = 80;
    c.max_position_embeddings = 160;
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
    // 150 positions: the fused attention's query blocks (64 rows) in full and in part
    auto ids = torch::randint(cfg.vocab_size, {2, 150}, torch::kInt64);
    auto targets = torch::randint(cfg.vocab_size, {2, 150}, torch::kInt64);
    save_safetensors(dir + "/in.safetensors", {{"ids", ids}, {"targets", targets}});
    ASSERT_EQ(run_python("tests/ref/llama_ref.py",
                         dir + "/m " + dir + "/in.safetensors " + dir + "/out.safetensors"),
              0);
    SafetensorsFile ref(dir + "/out.safetensors");
    auto ref_logits = ref.get("logits", torch::kFloat64);

    // Both forms of the CPU model: the fused kernels (model/fused.h) and the plain tensor ops that
    // a GPU runs; and training's bf16 products (--precision bf16), held to bf16's accuracy.
    for (const char* form : {"fused", "tensor ops", "bf16"}) {
        SCOPED_TRACE(form);
        const bool bf16 = std::string(form) == "bf16";
        set_fused_kernels(std::string(form) != "tensor ops");
        set_train_precision(bf16 ? Precision::kBFloat16 : Precision::kFloat32);
        model->zero_grad();
        model->train();
        // the training path: under bf16 the logits stay bf16 and the loss reads them as they are
        auto logits = model->forward_for_loss(ids);
        if (bf16) {
            EXPECT_EQ(logits.scalar_type(), torch::kBFloat16);
        }
        auto loss = loss_cross_entropy(logits.reshape({-1, cfg.vocab_size}), targets.reshape({-1}));
        loss.backward();
        set_fused_kernels(true);
        set_train_precision(Precision::kFloat32);

        // bf16 keeps 8 bits of mantissa: errors of a few 2^-8 of the values (measured on these
        // large random weights: logits to 0.070-0.139, gradients to 0.021-0.045 of their largest entry)
        const double tol_logit = bf16 ? 0.2 : 1e-4, tol_grad = bf16 ? 0.1 : 1e-4;
        const double logit_diff = (logits.to(torch::kFloat64) - ref_logits).abs().max().item<double>();
        EXPECT_LE(logit_diff, tol_logit) << "max |logits - reference|";
        EXPECT_NEAR(loss.item<double>(), ref.get("loss", torch::kFloat64).item<double>(), bf16 ? 1e-2 : 1e-5);
        if (bf16) {
            EXPECT_GT(logit_diff, 1e-4) << "--precision bf16 left the products in float32";
        }
        int checked = 0;
        double worst_rel = 0;  // against each gradient's own largest entry
        for (auto& p : model->named_parameters()) {
            const std::string key = "grad." + p.key();
            ASSERT_TRUE(ref.has(key)) << key;
            auto g_ref = ref.get(key, torch::kFloat64);
            auto g = p.value().grad().to(torch::kFloat64);
            const double scale = std::max(1.0, g_ref.abs().max().item<double>());
            const double diff = (g - g_ref).abs().max().item<double>();
            EXPECT_LE(diff / scale, tol_grad) << p.key() << ": max |grad - reference| = " << diff;
            worst_rel = std::max(worst_rel, diff / std::max(g_ref.abs().max().item<double>(), 1e-30));
            ++checked;
        }
        EXPECT_EQ(checked, static_cast<int>(model->named_parameters().size()));
        // the gradients are small here (|g| ~ 1e-3): each must also match relative to its own size
        // (measured: ~1e-6 both ways)
        EXPECT_LE(worst_rel, tol_grad) << "a gradient differs from the reference by more than " << tol_grad
                                        << " of its largest entry";
        std::printf("[ %s tied=%d kv=%lld %s ] max |Δlogit| = %.3g, max |Δgrad| / max |grad| = %.3g\n",
                    arch.c_str(), int(tied), static_cast<long long>(kv), form, logit_diff, worst_rel);
    }
}

INSTANTIATE_TEST_SUITE_P(Architectures, ModelRef,
                         ::testing::Values(std::make_tuple("llama", true, 6),
                                           std::make_tuple("llama", false, 2),
                                           std::make_tuple("qwen2", false, 3),
                                           std::make_tuple("qwen2", true, 1),
                                           std::make_tuple("qwen3", true, 2),
                                           std::make_tuple("qwen3", false, 6),
                                           std::make_tuple("llama-rope3", false, 3)));

// A directory as big models ship it: BF16 (or F16) weights in two shards named by
// model.safetensors.index.json. distill's forward pass on it must match the reference reading
// the same files, loaded with float weights and loaded for inference (packed).
class ShardedDir : public ::testing::TestWithParam<torch::Dtype> {};

TEST_P(ShardedDir, HalfPrecisionShardsMatchPyTorch) {
    const torch::Dtype dtype = GetParam();
    ModelConfig cfg = small_config("qwen3", false, 2);
    Llama model(cfg);
    randomize(model, 5);
    const std::string dir = temp_dir("model-sharded") + "/m";
    save_model_dir(dir, model, nullptr);
    std::remove((dir + "/model.safetensors").c_str());
    std::map<std::string, torch::Tensor> shard[2];
    nlohmann::json index;
    index["metadata"] = {{"total_size", 0}};
    int i = 0;
    for (auto& [name, t] : model_state(model)) {
        const int s = (i++) % 2;
        shard[s][name] = t.to(dtype);
        index["weight_map"][name] = "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors";
    }
    for (int s = 0; s < 2; ++s)
        save_safetensors(dir + "/model-0000" + std::to_string(s + 1) + "-of-00002.safetensors",
                         shard[s]);
    write_file_atomic(dir + "/model.safetensors.index.json", index.dump(1));

    LoadedModel m = load_model_dir(dir);
    for (auto& p : m.model->named_parameters()) {
        auto want = model_state(model).at(p.key()).to(dtype).to(torch::kFloat32);
        ASSERT_TRUE(torch::equal(p.value(), want)) << p.key();
    }
    torch::manual_seed(3);
    auto ids = torch::randint(cfg.vocab_size, {2, 17}, torch::kInt64);
    save_safetensors(dir + "/../in.safetensors", {{"ids", ids}, {"targets", ids}});
    ASSERT_EQ(run_python("tests/ref/llama_ref.py",
                         dir + " " + dir + "/../in.safetensors " + dir + "/../out.safetensors"),
              0);
    torch::NoGradGuard ng;
    auto logits = m.model->forward(ids).to(torch::kFloat64);
    SafetensorsFile ref(dir + "/../out.safetensors");
    const double diff = (logits - ref.get("logits", torch::kFloat64)).abs().max().item<double>();
    EXPECT_LE(diff, 1e-4) << "max |logits - reference|";
    std::printf("[ %s shards ] max |Δlogit| = %.3g\n", dtype == torch::kBFloat16 ? "bf16" : "f16", diff);

    // Loaded for inference: the matrices stay in the file's type, mapped (model/packed.h). The
    // forward must match the reference as well, token by token through the KV cache and through
    // decode_step's slots, and the fingerprint must be the float load's.
    LoadedModel pk = load_model_dir(dir, /*packed=*/true);
    ASSERT_TRUE(pk.model->packed());
    EXPECT_EQ(pk.fingerprint, m.fingerprint);
    for (auto& p : pk.model->named_parameters())
        EXPECT_TRUE(p.key().find("norm") != std::string::npos || p.value().numel() == 0)
            << p.key() << ": a matrix with float storage in a packed model";
    const auto want = ref.get("logits", torch::kFloat64);
    const double packed_diff = (pk.model->forward(ids).to(torch::kFloat64) - want).abs().max().item<double>();
    EXPECT_LE(packed_diff, 1e-4) << "packed: max |logits - reference|";
    KVCache cache;
    std::vector<torch::Tensor> steps;
    for (int64_t t = 0; t < ids.size(1); ++t)
        steps.push_back(pk.model->forward(ids.narrow(0, 0, 1).narrow(1, t, 1), &cache));
    const double cached_diff = (torch::cat(steps, 1).to(torch::kFloat64)[0] - want[0]).abs().max().item<double>();
    EXPECT_LE(cached_diff, 1e-4) << "packed, KV-cached: max |logits - reference|";
    std::vector<SlotCache> slots(2);
    std::vector<SlotCache*> slot_ptrs;
    for (int64_t b = 0; b < 2; ++b) {
        KVCache one;
        pk.model->forward(ids.narrow(0, b, 1).narrow(1, 0, 9 + b), &one);
        slots[size_t(b)].adopt(one, 32);
        slot_ptrs.push_back(&slots[size_t(b)]);
    }
    auto next = torch::stack({ids[0][9], ids[1][10]});
    auto step = pk.model->decode_step(next, slot_ptrs).to(torch::kFloat64);  // positions 9 and 10
    const double slot_diff =
        std::max((step[0] - want[0][9]).abs().max().item<double>(), (step[1] - want[1][10]).abs().max().item<double>());
    EXPECT_LE(slot_diff, 1e-4) << "packed, decode_step: max |logits - reference|";
    std::printf("[ %s shards, packed ] max |Δlogit| = %.3g (KV-cached %.3g, decode_step %.3g)\n",
                dtype == torch::kBFloat16 ? "bf16" : "f16", packed_diff, cached_diff, slot_diff);
    EXPECT_THROW(pk.model->init_weights(1), Error);

    // A shard that the index names but that is absent: an error naming it.
    std::remove((dir + "/model-00002-of-00002.safetensors").c_str());
    try {
        load_model_dir(dir);
        ADD_FAILURE() << "a missing shard was not reported";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("model-00002-of-00002.safetensors"), std::string::npos)
            << e.what();
    }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ShardedDir, ::testing::Values(torch::kBFloat16, torch::kHalf));
