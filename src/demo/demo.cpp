#include "demo/demo.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <tuple>
#include <nlohmann/json.hpp>

#include "distill/api-cache.h"
#include "distill/api-capture.h"
#include "distill/capture.h"
#include "distill/kd.h"
#include "distill/sequences.h"
#include "guard/detect.h"
#include "guard/radioactivity.h"
#include "guard/watermark.h"
#include "eval/eval.h"
#include "io/logit-cache.h"
#include "io/shards.h"
#include "train/batches.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "pipeline/pipeline.h"
#include "report/report.h"
#include "serve/server.h"
#include "train/trainer.h"
#include "util/device.h"
#include "util/error.h"
#include "util/file.h"
#include "util/platform.h"
#include "util/process.h"
#include "util/utf8.h"
#include "util/progress.h"
#include "util/xz.h"

namespace distill {

using nlohmann::json;

namespace {

// The six novels as janeaustenr names them; the last one is held out for evaluation.
const char* kNovels[] = {"sensesensibility", "prideprejudice", "mansfieldpark",
                         "emma",             "northangerabbey", "persuasion"};
constexpr int kNumNovels = 6;

// Writes the novels as UTF-8 text with Rscript (Debian's r-cran-janeaustenr).
void write_corpus(const std::string& dir) {
    make_dirs(dir);
    bool all = true;
    for (const char* n : kNovels) all = all && file_exists(path_join(dir, std::string(n) + ".txt"));
    if (all) return;
    log_info("writing the six Jane Austen novels with Rscript (janeaustenr)");
    const std::string tmp = dir + "/.writing";
    make_dirs(tmp);
    // The folder travels as an argument, never inside the script text: any path works.
    const std::string script =
        "suppressMessages(library(janeaustenr)); out <- commandArgs(trailingOnly=TRUE)[1]; "
        "for (n in c('sensesensibility','prideprejudice','mansfieldpark','emma','northangerabbey',"
        "'persuasion')) { con <- file(file.path(out, paste0(n, '.txt')), 'w', encoding='UTF-8'); "
        "writeLines(enc2utf8(get(n)), con); close(con) }";
    const int rc = run_program({"Rscript", "-e", script, tmp}, /*quiet=*/true);
    DISTILL_CHECK(rc == 0,
                  "could not write the Jane Austen corpus with Rscript (exit ", rc,
                  "). Install it with: apt-get install r-cran-janeaustenr (scripts/setup.sh does)");
    for (const char* n : kNovels) {
        const std::string name = std::string(n) + ".txt";
        write_file_atomic(path_join(dir, name), read_file(path_join(tmp, name)));
    }
    std::filesystem::remove_all(tmp);
}

// A cached JSON result: computed once, kept in the run dir.
template <typename Fn>
json cached_json(const std::string& path, const json& key, Fn&& compute) {
    if (file_exists(path)) {
        json j = read_json_file(path);
        if (j.value("key", json()) == key) return j["value"];
    }
    json value = compute();
    write_file_atomic(path, json({{"key", key}, {"value", value}}).dump(2) + "\n");
    return value;
}

// Moves `dir` aside to `<dir>.earlier-N` (the first free N), so that a stage whose settings
// changed (a flag, or a new version's defaults) starts afresh without losing what was there: the
// demo deletes nothing. `what` says whose work it was, for the log.
void set_aside(const std::string& dir, const std::string& what) {
    std::string to;
    for (int n = 1; file_exists(to = str_cat(dir, ".earlier-", n)) || dir_exists(to); ++n) {
    }
    std::error_code ec;
    std::filesystem::rename(dir, to, ec);
    DISTILL_CHECK(!ec, "cannot move '", dir, "' aside to '", to, "': ", ec.message(),
                  "; move or delete it yourself and run the demo again");
    fsync_dir(std::filesystem::path(dir).parent_path().string());
    // said even under --quiet: a directory moved is not progress
    std::fprintf(stderr, "distill: %s in %s was made with other settings: kept it as %s and starting afresh\n",
                 what.c_str(), dir.c_str(), to.c_str());
}

// Whether the logit cache in `dir` (its header.json) holds other logits than `teacher_fp`'s top
// `top_k` on `data_fp`'s windows of `window` tokens; false when there is none yet.
bool cache_holds_other(const std::string& dir, const std::string& teacher_fp, const std::string& data_fp, int top_k,
                       int64_t window) {
    const std::string header = path_join(dir, "header.json");
    if (!file_exists(header)) return dir_exists(dir) && file_exists(path_join(dir, "data.bin"));
    const json h = read_json_file(header);
    return h.value("teacher_fingerprint", "") != teacher_fp || h.value("data_fingerprint", "") != data_fp ||
           h.value("top_k", 0) != top_k || h.value("window", int64_t{0}) != window;
}

// Bytes of the held-out novel the training curves are measured on (the final numbers use all of it).
constexpr size_t kCurveBytes = 64 * 1024;

// (step, heldout_bpb) of a run's metrics.jsonl lines that have one; empty when there are none.
std::vector<std::pair<int64_t, double>> heldout_curve(const std::string& run_dir) {
    std::vector<std::pair<int64_t, double>> out;
    const std::string path = path_join(run_dir, "metrics.jsonl");
    if (!file_exists(path)) return out;
    std::istringstream in(read_file(path));
    std::string line;
    while (std::getline(in, line)) {
        const json j = json::parse(line, nullptr, false);
        if (j.is_object() && j.contains("heldout_bpb") && j["heldout_bpb"].is_number())
            out.emplace_back(j.value("step", int64_t{0}), j["heldout_bpb"].get<double>());
    }
    return out;
}

// The demo's training settings for a model of config `c`, teacher and students alike.
TrainOptions train_options(const DemoOptions& o, int64_t steps, int64_t batch_size, double lr,
                           const ModelConfig& c) {
    TrainOptions t;
    t.steps = steps;
    t.batch_size = batch_size;
    t.seq_len = o.seq_len;
    t.lr = lr;
    t.warmup = std::max<int64_t>(1, steps / 20);
    t.seed = o.seed;
    t.checkpoint_every = std::max<int64_t>(10, steps / 10);
    t.model_flops_per_token = c.flops_per_token(t.seq_len);
    return t;
}

// The samples an API dataset holds (read one line at a time).
int64_t api_sample_count(const std::string& dir) {
    int64_t n = 0;
    for_each_api_sample(dir, [&](ApiSample&&) { ++n; }, ApiFields::kNone);
    return n;
}

// `n` prompts cut from `text`, seeded: each begins at the start of a non-empty line and runs
// about `bytes` bytes, ending before a space, so the teacher continues a passage in mid-flow.
std::vector<std::string> cut_prompts(const std::string& text, int64_t n, size_t bytes, uint64_t seed) {
    std::vector<size_t> starts;
    for (size_t i = 0; i + bytes < text.size(); i = text.find('\n', i) + 1) {
        if (text[i] != '\n' && text[i] != '\r' && text[i] != ' ') starts.push_back(i);
        if (text.find('\n', i) == std::string::npos) break;
    }
    DISTILL_CHECK(!starts.empty(), "the training text is too short to cut prompts from");
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 17);
    std::vector<std::string> out;
    for (int64_t k = 0; k < n; ++k) {
        const size_t at = starts[rng() % starts.size()];
        std::string p = text.substr(at, bytes);
        const size_t space = p.find_last_of(' ');
        if (space != std::string::npos && space > bytes / 2) p.resize(space);
        p.resize(utf8_complete_prefix(p));
        out.push_back(p);
    }
    return out;
}

}  // namespace

DemoSizes demo_sizes(int64_t vocab, bool quick) {
    DemoSizes s;
    ModelConfig& t = s.teacher;
    t.vocab_size = vocab;
    t.hidden_size = quick ? 64 : 256;
    t.num_hidden_layers = quick ? 2 : 4;
    t.num_attention_heads = quick ? 4 : 8;
    t.num_key_value_heads = quick ? 2 : 4;
    t.intermediate_size = quick ? 176 : 688;
    t.max_position_embeddings = 512;
    t.tie_word_embeddings = true;
    ModelConfig& st = s.student;
    st = t;
    st.hidden_size = quick ? 32 : 128;
    st.num_hidden_layers = quick ? 1 : 2;
    st.num_attention_heads = quick ? 2 : 4;
    st.num_key_value_heads = quick ? 1 : 2;
    st.intermediate_size = quick ? 88 : 344;
    return s;
}

int run_demo(const DemoOptions& o_in) {
    DemoOptions o = o_in;
    if (o.quick) {
        o.vocab_size = std::min<int64_t>(o.vocab_size, 512);
        o.teacher_steps = std::min<int64_t>(o.teacher_steps, 30);
        o.student_steps = std::min<int64_t>(o.student_steps, 30);
        o.seq_len = 64;
        o.batch_size = 8;
        o.teacher_batch_size = 8;
        o.api_prompts = std::min<int64_t>(o.api_prompts, 48);
        o.api_max_tokens = std::min<int64_t>(o.api_max_tokens, 16);
    }
    const double t_start = now_seconds();
    // each stage's wall seconds in this invocation (a stage reused from an earlier run takes ~0)
    json stage_seconds = json::array();
    double stage_start = t_start;
    auto stage_done = [&](const std::string& name) {
        const double now = now_seconds();
        stage_seconds.push_back({{"stage", name}, {"seconds", now - stage_start}});
        stage_start = now;
    };
    const std::string run = o.run_dir;
    make_dirs(run);
    log_info(str_cat("demo in ", run, " (re-running reuses what is already built); BLAS core: ",
                     blas_core_name()[0] ? blas_core_name() : "(not OpenBLAS)", ", ",
                     torch::get_num_threads(), " threads, device ", device_name(compute_device())));

    // 1. corpus: five novels to train on, Persuasion held out
    const std::string corpus_dir = path_join(run, "corpus");
    write_corpus(corpus_dir);
    const std::string train_txt = path_join(run, "train.txt");
    const std::string heldout_txt = path_join(corpus_dir, std::string(kNovels[kNumNovels - 1]) + ".txt");
    if (!file_exists(train_txt)) {
        std::string all;
        for (int i = 0; i < kNumNovels - 1; ++i)
            all += read_file(path_join(corpus_dir, std::string(kNovels[i]) + ".txt"));
        write_file_atomic(train_txt, all);
    }
    std::string train_text = read_file(train_txt);
    std::string heldout_text = read_file(heldout_txt);
    if (o.quick) {
        train_text.resize(std::min<size_t>(train_text.size(), 300000));
        heldout_text.resize(std::min<size_t>(heldout_text.size(), 20000));
        heldout_text.resize(utf8_complete_prefix(heldout_text));  // no character cut in two
    }
    log_info(str_cat("corpus: ", train_text.size(), " bytes to train on, ", heldout_text.size(),
                     " bytes held out (Persuasion)"));
    // the held-out curves during training: bpb on the opening of Persuasion, 20 points a run
    std::string curve_text = heldout_text.substr(0, kCurveBytes);
    curve_text.resize(utf8_complete_prefix(curve_text));
    const std::string curve_txt = path_join(run, "heldout-curve.txt");
    if (!file_exists(curve_txt) || read_file(curve_txt) != curve_text) write_file_atomic(curve_txt, curve_text);
    auto with_curve = [&](TrainOptions t) {
        t.eval_text = curve_txt;
        t.eval_every = std::max<int64_t>(1, t.steps / 20);
        return t;
    };

    stage_done("corpus");
    // 2. tokenizer
    const std::string tok_path = path_join(run, "tokenizer.json");
    TokenizerTrainOptions topts;
    topts.vocab_size = static_cast<int>(o.vocab_size);
    const std::string tok_key = hash_hex(train_text) + ":" + std::to_string(o.vocab_size);
    const std::string tok_key_path = path_join(run, "tokenizer.key");
    if (!file_exists(tok_path) || !file_exists(tok_key_path) || read_file(tok_key_path) != tok_key) {
        const double t0 = now_seconds();
        log_info(str_cat("training a ", o.vocab_size, "-token BPE tokenizer"));
        Tokenizer::train(train_text, topts).save(tok_path);
        write_file_atomic(tok_key_path, tok_key);
        log_info(str_cat("tokenizer trained in ", format_duration(now_seconds() - t0)));
    }
    Tokenizer tok = Tokenizer::load(tok_path);

    stage_done("tokenizer");
    // 3. token shard
    const std::string shard_prefix = path_join(run, "data/train");
    make_dirs(path_join(run, "data"));
    bool shard_ok = false;
    if (file_exists(shard_prefix + ".json")) {
        try {
            TokenShard s(shard_prefix);
            shard_ok = s.info().tokenizer_fingerprint == tok.fingerprint() &&
                       s.info().source_bytes == static_cast<int64_t>(train_text.size());
        } catch (const Error&) {
            shard_ok = false;  // rebuilt below
        }
    }
    if (!shard_ok) {
        auto ids = tok.encode(train_text);
        write_shard(shard_prefix, ids, tok.vocab_size(), tok.fingerprint(), "train.txt",
                    static_cast<int64_t>(train_text.size()));
    }
    TokenShard shard(shard_prefix);
    log_info(str_cat("train shard: ", shard.size(), " tokens (",
                     double(train_text.size()) / double(shard.size()), " bytes/token)"));

    stage_done("token shard");
    // 4. teacher
    DemoSizes sizes = demo_sizes(tok.vocab_size(), o.quick);
    sizes.teacher.bos_token_id = sizes.student.bos_token_id = tok.bos_id();
    sizes.teacher.eos_token_id = sizes.student.eos_token_id = tok.eos_id();
    TrainOptions tt = with_curve(train_options(o, o.teacher_steps, o.teacher_batch_size, o.teacher_lr, sizes.teacher));
    Llama teacher(sizes.teacher);
    teacher->init_weights(tt.seed);
    BatchSpec tspec{tt.batch_size, tt.seq_len, tt.seed, false};
    to_compute_device(teacher);
    const json teacher_run = pretrain_settings(sizes.teacher, tt, shard, tok);
    log_info(str_cat("teacher: ", format_count(double(sizes.teacher.num_params())), " parameters, ",
                     tt.steps, " steps of ", tt.batch_size, "x", tt.seq_len, " tokens"));
    const std::string teacher_dir = path_join(run, "teacher");
    if (run_dir_holds_other_run(teacher_dir, teacher_run)) set_aside(teacher_dir, "the teacher");
    TrainResult tres = run_training(
        teacher, tok, tt, teacher_dir, teacher_run,
        [&](int64_t step, int64_t micro) {
            Batch b = sample_batch(shard, tspec, step, micro);
            return StepLoss{next_token_loss(teacher, b.tokens), tt.batch_size * tt.seq_len, {}};
        },
        "teacher");

    stage_done("teacher");
    // 5. evaluation on the held-out novel
    WindowOptions wopts;
    wopts.context = o.seq_len;
    wopts.stride = o.seq_len / 2;
    wopts.batch = 16;
    const std::string teacher_fp = load_model_dir(path_join(teacher_dir, "model")).fingerprint;
    json teacher_eval = cached_json(path_join(run, "eval-teacher.json"),
                                    {teacher_fp, hash_hex(heldout_text), wopts.context, wopts.stride},
                                    [&] {
                                        auto r = eval_bpb(teacher, tok, heldout_text, wopts, "eval teacher");
                                        return json{{"bpb", r.bits_per_byte},
                                                    {"nats_per_token", r.nats_per_token},
                                                    {"tokens", r.tokens},
                                                    {"seconds", r.seconds}};
                                    });
    // xz -9e on the held-out novel after the training novels: what a strong general-purpose
    // compressor that has read the same books pays per byte.
    json xz = cached_json(path_join(run, "eval-xz.json"), {hash_hex(train_text), hash_hex(heldout_text)}, [&] {
        const int64_t a = xz_compressed_size(train_text), b = xz_compressed_size(train_text + heldout_text);
        return json{{"bpb", 8.0 * double(b - a) / double(heldout_text.size())},
                    {"train_bytes_xz", a},
                    {"train_plus_heldout_bytes_xz", b}};
    });

    stage_done("teacher eval");
    // 6. capture the teacher's top-k on the training windows
    CaptureOptions copts;
    copts.top_k = o.top_k;
    copts.window = o.seq_len;
    copts.batch = 16;
    const std::string cache_dir = path_join(run, "cache");
    if (cache_holds_other(cache_dir, teacher_fp, shard.info().fingerprint, o.top_k, o.seq_len))
        set_aside(cache_dir, "the teacher's logit cache");
    json cap = cached_json(path_join(run, "capture.json"), {teacher_fp, shard.info().fingerprint, o.top_k, o.seq_len},
                           [&] {
                               auto r = capture_teacher(teacher, teacher_fp, tok, shard, cache_dir, copts);
                               return json{{"windows", r.windows},
                                           {"positions", r.positions},
                                           {"bytes_per_token", r.bytes_per_token},
                                           {"kl_full_to_stored", r.kl_full_to_stored},
                                           {"kl_quantization", r.kl_quantization},
                                           {"max_abs_logprob_error", r.max_abs_logprob_error},
                                           {"seconds", r.seconds}};
                           });
    LogitCacheReader cache(cache_dir);

    stage_done("capture");
    // 7. two students of the same architecture, same windows, steps and seed: one distilled from
    // the cache, one trained on the data alone
    TrainOptions st = with_curve(train_options(o, o.student_steps, o.batch_size, o.student_lr, sizes.student));
    LossOptions kd_loss;
    kd_loss.kind = loss_kind_from_string(o.loss);
    kd_loss.temperature = o.temperature;
    kd_loss.ce_weight = o.ce_weight;
    LossOptions ce_loss;
    ce_loss.kind = LossKind::kCrossEntropy;
    check_cache_fits(cache, tok.fingerprint(), sizes.student.vocab_size, shard, st.seq_len);
    const auto heldout_ids = encode_for_eval(tok, heldout_text);

    // Trains (or reuses) one student and evaluates it. Its run dir is named by its settings, so
    // other losses or seeds can be tried in the same demo dir without retraining the rest.
    // `settings` is what the same `distill train` records; `make_loss` builds the step's loss.
    auto train_student = [&](const std::string& name, const std::string& dir_name, uint64_t seed,
                             const LossOptions& loss, const std::function<json(const TrainOptions&)>& settings,
                             const std::function<LossFn(Llama&, const TrainOptions&)>& make_loss) {
        TrainOptions so = st;
        so.seed = seed;
        const std::string dir = path_join(run, dir_name);
        Llama model(sizes.student);
        model->init_weights(seed);
        to_compute_device(model);
        log_info(str_cat(name, " (seed ", seed, "): ", format_count(double(sizes.student.num_params())),
                         " parameters, loss ", loss_kind_name(loss.kind), ", ", so.steps, " steps"));
        if (run_dir_holds_other_run(dir, settings(so))) set_aside(dir, name);
        TrainResult tr = run_training(model, tok, so, dir, settings(so), make_loss(model, so), name);
        const std::string fp = load_model_dir(path_join(dir, "model")).fingerprint;
        // its bpb now; its agreement with the teacher and KL to it come from the compare stage
        // (one pass of the teacher for every student), which adds them to eval.json
        json ev = cached_json(path_join(dir, "eval.json"),
                              {fp, teacher_fp, hash_hex(heldout_text), wopts.context, wopts.stride}, [&] {
                                  auto b = eval_bpb(model, tok, heldout_text, wopts, "eval " + name);
                                  return json{{"bpb", b.bits_per_byte}};
                              });
        return json{{"name", name},
                    {"params", sizes.student.num_params()},
                    {"bpb", ev["bpb"]},
                    {"top1_agreement", ev.value("top1_agreement", json())},
                    {"kl_to_teacher", ev.value("kl_to_teacher", json())},
                    {"train_seconds", tr.seconds},
                    {"train_tokens", tr.tokens},
                    {"loss", loss_kind_name(loss.kind)},
                    {"seed", seed},
                    {"run_dir", dir}};
    };
    // a student on the training shard: distilled from a logit cache (the white-box one, or one
    // captured through the API: `from`, named `from_name`), or the baseline (no teacher)
    auto student_row = [&](const std::string& name, const LossOptions& loss, uint64_t seed,
                           const LogitCacheReader& from, const std::string& from_name) {
        const bool ce = loss.kind == LossKind::kCrossEntropy;
        const int k = from.info().top_k;
        char dir_name[160];
        if (ce)
            std::snprintf(dir_name, sizeof dir_name, "students/ce-seed%llu", (unsigned long long)seed);
        else
            std::snprintf(dir_name, sizeof dir_name, "students/%s%s-t%g-ce%g-k%d-seed%llu", from_name.c_str(),
                          loss_kind_name(loss.kind).c_str(), loss.temperature, loss.ce_weight, k,
                          (unsigned long long)seed);
        json row = train_student(
            name, dir_name, seed, loss,
            [&](const TrainOptions& so) {
                // an API cache's teacher is the served name and the server's system_fingerprint,
                // which changes with the weights served
                json teacher = ce ? json(nullptr) : json({{"cache", from.info().teacher_fingerprint}, {"top_k", k}});
                return distill_settings(sizes.student, "", so, loss, teacher, shard, tok);
            },
            [&](Llama& model, const TrainOptions& so) {
                BatchSpec spec{so.batch_size, so.seq_len, so.seed, true};
                return make_student_loss(model, shard, spec, loss, &from, nullptr);
            });
        // the teacher scored every captured position once, whichever windows the student drew
        row["teacher_tokens"] = ce ? int64_t(0) : from.num_windows() * int64_t(from.info().window);
        return row;
    };

    // 8. the students, for each seed; the first seed's pair goes into the models table
    std::vector<json> rows;
    rows.push_back({{"name", "teacher"},
                    {"params", sizes.teacher.num_params()},
                    {"bpb", teacher_eval["bpb"]},
                    {"top1_agreement", 1.0},
                    {"kl_to_teacher", 0.0},
                    {"train_seconds", tres.seconds},
                    {"train_tokens", tres.tokens}});
    std::vector<uint64_t> seeds = o.student_seeds;
    if (seeds.empty()) seeds.push_back(o.seed);
    std::vector<std::pair<json, json>> seed_pairs;  // (KD, baseline) of each seed
    for (size_t i = 0; i < seeds.size(); ++i) {
        json kd = student_row("student_kd", kd_loss, seeds[i], cache, "");
        json base = student_row("student_baseline", ce_loss, seeds[i], cache, "");
        seed_pairs.emplace_back(kd, base);
        if (i == 0) {
            rows.push_back(kd);
            rows.push_back(base);
        }
    }
    // steps to the baseline: the first point of the KD student's held-out curve at or below the
    // baseline's last point (both on heldout-curve.txt); null when it never gets there, or when
    // the runs were trained before the curves existed
    json steps_to_baseline = nullptr;
    {
        const auto kd_curve = heldout_curve(rows[1]["run_dir"].get<std::string>());
        const auto base_curve = heldout_curve(rows[2]["run_dir"].get<std::string>());
        if (!kd_curve.empty() && !base_curve.empty() && base_curve.back().first == st.steps) {
            const double target = base_curve.back().second;
            json at = nullptr;
            for (const auto& [step, bpb] : kd_curve)
                if (bpb <= target) {
                    at = step;
                    break;
                }
            steps_to_baseline = {{"student_kd_step", at},
                                 {"baseline_steps", st.steps},
                                 {"baseline_final_curve_bpb", target},
                                 {"curve_bytes", curve_text.size()},
                                 {"curve_every", st.eval_every}};
        }
    }

    stage_done("students");
    // 9. the teacher through its API: served on loopback with faults injected into a quarter of
    // the requests, asked to continue passages cut from the training novels, and two students
    // trained on what it returned with the same steps and seed as the pair above: one on the
    // completions' text (sequence-level), one on the top-20 it returned for every training window
    // (echo), mixed with cross-entropy on the data as the white-box student is.
    json api_report = nullptr, guard_report = nullptr;
    // the served teacher's decoding slots, and the client's requests in flight: twice as many, so
    // that the requests held by injected timeouts and Retry-After waits leave the server busy
    // (measured on the full demo's faults: 26 % less time for the cache's capture, 17 % for the
    // completions')
    const int64_t api_slots = o.quick ? 4 : 16;
    const int64_t api_concurrency = o.quick ? 4 : 32;

    // 10. the owner's side (docs/guard.md): the teacher served with a watermark continues the
    // same prompts; a student is trained sequence-level, as the API student above, on completions
    // of which a share (guard_fraction) is watermarked and the rest the clean ones; then the
    // radioactivity test in open mode on it, on the clean API student and on the baseline (neither
    // saw watermarked text), and on the marked student with a wrong key.
    auto guard_stage = [&](const std::string& prompts_text, size_t n_prompts, const ApiCaptureOptions& clean,
                           const json& clean_row, const json& baseline_row) {
        const std::string guard_dir = path_join(run, "guard");
        make_dirs(guard_dir);
        // the key is fixed by the seed so that a re-run resumes; a real owner's key is random bytes
        const std::string key_path = path_join(guard_dir, "watermark.key");
        if (!file_exists(key_path)) write_file_atomic(key_path, str_cat("distill demo watermark key, seed ", o.seed, "\n"));
        WatermarkOptions wm;
        wm.key = watermark_key_file(key_path);
        ApiCaptureOptions mc = clean;  // the same requests (text only), to a watermarking server
        mc.out = path_join(guard_dir, "marked-" + hash_hex(str_cat(teacher_fp, hash_hex(prompts_text), mc.max_tokens,
                                                                    mc.seed, watermark_key_id_hex(wm.key), wm.gamma,
                                                                    wm.delta, wm.context)).substr(0, 12));
        if (!(file_exists(mc.out + "/samples.jsonl") && api_sample_count(mc.out) == int64_t(n_prompts))) {
            ServeOptions so;
            so.model = path_join(teacher_dir, "model");
            so.alias = "teacher";
            so.port = 0;
            so.parallel = api_slots;
            so.watermark = wm;
            so.announce = false;
            ServerThread server(so);
            mc.url = server.base_url();
            log_info(str_cat("teacher served with a watermark (gamma ", wm.gamma, ", delta ", wm.delta, ", context ",
                             wm.context, "); capturing its completions of the same ", n_prompts, " prompts"));
            const ApiCaptureResult r = capture_from_api(mc);
            server.stop();
            DISTILL_CHECK(r.failed == 0 && r.written + r.done_before == r.total, "the watermarked capture left ", r.failed,
                          " samples failed; run the demo again to retry them");
        }
        stage_done("guard capture");
        // prompt p carries its watermarked completion when (p * 7919) % 1000 < 1000 * fraction
        const int64_t per_mille = std::lround(1000 * o.guard_fraction);
        std::map<int64_t, json> marked;
        for (const ApiSample& s : read_api_dataset(mc.out)) marked[s.prompt_index] = s.record;
        std::string mix, texts_fp;
        std::vector<std::string> marked_texts;
        int64_t n_marked = 0;
        // the clean completions' text (a sequence-level student learns nothing else), read one line
        // at a time and without any log-probs (a run directory from before the text-only capture
        // holds 187 MB of them)
        std::vector<ApiSample> clean_samples;
        for_each_api_sample(
            clean.out, [&](ApiSample&& s) { clean_samples.push_back(std::move(s)); }, ApiFields::kNoLogprobs);
        std::stable_sort(clean_samples.begin(), clean_samples.end(), [](const ApiSample& a, const ApiSample& b) {
            return std::tie(a.prompt_index, a.sample) < std::tie(b.prompt_index, b.sample);
        });
        for (const ApiSample& s : clean_samples) {
            const auto m = marked.find(s.prompt_index);
            DISTILL_CHECK(m != marked.end(), "the watermarked capture has no sample for prompt ", s.prompt_index);
            json r = s.record;
            if ((s.prompt_index * 7919) % 1000 < per_mille) {
                r = m->second;
                ++n_marked;
            }
            r.erase("logprobs");  // (a watermarked one's too)
            r.erase("prompt_logprobs");
            mix += r.dump() + "\n";
        }
        for (const auto& [p, r] : marked) marked_texts.push_back(r.value("text", std::string()));
        const std::string mix_dir = path_join(guard_dir, str_cat("mix-", per_mille, "-", hash_hex(mix).substr(0, 12)));
        make_dirs(mix_dir);
        if (!file_exists(mix_dir + "/samples.jsonl")) write_file_atomic(mix_dir + "/samples.jsonl", mix);
        const SequenceSet set = load_sequences(mix_dir, tok, st.seq_len);
        const std::string name = "student_api_sequences_marked";
        json row = train_student(
            name, str_cat("students/api-seq-marked", per_mille, "-", set.fingerprint.substr(0, 8), "-seed", o.seed),
            o.seed, ce_loss,
            [&](const TrainOptions& so) { return sequence_settings(sizes.student, "", so, ce_loss, set.fingerprint, tok); },
            [&](Llama& model, const TrainOptions& so) { return make_sequence_loss(model, set, so, ce_loss); });
        row["teacher_tokens"] = set.teacher_tokens;
        rows.push_back(row);

        // open mode: each suspect's top-1 over all of our watermarked completions
        WatermarkOptions wrong = wm;
        wrong.key = watermark_key(str_cat("not the demo's key, seed ", o.seed));
        auto test = [&](const json& suspect, const WatermarkOptions& key) {
            const std::string dir = path_join(suspect["run_dir"].get<std::string>(), "model");
            LoadedModel m = load_model_for_inference(dir);
            const RadioactivityResult r = radioactivity_open(m.model, tok, marked_texts, key, wopts);
            nlohmann::ordered_json j = detect_result_json(key, r.detect);
            return json::parse(j.dump());
        };
        const json marked_p = cached_json(path_join(guard_dir, "radioactivity.json"),
                                          {hash_hex(mix), watermark_key_id_hex(wm.key), row["run_dir"], clean_row["run_dir"],
                                           baseline_row["run_dir"], wopts.context, wopts.stride},
                                          [&] {
                                              return json{{"marked_student", test(row, wm)},
                                                          {"clean_api_student", test(clean_row, wm)},
                                                          {"baseline", test(baseline_row, wm)},
                                                          {"marked_student_wrong_key", test(row, wrong)}};
                                          });
        return json{{"fraction", o.guard_fraction},
                    {"marked_samples", n_marked},
                    {"samples", set.samples},
                    {"watermark", {{"gamma", wm.gamma}, {"delta", wm.delta}, {"context", wm.context},
                                   {"key_hash", watermark_key_id_hex(wm.key)}}},
                    {"dataset", mc.out},
                    {"open_mode", marked_p}};
    };
    if (o.api_prompts > 0) {
        const std::string api_dir = path_join(run, "api");
        make_dirs(api_dir);
        const std::vector<std::string> prompts = cut_prompts(train_text, o.api_prompts, o.quick ? 96 : 200, o.seed);
        std::string prompts_text;
        for (const auto& p : prompts) prompts_text += json({{"prompt", p}}).dump() + "\n";
        const std::string prompts_path = path_join(api_dir, "prompts-" + hash_hex(prompts_text).substr(0, 12) + ".jsonl");
        if (!file_exists(prompts_path)) write_file_atomic(prompts_path, prompts_text);
        // the client waits this long before it calls a request timed out; the server holds its
        // injected timeouts a second longer. A served request here takes well under a second.
        const double timeout_s = 3;
        // the teacher served on loopback with faults on a share of the requests, for one capture
        auto serve_faulty = [&](uint64_t fault_seed) {
            ServeOptions so;
            so.model = path_join(teacher_dir, "model");
            so.alias = "teacher";
            so.port = 0;
            so.parallel = api_slots;
            so.fault_rate = o.api_fault_rate;
            so.fault_seed = fault_seed;
            so.fault_delay_s = timeout_s + 1;
            so.announce = false;
            return std::make_unique<ServerThread>(so);
        };

        // (a) completions of the prompts, for the sequence-level student
        ApiCaptureOptions ac;
        ac.model = "teacher";
        ac.prompts = prompts_path;
        ac.concurrency = api_concurrency;
        ac.max_tokens = o.api_max_tokens;
        ac.temperature = 1.0;
        ac.seed = o.seed;
        // text only: the sequence-level student learns the completions, and the top-20 student
        // learns from the cache below (top-20 log-probs here made the dataset 187 MB instead of 2)
        ac.top_logprobs = 0;
        ac.timeout_s = timeout_s;
        ac.backoff_s = 0.05;
        ac.backoff_max_s = 2;
        // the dataset is named by what it is: the teacher, the prompts and the settings
        // (by content, not path: a moved run dir keeps its dataset)
        ac.out = path_join(api_dir, "dataset-" + hash_hex(str_cat(teacher_fp, hash_hex(prompts_text), ac.max_tokens,
                                                                   ac.seed, ac.top_logprobs)).substr(0, 12));
        const bool complete = file_exists(ac.out + "/samples.jsonl") &&
                              api_sample_count(ac.out) == int64_t(prompts.size());
        json faults = nullptr;
        if (!complete) {
            auto server = serve_faulty(o.seed);
            ac.url = server->base_url();
            log_info(str_cat("teacher served at ", ac.url, " with faults on ", o.api_fault_rate * 100,
                             "% of requests; capturing ", prompts.size(), " completions of ", ac.max_tokens,
                             " tokens"));
            const ApiCaptureResult capres = capture_from_api(ac);
            server->stop();
            DISTILL_CHECK(capres.failed == 0 && capres.written + capres.done_before == capres.total, "the capture through the API ",
                          "left ", capres.failed, " samples failed; run the demo again to retry them");
            faults = capres.to_json();
            faults["faults_injected"] = server->faults_injected();
            write_file_atomic(ac.out + "/demo-capture.json", faults.dump(2) + "\n");
        } else if (file_exists(ac.out + "/demo-capture.json")) {
            faults = read_json_file(ac.out + "/demo-capture.json");
        }
        const SequenceSet set = load_sequences(ac.out, tok, st.seq_len);
        log_info(str_cat("API dataset: ", set.samples, " samples, ", set.completion_tokens, " completion tokens; the API ",
                         "reported ", set.teacher_tokens, " tokens"));
        stage_done("api completions");

        // (b) the teacher's top-20 on every training window through the same API (echo, logprobs
        // 20, max_tokens 0; faults again), into a logit cache for the top-20 student
        ApiCacheOptions cc;
        cc.remote.url = "";  // set when served
        cc.remote.model = "teacher";
        cc.remote.retries = 10;
        cc.remote.timeout_s = timeout_s;
        cc.remote.backoff_s = 0.05;
        cc.remote.backoff_max_s = 2;
        cc.top_k = 20;
        cc.window = o.seq_len;
        cc.windows_per_request = 4;
        cc.concurrency = api_concurrency;
        cc.progress = !Progress::quiet;
        const std::string api_cache_dir =
            path_join(api_dir, "cache-" + hash_hex(str_cat(teacher_fp, shard.info().fingerprint, cc.top_k, cc.window))
                                              .substr(0, 12));
        json cache_capture = nullptr;
        const std::string cache_json = path_join(api_cache_dir, "demo-capture.json");
        if (!file_exists(cache_json)) {
            auto server = serve_faulty(o.seed + 1);
            cc.remote.url = server->base_url();
            log_info(str_cat("capturing the teacher's top-", cc.top_k, " on every training window through its API (",
                             num_aligned_windows(shard.size(), cc.window), " windows, faults on ", o.api_fault_rate * 100,
                             "% of requests)"));
            const ApiCacheResult cr = capture_cache_from_api(tok, shard, api_cache_dir, cc);
            server->stop();
            cache_capture = cr.to_json();
            cache_capture["faults_injected"] = server->faults_injected();
            write_file_atomic(cache_json, cache_capture.dump(2) + "\n");
        } else {
            cache_capture = read_json_file(cache_json);
        }
        LogitCacheReader api_cache(api_cache_dir);
        check_cache_fits(api_cache, tok.fingerprint(), sizes.student.vocab_size, shard, st.seq_len);
        stage_done("api cache");

        std::vector<json> api_rows;
        {
            json row = train_student(
                "student_api_sequences", str_cat("students/api-seq-", set.fingerprint.substr(0, 8), "-seed", o.seed),
                o.seed, ce_loss,
                [&](const TrainOptions& so) { return sequence_settings(sizes.student, "", so, ce_loss, set.fingerprint, tok); },
                [&](Llama& model, const TrainOptions& so) { return make_sequence_loss(model, set, so, ce_loss); });
            row["teacher_tokens"] = set.teacher_tokens;
            api_rows.push_back(row);
        }
        {
            json row = student_row("student_api_top20", kd_loss, o.seed, api_cache, "api-cache-");
            // the API read each window's T + 1 tokens (its usage says the same: cache.capture)
            row["teacher_tokens"] = api_cache.num_windows() * (int64_t(st.seq_len) + 1);
            api_rows.push_back(row);
        }
        // the share of the white-box student's gain over the baseline that each API student kept
        const double wb_gain = rows[2]["bpb"].get<double>() - rows[1]["bpb"].get<double>();
        json kept = json::object();
        for (const auto& r : api_rows)
            kept[r["name"].get<std::string>()] = (rows[2]["bpb"].get<double>() - r["bpb"].get<double>()) / wb_gain;
        api_report = {{"prompts", prompts.size()},
                      {"max_tokens", ac.max_tokens},
                      {"top_logprobs", ac.top_logprobs},
                      {"fault_rate", o.api_fault_rate},
                      {"capture", faults},
                      {"dataset", ac.out},
                      {"samples", set.samples},
                      {"completion_tokens", set.completion_tokens},
                      {"teacher_tokens", set.teacher_tokens},
                      {"cache", {{"dir", api_cache_dir},
                                 {"top_logprobs", cc.top_k},
                                 {"windows", api_cache.num_windows()},
                                 {"positions", api_cache.num_windows() * int64_t(st.seq_len)},
                                 {"capture", cache_capture}}},
                      {"share_of_whitebox_gain", kept}};
        for (auto& r : api_rows) rows.push_back(r);
        stage_done("api students");
        if (o.guard_fraction > 0) {
            guard_report = guard_stage(prompts_text, prompts.size(), ac, api_rows[0], rows[2]);
            stage_done("guard");
        }
    }

    // 11. every student beside the teacher on the held-out text (top-1 agreement, KL to it):
    // one pass of the teacher's forward for all the students that have no figures yet
    {
        std::vector<json*> todo;
        for (auto& r : rows)
            if (r["top1_agreement"].is_null()) todo.push_back(&r);
        for (auto& [kd, base] : seed_pairs)
            for (json* r : {&kd, &base})
                if ((*r)["top1_agreement"].is_null()) todo.push_back(r);
        std::vector<std::string> dirs;  // each student once (a seed's pair is also in `rows`)
        for (json* r : todo) {
            const std::string d = (*r)["run_dir"].get<std::string>();
            if (std::find(dirs.begin(), dirs.end(), d) == dirs.end()) dirs.push_back(d);
        }
        std::map<std::string, std::pair<double, double>> by_dir;  // run dir -> (agreement, KL)
        if (!dirs.empty()) {
            log_info(str_cat("comparing ", dirs.size(), " students with the teacher on the held-out text"));
            std::vector<Llama> models;
            std::vector<Llama*> ptrs;
            for (const auto& d : dirs) {
                models.push_back(load_model_dir(path_join(d, "model")).model);
                to_compute_device(models.back());
                models.back()->eval();
            }
            for (auto& m : models) ptrs.push_back(&m);
            const std::vector<CompareResult> c = eval_compare_many(teacher, ptrs, heldout_ids, wopts);
            for (size_t k = 0; k < dirs.size(); ++k) {
                by_dir[dirs[k]] = {c[k].top1_agreement, c[k].kl_to_teacher};
                const std::string path = path_join(dirs[k], "eval.json");  // kept with the bpb, same key
                json j = read_json_file(path);
                j["value"]["top1_agreement"] = c[k].top1_agreement;
                j["value"]["kl_to_teacher"] = c[k].kl_to_teacher;
                write_file_atomic(path, j.dump(2) + "\n");
            }
        }
        for (json* r : todo) {
            const auto& v = by_dir.at((*r)["run_dir"].get<std::string>());
            (*r)["top1_agreement"] = v.first;
            (*r)["kl_to_teacher"] = v.second;
        }
    }
    json per_seed = json::array();
    double min_bpb_margin = 1e9, sum_bpb_margin = 0, min_agree_margin = 1e9;
    for (size_t i = 0; i < seeds.size(); ++i) {
        const json &kd = seed_pairs[i].first, &base = seed_pairs[i].second;
        const double bm = base["bpb"].get<double>() - kd["bpb"].get<double>();
        const double am = kd["top1_agreement"].get<double>() - base["top1_agreement"].get<double>();
        min_bpb_margin = std::min(min_bpb_margin, bm);
        min_agree_margin = std::min(min_agree_margin, am);
        sum_bpb_margin += bm;
        per_seed.push_back({{"seed", seeds[i]},
                            {"student_kd_bpb", kd["bpb"]},
                            {"student_baseline_bpb", base["bpb"]},
                            {"bpb_margin", bm},
                            {"student_kd_top1_agreement", kd["top1_agreement"]},
                            {"student_baseline_top1_agreement", base["top1_agreement"]},
                            {"agreement_margin", am}});
    }
    stage_done("compare");

    // 12. a short sample from the teacher
    SamplingOptions samp;
    samp.temperature = 0.8;
    samp.top_k = 40;
    samp.max_new_tokens = 60;
    samp.seed = o.seed;
    const std::string prompt = "It was a truth universally acknowledged";
    std::vector<int32_t> gen;
    for (int64_t id : generate(teacher, encode_for_eval(tok, prompt), samp)) gen.push_back(int32_t(id));
    const std::string sample = prompt + tok.decode(gen, true);

    stage_done("sample");
    const double kd_bpb = rows[1]["bpb"].get<double>(), base_bpb = rows[2]["bpb"].get<double>();
    json report = {
        {"corpus", {{"train", "sensesensibility, prideprejudice, mansfieldpark, emma, northangerabbey"},
                    {"heldout", "persuasion"},
                    {"train_bytes", train_text.size()},
                    {"heldout_bytes", heldout_text.size()},
                    {"train_tokens", shard.size()},
                    {"heldout_tokens", heldout_ids.size()}}},
        {"tokenizer", {{"vocab_size", tok.vocab_size()}, {"fingerprint", tok.fingerprint()}}},
        {"xz_bpb", xz["bpb"]},
        {"models", rows},
        {"cache", {{"top_k", o.top_k},
                   {"positions", cap["positions"]},
                   {"bytes_per_token", cap["bytes_per_token"]},
                   {"kl_full_to_stored", cap["kl_full_to_stored"]},
                   {"kl_quantization", cap["kl_quantization"]},
                   {"capture_seconds", cap["seconds"]}}},
        {"distillation", {{"loss", o.loss},
                          {"temperature", o.temperature},
                          {"ce_weight", o.ce_weight},
                          {"bpb_margin", base_bpb - kd_bpb},
                          {"agreement_margin", rows[1]["top1_agreement"].get<double>() -
                                                   rows[2]["top1_agreement"].get<double>()},
                          {"seeds", per_seed},
                          {"mean_bpb_margin", sum_bpb_margin / double(seeds.size())},
                          {"min_bpb_margin", min_bpb_margin},
                          {"min_agreement_margin", min_agree_margin},
                          {"steps_to_baseline", steps_to_baseline}}},
        {"api", api_report},
        {"guard", guard_report},
        {"sample", sample},
        {"quick", o.quick},
        {"stage_seconds", stage_seconds},
        {"seconds", now_seconds() - t_start},
    };
    write_file_atomic(path_join(run, "report.json"), report.dump(2) + "\n");

    // the same as a table, printed and in report.md
    std::string table =
        "| model | params | held-out bpb | top-1 agreement | KL to teacher | train time | train tokens | teacher tokens |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for (const auto& r : rows) {
        char line[320];
        const std::string teacher_tokens =
            r.contains("teacher_tokens") ? format_count(r["teacher_tokens"].get<double>()) : "-";
        std::snprintf(line, sizeof line, "| %s | %s | %.4f | %.4f | %.4f | %s | %s | %s |\n",
                      r["name"].get<std::string>().c_str(), format_count(r["params"].get<double>()).c_str(),
                      r["bpb"].get<double>(), r["top1_agreement"].get<double>(),
                      r["kl_to_teacher"].get<double>(), format_duration(r["train_seconds"].get<double>()).c_str(),
                      format_count(r["train_tokens"].get<double>()).c_str(), teacher_tokens.c_str());
        table += line;
    }
    char tail[512];
    std::snprintf(tail, sizeof tail,
                  "| xz -9e (after the training novels) | - | %.4f | - | - | - | - | - |\n\n"
                  "Teacher cache: top-%d, %.1f bytes/token, KL(full || stored) %.4f nats/token.\n"
                  "Distillation (%s, tau %.2g, ce weight %.2g) vs the baseline: bpb %+.4f, agreement %+.4f.\n",
                  xz["bpb"].get<double>(), o.top_k, cap["bytes_per_token"].get<double>(),
                  cap["kl_full_to_stored"].get<double>(), o.loss.c_str(), o.temperature, o.ce_weight,
                  kd_bpb - base_bpb,
                  rows[1]["top1_agreement"].get<double>() - rows[2]["top1_agreement"].get<double>());
    table += tail;
    if (seeds.size() > 1) {
        char line[256];
        std::snprintf(line, sizeof line,
                      "Over %zu student seeds: bpb margin (baseline - KD) mean %.4f, min %.4f; "
                      "agreement margin min %+.4f.\n",
                      seeds.size(), sum_bpb_margin / double(seeds.size()), min_bpb_margin, min_agree_margin);
        table += line;
    }
    if (steps_to_baseline.is_object()) {
        const json& sb = steps_to_baseline;
        char line[320];
        if (sb["student_kd_step"].is_null())
            std::snprintf(line, sizeof line,
                          "Held-out curves (first %lld bytes of Persuasion): the KD student never reached the "
                          "baseline's final %.4f bpb in %lld steps.\n",
                          (long long)sb["curve_bytes"].get<int64_t>(), sb["baseline_final_curve_bpb"].get<double>(),
                          (long long)sb["baseline_steps"].get<int64_t>());
        else
            std::snprintf(line, sizeof line,
                          "Held-out curves (first %lld bytes of Persuasion, every %lld steps): the KD student "
                          "reached the baseline's final %.4f bpb at step %lld of %lld.\n",
                          (long long)sb["curve_bytes"].get<int64_t>(), (long long)sb["curve_every"].get<int64_t>(),
                          sb["baseline_final_curve_bpb"].get<double>(), (long long)sb["student_kd_step"].get<int64_t>(),
                          (long long)sb["baseline_steps"].get<int64_t>());
        table += line;
    }
    if (!api_report.is_null()) {
        // a capture's requests and the faults the server injected into them, by kind
        auto faults_of = [](const json& c) {
            if (!c.is_object()) return std::string("captured by an earlier run");
            std::string faults;
            int64_t total = 0;
            // as the server counted them (a dataset captured by an older distill has the client's count)
            const json& by_kind = c.contains("faults_injected") ? c["faults_injected"] : c["errors"];
            for (const auto& [kind, n] : by_kind.items()) {
                faults += str_cat(faults.empty() ? "" : ", ", kind, " ", n.dump());
                total += n.get<int64_t>();
            }
            return str_cat(c["requests"].dump(), " requests, ", total, " answered with a fault (",
                           faults.empty() ? "none" : faults, "), each retried");
        };
        const json& cache = api_report["cache"];
        char line[1024];
        std::snprintf(line, sizeof line,
                      "Through the API: %lld completions of up to %lld tokens (%s), and the teacher's top-%lld on "
                      "%lld training windows (%s). Of the white-box student's bpb gain over the baseline, the top-20 "
                      "API student kept %.0f%%, the sequence-level one %.0f%%.\n",
                      (long long)api_report["samples"].get<int64_t>(), (long long)api_report["max_tokens"].get<int64_t>(),
                      faults_of(api_report["capture"]).c_str(), (long long)cache["top_logprobs"].get<int64_t>(),
                      (long long)cache["windows"].get<int64_t>(), faults_of(cache["capture"]).c_str(),
                      100 * api_report["share_of_whitebox_gain"]["student_api_top20"].get<double>(),
                      100 * api_report["share_of_whitebox_gain"]["student_api_sequences"].get<double>());
        table += line;
    }
    if (!guard_report.is_null()) {
        const json& g = guard_report["open_mode"];
        auto p_of = [](const json& r) {
            char b[64];
            if (r["p"].is_null()) return std::string("n/a");
            const double p = r["p"].get<double>();
            if (p > 0) std::snprintf(b, sizeof b, "%.3g", p);
            else std::snprintf(b, sizeof b, "1e%.0f", r["log10_p"].get<double>());
            return std::string(b);
        };
        char line[768];
        std::snprintf(line, sizeof line,
                      "Radioactivity (open mode, %lld tuples): a student trained through the API on text %.0f%% "
                      "watermarked: p = %s (a wrong key: %s); the clean API student: p = %s; the baseline: p = %s.\n",
                      (long long)g["marked_student"]["scored"].get<int64_t>(), 100 * o.guard_fraction,
                      p_of(g["marked_student"]).c_str(), p_of(g["marked_student_wrong_key"]).c_str(),
                      p_of(g["clean_api_student"]).c_str(), p_of(g["baseline"]).c_str());
        table += line;
    }
    std::string md = "# distill demo report\n\nHeld-out novel: *Persuasion*; trained on the other five.\n\n" +
                     table + "\nTeacher sample:\n\n> " + sample + "\n\nTotal wall time: " +
                     format_duration(now_seconds() - t_start) + " (";
    for (size_t i = 0; i < stage_seconds.size(); ++i)
        md += str_cat(i ? ", " : "", stage_seconds[i]["stage"].get<std::string>(), " ",
                      format_duration(stage_seconds[i]["seconds"].get<double>()));
    md += "; a stage reused from an earlier run takes about 0)\n";
    write_file_atomic(path_join(run, "report.md"), md);
    write_report({run}, path_join(run, "report"));  // report.html with the curves: docs/report.md
    std::printf("\n%s\nsample: %s\n\nreport: %s (and report.md)\n", table.c_str(), sample.c_str(),
                path_join(run, "report.json").c_str());
    return 0;
}

}  // namespace distill
