#include "pipeline/pipeline.h"

#include "io/shards.h"
#include "model/checkpoint.h"
#include "util/device.h"
#include "util/error.h"
#include "util/file.h"

namespace distill {

using nlohmann::json;

void to_compute_device(Llama& model) {
    const torch::Device d = compute_device();
    if (model->parameters().empty() || model->parameters().front().device() != d) model->to(d);
}

LoadedModel load_model(const std::string& path) {
    LoadedModel m = load_model_dir(path);
    to_compute_device(m.model);
    return m;
}

LoadedModel load_model_for_inference(const std::string& path) {
    if (!compute_device().is_cpu()) return load_model(path);
    return load_model_dir(path, /*packed=*/true);
}

std::pair<std::string, std::string> split_heldout(const std::string& text, double fraction) {
    DISTILL_CHECK(fraction >= 0 && fraction < 1, "held-out fraction ", fraction, " must be in [0, 1)");
    if (fraction == 0) return {text, ""};
    size_t cut = static_cast<size_t>(double(text.size()) * (1.0 - fraction));
    const size_t nl = text.find('\n', cut);
    cut = nl == std::string::npos ? text.size() : nl + 1;
    return {text.substr(0, cut), text.substr(cut)};
}

ModelConfig fill_special_ids(ModelConfig c, const Tokenizer& tok) {
    if (c.bos_token_id < 0) c.bos_token_id = tok.bos_id();
    if (c.eos_token_id < 0 && c.eos_token_ids.empty()) c.eos_token_id = tok.eos_id();
    return c;
}

ModelConfig config_for(const std::string& path, const Tokenizer& tok) {
    json j = read_json_file(path);
    DISTILL_CHECK(j.is_object(), path, ": expected a JSON object");
    if (!j.contains("vocab_size")) j["vocab_size"] = tok.vocab_size();
    ModelConfig c = config_from_json(j, path);
    DISTILL_CHECK(c.vocab_size >= tok.vocab_size(), path, ": vocab_size ", c.vocab_size,
                  " is smaller than the tokenizer's ", tok.vocab_size());
    return fill_special_ids(c, tok);
}

json pretrain_settings(const ModelConfig& cfg, const TrainOptions& train, const TokenShard& shard,
                       const Tokenizer& tok) {
    return {{"kind", "pretrain"},
            {"model", config_to_json(cfg)},
            {"train", train.to_json()},
            {"data", shard.info().fingerprint},
            {"tokenizer", tok.fingerprint()}};
}

json distill_settings(const ModelConfig& cfg, const std::string& init, const TrainOptions& train,
                      const LossOptions& loss, const json& teacher, const TokenShard& shard, const Tokenizer& tok) {
    return {{"kind", "distill"},
            {"model", config_to_json(cfg)},
            {"init", init},
            {"train", train.to_json()},
            {"loss", {{"kind", loss_kind_name(loss.kind)},
                      {"temperature", loss.temperature},
                      {"ce_weight", loss.ce_weight},
                      {"beta", loss.beta},
                      {"alpha", loss.alpha}}},
            {"teacher", teacher},
            {"data", shard.info().fingerprint},
            {"tokenizer", tok.fingerprint()}};
}

json sequence_settings(const ModelConfig& cfg, const std::string& init, const TrainOptions& train,
                       const LossOptions& loss, const std::string& dataset_fingerprint, const Tokenizer& tok) {
    return {{"stage", "train-sequences"},
            {"config", config_to_json(cfg)},
            {"init", init},
            {"train", train.to_json()},
            {"loss", loss_kind_name(loss.kind)},
            {"temperature", loss.temperature},
            {"ce_weight", loss.ce_weight},
            {"beta", loss.beta},
            {"alpha", loss.alpha},
            {"dataset", dataset_fingerprint},
            {"tokenizer", tok.fingerprint()}};
}

}  // namespace distill
