#include "model/checkpoint.h"

#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "io/safetensors.h"
#include "model/gguf-model.h"
#include "model/packed.h"
#include "util/error.h"
#include "util/file.h"

namespace distill {

namespace fs = std::filesystem;

std::map<std::string, torch::Tensor> model_state(Llama& model) {
    std::map<std::string, torch::Tensor> out;
    for (auto& p : model->named_parameters()) out[p.key()] = p.value().detach();
    return out;
}

void save_model_dir(const std::string& dir, Llama& model, const Tokenizer* tokenizer,
                    const std::map<std::string, std::string>& extra_files, torch::Dtype dtype) {
    DISTILL_CHECK(!model->packed(), "a model loaded for inference (packed weights) cannot be saved; load it with "
                                    "float weights");
    DISTILL_CHECK(dtype == torch::kFloat32 || dtype == torch::kBFloat16 || dtype == torch::kFloat16,
                  "model directories are written as float32, bfloat16 or float16, not ", dtype);
    fs::path target = fs::absolute(dir);
    if (target.has_parent_path()) make_dirs(target.parent_path().string());
    const std::string tmp = target.string() + ".tmp-" + std::to_string(::getpid());
    std::error_code ec;
    fs::remove_all(tmp, ec);
    make_dirs(tmp);
    nlohmann::json config = config_to_json(model->config());
    auto state = model_state(model);
    if (dtype != torch::kFloat32) {
        config["torch_dtype"] = dtype == torch::kBFloat16 ? "bfloat16" : "float16";
        for (auto& [name, t] : state) t = t.to(dtype);
    }
    write_file_atomic(path_join(tmp, "config.json"), config.dump(2) + "\n");
    save_safetensors(path_join(tmp, "model.safetensors"), state, {{"format", "pt"}});
    if (tokenizer) tokenizer->save(path_join(tmp, "tokenizer.json"));
    for (const auto& [name, text] : extra_files) write_file_atomic(path_join(tmp, name), text);
    replace_dir(tmp, target.string());
}

namespace {

// name -> file, for a single model.safetensors or a sharded index.
std::map<std::string, std::string> weight_files(const std::string& dir) {
    const std::string single = path_join(dir, "model.safetensors");
    const std::string index = path_join(dir, "model.safetensors.index.json");
    std::map<std::string, std::string> out;
    if (file_exists(index)) {
        const nlohmann::json j = read_json_file(index);
        DISTILL_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
                      index, ": missing 'weight_map'");
        for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
            DISTILL_CHECK(it.value().is_string(), index, ": weight_map values must be file names");
            std::string f = it.value().get<std::string>();
            DISTILL_CHECK(f.find('/') == std::string::npos && f.find("..") == std::string::npos,
                          index, ": shard name '", f, "' must be a plain file name");
            out[it.key()] = path_join(dir, f);
        }
        return out;
    }
    DISTILL_CHECK(file_exists(single), "'", dir,
                  "' has no model.safetensors (nor model.safetensors.index.json): is it a model "
                  "directory?");
    SafetensorsFile f(single);
    for (const auto& [name, e] : f.entries()) out[name] = single;
    return out;
}

}  // namespace

namespace {

// A safetensors matrix as it lies in the file (F32, F16, BF16); any other dtype as a float32 copy.
std::shared_ptr<const PackedMatrix> packed_matrix(const std::shared_ptr<SafetensorsFile>& f,
                                                  const std::string& name, const std::vector<int64_t>& shape) {
    const SafetensorsEntry& e = f->entries().at(name);
    DISTILL_CHECK(e.shape == shape, f->path(), ": tensor '", name, "' has shape ", torch::IntArrayRef(e.shape),
                  " but config.json implies ", torch::IntArrayRef(shape));
    const GgmlType type = e.dtype == "F32" ? GgmlType::F32 : e.dtype == "F16" ? GgmlType::F16 : GgmlType::BF16;
    if (e.dtype == "F32" || e.dtype == "F16" || e.dtype == "BF16")
        return std::make_shared<PackedMatrix>(type, f->raw(name), shape[0], shape[1], f);
    auto copy = std::make_shared<torch::Tensor>(f->get(name, torch::kFloat32));
    return std::make_shared<PackedMatrix>(GgmlType::F32, static_cast<const uint8_t*>(copy->data_ptr()), shape[0],
                                          shape[1], copy);
}

}  // namespace

LoadedModel load_model_dir(const std::string& dir, bool packed) {
    if (is_gguf_path(dir)) return load_gguf_model(dir, packed);
    DISTILL_CHECK(dir_exists(dir), "model '", dir,
                  "' does not exist (expected a model directory or a .gguf file)");
    LoadedModel m;
    m.path = dir;
    const std::string cfg_path = path_join(dir, "config.json");
    DISTILL_CHECK(file_exists(cfg_path), "'", dir, "' has no config.json: is it a model directory?");
    m.config = load_config(cfg_path);
    m.model = Llama(m.config, packed);
    auto files = weight_files(dir);
    std::map<std::string, std::shared_ptr<SafetensorsFile>> open;
    std::set<std::string> used;
    std::string missing;
    torch::NoGradGuard ng;
    uint64_t fp = hash64(cfg_path.data(), 0);
    const std::string cfg_text = config_to_json(m.config).dump();
    fp = hash64(cfg_text.data(), cfg_text.size(), fp);
    for (auto& p : m.model->named_parameters()) {
        auto it = files.find(p.key());
        if (it == files.end()) {
            missing += (missing.empty() ? "" : ", ") + p.key();
            continue;
        }
        auto& f = open[it->second];
        if (!f) f = std::make_shared<SafetensorsFile>(it->second);
        DISTILL_CHECK(f->has(p.key()), it->second, ": has no tensor '", p.key(),
                      "' although the index names it");
        if (packed && p.value().numel() == 0) {
            auto mat = packed_matrix(f, p.key(), m.model->packed_shape(p.key()));
            m.model->attach(p.key(), mat);
            fp = mat->hash_as_float(fp);
            used.insert(p.key());
            continue;
        }
        torch::Tensor t = f->get(p.key(), torch::kFloat32);
        DISTILL_CHECK(t.sizes() == p.value().sizes(), it->second, ": tensor '", p.key(),
                      "' has shape ", t.sizes(), " but config.json implies ", p.value().sizes());
        p.value().copy_(t);
        fp = hash64(t.data_ptr(), t.numel() * sizeof(float), fp);
        used.insert(p.key());
    }
    DISTILL_CHECK(missing.empty(), dir, ": missing tensors: ", missing);
    std::string unexpected;
    for (const auto& [name, file] : files) {
        if (used.count(name) || name.find("rotary_emb.inv_freq") != std::string::npos) continue;
        if (m.config.tie_word_embeddings && name == "lm_head.weight") continue;
        unexpected += (unexpected.empty() ? "" : ", ") + name;
    }
    DISTILL_CHECK(unexpected.empty(), dir,
                  ": tensors that this architecture does not have (wrong config.json?): ",
                  unexpected.substr(0, 400));
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(fp));
    m.fingerprint = buf;
    const std::string tok = path_join(dir, "tokenizer.json");
    if (file_exists(tok)) {
        m.tokenizer = Tokenizer::load(tok);
        m.has_tokenizer = true;
        DISTILL_CHECK(m.tokenizer.vocab_size() <= m.config.vocab_size, dir, ": tokenizer.json has ",
                      m.tokenizer.vocab_size(), " tokens but the model's vocab_size is ",
                      m.config.vocab_size);
    }
    m.model->eval();
    return m;
}

}  // namespace distill
