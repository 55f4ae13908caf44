// distill train-tokenizer — byte-level BPE, saved as a Hugging Face tokenizer.json.
#include "cli.h"
#include "tokenizer/tokenizer.h"
#include "util/file.h"
#include "util/progress.h"

namespace distill::cli {

namespace {
struct Options {
    std::vector<std::string> text;
    std::string out;
    TokenizerTrainOptions train;
};
}  // namespace

Command add_train_tokenizer(CLI::App& app) {
    auto o = std::make_shared<Options>();
    CLI::App* c = app.add_subcommand("train-tokenizer", "train a byte-level BPE tokenizer.json");
    c->add_option("--text", o->text, "UTF-8 text files to learn from")->required()->check(CLI::ExistingFile);
    c->add_option("--vocab-size", o->train.vocab_size, "tokens in all: 256 bytes + merges + special tokens")
        ->check(in_range(260, 1 << 20))->capture_default_str();
    c->add_option("--min-frequency", o->train.min_frequency, "a pair must occur this often to be merged")
        ->check(in_range(1, 1e9))->capture_default_str();
    c->add_option("-o,--out", o->out, "the tokenizer.json to write")->required();
    return {c,
            [o] {
                std::string corpus;
                for (const auto& f : o->text) corpus += read_file(f);
                Tokenizer tok = Tokenizer::train(corpus, o->train);
                tok.save(o->out);
                log_info(str_cat("wrote ", o->out, " (", tok.vocab_size(), " tokens)"));
                return 0;
            },
            false};
}

}  // namespace distill::cli
