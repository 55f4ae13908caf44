#include "distill/api-capture.h"

#include <fcntl.h>
#include <httplib.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string_view>
#include <thread>
#include <tuple>

#include "util/error.h"
#include "util/url.h"
#include "util/file.h"
#include "util/utf8.h"

namespace distill {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

json ApiCaptureResult::to_json() const {
    return {{"total", total},       {"done_before", done_before},   {"written", written},
            {"failed", failed},     {"remaining", remaining},       {"requests", requests},
            {"teacher_tokens", teacher_tokens}, {"logprobs", logprobs}, {"errors", errors},
            {"seconds", seconds}};
}

namespace {

constexpr const char* kFormat = "distill-api-dataset";
constexpr int kVersion = 1;

struct PromptLine {
    bool chat = false;
    std::string text;
    ojson messages;
};

std::vector<PromptLine> read_prompts(const std::string& path) {
    std::vector<PromptLine> out;
    std::istringstream in(read_file(path));
    std::string line;
    int64_t n = 0;
    while (std::getline(in, line)) {
        ++n;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        ojson j;
        try {
            j = ojson::parse(line);
        } catch (const json::exception& e) {
            throw Error(str_cat(path, ":", n, ": not JSON (", e.what(),
                                "); each line is a string, {\"prompt\": ...} or {\"messages\": [...]}"));
        }
        PromptLine p;
        if (j.is_string()) {
            p.text = j.get<std::string>();
        } else if (j.is_object() && j.contains("prompt") && j["prompt"].is_string()) {
            p.text = j["prompt"].get<std::string>();
        } else if (j.is_object() && j.contains("messages") && j["messages"].is_array() && !j["messages"].empty()) {
            p.chat = true;
            p.messages = j["messages"];
        } else {
            throw Error(str_cat(path, ":", n, ": expected a string, {\"prompt\": \"...\"} or {\"messages\": [...]}"));
        }
        if (!p.chat && p.text.empty()) throw Error(str_cat(path, ":", n, ": the prompt is empty"));
        out.push_back(std::move(p));
    }
    DISTILL_CHECK(!out.empty(), path, " holds no prompts");
    return out;
}

std::string hex64(uint64_t h) {
    char b[17];
    std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
    return b;
}

// The dataset's samples.jsonl: what is in it, and an appender that fsyncs each line.
class SampleLog {
public:
    explicit SampleLog(const std::string& path) : path_(path) {
        if (file_exists(path)) {
            const std::string text = read_file(path);
            size_t good = 0, pos = 0;
            int64_t line_no = 0;
            while (pos < text.size()) {
                size_t nl = text.find('\n', pos);
                if (nl == std::string::npos) break;  // a torn last line (killed mid-write)
                ++line_no;
                json j = json::parse(text.begin() + pos, text.begin() + nl, nullptr, false);
                if (j.is_discarded() || !j.is_object() || !j.contains("prompt_index") || !j.contains("sample")) {
                    // only the last line may be torn; anything before it means the file was edited
                    if (nl + 1 < text.size())
                        throw Error(str_cat(path, ":", line_no, ": not a sample record; the dataset is damaged ",
                                            "(restore it, or capture into a new --out)"));
                    break;
                }
                done_.insert({j["prompt_index"].get<int64_t>(), j["sample"].get<int64_t>()});
                if (j.contains("usage") && j["usage"].is_object())
                    tokens_ += j["usage"].value("total_tokens", int64_t(0));
                if (j.contains("logprobs") && !j["logprobs"].is_null()) logprobs_seen_ = true;
                if (!backend_ && j.contains("system_fingerprint") && j["system_fingerprint"].is_string())
                    backend_ = j["system_fingerprint"].get<std::string>();
                good = nl + 1;
                pos = nl + 1;
            }
            if (good < text.size()) {
                std::fprintf(stderr, "capture: dropping a torn last line of %s (%zu bytes)\n", path.c_str(),
                             text.size() - good);
                DISTILL_CHECK(::truncate(path.c_str(), static_cast<off_t>(good)) == 0, "cannot truncate ", path);
            }
        }
        fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        DISTILL_CHECK(fd_ >= 0, "cannot open ", path, " for appending");
    }
    ~SampleLog() {
        if (fd_ >= 0) ::close(fd_);
    }
    bool done(int64_t p, int64_t s) const { return done_.count({p, s}) > 0; }
    int64_t size() const { return static_cast<int64_t>(done_.size()); }
    int64_t tokens() const { return tokens_; }
    bool logprobs_seen() const { return logprobs_seen_; }
    // The system_fingerprint of the first sample that has one (none: older datasets, or an
    // endpoint that gives none).
    const std::optional<std::string>& backend() const { return backend_; }
    // One whole line per write(2), then fdatasync: a kill leaves at most one torn line.
    void append(int64_t p, int64_t s, const json& record, int64_t tokens) {
        std::string line = record.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
        std::lock_guard<std::mutex> lk(mu_);
        if (done_.count({p, s})) return;  // exactly once
        size_t off = 0;
        while (off < line.size()) {
            ssize_t w = ::write(fd_, line.data() + off, line.size() - off);
            if (w < 0 && errno == EINTR) continue;
            DISTILL_CHECK(w > 0, "cannot write ", path_, " (disk full?)");
            off += static_cast<size_t>(w);
        }
        DISTILL_CHECK(::fdatasync(fd_) == 0, "cannot sync ", path_);
        done_.insert({p, s});
        tokens_ += tokens;
        if (record.contains("logprobs") && !record["logprobs"].is_null()) logprobs_seen_ = true;
    }

private:
    std::string path_;
    int fd_ = -1;
    std::mutex mu_;
    std::set<std::pair<int64_t, int64_t>> done_;
    int64_t tokens_ = 0;
    bool logprobs_seen_ = false;
    std::optional<std::string> backend_;
};

struct Attempt {
    bool ok = false, retry = false;
    std::string kind;  // error kind when !ok
    std::string message;
    double retry_after = 0;
    json record;
    int64_t tokens = 0;
};

// The sample's record from a parsed response; false if the body is not what the API returns.
// With `echo` (text prompts scored by the endpoint) the legacy entries that the prompt's
// characters cover (by text_offset) go to rec["prompt_logprobs"], the first of them with a null
// log-prob when nothing precedes it, and the echoed prompt is cut from rec["text"].
bool parse_response(const json& r, bool chat, const std::string* echo, json& rec, int64_t& tokens) {
    if (!r.is_object() || !r.contains("choices") || !r["choices"].is_array() || r["choices"].empty()) return false;
    const json& c = r["choices"][0];
    if (!c.is_object()) return false;
    json text;
    if (chat) {
        if (!c.contains("message") || !c["message"].is_object()) return false;
        text = c["message"].value("content", json(nullptr));
        if (!text.is_string()) text = "";
    } else {
        if (!c.contains("text") || !c["text"].is_string()) return false;
        text = c["text"];
        if (echo) {
            const std::string t = text.get<std::string>();
            if (t.compare(0, echo->size(), *echo) != 0) return false;  // the echo is not our prompt
            text = t.substr(echo->size());
        }
    }
    rec["text"] = text;
    rec["finish_reason"] = c.value("finish_reason", json(nullptr));
    rec["model"] = r.value("model", json(nullptr));
    // which backend answered (OpenAI's system_fingerprint; `distill serve` hashes its weights and settings)
    rec["system_fingerprint"] = r.contains("system_fingerprint") && r["system_fingerprint"].is_string()
                                    ? r["system_fingerprint"]
                                    : json(nullptr);
    rec["usage"] = r.contains("usage") && r["usage"].is_object() ? r["usage"] : json(nullptr);
    tokens = rec["usage"].is_object() ? rec["usage"].value("total_tokens", int64_t(0)) : 0;
    // log-probs, one entry per token: {token, bytes, logprob, top: [[token, logprob, bytes], ...]}
    json lps = nullptr;
    const json lp = c.value("logprobs", json(nullptr));
    auto bytes_of = [](const json& e, const std::string& tok) {
        if (e.contains("bytes") && e["bytes"].is_array()) return e["bytes"];
        json b = json::array();
        for (unsigned char ch : tok) b.push_back(int(ch));
        return b;
    };
    if (chat && lp.is_object() && lp.contains("content") && lp["content"].is_array()) {
        lps = json::array();
        for (const json& e : lp["content"]) {
            if (!e.is_object() || !e.contains("token") || !e["token"].is_string() || !e.contains("logprob") ||
                !e["logprob"].is_number())
                return false;
            const std::string tok = e["token"].get<std::string>();
            json top = json::array();
            if (e.contains("top_logprobs") && e["top_logprobs"].is_array())
                for (const json& t : e["top_logprobs"]) {
                    if (!t.is_object() || !t.contains("token") || !t["token"].is_string() || !t.contains("logprob") ||
                        !t["logprob"].is_number())
                        return false;
                    top.push_back({t["token"], t["logprob"], bytes_of(t, t["token"].get<std::string>())});
                }
            lps.push_back({{"token", tok}, {"bytes", bytes_of(e, tok)}, {"logprob", e["logprob"]}, {"top", top}});
        }
    } else if (!chat && lp.is_object() && lp.contains("tokens") && lp["tokens"].is_array()) {
        const json& toks = lp["tokens"];
        const json& tl = lp.value("token_logprobs", json::array());
        const json& tt = lp.value("top_logprobs", json::array());
        if (!tl.is_array() || tl.size() != toks.size()) return false;
        size_t n_prompt = 0;  // the echoed prompt's entries come first
        if (echo) {
            const json& offs = lp.value("text_offset", json());
            if (!offs.is_array() || offs.size() != toks.size()) return false;
            const int64_t chars = utf8_char_count(*echo);
            while (n_prompt < offs.size() && offs[n_prompt].is_number_integer() &&
                   offs[n_prompt].get<int64_t>() < chars)
                ++n_prompt;
            if (n_prompt == 0) return false;  // asked to echo, and it did not
        }
        json plps = json::array();
        lps = json::array();
        for (size_t i = 0; i < toks.size(); ++i) {
            const bool in_prompt = i < n_prompt;
            if (!toks[i].is_string() || !(tl[i].is_number() || (in_prompt && tl[i].is_null()))) return false;
            json top = json::array();
            if (tt.is_array() && i < tt.size() && tt[i].is_object()) {
                std::vector<std::pair<double, std::string>> v;
                for (auto& [k, x] : tt[i].items())
                    if (x.is_number()) v.push_back({x.get<double>(), k});
                std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
                for (auto& [x, k] : v) top.push_back({k, x, bytes_of(json::object(), k)});
            }
            const std::string tok = toks[i].get<std::string>();
            (in_prompt ? plps : lps)
                .push_back({{"token", tok}, {"bytes", bytes_of(json::object(), tok)}, {"logprob", tl[i]}, {"top", top}});
        }
        if (echo) rec["prompt_logprobs"] = plps;
    }
    rec["logprobs"] = lps;
    return true;
}

}  // namespace

ApiCaptureResult capture_from_api(const ApiCaptureOptions& o) {
    const auto t0 = Clock::now();
    DISTILL_CHECK(o.concurrency >= 1 && o.samples >= 1, "--concurrency and --samples must be at least 1");
    const std::vector<PromptLine> prompts = read_prompts(o.prompts);
    DISTILL_CHECK(o.max_tokens >= 0, "--max-tokens must be at least 0");
    DISTILL_CHECK(o.max_tokens > 0 || o.score_prompts, "--max-tokens 0 asks for nothing; it needs --score-prompts");
    if (o.score_prompts) {
        DISTILL_CHECK(o.top_logprobs > 0, "--score-prompts needs --top-logprobs of at least 1");
        for (size_t i = 0; i < prompts.size(); ++i)
            DISTILL_CHECK(!prompts[i].chat, o.prompts, ":", i + 1, ": --score-prompts needs text prompts (a chat ",
                          "endpoint has no echo); give {\"prompt\": ...} lines");
    }
    const auto [base, prefix] = split_api_url(o.url, "--teacher-url");
    auto make_client = [&, base = base] {
        auto c = std::make_unique<httplib::Client>(base);
        const time_t s = static_cast<time_t>(o.timeout_s);
        const time_t us = static_cast<time_t>((o.timeout_s - double(s)) * 1e6);
        c->set_connection_timeout(s, us);
        c->set_read_timeout(s, us);
        c->set_write_timeout(s, us);
        c->set_keep_alive(true);
        if (!o.api_key.empty()) c->set_bearer_token_auth(o.api_key);
        return c;
    };

    // the teacher's model id, unless given
    std::string model = o.model;
    if (model.empty()) {
        auto c = make_client();
        auto r = c->Get(prefix + "/models");
        DISTILL_CHECK(r, "cannot reach ", o.url, "/models: ", httplib::to_string(r.error()),
                      " (is the server up? pass --teacher-model to skip this lookup)");
        DISTILL_CHECK(r->status == 200, o.url, "/models answered ", r->status, ": ", r->body.substr(0, 300));
        json j = json::parse(r->body, nullptr, false);
        DISTILL_CHECK(j.is_object() && j.contains("data") && j["data"].is_array() && !j["data"].empty() &&
                          j["data"][0].contains("id") && j["data"][0]["id"].is_string(),
                      o.url, "/models lists no model; pass --teacher-model");
        model = j["data"][0]["id"].get<std::string>();
    }

    // the dataset: meta.json fixes what it is; a resumed run must ask for the same thing
    make_dirs(o.out);
    const std::string prompts_text = read_file(o.prompts);
    json settings = {{"max_tokens", o.max_tokens},     {"temperature", o.temperature}, {"top_p", o.top_p},
                     {"seed", o.seed},                 {"samples", o.samples},         {"top_logprobs", o.top_logprobs}};
    if (o.score_prompts) settings["score_prompts"] = true;  // absent otherwise: older datasets resume
    json identity = {{"format", kFormat},
                     {"version", kVersion},
                     {"teacher", {{"url", o.url}, {"model", model}}},
                     {"settings", settings},
                     {"prompts", {{"count", prompts.size()},
                                  {"xxh3", hex64(XXH3_64bits(prompts_text.data(), prompts_text.size()))},
                                  {"chat", std::count_if(prompts.begin(), prompts.end(),
                                                         [](const PromptLine& p) { return p.chat; })}}}};
    const std::string meta_path = o.out + "/meta.json";
    if (file_exists(meta_path)) {
        json old = json::parse(read_file(meta_path), nullptr, false);
        DISTILL_CHECK(old.is_object() && old.value("format", "") == kFormat, meta_path,
                      " is not a distill API dataset; choose another --out");
        // the teacher is its model name: the same model may be reached at another address (a
        // server restarted on another port, another replica); meta.json keeps the last URL
        for (const char* k : {"version", "teacher", "settings", "prompts"}) {
            const json was = std::string(k) == "teacher" ? old[k].value("model", json()) : old[k];
            const json now = std::string(k) == "teacher" ? identity[k]["model"] : identity[k];
            DISTILL_CHECK(was == now, o.out, " was captured with a different ", k, " (", was.dump(), " there, ",
                          now.dump(), " now); capture into another --out");
        }
    } else {
        write_file_atomic(meta_path, identity.dump(2) + "\n");
    }
    SampleLog log(o.out + "/samples.jsonl");

    ApiCaptureResult res;
    res.total = static_cast<int64_t>(prompts.size()) * o.samples;
    res.done_before = log.size();
    std::vector<std::pair<int64_t, int64_t>> todo;
    for (int64_t p = 0; p < static_cast<int64_t>(prompts.size()); ++p)
        for (int64_t s = 0; s < o.samples; ++s)
            if (!log.done(p, s)) todo.push_back({p, s});

    std::mutex mu;
    size_t next = 0;
    std::atomic<bool> ask_logprobs{o.top_logprobs > 0};
    std::atomic<int64_t> requests{0}, written{0};
    std::map<std::string, int64_t> errors;
    json failed = json::array();
    bool budget_hit = false;
    std::string fatal;  // an error no retry can fix: the workers stop
    // The backend every sample must come from (its system_fingerprint, "" for none): the one the
    // dataset's samples name, or else the first answer of this run. Other weights or settings
    // under the same model name must not mix into one dataset.
    std::optional<std::string> backend = log.backend();
    // samples given up on since the last one written: as many as there are workers means the
    // endpoint is down (or refuses everything), not that a few requests were unlucky
    int64_t given_up_in_a_row = 0;
    const int64_t give_up_limit = std::max<int64_t>(o.concurrency, 4);
    auto count_error = [&](const std::string& kind) {
        std::lock_guard<std::mutex> lk(mu);
        ++errors[kind];
    };

    auto attempt = [&](httplib::Client& cli, int64_t p, int64_t s) {
        const PromptLine& pl = prompts[p];
        const uint64_t seed = o.seed + static_cast<uint64_t>(p * o.samples + s);
        ojson body = {{"model", model}, {"max_tokens", o.max_tokens}, {"temperature", o.temperature},
                      {"top_p", o.top_p}, {"seed", seed}};
        const bool lp = ask_logprobs;
        if (pl.chat) {
            body["messages"] = pl.messages;
            if (lp) {
                body["logprobs"] = true;
                body["top_logprobs"] = o.top_logprobs;
            }
        } else {
            body["prompt"] = pl.text;
            if (lp) body["logprobs"] = o.top_logprobs;
            if (o.score_prompts) body["echo"] = true;
        }
        Attempt a;
        ++requests;
        const auto start = Clock::now();
        auto r = cli.Post(prefix + (pl.chat ? "/chat/completions" : "/completions"), body.dump(), "application/json");
        if (!r) {
            const double took = std::chrono::duration<double>(Clock::now() - start).count();
            a.retry = true;
            a.kind = took >= 0.95 * o.timeout_s ? "timeout" : "transport_" + httplib::to_string(r.error());
            a.message = httplib::to_string(r.error());
            return a;
        }
        if (r->status != 200) {
            a.kind = r->status == 429 ? "status_429" : r->status >= 500 ? "status_5xx" : "status_" + std::to_string(r->status);
            a.message = r->body.substr(0, 300);
            a.retry = r->status == 429 || r->status >= 500 || r->status == 408;
            if (r->has_header("Retry-After")) {
                try {
                    a.retry_after = std::stod(r->get_header_value("Retry-After"));
                } catch (const std::exception&) {
                }
            }
            // an endpoint that does not give log-probs: ask without them from now on
            if (r->status == 400 && lp && !o.score_prompts && a.message.find("logprobs") != std::string::npos) {
                ask_logprobs = false;
                a.retry = true;
                a.kind = "no_logprobs";
            }
            // an endpoint that cannot echo (llama.cpp's server refuses echo): no sample can work
            if (r->status == 400 && o.score_prompts && a.message.find("echo") != std::string::npos) a.kind = "no_echo";
            return a;
        }
        json j = json::parse(r->body, nullptr, false);
        json rec = {{"prompt_index", p}, {"sample", s}, {"seed", seed}, {"kind", pl.chat ? "chat" : "completion"}};
        if (pl.chat) rec["messages"] = pl.messages;
        else rec["prompt"] = pl.text;
        if (j.is_discarded() || !parse_response(j, pl.chat, o.score_prompts ? &pl.text : nullptr, rec, a.tokens)) {
            a.retry = true;
            a.kind = "malformed";
            a.message = r->body.substr(0, 120);
            return a;
        }
        a.ok = true;
        a.record = std::move(rec);
        return a;
    };

    auto worker = [&](uint64_t wseed) {
        auto cli = make_client();
        std::mt19937_64 rng(wseed);
        for (;;) {
            int64_t p, s;
            {
                std::lock_guard<std::mutex> lk(mu);
                if (next >= todo.size() || !fatal.empty()) return;
                if (o.max_teacher_tokens > 0 && log.tokens() >= o.max_teacher_tokens) {
                    budget_hit = true;
                    return;
                }
                std::tie(p, s) = todo[next++];
            }
            Attempt a;
            for (int k = 0; k <= o.retries; ++k) {
                a = attempt(*cli, p, s);
                if (a.ok || !a.retry) break;
                count_error(a.kind);
                if (a.kind == "no_logprobs") {
                    --k;  // not the endpoint's fault
                    continue;
                }
                if (a.kind.rfind("transport", 0) == 0 || a.kind == "timeout") cli = make_client();  // fresh connection
                // exponential back-off, equal jitter; Retry-After wins when longer
                const double cap = std::min(o.backoff_max_s, o.backoff_s * std::pow(2.0, k));
                double wait = cap * std::uniform_real_distribution<double>(0.5, 1.0)(rng);
                wait = std::max(wait, a.retry_after);
                std::this_thread::sleep_for(std::chrono::duration<double>(wait));
            }
            if (a.ok) {
                const json& f = a.record["system_fingerprint"];
                const std::string fp = f.is_string() ? f.get<std::string>() : "";
                {
                    std::lock_guard<std::mutex> lk(mu);
                    if (!backend) backend = fp;
                    if (fp != *backend) {
                        if (fatal.empty())
                            fatal = str_cat(o.url, " answered with system_fingerprint ", fp.empty() ? "null" : fp,
                                            " where the dataset's samples came from ",
                                            backend->empty() ? "null" : *backend, ": the weights or settings behind '",
                                            model, "' changed, and one dataset must not mix two teachers. The ",
                                            res.done_before + written, " samples written are kept; serve the same ",
                                            "weights again to go on, or capture into another --out");
                        continue;
                    }
                }
                log.append(p, s, a.record, a.tokens);
                ++written;
                std::lock_guard<std::mutex> lk(mu);
                given_up_in_a_row = 0;
            } else if (a.kind == "no_echo") {
                std::lock_guard<std::mutex> lk(mu);
                fatal = str_cat(o.url, " does not echo prompts with their log-probs (", a.message,
                                "); capture without --score-prompts");
            } else {
                if (!a.retry) count_error(a.kind);
                std::lock_guard<std::mutex> lk(mu);
                failed.push_back({{"prompt_index", p}, {"sample", s}, {"error", a.kind}, {"message", a.message}});
                if (++given_up_in_a_row >= give_up_limit && fatal.empty())
                    fatal = str_cat(given_up_in_a_row, " samples in a row failed after ", o.retries + 1,
                                    " attempts each (the last: ", a.kind, ", ", a.message, "): is ", o.url,
                                    " up and serving '", model, "'? The ", res.done_before + written,
                                    " samples written so far are kept; run the same command again to go on");
            }
        }
    };

    std::atomic<bool> finished{false};
    std::thread progress([&] {
        if (!o.progress) return;
        while (!finished) {
            for (int i = 0; i < 10 && !finished; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
            const double t = std::chrono::duration<double>(Clock::now() - t0).count();
            const int64_t w = written, req = requests;
            std::string errs;
            {
                std::lock_guard<std::mutex> lk(mu);
                for (auto& [k, v] : errors) errs += " " + k + "=" + std::to_string(v);
            }
            const double rate = w / std::max(t, 1e-9);
            const double eta = rate > 0 ? double(todo.size() - w) / rate : 0;
            std::fprintf(stderr, "\rcapture: %lld/%zu samples, %.1f req/s, %.0f tok/s, eta %.0fs, errors:%s   ",
                         static_cast<long long>(w), todo.size(), req / std::max(t, 1e-9),
                         double(log.tokens()) / std::max(t, 1e-9), eta, errs.empty() ? " none" : errs.c_str());
        }
        std::fprintf(stderr, "\n");
    });
    std::vector<std::thread> workers;
    std::random_device rd;
    for (int64_t i = 0; i < o.concurrency; ++i) workers.emplace_back(worker, (uint64_t(rd()) << 32) ^ uint64_t(i));
    for (auto& t : workers) t.join();
    finished = true;
    progress.join();

    res.written = written;
    res.failed = static_cast<int64_t>(failed.size());
    res.remaining = res.total - log.size() - res.failed;
    res.requests = requests;
    res.errors = errors;
    res.teacher_tokens = log.tokens();
    res.logprobs = log.logprobs_seen();
    res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    std::string failed_text;
    for (const auto& f : failed) failed_text += f.dump() + "\n";
    write_file_atomic(o.out + "/failed.jsonl", failed_text);
    json meta = identity;
    meta["totals"] = {{"samples", log.size()}, {"failed_last_run", res.failed}, {"teacher_tokens", res.teacher_tokens},
                      {"logprobs", res.logprobs}, {"budget_reached", budget_hit}};
    write_file_atomic(meta_path, meta.dump(2) + "\n");
    DISTILL_CHECK(fatal.empty(), fatal);
    return res;
}

void for_each_api_sample(const std::string& dir, const std::function<void(ApiSample&&)>& fn, ApiFields fields) {
    const std::string path = dir + "/samples.jsonl";
    DISTILL_CHECK(file_exists(path), dir, " has no samples.jsonl: not a dataset from `distill capture --teacher-url`");
    std::ifstream in(path, std::ios::binary);
    DISTILL_CHECK(in.good(), "cannot read ", path);
    // the fields left out are still parsed (each line must be whole JSON) but never built
    json::parser_callback_t keep = nullptr;
    if (fields != ApiFields::kAll)
        keep = [fields](int depth, json::parse_event_t event, json& parsed) {
            if (depth != 1 || event != json::parse_event_t::key) return true;
            const std::string& k = parsed.get_ref<const std::string&>();
            if (fields == ApiFields::kNone) return k == "prompt_index" || k == "sample";
            return k != "logprobs" && k != "prompt_logprobs";
        };
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty()) continue;
        json j = json::parse(line, keep, false);
        if (j.is_discarded()) break;  // a torn last line; the next capture run drops it
        ApiSample s;
        s.prompt_index = j.value("prompt_index", int64_t(-1));
        s.sample = j.value("sample", int64_t(-1));
        s.record = std::move(j);
        s.line_hash = XXH3_64bits(line.data(), line.size());
        fn(std::move(s));
    }
    DISTILL_CHECK(!in.bad(), "reading ", path, " failed");
}

std::vector<ApiSample> read_api_dataset(const std::string& dir) {
    std::vector<ApiSample> out;
    for_each_api_sample(dir, [&](ApiSample&& s) { out.push_back(std::move(s)); });
    std::sort(out.begin(), out.end(), [](const ApiSample& a, const ApiSample& b) {
        return std::tie(a.prompt_index, a.sample) < std::tie(b.prompt_index, b.sample);
    });
    return out;
}

}  // namespace distill
