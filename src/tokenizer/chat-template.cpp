// distill — chat templates: known Jinja templates, recognized by hash, rendered natively.
// Each renderer follows its template statement by statement, with the semantics of Jinja2 as
// transformers configures it (trim_blocks, lstrip_blocks; tojson = json.dumps with
// ensure_ascii=False; str.strip / lstrip / rstrip as in Python).
#include "tokenizer/chat-template.h"

#include <cstdint>
#include <string_view>

#include "util/error.h"
#include "util/utf8.h"
#include "util/file.h"

namespace distill {

using ojson = nlohmann::ordered_json;

const char* const ChatTemplate::kDistillChatML =
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

namespace {

using Kind = ChatTemplate::Kind;

struct Entry {
    ChatTemplate::Known known;
    Kind kind;
};

// The hash is hash_hex of the template text exactly as stored (after JSON unescaping).
const std::vector<Entry>& entries() {
    static const std::vector<Entry> e = {
        {{"qwen3", "0283f874ff58d644", "Qwen3 (tokenizer_config.json of Qwen/Qwen3-*)"}, Kind::Qwen3},
        {{"qwen2.5", "931873a7d7835a0b", "Qwen2.5 Instruct (Qwen/Qwen2.5-*-Instruct)"}, Kind::Qwen25},
        {{"qwen2", "c79034a9d5f0ae58", "Qwen1.5 / Qwen2 chat: plain ChatML with a default system prompt"},
         Kind::Qwen2},
        {{"distill-chatml", "46798ae576f285e2", "distill's own ChatML (ChatTemplate::kDistillChatML)"},
         Kind::DistillChatML},
        {{"llama3", "b97891b7adc1beb8", "Llama 3 (first release: the assistant header is always appended)"},
         Kind::Llama3},
        {{"llama3-instruct", "9799ad6e2dea0594", "Meta-Llama-3-*-Instruct (header only with add_generation_prompt)"},
         Kind::Llama3Instruct},
        {{"deepseek-v3", "6878d9ac13b3ef51", "DeepSeek-V3 (deepseek-ai/DeepSeek-V3)"}, Kind::DeepSeekV3},
    };
    return e;
}

// --- Python string semantics on UTF-8 -------------------------------------------------------

// Python's str.isspace() (what str.strip() and Jinja's trim remove).
bool py_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

// str.strip() / lstrip() / rstrip() without arguments.
std::string py_strip(std::string_view s, bool left = true, bool right = true) {
    size_t a = 0, b = s.size(), len = 0;
    while (left && a < b && py_space(utf8_decode_at(s, a, &len))) a += len;
    while (right && b > a) {
        size_t start = b - 1;  // back up to the first byte of the last code point
        while (start > a && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 && b - start < 4) --start;
        uint32_t c = utf8_decode_at(s, start, &len);
        if (start + len != b || !py_space(c)) break;
        b = start;
    }
    return std::string(s.substr(a, b - a));
}

// str.strip('\n') / lstrip('\n') / rstrip('\n').
std::string strip_nl(std::string_view s, bool left = true, bool right = true) {
    size_t a = 0, b = s.size();
    while (left && a < b && s[a] == '\n') ++a;
    while (right && b > a && s[b - 1] == '\n') --b;
    return std::string(s.substr(a, b - a));
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool ends_with(std::string_view s, std::string_view p) {
    return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

// --- Jinja values -----------------------------------------------------------------------------

const ojson* get(const ojson& obj, const char* key) {
    if (!obj.is_object()) return nullptr;
    auto it = obj.find(key);
    return it == obj.end() ? nullptr : &*it;
}

// Python truthiness; a missing value (Jinja's undefined) is false.
bool truthy(const ojson* v) {
    if (!v || v->is_null()) return false;
    if (v->is_boolean()) return v->get<bool>();
    if (v->is_number_integer()) return v->get<int64_t>() != 0;
    if (v->is_number_unsigned()) return v->get<uint64_t>() != 0;
    if (v->is_number_float()) return v->get<double>() != 0.0;
    if (v->is_string()) return !v->get_ref<const std::string&>().empty();
    return !v->empty();
}

const char* type_name(const ojson* v) { return v ? v->type_name() : "missing"; }

// A string field the template concatenates or prints; anything else makes Jinja fail (or print
// Python's repr), so it is refused.
const std::string& need_str(const ojson& obj, const char* key, const std::string& where) {
    const ojson* v = get(obj, key);
    DISTILL_CHECK(v && v->is_string(), "chat template: ", where, ": \"", key, "\" must be a string (it is ",
                  type_name(v), ")");
    return v->get_ref<const std::string&>();
}

std::string where_msg(size_t i) { return str_cat("message ", i); }

// Jinja's tojson as transformers defines it: json.dumps(x, ensure_ascii=False), separators
// ", " and ": ", keys in their order.
void tojson(const ojson& v, std::string& out) {
    if (v.is_object()) {
        out += '{';
        bool first = true;
        for (auto it = v.begin(); it != v.end(); ++it) {
            if (!first) out += ", ";
            first = false;
            out += ojson(it.key()).dump(-1, ' ', false, ojson::error_handler_t::replace);
            out += ": ";
            tojson(it.value(), out);
        }
        out += '}';
    } else if (v.is_array()) {
        out += '[';
        for (size_t i = 0; i < v.size(); ++i) {
            if (i) out += ", ";
            tojson(v[i], out);
        }
        out += ']';
    } else {
        out += v.dump(-1, ' ', false, ojson::error_handler_t::replace);
    }
}

std::string tojson(const ojson& v) {
    std::string s;
    tojson(v, s);
    return s;
}

// The conversation, checked: an array of objects, each with a string role.
struct Conv {
    const ojson& m;
    std::vector<std::string> roles;
    explicit Conv(const ojson& messages) : m(messages) {
        DISTILL_CHECK(m.is_array(), "chat template: messages must be a JSON array of {role, content} (it is ",
                      m.type_name(), ")");
        DISTILL_CHECK(!m.empty(), "chat template: messages is empty");
        for (size_t i = 0; i < m.size(); ++i) {
            DISTILL_CHECK(m[i].is_object(), "chat template: message ", i, " must be an object (it is ",
                          m[i].type_name(), ")");
            roles.push_back(need_str(m[i], "role", where_msg(i)));
        }
    }
    size_t size() const { return m.size(); }
    const std::string& content(size_t i) const { return need_str(m[i], "content", where_msg(i)); }
};

const ojson& tool_calls_array(const ojson* tc, size_t i) {
    DISTILL_CHECK(tc->is_array(), "chat template: message ", i, ": \"tool_calls\" must be an array (it is ",
                  tc->type_name(), ")");
    for (size_t k = 0; k < tc->size(); ++k)
        DISTILL_CHECK((*tc)[k].is_object(), "chat template: message ", i, ": tool call ", k,
                      " must be an object");
    return *tc;
}

const ojson& tool_list(const ChatOptions& opt) {
    DISTILL_CHECK(opt.tools.is_array(), "chat template: tools must be a JSON array of tool schemas (it is ",
                  opt.tools.type_name(), ")");
    return opt.tools;
}

const char* const kQwenToolsIntro =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";

// --- Renderers --------------------------------------------------------------------------------

std::string render_qwen3(const Conv& c, const ChatOptions& opt) {
    std::string out;
    const size_t n = c.size();
    const bool first_system = c.roles[0] == "system";
    if (truthy(&opt.tools)) {
        out += "<|im_start|>system\n";
        if (first_system) out += c.content(0) + "\n\n";
        out += kQwenToolsIntro;
        for (const auto& t : tool_list(opt)) out += "\n" + tojson(t);
        out += "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
               "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
               "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";
    } else if (first_system) {
        out += "<|im_start|>system\n" + c.content(0) + "<|im_end|>\n";
    }
    // The last user turn that is a real query (not a wrapped tool response).
    size_t last_query = n - 1;
    for (size_t k = n; k-- > 0;) {
        if (c.roles[k] != "user") continue;
        const std::string& s = c.content(k);
        if (!(starts_with(s, "<tool_response>") && ends_with(s, "</tool_response>"))) {
            last_query = k;
            break;
        }
    }
    for (size_t i = 0; i < n; ++i) {
        const std::string& role = c.roles[i];
        const ojson& m = c.m[i];
        if (role == "user" || (role == "system" && i > 0)) {
            out += "<|im_start|>" + role + "\n" + c.content(i) + "<|im_end|>\n";
        } else if (role == "assistant") {
            std::string content = c.content(i);
            std::string reasoning;
            const ojson* rc = get(m, "reasoning_content");
            if (rc && !rc->is_null()) {
                reasoning = need_str(m, "reasoning_content", where_msg(i));
            } else {
                const std::string& full = c.content(i);
                size_t first_end = full.find("</think>");
                if (first_end != std::string::npos) {
                    size_t last_end = full.rfind("</think>");
                    content = strip_nl(std::string_view(full).substr(last_end + 8), true, false);
                    std::string before = strip_nl(std::string_view(full).substr(0, first_end), false, true);
                    size_t open = before.rfind("<think>");
                    if (open != std::string::npos) before = before.substr(open + 7);
                    reasoning = strip_nl(before, true, false);
                }
            }
            if (i > last_query && (i == n - 1 || !reasoning.empty())) {
                out += "<|im_start|>assistant\n<think>\n" + strip_nl(reasoning) + "\n</think>\n\n" +
                       strip_nl(content, true, false);
            } else {
                out += "<|im_start|>assistant\n" + content;
            }
            const ojson* tc = get(m, "tool_calls");
            if (truthy(tc)) {
                const ojson& calls = tool_calls_array(tc, i);
                for (size_t k = 0; k < calls.size(); ++k) {
                    if (k > 0 || !content.empty()) out += "\n";
                    const ojson* fn = get(calls[k], "function");
                    const ojson& call = truthy(fn) ? *fn : calls[k];
                    std::string where = str_cat(where_msg(i), ", tool call ", k);
                    out += "<tool_call>\n{\"name\": \"" + need_str(call, "name", where) + "\", \"arguments\": ";
                    const ojson* args = get(call, "arguments");
                    DISTILL_CHECK(args, "chat template: ", where, ": \"arguments\" is missing");
                    out += args->is_string() ? args->get<std::string>() : tojson(*args);
                    out += "}\n</tool_call>";
                }
            }
            out += "<|im_end|>\n";
        } else if (role == "tool") {
            if (i == 0 || c.roles[i - 1] != "tool") out += "<|im_start|>user";
            out += "\n<tool_response>\n" + c.content(i) + "\n</tool_response>";
            if (i == n - 1 || c.roles[i + 1] != "tool") out += "<|im_end|>\n";
        }
    }
    if (opt.add_generation_prompt) {
        out += "<|im_start|>assistant\n";
        if (opt.enable_thinking.has_value() && !*opt.enable_thinking) out += "<think>\n\n</think>\n\n";
    }
    return out;
}

const char* const kQwenDefaultSystem = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

std::string render_qwen25(const Conv& c, const ChatOptions& opt) {
    std::string out;
    const size_t n = c.size();
    const bool first_system = c.roles[0] == "system";
    if (truthy(&opt.tools)) {
        out += "<|im_start|>system\n";
        out += first_system ? c.content(0) : std::string(kQwenDefaultSystem);
        out += "\n\n";
        out += kQwenToolsIntro;
        for (const auto& t : tool_list(opt)) out += "\n" + tojson(t);
        out += "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
               "within <tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, "
               "\"arguments\": <args-json-object>}}\n</tool_call><|im_end|>\n";
    } else {
        out += "<|im_start|>system\n";
        out += first_system ? c.content(0) : std::string(kQwenDefaultSystem);
        out += "<|im_end|>\n";
    }
    for (size_t i = 0; i < n; ++i) {
        const std::string& role = c.roles[i];
        const ojson& m = c.m[i];
        const ojson* tc = get(m, "tool_calls");
        if (role == "user" || (role == "system" && i > 0) || (role == "assistant" && !truthy(tc))) {
            out += "<|im_start|>" + role + "\n" + c.content(i) + "<|im_end|>\n";
        } else if (role == "assistant") {
            out += "<|im_start|>assistant";
            if (truthy(get(m, "content"))) out += "\n" + c.content(i);
            const ojson& calls = tool_calls_array(tc, i);
            for (size_t k = 0; k < calls.size(); ++k) {
                const ojson* fn = get(calls[k], "function");
                std::string where = str_cat(where_msg(i), ", tool call ", k);
                DISTILL_CHECK(!fn || fn->is_object(), "chat template: ", where, ": \"function\" must be an object");
                const ojson& call = fn ? *fn : calls[k];
                out += "\n<tool_call>\n{\"name\": \"" + need_str(call, "name", where) + "\", \"arguments\": ";
                const ojson* args = get(call, "arguments");
                DISTILL_CHECK(args, "chat template: ", where, ": \"arguments\" is missing");
                out += tojson(*args) + "}\n</tool_call>";
            }
            out += "<|im_end|>\n";
        } else if (role == "tool") {
            if (i == 0 || c.roles[i - 1] != "tool") out += "<|im_start|>user";
            out += "\n<tool_response>\n" + c.content(i) + "\n</tool_response>";
            if (i == n - 1 || c.roles[i + 1] != "tool") out += "<|im_end|>\n";
        }
    }
    if (opt.add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
}

// Plain ChatML; Qwen2's adds a default system prompt when the first message is not one.
std::string render_chatml(const Conv& c, const ChatOptions& opt, bool default_system) {
    std::string out;
    if (default_system && c.roles[0] != "system")
        out += "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n";
    for (size_t i = 0; i < c.size(); ++i)
        out += "<|im_start|>" + c.roles[i] + "\n" + c.content(i) + "<|im_end|>\n";
    if (opt.add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
}

std::string render_llama3(const Conv& c, const ChatOptions& opt, const std::string& bos, bool always_prompt) {
    std::string out = bos;
    for (size_t i = 0; i < c.size(); ++i)
        out += "<|start_header_id|>" + c.roles[i] + "<|end_header_id|>\n\n" + py_strip(c.content(i)) + "<|eot_id|>";
    if (always_prompt || opt.add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
    return out;
}

std::string render_deepseek_v3(const Conv& c, const ChatOptions& opt, const std::string& bos) {
    const size_t n = c.size();
    std::string system;
    bool first_sp = true;
    for (size_t i = 0; i < n; ++i) {
        if (c.roles[i] != "system") continue;
        system += (first_sp ? "" : "\n\n") + c.content(i);
        first_sp = false;
    }
    std::string out = bos + system;
    // The template's namespace flags; is_first is never reset, so after the first tool-call
    // message every call is written in the "later call" form (as the template does).
    bool is_first = false, is_tool = false, is_output_first = true;
    for (size_t i = 0; i < n; ++i) {
        const std::string& role = c.roles[i];
        const ojson& m = c.m[i];
        if (role == "user") {
            is_tool = false;
            out += "<｜User｜>" + c.content(i);
        }
        if (role == "assistant") {
            const ojson* content = get(m, "content");
            DISTILL_CHECK(content, "chat template: ", where_msg(i), ": \"content\" is missing (use null with tool_calls)");
            if (content->is_null()) {
                is_tool = false;
                // Jinja iterates a missing tool_calls as an empty list.
                const ojson* tc = get(m, "tool_calls");
                const ojson none = ojson::array();
                const ojson& calls = tc ? tool_calls_array(tc, i) : none;
                for (size_t k = 0; k < calls.size(); ++k) {
                    std::string where = str_cat(where_msg(i), ", tool call ", k);
                    const ojson* fn = get(calls[k], "function");
                    DISTILL_CHECK(fn && fn->is_object(), "chat template: ", where, ": \"function\" must be an object");
                    std::string body = need_str(calls[k], "type", where) + "<｜tool▁sep｜>" +
                                       need_str(*fn, "name", where) + "\n```json\n" +
                                       need_str(*fn, "arguments", where) + "\n```<｜tool▁call▁end｜>";
                    if (!is_first) {
                        out += "<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>" + body;
                        is_first = true;
                    } else {
                        out += "\n<｜tool▁call▁begin｜>" + body + "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>";
                    }
                }
            } else {
                const std::string& s = need_str(m, "content", where_msg(i));
                if (is_tool) {
                    out += "<｜tool▁outputs▁end｜>" + s + "<｜end▁of▁sentence｜>";
                    is_tool = false;
                } else {
                    out += "<｜Assistant｜>" + s + "<｜end▁of▁sentence｜>";
                }
            }
        }
        if (role == "tool") {
            is_tool = true;
            if (is_output_first) {
                out += "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>" + c.content(i) + "<｜tool▁output▁end｜>";
                is_output_first = false;
            } else {
                out += "\n<｜tool▁output▁begin｜>" + c.content(i) + "<｜tool▁output▁end｜>";
            }
        }
    }
    if (is_tool) out += "<｜tool▁outputs▁end｜>";
    if (opt.add_generation_prompt && !is_tool) out += "<｜Assistant｜>";
    return out;
}

// A special token in tokenizer_config.json: a string, an AddedToken object, or null.
std::string special_token(const nlohmann::json& cfg, const char* key, const std::string& source) {
    auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null()) return "";
    if (it->is_string()) return it->get<std::string>();
    auto c = it->is_object() ? it->find("content") : it->end();
    DISTILL_CHECK(it->is_object() && c != it->end() && c->is_string(), source, ": \"", key,
                  "\" must be a string or an object with a string \"content\"");
    return c->get<std::string>();
}

std::string supported_list() {
    std::string s;
    for (const auto& e : entries()) s += str_cat(s.empty() ? "" : ", ", e.known.name, " (", e.known.hash, ")");
    return s;
}

}  // namespace

const std::vector<ChatTemplate::Known>& ChatTemplate::known() {
    static const std::vector<Known> k = [] {
        std::vector<Known> v;
        for (const auto& e : entries()) v.push_back(e.known);
        return v;
    }();
    return k;
}

ChatTemplate ChatTemplate::from_text(const std::string& text, const std::string& bos_token,
                                     const std::string& eos_token, bool chatml_fallback) {
    ChatTemplate t;
    t.text_ = text;
    t.hash_ = hash_hex(text);
    t.bos_ = bos_token;
    t.eos_ = eos_token;
    for (const auto& e : entries()) {
        if (t.hash_ == e.known.hash) {
            t.kind_ = e.kind;
            t.name_ = e.known.name;
            return t;
        }
    }
    DISTILL_CHECK(chatml_fallback, "chat template with hash ", t.hash_, " (", text.size(),
                  " bytes) is not one distill knows; it renders these exact templates: ", supported_list(),
                  ". If the model was trained on plain ChatML (<|im_start|>role\\n...<|im_end|>), ask for the "
                  "generic ChatML fallback (--chatml-fallback); see docs/chat-templates.md");
    t.kind_ = Kind::DistillChatML;
    t.name_ = "chatml-fallback";
    return t;
}

ChatTemplate ChatTemplate::distill_chatml() { return from_text(kDistillChatML, "", "<|im_end|>"); }

namespace {

struct ConfigTemplate {
    std::string source, text, bos, eos;
    bool found = false;  // a template in the config, or chat_template.jinja beside it
};

ConfigTemplate read_config_template(const std::string& path_or_json) {
    ConfigTemplate r;
    size_t lead = path_or_json.find_first_not_of(" \t\r\n");
    const bool inline_json = lead != std::string::npos && path_or_json[lead] == '{';
    r.source = inline_json ? std::string("tokenizer_config JSON") : path_or_json;
    nlohmann::json cfg;
    if (inline_json) {
        try {
            cfg = nlohmann::json::parse(path_or_json);
        } catch (const nlohmann::json::exception& e) {
            throw Error(str_cat(r.source, ": not valid JSON: ", e.what()));
        }
    } else {
        cfg = read_json_file(path_or_json);
    }
    DISTILL_CHECK(cfg.is_object(), r.source, ": must be a JSON object");
    r.bos = special_token(cfg, "bos_token", r.source);
    r.eos = special_token(cfg, "eos_token", r.source);

    auto it = cfg.find("chat_template");
    if (it != cfg.end() && it->is_string()) {
        r.text = it->get<std::string>();
        r.found = true;
    } else if (it != cfg.end() && it->is_array()) {
        for (const auto& e : *it) {
            DISTILL_CHECK(e.is_object() && e.contains("name") && e["name"].is_string() && e.contains("template") &&
                              e["template"].is_string(),
                          r.source, ": a list \"chat_template\" must hold {\"name\": ..., \"template\": ...} objects");
            if (e["name"] == "default") {
                r.text = e["template"].get<std::string>();
                r.found = true;
            }
        }
        DISTILL_CHECK(r.found, r.source, ": \"chat_template\" is a list without a template named \"default\"");
    } else {
        DISTILL_CHECK(it == cfg.end() || it->is_null(), r.source, ": \"chat_template\" must be a string or a list");
        // Newer models keep the template in chat_template.jinja beside tokenizer_config.json.
        size_t slash = path_or_json.find_last_of('/');
        std::string jinja = path_join(slash == std::string::npos ? "." : path_or_json.substr(0, slash),
                                      "chat_template.jinja");
        if (!inline_json && file_exists(jinja)) {
            r.text = read_file(jinja);
            r.found = true;
        }
    }
    return r;
}

}  // namespace

std::string ChatTemplate::text_in_tokenizer_config(const std::string& path_or_json) {
    return read_config_template(path_or_json).text;
}

ChatTemplate ChatTemplate::from_tokenizer_config(const std::string& path_or_json, bool chatml_fallback) {
    const ConfigTemplate c = read_config_template(path_or_json);
    if (!c.found) {
        DISTILL_CHECK(chatml_fallback, c.source,
                      " has no chat template (no \"chat_template\", no chat_template.jinja beside it); "
                      "ask for the generic ChatML fallback (--chatml-fallback) if the model was trained on it");
        return from_text("", c.bos, c.eos, true);
    }
    try {
        return from_text(c.text, c.bos, c.eos, chatml_fallback);
    } catch (const Error& e) {
        throw Error(str_cat(c.source, ": ", e.what()));
    }
}

std::string ChatTemplate::render(const ojson& messages, const ChatOptions& opt) const {
    Conv c(messages);
    switch (kind_) {
    case Kind::Qwen3: return render_qwen3(c, opt);
    case Kind::Qwen25: return render_qwen25(c, opt);
    case Kind::Qwen2: return render_chatml(c, opt, true);
    case Kind::DistillChatML: return render_chatml(c, opt, false);
    case Kind::Llama3: return render_llama3(c, opt, bos_, true);
    case Kind::Llama3Instruct: return render_llama3(c, opt, bos_, false);
    case Kind::DeepSeekV3: return render_deepseek_v3(c, opt, bos_);
    }
    DISTILL_ASSERT(false, "unknown chat template kind");
}

}  // namespace distill
