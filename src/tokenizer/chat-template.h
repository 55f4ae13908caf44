// distill — chat templates: a conversation (OpenAI-style messages) -> the prompt text a model
// was trained on. Real models ship a Jinja `chat_template` in tokenizer_config.json; distill does
// not interpret Jinja. It recognizes known templates by a hash of their exact text and renders
// each with a native renderer that was checked byte for byte against Jinja2 (the engine
// transformers uses) and @huggingface/jinja. An unknown template is an Error that names its hash.
// See docs/chat-templates.md.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace distill {

struct ChatOptions {
    // Append the header of the assistant's next turn (for generation).
    bool add_generation_prompt = false;
    // Qwen3: false makes the model skip thinking (an empty <think></think> block is appended to
    // the generation prompt). Unset = not passed to the template (thinking on).
    std::optional<bool> enable_thinking;
    // Tool schemas (a JSON array), for templates that describe tools; null = none.
    nlohmann::ordered_json tools;
};

class ChatTemplate {
public:
    // The template in a tokenizer_config.json: a path to it, or its JSON text (starting with '{').
    // `chat_template` may be a string or a list of {name, template} (the one named "default" is
    // used); without one, a chat_template.jinja beside the file is read. bos/eos tokens come from
    // the config. An unknown template throws Error, unless `chatml_fallback` asks for distill's
    // generic ChatML in that case.
    static ChatTemplate from_tokenizer_config(const std::string& path_or_json,
                                              bool chatml_fallback = false);
    // The template text in a tokenizer_config.json (as from_tokenizer_config finds it), known to
    // distill or not; "" when there is none. Export carries it into GGUF's tokenizer.chat_template.
    static std::string text_in_tokenizer_config(const std::string& path_or_json);
    // A template text with its special tokens.
    static ChatTemplate from_text(const std::string& text, const std::string& bos_token,
                                  const std::string& eos_token, bool chatml_fallback = false);
    // distill's own ChatML, for tokenizers distill trains (kDistillChatML).
    static ChatTemplate distill_chatml();

    // Renders `messages` (an array of {role, content, ...}). Keys keep their order, as in Python,
    // which matters where a template prints JSON (tools, tool-call arguments). Throws Error where
    // the template would fail in Jinja (missing or null content it concatenates, ...).
    std::string render(const nlohmann::ordered_json& messages, const ChatOptions& opt = {}) const;

    const std::string& name() const { return name_; }   // e.g. "qwen3"
    const std::string& hash() const { return hash_; }   // hash_hex of the template text
    const std::string& text() const { return text_; }
    const std::string& bos_token() const { return bos_; }
    const std::string& eos_token() const { return eos_; }

    // The known templates: {name, hash, where it comes from}.
    struct Known {
        const char* name;
        const char* hash;
        const char* source;
    };
    static const std::vector<Known>& known();

    // distill's ChatML template text: each message as <|im_start|>ROLE\nCONTENT<|im_end|>\n,
    // no default system prompt; the generation prompt is <|im_start|>assistant\n.
    static const char* const kDistillChatML;

    enum class Kind { Qwen3, Qwen25, Qwen2, DistillChatML, Llama3, Llama3Instruct, DeepSeekV3 };

private:
    Kind kind_ = Kind::DistillChatML;
    std::string name_, hash_, text_, bos_, eos_;
};

}  // namespace distill
