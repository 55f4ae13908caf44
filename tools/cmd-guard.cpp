// distill guard — the model owner's tools (docs/guard.md). `guard detect`: is this text
// watermarked with our key? Text on stdin (or one JSON text a line with --jsonl), one JSON result
// out per text.
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "guard/detect.h"
#include "tokenizer/load.h"

namespace distill::cli {

namespace {
struct DetectFlags {
    WatermarkFlags watermark;
    std::string tokenizer;
    bool jsonl = false;
};

// The text of one --jsonl line: a JSON string, or an object with a string "text".
std::string text_of(const std::string& line, int64_t n) {
    using nlohmann::json;
    json v;
    try {
        v = json::parse(line);
    } catch (const json::exception& e) {
        throw Error(str_cat("stdin line ", n, ": not valid JSON: ", e.what()));
    }
    if (v.is_object() && v.contains("text")) v = v["text"];
    DISTILL_CHECK(v.is_string(), "stdin line ", n,
                  R"(: expected a JSON string or an object {"text": "..."})");
    return v.get<std::string>();
}

int run_detect(const DetectFlags& o) {
    const std::optional<WatermarkOptions> key = o.watermark.resolve();
    DISTILL_CHECK(key, "guard detect needs the watermark's key: --key-file F");
    const WatermarkOptions wm = *key;
    const Tokenizer tok = load_tokenizer(o.tokenizer);
    // the text's own tokens, no BOS: whatever produced the text, it is what the reader has
    auto detect = [&](const std::string& text) {
        std::vector<int64_t> ids;
        for (int32_t t : tok.encode(text)) ids.push_back(t);
        std::cout << detect_result_json(wm, watermark_detect(wm, ids)).dump() << "\n" << std::flush;
    };
    if (!o.jsonl) {
        detect(std::string((std::istreambuf_iterator<char>(std::cin)),
                           std::istreambuf_iterator<char>()));
        return 0;
    }
    std::string line;
    int64_t n = 0;
    while (std::getline(std::cin, line)) {
        ++n;
        if (line.find_first_not_of(" \t\r") == std::string::npos)
            continue;  // blank lines are not texts
        detect(text_of(line, n));
    }
    return 0;
}
}  // namespace

Command add_guard(CLI::App& app) {
    CLI::App* g = app.add_subcommand(
        "guard", "the model owner's tools: detect the watermark (docs/guard.md)");
    g->require_subcommand(1);
    auto d = std::make_shared<DetectFlags>();
    CLI::App* c = g->add_subcommand(
        "detect", "is the text on stdin watermarked with this key? JSON out: z, p");
    add_watermark_flags(c, d->watermark, /*sampling=*/false);
    add_tokenizer(c, d->tokenizer)->required();
    c->add_flag("--jsonl", d->jsonl,
                R"(one text a line: a JSON string or {"text": "..."}; one result a line)");
    return {g,
            [d, c] {
                DISTILL_ASSERT(c->parsed(), "guard: no subcommand");
                return run_detect(*d);
            },
            false};
}

}  // namespace distill::cli
