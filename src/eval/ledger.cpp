#include "eval/ledger.h"

#include <filesystem>

#include "util/file.h"

namespace distill {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string run_dir_of(const std::string& path) {
    std::error_code ec;
    fs::path p = fs::weakly_canonical(fs::path(path), ec);
    if (ec || p.filename() != "model") return "";
    fs::path run = p.parent_path();
    return fs::exists(run / "done.json", ec) ? run.string() : "";
}

nlohmann::json cost_ledger(const std::string& path, const ModelConfig& cfg, int64_t seq_len) {
    json out = {{"parameters", cfg.num_params()}, {"forward_flops_per_token", cfg.flops_per_token(seq_len)}};
    std::error_code ec;
    uintmax_t bytes = 0;
    if (fs::is_regular_file(path, ec)) {
        bytes = fs::file_size(path, ec);
    } else if (fs::is_directory(path, ec)) {
        for (const auto& e : fs::directory_iterator(path, ec))
            if (e.path().extension() == ".safetensors" || e.path().extension() == ".gguf") bytes += e.file_size(ec);
    }
    out["weight_bytes"] = bytes;
    for (const char* k : {"train_steps", "train_tokens", "train_flops", "train_seconds", "teacher_tokens", "run_kind"})
        out[k] = nullptr;
    const std::string run = run_dir_of(path);
    out["run_dir"] = run.empty() ? json(nullptr) : json(run);
    if (run.empty()) return out;
    const json done = read_json_file(path_join(run, "done.json"));
    const json cfgj = file_exists(path_join(run, "run.json")) ? read_json_file(path_join(run, "run.json")) : json::object();
    const int64_t tokens = done.value("tokens", int64_t{0});
    out["train_steps"] = done.value("steps", int64_t{0});
    out["train_tokens"] = tokens;
    out["train_seconds"] = done.value("seconds", 0.0);
    int64_t T = seq_len;
    if (cfgj.contains("train") && cfgj["train"].is_object()) T = cfgj["train"].value("seq_len", seq_len);
    out["train_flops"] = 3.0 * cfg.flops_per_token(T) * double(tokens);
    const std::string kind = cfgj.value("kind", cfgj.value("stage", std::string()));
    out["run_kind"] = kind.empty() ? json(nullptr) : json(kind);
    // a distilled run reads one teacher distribution per trained position (live or cached); a
    // run from an API dataset (stage train-sequences) trains on the teacher's own tokens
    const bool teacher = (cfgj.contains("teacher") && !cfgj["teacher"].is_null()) || kind == "train-sequences";
    out["teacher_tokens"] = teacher ? tokens : int64_t{0};
    return out;
}

}  // namespace distill
