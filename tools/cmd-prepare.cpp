// distill prepare — text to a token shard (and optionally a held-out tail as text).
#include "cli.h"
#include "io/shards.h"
#include "tokenizer/load.h"
#include "pipeline/pipeline.h"
#include "util/file.h"
#include "util/progress.h"

namespace distill::cli {

namespace {
struct Options {
    std::string tokenizer, text, out, heldout_out;
    double heldout_fraction = 0;
};
}  // namespace

Command add_prepare(CLI::App& app) {
    auto o = std::make_shared<Options>();
    CLI::App* c = app.add_subcommand("prepare", "tokenize a text file into a token shard");
    add_tokenizer(c, o->tokenizer)->required();
    add_text(c, o->text)->required();
    c->add_option("-o,--out", o->out, "shard prefix: writes PREFIX.bin and PREFIX.json (folders are created)")
        ->required();
    c->add_option("--heldout-fraction", o->heldout_fraction,
                  "hold out this fraction of the text's end (cut at a line break)")
        ->check(in_range(0, 0.9));
    c->add_option("--heldout-out", o->heldout_out, "where the held-out text is written");
    return {c,
            [o] {
                DISTILL_USAGE((o->heldout_fraction > 0) == !o->heldout_out.empty(),
                              "--heldout-fraction and --heldout-out go together");
                Tokenizer tok = load_tokenizer(o->tokenizer);
                auto [text, heldout] = split_heldout(read_file(o->text), o->heldout_fraction);
                if (o->heldout_fraction > 0) {
                    write_file_atomic(o->heldout_out, heldout);
                    log_info(str_cat("held out the last ", heldout.size(), " bytes in ", o->heldout_out));
                }
                auto ids = tok.encode(text);
                ShardInfo info = write_shard(o->out, ids, tok.vocab_size(), tok.fingerprint(), o->text,
                                             static_cast<int64_t>(text.size()));
                log_info(str_cat("wrote ", o->out, ".bin: ", info.num_tokens, " tokens, ",
                                 double(text.size()) / std::max<int64_t>(1, info.num_tokens), " bytes/token"));
                return 0;
            },
            false};
}

}  // namespace distill::cli
