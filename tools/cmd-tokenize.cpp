// distill tokenize — stdin text to JSON ids, or back with --decode; --jsonl for one item a line.
#include <iostream>

#include "cli.h"
#include "tokenizer/load.h"

namespace distill::cli {

namespace {
struct Options {
    std::string tokenizer;
    bool decode = false, jsonl = false;
};

std::vector<int32_t> ids_of(const nlohmann::json& arr, const std::string& where) {
    DISTILL_CHECK(arr.is_array(), where, ": expected a JSON array of token ids");
    std::vector<int32_t> ids;
    for (const auto& v : arr) {
        DISTILL_CHECK(v.is_number_integer(), where, ": token ids must be integers");
        ids.push_back(v.get<int32_t>());
    }
    return ids;
}

int run(const Options& o) {
    Tokenizer tok = load_tokenizer(o.tokenizer);
    using nlohmann::json;
    if (!o.jsonl) {
        std::string in((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
        if (o.decode) {
            json arr;
            try {
                arr = json::parse(in);
            } catch (const json::exception& e) {
                throw Error(str_cat("stdin: not a JSON array of ids: ", e.what()));
            }
            std::cout << tok.decode(ids_of(arr, "stdin"));
        } else {
            std::cout << json(tok.encode(in)).dump() << "\n";
        }
        return 0;
    }
    std::string line;
    int64_t n = 0;
    while (std::getline(std::cin, line)) {
        ++n;
        json v;
        try {
            v = json::parse(line);
        } catch (const json::exception& e) {
            throw Error(str_cat("stdin line ", n, ": not valid JSON: ", e.what()));
        }
        if (o.decode) {
            std::cout << json(tok.decode(ids_of(v, str_cat("stdin line ", n))))
                             .dump(-1, ' ', false, json::error_handler_t::replace)
                      << "\n";
        } else {
            DISTILL_CHECK(v.is_string(), "stdin line ", n, ": expected a JSON string");
            std::cout << json(tok.encode(v.get<std::string>())).dump() << "\n";
        }
    }
    return 0;
}
}  // namespace

Command add_tokenize(CLI::App& app) {
    auto o = std::make_shared<Options>();
    CLI::App* c = app.add_subcommand("tokenize", "text on stdin -> JSON ids (or back with --decode)");
    add_tokenizer(c, o->tokenizer)->required();
    c->add_flag("--decode", o->decode, "read a JSON array of ids, print the text");
    c->add_flag("--jsonl", o->jsonl, "one JSON string (or id array) per input line");
    return {c, [o] { return run(*o); }, false};
}

}  // namespace distill::cli
