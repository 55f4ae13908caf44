// distill chat-template — a conversation rendered with a model's chat template (exact bytes).
#include <cstdio>

#include "cli.h"
#include "tokenizer/chat-template.h"
#include "util/file.h"

namespace distill::cli {

namespace {
struct Options {
    std::string config, messages, thinking, tools;
    bool add_generation_prompt = false, chatml_fallback = false;
};

nlohmann::ordered_json parse(const std::string& path) {
    try {
        return nlohmann::ordered_json::parse(read_file(path));
    } catch (const nlohmann::json::exception& e) {
        throw Error(str_cat(path, ": not valid JSON: ", e.what()));
    }
}

int run(const Options& o) {
    ChatTemplate t = ChatTemplate::from_tokenizer_config(o.config, o.chatml_fallback);
    // An array of messages, or a request body {"messages": [...], "tools": [...]}.
    nlohmann::ordered_json msgs = parse(o.messages);
    ChatOptions opt;
    if (msgs.is_object() && msgs.contains("messages")) {
        if (msgs.contains("tools")) opt.tools = msgs["tools"];
        msgs = nlohmann::ordered_json(msgs["messages"]);
    }
    if (!o.tools.empty()) opt.tools = parse(o.tools);
    opt.add_generation_prompt = o.add_generation_prompt;
    if (!o.thinking.empty()) opt.enable_thinking = o.thinking == "true";
    std::string text = t.render(msgs, opt);
    std::fprintf(stderr, "chat template: %s (hash %s)\n", t.name().c_str(), t.hash().c_str());
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
}
}  // namespace

Command add_chat_template(CLI::App& app) {
    auto o = std::make_shared<Options>();
    CLI::App* c = app.add_subcommand("chat-template", "render a conversation with a model's chat template");
    c->add_option("--tokenizer-config", o->config, "the model's tokenizer_config.json")->required()
        ->check(CLI::ExistingFile);
    c->add_option("--messages", o->messages, "JSON: [{role, content}, ...] or {messages, tools}")->required()
        ->check(CLI::ExistingFile);
    c->add_flag("--add-generation-prompt", o->add_generation_prompt, "end with the header of the assistant's turn");
    c->add_option("--enable-thinking", o->thinking, "Qwen3: true or false")->check(CLI::IsMember({"true", "false"}));
    c->add_option("--tools", o->tools, "JSON file: an array of tool schemas")->check(CLI::ExistingFile);
    c->add_flag("--chatml-fallback", o->chatml_fallback, "render an unknown template as generic ChatML");
    return {c, [o] { return run(*o); }, false};
}

}  // namespace distill::cli
