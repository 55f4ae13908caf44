#include "serve/openai.h"

#include <cmath>
#include <limits>

#include "util/utf8.h"

namespace distill::api {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

json ApiError::body() const {
    // messages may quote the client's bytes (a JSON parse error does): always valid UTF-8 out
    json e = {{"message", utf8_lossy(what())}, {"type", type}};
    e["param"] = param.empty() ? json(nullptr) : json(param);
    e["code"] = code.empty() ? json(nullptr) : json(code);
    return {{"error", e}};
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& msg, const std::string& code = "invalid_value") {
    throw ApiError(400, msg, "invalid_request_error", param, code);
}

// Nesting deeper than any real request is refused before parsing (nothing recursive ever sees it).
constexpr int kMaxDepth = 64;

void check_depth(const std::string& s) {
    int depth = 0;
    bool in_str = false, esc = false;
    for (char c : s) {
        if (in_str) {
            if (esc) esc = false;
            else if (c == '\\') esc = true;
            else if (c == '"') in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > kMaxDepth) bad("", "the request body nests deeper than " + std::to_string(kMaxDepth) + " levels");
        } else if (c == ']' || c == '}') {
            --depth;
        }
    }
}

template <class J>
J parse_object(const std::string& body) {
    if (body.empty()) bad("", "the request body is empty; send a JSON object");
    check_depth(body);
    J j;
    try {
        j = J::parse(body);
    } catch (const json::exception& e) {
        bad("", std::string("the request body is not valid JSON: ") + e.what(), "invalid_json");
    }
    if (!j.is_object()) bad("", "the request body must be a JSON object");
    return j;
}

template <class J>
const J* field(const J& j, const char* key) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return nullptr;
    return &*it;
}

template <class J>
double number(const J& j, const char* key, double dflt, double lo, double hi) {
    const J* v = field(j, key);
    if (!v) return dflt;
    if (!v->is_number()) bad(key, std::string("'") + key + "' must be a number");
    double x = v->template get<double>();
    if (!std::isfinite(x) || x < lo || x > hi)
        bad(key, std::string("'") + key + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi));
    return x;
}

template <class J>
int64_t integer(const J& j, const char* key, int64_t dflt, int64_t lo, int64_t hi) {
    const J* v = field(j, key);
    if (!v) return dflt;
    if (v->is_number_float()) {
        double d = v->template get<double>();
        if (d != std::floor(d)) bad(key, std::string("'") + key + "' must be an integer");
    } else if (!v->is_number_integer()) {
        bad(key, std::string("'") + key + "' must be an integer");
    }
    const double d = v->template get<double>();
    if (v->is_number_unsigned() && v->template get<uint64_t>() > uint64_t(hi))
        bad(key, std::string("'") + key + "' must be at most " + std::to_string(hi));
    if (d < double(lo) || d > double(hi))
        bad(key, std::string("'") + key + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi));
    return v->is_number_float() ? static_cast<int64_t>(d) : v->template get<int64_t>();
}

template <class J>
bool boolean(const J& j, const char* key, bool dflt) {
    const J* v = field(j, key);
    if (!v) return dflt;
    if (!v->is_boolean()) bad(key, std::string("'") + key + "' must be true or false");
    return v->template get<bool>();
}

template <class J>
std::string string(const J& j, const char* key, const std::string& dflt) {
    const J* v = field(j, key);
    if (!v) return dflt;
    if (!v->is_string()) bad(key, std::string("'") + key + "' must be a string");
    return v->template get<std::string>();
}

template <class J>
Sampling sampling(const J& j, const Limits& lim, bool chat) {
    Sampling s;
    s.temperature = number(j, "temperature", 1.0, 0.0, 2.0);
    s.top_p = number(j, "top_p", 1.0, 0.0, 1.0);
    if (s.top_p == 0.0) s.top_p = 1e-9;  // keeps only the most likely token, as top_p -> 0 does
    s.top_k = integer(j, "top_k", 0, 0, int64_t(1) << 24);
    if (field(j, "seed")) {
        const J& v = j["seed"];
        if (!v.is_number_integer()) bad("seed", "'seed' must be an integer");
        s.seed = v.is_number_unsigned() ? v.template get<uint64_t>() : static_cast<uint64_t>(v.template get<int64_t>());
    }
    const int64_t dflt_max = chat ? lim.max_tokens : 16;
    s.max_tokens = integer(j, "max_tokens", dflt_max, 0, lim.max_tokens);
    if (chat) s.max_tokens = integer(j, "max_completion_tokens", s.max_tokens, 0, lim.max_tokens);
    s.n = integer(j, "n", 1, 1, lim.max_n);
    if (const J* st = field(j, "stop")) {
        if (st->is_string()) {
            s.stop.push_back(st->template get<std::string>());
        } else if (st->is_array()) {
            if (static_cast<int64_t>(st->size()) > lim.max_stop)
                bad("stop", "'stop' takes at most " + std::to_string(lim.max_stop) + " sequences");
            for (const auto& x : *st) {
                if (!x.is_string()) bad("stop", "'stop' must be a string or a list of strings");
                s.stop.push_back(x.template get<std::string>());
            }
        } else {
            bad("stop", "'stop' must be a string or a list of strings");
        }
        for (const auto& x : s.stop)
            if (x.empty()) bad("stop", "'stop' sequences must not be empty");
    }
    s.stream = boolean(j, "stream", false);
    if (const J* so = field(j, "stream_options")) {
        if (!so->is_object()) bad("stream_options", "'stream_options' must be an object");
        if (!s.stream) bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
        s.include_usage = boolean(*so, "include_usage", false);
    }
    for (const char* pen : {"presence_penalty", "frequency_penalty"})
        if (number(j, pen, 0.0, -2.0, 2.0) != 0.0) bad(pen, std::string("'") + pen + "' is not supported (only 0)");
    if (const J* lb = field(j, "logit_bias"))
        if (!lb->is_object() || !lb->empty()) bad("logit_bias", "'logit_bias' is not supported");
    return s;
}

std::vector<int64_t> token_ids(const json& arr, const char* param) {
    std::vector<int64_t> ids;
    ids.reserve(arr.size());
    for (const auto& x : arr) {
        if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > (int64_t(1) << 31))
            bad(param, std::string("'") + param + "' token ids must be non-negative integers");
        ids.push_back(x.get<int64_t>());
    }
    return ids;
}

}  // namespace

CompletionRequest parse_completion(const std::string& body, const Limits& lim) {
    json j = parse_object<json>(body);
    CompletionRequest r;
    r.model = string(j, "model", "");
    r.sampling = sampling(j, lim, false);
    r.echo = boolean(j, "echo", false);
    r.tokens_as_ids = boolean(j, "return_tokens_as_token_ids", false);
    if (field(j, "logprobs")) r.logprobs = integer(j, "logprobs", 0, 0, lim.max_top_logprobs);
    if (field(j, "suffix")) bad("suffix", "'suffix' is not supported");
    if (field(j, "best_of") && integer(j, "best_of", 1, 1, lim.max_n) != r.sampling.n)
        bad("best_of", "'best_of' must equal 'n' (no server-side ranking)");
    const json* p = field(j, "prompt");
    if (!p) bad("prompt", "'prompt' is required", "missing_required_parameter");
    auto add_text = [&](const json& s) {
        Prompt q;
        q.text = s.get<std::string>();
        r.prompts.push_back(std::move(q));
    };
    if (p->is_string()) {
        add_text(*p);
    } else if (p->is_array()) {
        if (p->empty()) bad("prompt", "'prompt' must not be an empty list");
        if ((*p)[0].is_number()) {
            Prompt q;
            q.ids = token_ids(*p, "prompt");
            q.is_ids = true;
            r.prompts.push_back(std::move(q));
        } else {
            if (static_cast<int64_t>(p->size()) > lim.max_prompts)
                bad("prompt", "at most " + std::to_string(lim.max_prompts) + " prompts per request");
            for (const auto& x : *p) {
                if (x.is_string()) {
                    add_text(x);
                } else if (x.is_array()) {
                    Prompt q;
                    q.ids = token_ids(x, "prompt");
                    q.is_ids = true;
                    r.prompts.push_back(std::move(q));
                } else {
                    bad("prompt", "'prompt' must be a string, a list of strings, or token ids");
                }
            }
        }
    } else {
        bad("prompt", "'prompt' must be a string, a list of strings, or token ids");
    }
    for (const auto& q : r.prompts)
        if (q.is_ids && q.ids.empty()) bad("prompt", "a token-id prompt must not be empty");
    return r;
}

ChatRequest parse_chat(const std::string& body, const Limits& lim) {
    ojson j = parse_object<ojson>(body);
    ChatRequest r;
    r.model = string(j, "model", "");
    r.sampling = sampling(j, lim, true);
    r.logprobs = boolean(j, "logprobs", false);
    r.tokens_as_ids = boolean(j, "return_tokens_as_token_ids", false);
    r.top_logprobs = integer(j, "top_logprobs", 0, 0, lim.max_top_logprobs);
    if (field(j, "top_logprobs") && !r.logprobs)
        bad("top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
    const ojson* m = field(j, "messages");
    if (!m) bad("messages", "'messages' is required", "missing_required_parameter");
    if (!m->is_array() || m->empty()) bad("messages", "'messages' must be a non-empty list");
    r.messages = ojson::array();
    for (size_t i = 0; i < m->size(); ++i) {
        const ojson& msg = (*m)[i];
        const std::string at = "messages[" + std::to_string(i) + "]";
        if (!msg.is_object()) bad(at, "'" + at + "' must be an object");
        ojson out = msg;
        auto role = msg.find("role");
        if (role == msg.end() || !role->is_string()) bad(at + ".role", "'" + at + ".role' must be a string");
        std::string rs = role->get<std::string>();
        if (rs == "developer") rs = "system";
        if (rs != "system" && rs != "user" && rs != "assistant" && rs != "tool")
            bad(at + ".role", "'" + at + ".role' must be system, developer, user, assistant or tool");
        out["role"] = rs;
        auto content = msg.find("content");
        if (content != msg.end() && content->is_array()) {
            // content parts: only text parts can go to a text model
            std::string text;
            for (const auto& part : *content) {
                const auto type = part.is_object() ? part.find("type") : part.end();
                if (!part.is_object() || type == part.end() || *type != "text" || !part.contains("text") ||
                    !part["text"].is_string())
                    bad(at + ".content", "only text content parts ({type: \"text\", text}) are supported");
                text += part["text"].get<std::string>();
            }
            out["content"] = text;
        } else if (content != msg.end() && !content->is_string() && !content->is_null()) {
            bad(at + ".content", "'" + at + ".content' must be a string or a list of text parts");
        } else if ((content == msg.end() || content->is_null()) && rs != "assistant") {
            bad(at + ".content", "'" + at + ".content' is required");
        }
        r.messages.push_back(std::move(out));
    }
    if (const ojson* t = field(j, "tools")) {
        if (!t->is_array()) bad("tools", "'tools' must be a list");
        r.tools = *t;
    }
    return r;
}

}  // namespace distill::api
