// Model pieces that need no reference: cached generation, save/load, bad model directories.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "model/packed.h"
#include "test-util.h"
#include "util/device.h"
#include "util/error.h"
#include "util/file.h"

using namespace distill;
using namespace distill::testing_util;

namespace {

ModelConfig tiny(int64_t kv = 2, bool tied = true) {
    ModelConfig c;
    c.vocab_size = 50;
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = kv;
    c.intermediate_size = 64;
    c.max_position_embeddings = 64;
    c.tie_word_embeddings = tied;
    return c;
}

void expect_error_containing(const std::function<void()>& fn, const std::string& needle) {
    try {
        fn();
        ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

// w32 (rows x cols) stored as `type`; a Q8_0 one upside down, read through a row map, so that the
// map is exercised too. The matrix keeps its bytes alive.
PackedMatrix packed_of(const torch::Tensor& w32, GgmlType type) {
    const int64_t rows = w32.size(0), cols = w32.size(1);
    const bool mapped = type == GgmlType::Q8_0;
    std::vector<int32_t> reversed;
    if (mapped)
        for (int64_t r = 0; r < rows; ++r) reversed.push_back(int32_t(rows - 1 - r));
    auto stored = mapped ? w32.flip(0).contiguous() : w32.contiguous();
    auto bytes = std::make_shared<std::vector<uint8_t>>(size_t(row_bytes(type, rows * cols)));
    quantize_row(type, stored.data_ptr<float>(), bytes->data(), rows * cols);
    return PackedMatrix(type, bytes->data(), rows, cols, bytes, reversed);
}

}  // namespace

TEST(Model, CachedForwardEqualsUncached) {
    Llama m(tiny());
    m->init_weights(3);
    {
        torch::NoGradGuard ng;
        for (auto& p : m->parameters()) p.add_(torch::randn_like(p) * 0.1);
    }
    m->eval();
    torch::NoGradGuard ng;
    auto ids = torch::randint(50, {2, 20}, torch::kInt64);
    auto full = m->forward(ids);
    KVCache cache;
    // a prompt of 7, then one token at a time
    auto first = m->forward(ids.narrow(1, 0, 7), &cache);
    EXPECT_LE((first - full.narrow(1, 0, 7)).abs().max().item<double>(), 1e-5);
    for (int64_t t = 7; t < 20; ++t) {
        auto step = m->forward(ids.narrow(1, t, 1), &cache);
        EXPECT_LE((step.squeeze(1) - full.select(1, t)).abs().max().item<double>(), 1e-5) << "t=" << t;
    }
    EXPECT_EQ(cache.length(), 20);
}

TEST(Model, GreedyGenerationEqualsArgmaxOfFullForward) {
    Llama m(tiny(1, false));
    m->init_weights(5);
    {
        torch::NoGradGuard ng;
        for (auto& p : m->parameters()) p.add_(torch::randn_like(p) * 0.2);
    }
    m->eval();
    SamplingOptions o;
    o.temperature = 0;
    o.max_new_tokens = 12;
    std::vector<int64_t> prompt = {1, 2, 3};
    auto out = generate(m, prompt, o);
    ASSERT_EQ(out.size(), 12u);
    std::vector<int64_t> seq = prompt;
    torch::NoGradGuard ng;
    for (int64_t id : out) {
        auto logits = m->forward(torch::tensor(seq, torch::kInt64).unsqueeze(0));
        EXPECT_EQ(logits[0][-1].argmax().item<int64_t>(), id);
        seq.push_back(id);
    }
}

TEST(Model, SamplingIsSeededAndRespectsTopK) {
    auto logits = torch::tensor({0.0, 5.0, 4.9, -1.0, 4.8});
    SamplingOptions o;
    o.top_k = 2;
    std::mt19937_64 a(42), b(42);
    for (int i = 0; i < 200; ++i) {
        int64_t x = sample_token(logits, o, a);
        EXPECT_TRUE(x == 1 || x == 2);
        EXPECT_EQ(x, sample_token(logits, o, b));
    }
    o.top_k = 0;
    o.top_p = 0.01;  // only the most likely survives
    for (int i = 0; i < 50; ++i) EXPECT_EQ(sample_token(logits, o, a), 1);
    o.temperature = 0;
    EXPECT_EQ(sample_token(logits, o, a), 1);
}

// Over the whole vocabulary (top_k 0), a draw is the inverse CDF over the tokens ordered by logit,
// highest first, ties by the lower id (many ties here), with the normalizer summed in id order
// (top_p's prefix in token order): the definition, written out here with a full sort, gives the
// same token for the same generator state, with and without top_p, at low and high temperature
// (where draws reach deep into the order, which sample_token sorts only as far as it needs).
TEST(Model, SamplingTheWholeVocabularyFollowsItsDefinition) {
    const int64_t V = 1000;
    torch::manual_seed(3);
    auto logits = (torch::randint(0, 24, {V}, torch::TensorOptions().dtype(torch::kInt64)).to(torch::kFloat32) / 4.0);
    const auto z = logits.to(torch::kFloat64);
    const double* zp = z.data_ptr<double>();
    std::vector<int64_t> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return zp[a] > zp[b]; });
    for (const double top_p : {1.0, 0.9, 0.5}) {
        for (const double temperature : {0.7, 3.0}) {
            SamplingOptions o;
            o.temperature = temperature;
            o.top_p = top_p;
            std::mt19937_64 ours(7), ref(7);
            int64_t deepest = 0;  // the furthest rank a draw reached
            for (int i = 0; i < 300; ++i) {
                std::vector<double> p(V);
                for (int64_t k = 0; k < V; ++k) p[k] = std::exp((zp[order[k]] - zp[order[0]]) / temperature);
                double sum = 0;
                for (int64_t id = 0; id < V; ++id) sum += std::exp((zp[id] - zp[order[0]]) / temperature);
                int64_t keep = V;
                if (top_p < 1) {
                    double acc = 0;
                    int64_t n = 0;
                    while (n < V && acc < top_p * sum) acc += p[n++];
                    keep = std::max<int64_t>(n, 1);
                    sum = std::accumulate(p.begin(), p.begin() + keep, 0.0);
                }
                const double r = std::uniform_real_distribution<double>(0.0, sum)(ref);
                double acc = 0;
                int64_t want = order[keep - 1];
                for (int64_t k = 0; k < keep; ++k)
                    if (r < (acc += p[k])) {
                        want = order[k];
                        deepest = std::max(deepest, k);
                        break;
                    }
                ASSERT_EQ(sample_token(logits, o, ours), want)
                    << "draw " << i << ", top_p " << top_p << ", temperature " << temperature;
            }
            if (temperature > 1 && top_p == 1.0) {
                EXPECT_GT(deepest, 500);  // past several of the chunks it sorts
            }
        }
    }
}

TEST(Model, SaveLoadRoundTrip) {
    const std::string dir = temp_dir("model-rt");
    Llama m(tiny(2, false));
    m->init_weights(9);
    save_model_dir(dir + "/m", m, nullptr);
    LoadedModel l = load_model_dir(dir + "/m");
    auto a = model_state(m), b = model_state(l.model);
    ASSERT_EQ(a.size(), b.size());
    for (auto& [k, v] : a) EXPECT_TRUE(torch::equal(v, b.at(k))) << k;
    EXPECT_EQ(l.config.num_key_value_heads, 2);
    EXPECT_FALSE(l.config.tie_word_embeddings);
}

TEST(Model, BadDirectoriesGiveClearErrors) {
    const std::string dir = temp_dir("model-bad");
    Llama m(tiny());
    m->init_weights(1);
    save_model_dir(dir + "/good", m, nullptr);
    const std::string cfg = read_file(dir + "/good/config.json");
    const std::string weights = read_file(dir + "/good/model.safetensors");

    expect_error_containing([&] { load_model_dir(dir + "/nope"); }, "does not exist");

    make_dirs(dir + "/nocfg");
    expect_error_containing([&] { load_model_dir(dir + "/nocfg"); }, "config.json");

    make_dirs(dir + "/badjson");
    write_file_atomic(dir + "/badjson/config.json", "{\"hidden_size\": ");
    expect_error_containing([&] { load_model_dir(dir + "/badjson"); }, "not valid JSON");

    make_dirs(dir + "/noweights");
    write_file_atomic(dir + "/noweights/config.json", cfg);
    expect_error_containing([&] { load_model_dir(dir + "/noweights"); }, "model.safetensors");

    make_dirs(dir + "/truncated");
    write_file_atomic(dir + "/truncated/config.json", cfg);
    write_file_atomic(dir + "/truncated/model.safetensors", weights.substr(0, weights.size() / 2));
    expect_error_containing([&] { load_model_dir(dir + "/truncated"); }, "truncated");

    // config whose shapes do not fit the weights
    make_dirs(dir + "/shape");
    auto j = nlohmann::json::parse(cfg);
    j["intermediate_size"] = 72;
    write_file_atomic(dir + "/shape/config.json", j.dump());
    write_file_atomic(dir + "/shape/model.safetensors", weights);
    expect_error_containing([&] { load_model_dir(dir + "/shape"); }, "has shape");

    // a config that does not fit together by itself
    make_dirs(dir + "/heads");
    j = nlohmann::json::parse(cfg);
    j["num_attention_heads"] = 5;
    j.erase("head_dim");
    write_file_atomic(dir + "/heads/config.json", j.dump());
    write_file_atomic(dir + "/heads/model.safetensors", weights);
    expect_error_containing([&] { load_model_dir(dir + "/heads"); }, "not divisible");

    // an untied config over tied weights: lm_head missing
    make_dirs(dir + "/untied");
    j = nlohmann::json::parse(cfg);
    j["tie_word_embeddings"] = false;
    write_file_atomic(dir + "/untied/config.json", j.dump());
    write_file_atomic(dir + "/untied/model.safetensors", weights);
    expect_error_containing([&] { load_model_dir(dir + "/untied"); }, "lm_head.weight");

    make_dirs(dir + "/arch");
    j = nlohmann::json::parse(cfg);
    j["model_type"] = "gpt_neox";
    write_file_atomic(dir + "/arch/config.json", j.dump());
    expect_error_containing([&] { load_model_dir(dir + "/arch"); }, "unsupported model_type");

    // a qwen3 config over llama weights: the per-head q/k norms are missing, by name
    make_dirs(dir + "/qwen3");
    j = nlohmann::json::parse(cfg);
    j["model_type"] = "qwen3";
    write_file_atomic(dir + "/qwen3/config.json", j.dump());
    write_file_atomic(dir + "/qwen3/model.safetensors", weights);
    expect_error_containing([&] { load_model_dir(dir + "/qwen3"); },
                            "model.layers.0.self_attn.q_norm.weight");

    make_dirs(dir + "/yarn");
    j = nlohmann::json::parse(cfg);
    j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
    write_file_atomic(dir + "/yarn/config.json", j.dump());
    write_file_atomic(dir + "/yarn/model.safetensors", weights);
    expect_error_containing([&] { load_model_dir(dir + "/yarn"); }, "rope_scaling type 'yarn'");

    make_dirs(dir + "/head");
    j = nlohmann::json::parse(cfg);
    j["architectures"] = {"LlamaForSequenceClassification"};
    write_file_atomic(dir + "/head/config.json", j.dump());
    write_file_atomic(dir + "/head/model.safetensors", weights);
    expect_error_containing([&] { load_model_dir(dir + "/head"); }, "not a causal language model");
}

// PackedMatrix against libtorch's own ops on the same float32 matrix: products, embedding rows
// and the streamed head (several tiles: 40,000 rows of 64 exceed one 4 MiB tile), for a type
// read in place (F32), one converted (BF16) and a block type with a row map (Q8_0).
TEST(Packed, TilesMatchLibtorchOnTheSameMatrix) {
    const int64_t rows = 40000, cols = 64;
    torch::manual_seed(11);
    auto w32 = (torch::randn({rows, cols}) * 0.5).contiguous();
    for (GgmlType type : {GgmlType::F32, GgmlType::BF16, GgmlType::Q8_0}) {
        SCOPED_TRACE(ggml_type_info(uint32_t(type))->name);
        PackedMatrix m = packed_of(w32, type);
        auto w = m.to_float();  // what the type keeps of w32, in the matrix's row order
        EXPECT_LE((w - w32).abs().max().item<double>(), type == GgmlType::F32 ? 0.0 : 0.02);

        auto x = torch::randn({3, 5, cols});
        auto bias = torch::randn({rows});
        const double lin = (m.linear(x, bias) - torch::nn::functional::linear(x, w, bias)).abs().max().item<double>();
        EXPECT_LE(lin, 1e-4);
        auto ids = torch::tensor({0L, rows - 1, 17L, 39999L, 123L}, torch::kInt64).view({5, 1});
        EXPECT_TRUE(torch::equal(m.embedding(ids), w.index_select(0, ids.view(-1)).view({5, 1, cols})));

        auto h = torch::randn({7, cols});
        auto lp = torch::log_softmax(torch::mm(h, w.t()), -1);  // (7, rows)
        auto targets = torch::tensor({0L, 5L, 20000L, 32767L, 32768L, 39998L, rows - 1}, torch::kInt64);
        const double tgt = (m.target_logprobs(h, targets) - lp.gather(1, targets.unsqueeze(1)).squeeze(1))
                               .abs().max().item<double>();
        EXPECT_LE(tgt, 1e-4);
        auto [top_v, top_i] = m.top_logprobs(h, 20);
        auto [want_v, want_i] = lp.topk(20, -1);
        EXPECT_LE((top_v - want_v).abs().max().item<double>(), 1e-4);
        EXPECT_TRUE(torch::equal(top_i, want_i));
        std::printf("[ %s ] max |d| linear %.2g, target log-prob %.2g\n", ggml_type_info(uint32_t(type))->name, lin, tgt);
    }
    std::vector<uint8_t> few(size_t(row_bytes(GgmlType::Q8_0, 64)));
    expect_error_containing([&] { PackedMatrix(GgmlType::Q8_0, few.data(), 1, 48, nullptr); }, "blocks");
}

// Under Bf16Forward (a live teacher's forward in bf16 training) a packed product multiplies x and W
// rounded to bf16, accumulates in float and rounds the product to bf16, as autocast's linear does:
// against the float64 product of the same rounded operands, rounded once (a bf16 accumulation, or
// operands left in float32, leave most entries off it; a float32 accumulation differs only where
// the exact sum lies next to a bf16 rounding boundary), for a matrix read in place (F32), one used
// as it lies in the file (BF16) and one dequantized tile by tile (Q8_0 with a row map; three
// tiles). Outside the guard the same call is float32 again.
TEST(Packed, Bf16ForwardRoundsTheOperandsAndAccumulatesInFloat) {
    const int64_t rows = 40000, cols = 64;
    torch::manual_seed(12);
    auto w32 = (torch::randn({rows, cols}) * 0.5).contiguous();
    for (GgmlType type : {GgmlType::F32, GgmlType::BF16, GgmlType::Q8_0}) {
        SCOPED_TRACE(ggml_type_info(uint32_t(type))->name);
        PackedMatrix m = packed_of(w32, type);
        auto w = m.to_float();
        auto x = torch::randn({2, 3, cols});
        auto bias = torch::randn({rows});
        auto round = [](const torch::Tensor& t) { return t.to(torch::kBFloat16).to(torch::kFloat64); };
        auto want = round(torch::matmul(round(x), round(w).t()));  // (2, 3, rows), without the bias
        auto plain = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t()) + bias.to(torch::kFloat64);
        torch::Tensor got;
        {
            Bf16Forward on(true);
            got = m.linear(x, bias);
            {
                Bf16Forward off(false);  // the innermost guard decides
                EXPECT_LE((m.linear(x, bias).to(torch::kFloat64) - plain).abs().max().item<double>(), 1e-4);
            }
        }
        ASSERT_EQ(got.scalar_type(), torch::kFloat32);
        ASSERT_EQ(got.sizes(), (std::vector<int64_t>{2, 3, rows}));
        auto product = got.to(torch::kFloat64) - bias.to(torch::kFloat64);  // the bias is added in float32
        auto d = (product - want).abs();
        const double exact = (d <= 1e-6 * want.abs()).to(torch::kFloat64).mean().item<double>();
        const double ulps = (d / want.abs().clamp_min(1e-3)).max().item<double>() * 128;  // in bf16 spacings
        const double off = (got.to(torch::kFloat64) - plain).abs().max().item<double>();
        EXPECT_GE(exact, 0.99);
        EXPECT_LE(ulps, 1.0 + 1e-3);  // never more than one rounding step away
        EXPECT_GE(off, 1e-3);         // and not the float32 product
        EXPECT_LE((m.linear(x, bias).to(torch::kFloat64) - plain).abs().max().item<double>(), 1e-4);
        std::printf("[ %s ] bf16 product: %.4f of entries as the rounded operands' product rounded once, the rest "
                    "within %.2f bf16 steps; %.2g from float32's\n",
                    ggml_type_info(uint32_t(type))->name, exact, ulps, off);
    }
}

// A whole model's forward under Bf16Forward and NoGradGuard takes bf16 products on both paths: the
// trainable model's (a stacked q/k/v product, libtorch's mixed_linear) and the same weights loaded
// packed for inference (one product per matrix) agree to float32 accumulation order, and both
// move away from the float32 forward.
TEST(Model, Bf16ForwardGivesTheSameLogitsPackedOrNot) {
    const std::string dir = temp_dir("bf16-forward");
    Llama m(tiny(2, false));
    m->init_weights(21);
    {
        torch::NoGradGuard ng;
        for (auto& p : m->parameters()) p.mul_(3.0);  // weights of size ~0.06, so that rounding shows
    }
    save_model_dir(dir + "/m", m, nullptr);
    LoadedModel packed = load_model_dir(dir + "/m", /*packed=*/true);
    auto ids = torch::randint(50, {2, 24}, torch::kInt64);
    torch::NoGradGuard ng;
    auto fp32 = m->forward(ids);
    torch::Tensor a, b;
    {
        Bf16Forward on(true);
        a = m->forward(ids);
        b = packed.model->forward(ids);
    }
    const double same = (a - b).abs().max().item<double>(), moved = (a - fp32).abs().max().item<double>();
    std::printf("bf16 forward: unpacked vs packed max |d| %.2g; vs float32 %.2g (logits up to %.3g)\n", same, moved,
                fp32.abs().max().item<double>());
    EXPECT_LE(same, 1e-3 * std::max(1.0, fp32.abs().max().item<double>()));
    EXPECT_GE(moved, 10 * same);
}

// A model with more rows than its tokenizer has tokens (Qwen2.5: 151,936 for 151,665): the rows
// beyond `vocab_limit` are never drawn, greedy or sampled, however large their logits.
TEST(Model, SamplingNeverDrawsRowsBeyondTheVocabLimit) {
    auto logits = torch::zeros({10});
    logits[8] = 50.0;  // padding rows that would win every draw
    logits[9] = 40.0;
    logits[3] = 1.0;
    SamplingOptions o;
    o.vocab_limit = 8;
    std::mt19937_64 rng(1);
    o.temperature = 0;
    EXPECT_EQ(sample_token(logits, o, rng), 3);
    o.temperature = 1.0;
    std::set<int64_t> drawn;
    for (int i = 0; i < 500; ++i) drawn.insert(sample_token(logits, o, rng));
    EXPECT_LT(*drawn.rbegin(), 8);
    EXPECT_GE(drawn.size(), 5u);  // the other rows below the limit are still drawn
    o.vocab_limit = 0;
    EXPECT_EQ(sample_token(logits, o, rng), 8);  // without a limit the padding row wins
}
