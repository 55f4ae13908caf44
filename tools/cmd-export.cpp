// distill export — a model as GGUF (llama.cpp, ollama) or as a Hugging Face model directory.
#include <cstdio>
#include <filesystem>

#include "cli.h"
#include "tokenizer/chat-template.h"
#include "model/checkpoint.h"
#include "model/gguf-model.h"
#include "util/file.h"

namespace distill::cli {

namespace {
struct Options {
    std::string model, format = "gguf", out, type = "f32", name;
};

int run(const Options& o) {
    DISTILL_USAGE(o.format == "gguf" || o.type == "f32" || o.type == "bf16" || o.type == "f16",
                  "--format hf writes f32, bf16 or f16 weights (quantized types are GGUF's: --format gguf)");
    // Never replace what distill did not write: an HF export goes to a new or empty directory.
    if (o.format == "hf" && std::filesystem::exists(o.out)) {
        DISTILL_CHECK(std::filesystem::is_directory(o.out), "--out '", o.out,
                      "' exists and is not a directory; choose another --out");
        DISTILL_CHECK(std::filesystem::is_empty(o.out), "--out '", o.out,
                      "' is a directory that is not empty; export writes a new model directory and never "
                      "replaces files it did not write: choose a new --out, or empty it yourself");
    }
    LoadedModel m = load_model_dir(o.model);
    DISTILL_CHECK(m.has_tokenizer, o.model, " has no tokenizer: export needs one");
    nlohmann::json out = {{"out", o.out}, {"format", o.format}};
    if (o.format == "gguf") {
        // the chat template travels as tokenizer.chat_template, where llama.cpp looks for it
        GgufExportOptions g{o.type, o.name, ""};
        const std::string tc = path_join(o.model, "tokenizer_config.json");
        if (std::filesystem::is_directory(o.model) && file_exists(tc))
            g.chat_template = ChatTemplate::text_in_tokenizer_config(tc);
        out["tensors"] = save_gguf_model(o.out, m.model, m.tokenizer, g);
        if (!g.chat_template.empty()) out["chat_template"] = hash_hex(g.chat_template);
    } else {
        const torch::Dtype dtype = o.type == "bf16" ? torch::kBFloat16 : o.type == "f16" ? torch::kFloat16
                                                                                        : torch::kFloat32;
        save_model_dir(o.out, m.model, &m.tokenizer, {}, dtype);
        out["type"] = o.type;
    }
    std::printf("%s\n", out.dump().c_str());
    return 0;
}
}  // namespace

Command add_export(CLI::App& app) {
    auto o = std::make_shared<Options>();
    CLI::App* c = app.add_subcommand("export", "write a model as GGUF (llama.cpp, ollama) or an HF model directory");
    add_model(c, o->model, "the model to export")->required();
    c->add_option("--format", o->format, "gguf or hf")->check(CLI::IsMember({"gguf", "hf"}))->capture_default_str();
    c->add_option("-o,--out", o->out, "the .gguf file, or the new HF directory, to write")->required();
    c->add_option("--type", o->type, "type of the weight matrices (hf: f32, bf16 or f16)")
        ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q5_k", "q6_k"}))
        ->capture_default_str();
    c->add_option("--name", o->name, "GGUF general.name");
    return {c, [o] { return run(*o); }};
}

}  // namespace distill::cli
