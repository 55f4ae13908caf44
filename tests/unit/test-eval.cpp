// distill eval (docs/eval.md): multiple-choice scoring against an independent PyTorch reference
// (tests/ref/eval_ref.py, written from lm-evaluation-harness), the remote scorer (`--model-url`
// against a `distill serve` child) against the local one, lm-eval's results JSON key by key, bad
// task files, the built-in task, agreement across tokenizers, and an unreachable URL.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <thread>

#include "eval/agreement.h"
#include "eval/tasks.h"
#include "model/checkpoint.h"
#include "test-server.h"
#include "test-util.h"
#include "util/file.h"

extern char** environ;

using namespace distill;
using namespace distill::testing_util;
using json = nlohmann::json;

namespace {

const std::vector<std::string> kWords = {"the", "house", "was", "she", "said", "that", "garden", "it", "Emma",
                                         "walked", "to", "a"};

ModelConfig tiny_config(int64_t vocab) {
    ModelConfig c;
    c.vocab_size = vocab;
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.intermediate_size = 64;
    c.max_position_embeddings = 128;
    c.bos_token_id = 0;
    c.eos_token_id = 1;
    return c;
}

std::string make_model(const std::string& dir, int vocab, uint64_t seed, Tokenizer* tok_out = nullptr) {
    TokenizerTrainOptions o;
    o.vocab_size = vocab;
    Tokenizer tok = Tokenizer::train(word_text(30000, 3, kWords), o);
    Llama m(tiny_config(tok.vocab_size()));
    m->init_weights(seed);
    save_model_dir(dir, m, &tok);
    if (tok_out) *tok_out = tok;
    return dir;
}

struct Fixture {
    std::string dir, model, text, task;
    Fixture() {
        dir = temp_dir("eval");
        model = make_model(dir + "/model", 300, 7);
        text = dir + "/heldout.txt";
        write_file_atomic(text, word_text(1500, 11, kWords));
        // contexts with and without a trailing space, a non-ASCII choice, differing lengths
        task = dir + "/tiny.jsonl";
        write_file_atomic(task,
                          "{\"context\": \"the house was\", \"choices\": [\"a garden\", \"she\", \"walked to the house\"], \"gold\": 0}\n"
                          "\n"
                          "{\"context\": \"Emma said that \", \"choices\": [\"it was\", \"the garden\"], \"gold\": 1}\n"
                          "{\"context\": \"she walked to\", \"choices\": [\"the house\", \"Emma\", \"caf\u00e9 \u00e0 la\", \"it\"], \"gold\": 2}\n"
                          "{\"context\": \"it was the garden. \", \"choices\": [\"she said\", \"was that\"], \"gold\": 0}\n"
                          "{\"context\": \"she said that the garden was the house that Emma walked to and it was a house\", \"choices\": [\"walked\", \"said that she\", \"to\"], \"gold\": 1}\n");
    }
};
Fixture& fixture() {
    static Fixture f;
    return f;
}

json eval_json(const std::string& args, const std::string& dir) {
    const std::string out = dir + "/out.json", err = dir + "/err.txt";
    int rc = run_distill("eval " + args + " -o " + out, "", err);
    EXPECT_EQ(rc, 0) << read_file(err);
    return rc == 0 ? json::parse(read_file(out)) : json();
}

std::string rstrip(const std::string& s) {
    size_t k = s.find_last_not_of(" \t\n\r\v\f");
    return k == std::string::npos ? "" : s.substr(0, k + 1);
}


}  // namespace

TEST(Eval, MultipleChoiceMatchesThePythonReference) {
    Fixture& f = fixture();
    const std::string d = temp_dir("eval-ref");
    json out = eval_json("-m " + f.model + " --tasks " + f.task + " --seq-len 16 --samples 0", d);
    ASSERT_TRUE(out.contains("models"));
    const json& r = out["models"][0]["tasks"]["tiny"];
    // the reference's input: the items, and distill's tokenizer's ids of every string it asks for
    Tokenizer tok = Tokenizer::load(f.model + "/tokenizer.json");
    auto enc = [&](const std::string& s) { return encode_for_eval(tok, s); };
    McTask task = read_mc_task(f.task);
    json items = json::array(), encodings = json::object();
    for (const auto& it : task.items) {
        items.push_back({{"context", it.context}, {"choices", it.choices}, {"gold", it.gold}});
        const std::string ctx = rstrip(it.context), ws = it.context.substr(ctx.size());
        encodings[ctx] = enc(ctx);
        for (const auto& c : it.choices) encodings[ctx + ws + " " + c] = enc(ctx + ws + " " + c);
    }
    // window 16: the longer items are cut from the left
    ASSERT_GT(enc(task.items[4].context).size(), 16u);
    write_file_atomic(d + "/in.json", json({{"window", 16}, {"items", items}, {"encodings", encodings}}).dump());
    ASSERT_EQ(run_python("tests/ref/eval_ref.py", f.model + " " + d + "/in.json " + d + "/ref.json"), 0);
    json ref = json::parse(read_file(d + "/ref.json"));
    ASSERT_EQ(r["loglik"].size(), ref["loglik"].size());
    for (size_t i = 0; i < ref["loglik"].size(); ++i)
        for (size_t c = 0; c < ref["loglik"][i].size(); ++c)
            EXPECT_NEAR(r["loglik"][i][c].get<double>(), ref["loglik"][i][c].get<double>(), 1e-4) << i << "/" << c;
    for (const char* k : {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "acc_bytes", "acc_bytes_stderr"})
        EXPECT_NEAR(r[k].get<double>(), ref[k].get<double>(), 1e-9) << k;
    EXPECT_EQ(r["n"], 5);
}

TEST(Eval, LmEvalResultsJsonHasLmEvalsShape) {
    Fixture& f = fixture();
    const std::string d = temp_dir("eval-lmeval");
    json out = eval_json("-m " + f.model + " --tasks " + f.task + " --seq-len 64 --samples 0 --lm-eval-out " + d + "/lm", d);
    const json& mine = out["models"][0]["tasks"]["tiny"];
    const std::string label = out["models"][0]["label"];
    json j = json::parse(read_file(d + "/lm/" + label + "/results.json"));
    const json& t = j["results"]["tiny"];
    EXPECT_EQ(t["alias"], "tiny");
    for (const char* m : {"acc", "acc_norm", "acc_bytes"}) {
        EXPECT_DOUBLE_EQ(t[std::string(m) + ",none"].get<double>(), mine[m].get<double>()) << m;
        EXPECT_DOUBLE_EQ(t[std::string(m) + "_stderr,none"].get<double>(), mine[std::string(m) + "_stderr"].get<double>());
        EXPECT_EQ(j["higher_is_better"]["tiny"][m], true);
    }
    EXPECT_EQ(t.size(), 7u);
    EXPECT_EQ(j["n-samples"]["tiny"]["original"], 5);
    EXPECT_EQ(j["n-samples"]["tiny"]["effective"], 5);
    EXPECT_EQ(j["n-shot"]["tiny"], 0);
    EXPECT_EQ(j["versions"]["tiny"], 1.0);
    EXPECT_EQ(j["configs"]["tiny"]["output_type"], "multiple_choice");
    EXPECT_EQ(j["configs"]["tiny"]["target_delimiter"], " ");
    EXPECT_EQ(j["configs"]["tiny"]["metric_list"].size(), 3u);
    EXPECT_EQ(j["config"]["model"], "distill");
    EXPECT_EQ(j["config"]["model_args"], "pretrained=" + f.model);
    EXPECT_TRUE(j["group_subtasks"]["tiny"].is_array());
    EXPECT_TRUE(j["date"].is_number());
}

TEST(Eval, RemoteScorerMatchesLocal) {
    Fixture& f = fixture();
    const std::string d = temp_dir("eval-remote");
    ServerProcess server(f.model, {});
    json out = eval_json("-m " + f.model + " --model-url " + server.base_url() + " --url-tokenizer " + f.model +
                             " --text " + f.text + " --tasks " + f.task + " --seq-len 64 --stride 32 --samples 0",
                         d);
    ASSERT_EQ(out["models"].size(), 2u);
    const json &local = out["models"][0], &remote = out["models"][1];
    EXPECT_EQ(remote["kind"], "remote");
    EXPECT_EQ(local["tokens"], remote["tokens"]);
    EXPECT_NEAR(local["bits_per_byte"].get<double>(), remote["bits_per_byte"].get<double>(), 1e-4);
    const json &a = local["tasks"]["tiny"]["loglik"], &b = remote["tasks"]["tiny"]["loglik"];
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i)
        for (size_t c = 0; c < a[i].size(); ++c) EXPECT_NEAR(a[i][c].get<double>(), b[i][c].get<double>(), 1e-4);
    EXPECT_EQ(local["tasks"]["tiny"]["acc"], remote["tasks"]["tiny"]["acc"]);
    EXPECT_GT(remote["cost"]["inference_tokens_per_s"].get<double>(), 0);
}

TEST(Eval, UnreachableUrlRetriesThenFails) {
    Fixture& f = fixture();
    const std::string d = temp_dir("eval-unreachable");
    // a port nothing listens on: bind one, note it, close it
    const int rc = run_distill("eval --model-url http://127.0.0.1:9/v1 --url-tokenizer " + f.model + " --text " +
                                   f.text + " --retries 2 --timeout 2",
                               "", d + "/err.txt");
    EXPECT_EQ(rc, 1);
    const std::string err = read_file(d + "/err.txt");
    EXPECT_NE(err.find("3 attempts"), std::string::npos) << err;
    EXPECT_NE(err.find("127.0.0.1:9/v1"), std::string::npos) << err;
}

TEST(Eval, BadTaskFilesNameTheLine) {
    Fixture& f = fixture();
    const std::string d = temp_dir("eval-bad");
    const std::string good = "{\"context\": \"the house\", \"choices\": [\"was\", \"it\"], \"gold\": 0}\n";
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"{not json\n", ":2: not JSON"},
        {"{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 2}\n", ":2: gold 2 is out of range"},
        {"{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": -1}\n", ":2: gold -1 is out of range"},
        {"{\"context\": \"a\", \"choices\": [], \"gold\": 0}\n", ":2: 'choices' has 0 entries"},
        {"{\"context\": \"a\", \"choices\": [\"b\", \"\"], \"gold\": 0}\n", ":2: choice 1 is empty"},
        {"{\"choices\": [\"b\", \"c\"], \"gold\": 0}\n", ":2: no string 'context'"},
        {"{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": \"0\"}\n", ":2: no integer 'gold'"},
        {"[1, 2]\n", ":2: not a JSON object"},
        // a choice longer than the window (--seq-len 8)
        {"{\"context\": \"a\", \"choices\": [\"the house was the garden that she said it was\", \"c\"], \"gold\": 0}\n",
         ":2: choice 0 is"},
    };
    for (size_t i = 0; i < cases.size(); ++i) {
        const std::string path = d + "/bad" + std::to_string(i) + ".jsonl";
        write_file_atomic(path, good + cases[i].first);
        const int rc = run_distill("eval -m " + f.model + " --tasks " + path + " --seq-len 8 --samples 0", "", d + "/err.txt");
        const std::string err = read_file(d + "/err.txt");
        EXPECT_EQ(rc, 1) << cases[i].first << err;
        EXPECT_NE(err.find(path + cases[i].second), std::string::npos) << err;
    }
    // a long context is cut from the left, not an error
    const std::string path = d + "/long.jsonl";
    write_file_atomic(path, "{\"context\": \"" + word_text(400, 5, kWords).substr(0, 300) +
                                "\", \"choices\": [\"was\", \"it\"], \"gold\": 0}\n");
    std::string t = read_file(path);
    for (size_t k = 0; k + 1 < t.size(); ++k)
        if (t[k] == '\n') t[k] = ' ';
    write_file_atomic(path, t);
    EXPECT_EQ(run_distill("eval -m " + f.model + " --tasks " + path + " --seq-len 8 --samples 0"), 0);
    // an empty file
    write_file_atomic(d + "/empty.jsonl", "\n");
    EXPECT_EQ(run_distill("eval -m " + f.model + " --tasks " + d + "/empty.jsonl --seq-len 64", "", d + "/err.txt"), 1);
    EXPECT_NE(read_file(d + "/err.txt").find("holds no task items"), std::string::npos);
}

TEST(Eval, BuiltinTaskIsReproducibleAndItsDistractorsAreFalse) {
    const std::string d = temp_dir("eval-builtin");
    const std::string corpus = test_corpus_path();
    std::string text = !corpus.empty() ? read_file(corpus).substr(0, 400000) : word_text(200000, 9, kWords);
    write_file_atomic(d + "/text.txt", text);
    auto write = [&](uint64_t seed, const std::string& name) {
        EXPECT_EQ(run_distill("eval --write-builtin-task " + d + "/" + name + " --text " + d + "/text.txt --seed " +
                              std::to_string(seed) + " --builtin-items 700"),
                  0);
        return read_file(d + "/" + name);
    };
    const std::string a = write(1, "a.jsonl"), b = write(1, "b.jsonl"), c = write(2, "c.jsonl");
    EXPECT_EQ(a, b);
    EXPECT_NE(a, c);
    McTask t = read_mc_task(d + "/a.jsonl");
    EXPECT_EQ(t.items.size(), 700u);  // stderr <= 0.5 / sqrt(700) < 0.019
    const auto sents = split_sentences(text);
    std::set<int64_t> golds;
    for (const auto& it : t.items) {
        ASSERT_EQ(it.choices.size(), 4u);
        golds.insert(it.gold);
        const std::string& truth = it.choices[it.gold];
        std::set<std::string> distinct(it.choices.begin(), it.choices.end());
        EXPECT_EQ(distinct.size(), 4u);
        for (size_t k = 0; k < it.choices.size(); ++k)
            if (static_cast<int64_t>(k) != it.gold) {
                EXPECT_NE(it.choices[k], truth);
            }
        // the true sentence follows the passage in the text's sentences
        const auto pos = std::search(sents.begin(), sents.end(), &truth, &truth + 1);
        ASSERT_NE(pos, sents.end());
        EXPECT_NE(it.context.find(*(pos - 1)), std::string::npos);
    }
    EXPECT_EQ(golds.size(), 4u);
}

TEST(Eval, AgreementAcrossTokenizers) {
    Fixture& f = fixture();
    const std::string d = temp_dir("eval-agree");
    // a student with another tokenizer (another vocabulary size) and the teacher itself
    Tokenizer other;
    const std::string student = make_model(d + "/student/model", 280, 8, &other);
    LoadedModel t = load_model_dir(f.model), s = load_model_dir(student);
    WindowOptions w;
    w.context = 64;
    w.stride = 32;
    const std::string text = read_file(f.text);
    // the same tokenizer through the cross-tokenizer path: every boundary is common, the same
    // positions, the same top-1 as eval_compare, and a span KL (a coarsening) no larger than the full KL
    LoadedModel s2 = load_model_dir(make_model(d + "/same/model", 300, 9));
    auto ids = encode_for_eval(t.tokenizer, text);
    auto full = eval_compare(t.model, s2.model, ids, w);
    // several students in one pass (the teacher's forward shared): each gets what it gets alone
    LoadedModel t2 = load_model_dir(f.model);
    const auto many = eval_compare_many(t.model, {&s2.model, &t2.model}, ids, w);
    ASSERT_EQ(many.size(), 2u);
    EXPECT_EQ(many[0].positions, full.positions);
    EXPECT_EQ(many[0].top1_agreement, full.top1_agreement);
    EXPECT_EQ(many[0].kl_to_teacher, full.kl_to_teacher);
    EXPECT_EQ(many[1].top1_agreement, 1.0);  // the teacher beside itself
    EXPECT_NEAR(many[1].kl_to_teacher, 0.0, 1e-9);
    EXPECT_GT(full.kl_to_teacher, 1e-3);
    auto cross = compare_across_tokenizers(t.tokenizer, ids, score_tokens(t.model, ids, w), s2.tokenizer, ids,
                                           score_tokens(s2.model, ids, w));
    EXPECT_EQ(cross.positions, full.positions);
    EXPECT_NEAR(cross.top1_agreement, full.top1_agreement, 1e-12);
    EXPECT_LE(cross.kl_to_teacher, full.kl_to_teacher + 1e-9);
    EXPECT_GT(cross.kl_to_teacher, 0);
    // a model against itself through different tokenizations agrees fully
    auto self = compare_across_tokenizers(t.tokenizer, ids, score_tokens(t.model, ids, w), t.tokenizer, ids,
                                          score_tokens(t.model, ids, w));
    EXPECT_DOUBLE_EQ(self.top1_agreement, 1.0);
    EXPECT_NEAR(self.kl_to_teacher, 0.0, 1e-9);
    // different tokenizers: fewer common boundaries than tokens, through the CLI
    json out = eval_json("--teacher " + f.model + " -m " + student + " --text " + f.text +
                             " --seq-len 64 --stride 32 --samples 1",
                         d);
    ASSERT_EQ(out["models"].size(), 2u);
    const json& ag = out["models"][1]["agreement"];
    EXPECT_EQ(ag["method"], "byte-boundaries");
    EXPECT_GT(ag["positions"].get<int64_t>(), 0);
    EXPECT_LE(ag["positions"].get<int64_t>(), out["models"][1]["tokens"].get<int64_t>());
    EXPECT_GE(ag["top1_agreement"].get<double>(), 0.0);
    EXPECT_GT(ag["kl_to_teacher"].get<double>(), 0.0);
    EXPECT_EQ(out["models"][1]["samples"].size(), 1u);
    EXPECT_GT(out["models"][1]["cost"]["flops_fraction_of_teacher"].get<double>(), 0);
}

TEST(Eval, RecoveredPercentAndLedgerFromRunDirectories) {
    Fixture& f = fixture();
    const std::string d = temp_dir("eval-recovered");
    // two "runs": a model directory with done.json and run.json beside it
    for (const std::string name : {"kd", "base"}) {
        make_model(d + "/" + name + "/model", 300, name == "kd" ? 21 : 22);
        write_file_atomic(d + "/" + name + "/done.json", "{\"steps\": 10, \"tokens\": 5120, \"seconds\": 3.5}\n");
        write_file_atomic(d + "/" + name + "/run.json", name == "kd"
                                                           ? "{\"kind\": \"distill\", \"teacher\": {\"cache\": \"x\"}, \"train\": {\"seq_len\": 64}}\n"
                                                           : "{\"kind\": \"pretrain\", \"train\": {\"seq_len\": 64}}\n");
    }
    json out = eval_json("--teacher " + f.model + " -m " + d + "/kd/model --baseline " + d + "/base/model --text " +
                             f.text + " --tasks " + f.task + " --seq-len 64 --stride 32 --samples 0",
                         d);
    ASSERT_EQ(out["models"].size(), 3u);
    EXPECT_EQ(out["teacher"], out["models"][0]["label"]);
    EXPECT_EQ(out["baseline"], "base");
    const json &t = out["models"][0], &kd = out["models"][1], &base = out["models"][2];
    const double bt = t["bits_per_byte"], bk = kd["bits_per_byte"], bb = base["bits_per_byte"];
    EXPECT_NEAR(kd["recovered_pct"]["bits_per_byte"].get<double>(), 100 * (bb - bk) / (bb - bt), 1e-9);
    const json& c = kd["cost"];
    EXPECT_EQ(c["train_tokens"], 5120);
    EXPECT_EQ(c["teacher_tokens"], 5120);
    EXPECT_EQ(base["cost"]["teacher_tokens"], 0);
    ModelConfig cfg = load_model_dir(d + "/kd/model").config;
    EXPECT_EQ(c["parameters"], cfg.num_params());
    EXPECT_NEAR(c["train_flops"].get<double>(), 3 * cfg.flops_per_token(64) * 5120, 1);
    EXPECT_GT(c["weight_bytes"].get<int64_t>(), 4 * cfg.num_params() - 1);
    EXPECT_EQ(c["run_kind"], "distill");
}
