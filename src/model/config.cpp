#include "model/config.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/arch.h"
#include "util/error.h"
#include "util/file.h"

namespace distill {

const Architecture& architecture_of(const ModelConfig& c) { return architecture(c.architecture, "model config"); }

void ModelConfig::validate() const {
    architecture_of(*this);  // throws for one that is not in the table
    DISTILL_CHECK(vocab_size > 0 && vocab_size <= (1 << 24), "vocab_size ", vocab_size,
                  " is out of range (1 .. 16777216)");
    DISTILL_CHECK(hidden_size > 0 && hidden_size <= 65536, "hidden_size ", hidden_size,
                  " is out of range");
    DISTILL_CHECK(num_hidden_layers > 0 && num_hidden_layers <= 1024, "num_hidden_layers ",
                  num_hidden_layers, " is out of range");
    DISTILL_CHECK(num_attention_heads > 0 && num_attention_heads <= 4096,
                  "num_attention_heads ", num_attention_heads, " is out of range");
    DISTILL_CHECK(explicit_head_dim > 0 || hidden_size % num_attention_heads == 0, "hidden_size ",
                  hidden_size, " is not divisible by num_attention_heads ", num_attention_heads,
                  " (and no head_dim is given)");
    DISTILL_CHECK(head_dim() > 0 && head_dim() <= 1024, "head_dim ", head_dim(), " is out of range");
    DISTILL_CHECK(head_dim() % 2 == 0, "head dim ", head_dim(),
                  " must be even for rotary positions");
    DISTILL_CHECK(num_key_value_heads > 0 && num_attention_heads % num_key_value_heads == 0,
                  "num_attention_heads ", num_attention_heads,
                  " is not a multiple of num_key_value_heads ", num_key_value_heads);
    DISTILL_CHECK(intermediate_size > 0 && intermediate_size <= (1 << 20), "intermediate_size ",
                  intermediate_size, " is out of range");
    DISTILL_CHECK(max_position_embeddings > 0, "max_position_embeddings must be positive");
    DISTILL_CHECK(rope_theta > 0, "rope_theta must be positive");
    DISTILL_CHECK(rms_norm_eps > 0 && rms_norm_eps < 1, "rms_norm_eps must be in (0, 1)");
    const auto& rs = rope_scaling;
    DISTILL_CHECK(rs.type.empty() || rs.type == "linear" || rs.type == "llama3",
                  "unsupported rope_scaling type '", rs.type, "' (supported: linear, llama3)");
    DISTILL_CHECK(rs.factor > 0, "rope_scaling factor must be positive");
    DISTILL_CHECK(rs.type != "llama3" || (rs.low_freq_factor > 0 &&
                                          rs.high_freq_factor > rs.low_freq_factor &&
                                          rs.original_max_position_embeddings > 0),
                  "rope_scaling (llama3) needs 0 < low_freq_factor < high_freq_factor and a positive "
                  "original_max_position_embeddings");
}

int64_t ModelConfig::num_params() const {
    const int64_t C = hidden_size, D = head_dim(), QD = num_attention_heads * D;
    const int64_t q = C * QD, kv = 2 * C * num_key_value_heads * D, o = QD * C;
    const int64_t bias = attention_bias ? QD + 2 * num_key_value_heads * D : 0;
    const int64_t norms = 2 * C + (qk_norm ? 2 * D : 0);
    const int64_t mlp = 3 * C * intermediate_size;
    const int64_t layer = q + kv + o + bias + mlp + norms;
    const int64_t emb = vocab_size * C;
    return emb * (tie_word_embeddings ? 1 : 2) + num_hidden_layers * layer + C;
}

double ModelConfig::flops_per_token(int64_t T) const {
    const double C = hidden_size, D = head_dim(), L = num_hidden_layers;
    const double QD = num_attention_heads * D;
    const double matmul_params = L * (2 * C * QD + 2 * C * num_key_value_heads * D +
                                      3 * C * intermediate_size) +
                                 C * vocab_size;
    // QK^T and AV: 2 * T * H * D each per token with a full window (causal halves it on average).
    const double attn = L * 2.0 * T * QD;
    return 2.0 * matmul_params + attn;
}

namespace {

template <typename T>
T get_or(const nlohmann::json& j, const char* key, T dflt, const std::string& source) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return dflt;
    try {
        return it->get<T>();
    } catch (const std::exception&) {
        throw Error(str_cat(source, ": '", key, "' has the wrong type (", it->type_name(), ")"));
    }
}

int64_t get_required(const nlohmann::json& j, const char* key, const std::string& source) {
    auto it = j.find(key);
    DISTILL_CHECK(it != j.end(), source, ": missing required key '", key, "'");
    DISTILL_CHECK(it->is_number_integer(), source, ": '", key, "' must be an integer");
    return it->get<int64_t>();
}

}  // namespace

ModelConfig config_from_json(const nlohmann::json& j, const std::string& source) {
    DISTILL_CHECK(j.is_object(), source, ": expected a JSON object");
    ModelConfig c;
    const std::string model_type = get_or<std::string>(j, "model_type", "llama", source);
    const Architecture::ModelType* type = nullptr;
    const Architecture* arch = architecture_for_model_type(model_type, &type);
    DISTILL_CHECK(arch, source, ": unsupported model_type '", model_type, "' (supported: ", model_type_names(), ")");
    c.architecture = arch->name;
    c.attention_bias = arch->attention_bias;
    c.qk_norm = arch->qk_norm;
    if (type->has_sliding_window_key) {
        // Sliding-window attention changes the result only when it is on and shorter than the input.
        const bool sliding = get_or<bool>(j, "use_sliding_window", type->sliding_window_default, source);
        auto sw = j.find("sliding_window");
        DISTILL_CHECK(!sliding || sw == j.end() || sw->is_null(), source,
                      ": sliding-window attention is not supported (use_sliding_window with "
                      "sliding_window set)");
    }
    if (j.contains("architectures") && j["architectures"].is_array()) {
        for (const auto& a : j["architectures"]) {
            const std::string name = a.is_string() ? a.get<std::string>() : a.dump();
            const std::string suffix = "ForCausalLM";
            DISTILL_CHECK(name.size() > suffix.size() &&
                              name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0,
                          source, ": architecture '", name,
                          "' is not a causal language model (expected *ForCausalLM)");
        }
    }
    c.vocab_size = get_required(j, "vocab_size", source);
    c.hidden_size = get_required(j, "hidden_size", source);
    c.num_hidden_layers = get_required(j, "num_hidden_layers", source);
    c.num_attention_heads = get_required(j, "num_attention_heads", source);
    c.num_key_value_heads =
        get_or<int64_t>(j, "num_key_value_heads", c.num_attention_heads, source);
    c.intermediate_size = get_required(j, "intermediate_size", source);
    c.max_position_embeddings =
        get_or<int64_t>(j, "max_position_embeddings", c.max_position_embeddings, source);
    c.rope_theta = get_or<double>(j, "rope_theta", c.rope_theta, source);
    c.rms_norm_eps = get_or<double>(j, "rms_norm_eps", c.rms_norm_eps, source);
    c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", false, source);
    c.attention_bias = get_or<bool>(j, "attention_bias", c.attention_bias, source);
    c.bos_token_id = get_or<int64_t>(j, "bos_token_id", -1, source);
    c.eos_token_ids = eos_ids_from_json(j, source);
    c.eos_token_id = c.eos_token_ids.empty() ? -1 : c.eos_token_ids.front();
    const int64_t head_dim = get_or<int64_t>(j, "head_dim", 0, source);
    if (head_dim > 0 && head_dim * c.num_attention_heads != c.hidden_size) c.explicit_head_dim = head_dim;
    const std::string act = get_or<std::string>(j, "hidden_act", "silu", source);
    DISTILL_CHECK(act == "silu", source, ": hidden_act '", act, "' is not supported (only silu)");
    DISTILL_CHECK(!get_or<bool>(j, "mlp_bias", false, source), source,
                  ": mlp_bias is not supported");
    auto rs = j.find("rope_scaling");
    if (rs != j.end() && !rs->is_null()) {
        DISTILL_CHECK(rs->is_object(), source, ": rope_scaling must be an object");
        std::string type = get_or<std::string>(*rs, "rope_type", "", source);
        if (type.empty()) type = get_or<std::string>(*rs, "type", "", source);
        if (type != "default") {
            c.rope_scaling.type = type;
            c.rope_scaling.factor = get_or<double>(*rs, "factor", 1.0, source);
            c.rope_scaling.low_freq_factor = get_or<double>(*rs, "low_freq_factor", 1.0, source);
            c.rope_scaling.high_freq_factor = get_or<double>(*rs, "high_freq_factor", 4.0, source);
            c.rope_scaling.original_max_position_embeddings = get_or<int64_t>(
                *rs, "original_max_position_embeddings", 8192, source);
        }
    }
    try {
        c.validate();
    } catch (const Error& e) {
        throw Error(str_cat(source, ": ", e.what()));
    }
    return c;
}

nlohmann::json config_to_json(const ModelConfig& c) {
    nlohmann::json j;
    j["architectures"] = {architecture_of(c).hf_class};
    j["model_type"] = c.architecture;
    j["vocab_size"] = c.vocab_size;
    j["hidden_size"] = c.hidden_size;
    j["num_hidden_layers"] = c.num_hidden_layers;
    j["num_attention_heads"] = c.num_attention_heads;
    j["num_key_value_heads"] = c.num_key_value_heads;
    j["head_dim"] = c.head_dim();
    j["intermediate_size"] = c.intermediate_size;
    j["max_position_embeddings"] = c.max_position_embeddings;
    j["rope_theta"] = c.rope_theta;
    j["rms_norm_eps"] = c.rms_norm_eps;
    j["tie_word_embeddings"] = c.tie_word_embeddings;
    j["attention_bias"] = c.attention_bias;
    j["hidden_act"] = "silu";
    if (!c.rope_scaling.type.empty()) {
        const auto& rs = c.rope_scaling;
        j["rope_scaling"] = {{"rope_type", rs.type}, {"factor", rs.factor}};
        if (rs.type == "llama3") {
            j["rope_scaling"]["low_freq_factor"] = rs.low_freq_factor;
            j["rope_scaling"]["high_freq_factor"] = rs.high_freq_factor;
            j["rope_scaling"]["original_max_position_embeddings"] = rs.original_max_position_embeddings;
        }
    }
    j["torch_dtype"] = "float32";
    if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
    if (c.eos_token_ids.size() > 1)
        j["eos_token_id"] = c.eos_token_ids;
    else if (c.eos_token_id >= 0)
        j["eos_token_id"] = c.eos_token_id;
    return j;
}

std::vector<int64_t> eos_ids_from_json(const nlohmann::json& j, const std::string& source) {
    std::vector<int64_t> ids;
    auto it = j.find("eos_token_id");
    if (it == j.end() || it->is_null()) return ids;
    auto one = [&](const nlohmann::json& v) {
        DISTILL_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0, source,
                      ": eos_token_id must be a non-negative integer or a list of them");
        ids.push_back(v.get<int64_t>());
    };
    if (it->is_array()) {
        for (const auto& v : *it) one(v);
    } else {
        one(*it);
    }
    return ids;
}

ModelConfig load_config(const std::string& path) {
    ModelConfig c = config_from_json(read_json_file(path), path);
    const std::string gen = path_join(std::filesystem::path(path).parent_path().string(), "generation_config.json");
    if (file_exists(gen)) {
        const nlohmann::json g = read_json_file(gen);
        DISTILL_CHECK(g.is_object(), gen, ": expected a JSON object");
        std::vector<int64_t> ids = eos_ids_from_json(g, gen);
        if (!ids.empty()) {
            c.eos_token_ids = ids;
            c.eos_token_id = ids.front();
        }
    }
    return c;
}

}  // namespace distill
