// distill eval — bits per byte of a model on a text file (sliding windows), as JSON.
#include <cstdio>

#include "cli.h"
#include "eval/eval.h"
#include "model/checkpoint.h"
#include "pipeline/pipeline.h"
#include "util/file.h"

namespace distill::cli {

namespace {
struct Options {
    std::string model, text, out;
    WindowOptions window;
};
}  // namespace

Command add_eval(CLI::App& app) {
    auto o = std::make_shared<Options>();
    CLI::App* c = app.add_subcommand("eval", "bits per byte of a model on a text file");
    add_model(c, o->model)->required();
    add_text(c, o->text)->required();
    add_window_flags(c, o->window);
    c->add_option("-o,--out", o->out, "also write the result to this JSON file");
    return {c, [o] {
                DISTILL_USAGE(o->window.stride <= o->window.context, "--stride ", o->window.stride,
                              " must not exceed --seq-len ", o->window.context);
                LoadedModel m = load_model(o->model);
                DISTILL_CHECK(m.has_tokenizer, o->model, " has no tokenizer");
                auto r = eval_bpb(m.model, m.tokenizer, read_file(o->text), o->window);
                nlohmann::json out = {{"model", o->model},
                                      {"text", o->text},
                                      {"bits_per_byte", r.bits_per_byte},
                                      {"nats_per_token", r.nats_per_token},
                                      {"tokens", r.tokens},
                                      {"bytes", r.bytes},
                                      {"seconds", r.seconds}};
                std::printf("%s\n", out.dump().c_str());
                if (!o->out.empty()) write_file_atomic(o->out, out.dump(2) + "\n");
                return 0;
            }};
}

}  // namespace distill::cli
