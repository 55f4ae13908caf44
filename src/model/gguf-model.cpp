#include "model/gguf-model.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "io/gguf.h"
#include "model/packed.h"
#include "model/arch.h"
#include "tokenizer/gguf-tokenizer.h"
#include "util/error.h"
#include "util/file.h"
#include "util/progress.h"

namespace distill {

namespace {

// llama.cpp's "llama" architecture applies RoPE to adjacent pairs (x0, x1), (x2, x3), ... while
// HF Llama rotates the two halves of each head; convert_hf_to_gguf.py therefore reorders the
// rows of q and k (weights and biases) within each head: HF row s * D/2 + j -> GGUF row 2j + s.
// qwen2 and qwen3 use the NEOX (halves) form in llama.cpp and are stored unpermuted.
torch::Tensor permute_to_gguf(const torch::Tensor& w, int64_t n_head) {
    auto sizes = w.sizes().vec();
    std::vector<int64_t> shape = {n_head, 2, sizes[0] / n_head / 2};
    shape.insert(shape.end(), sizes.begin() + 1, sizes.end());
    return w.reshape(shape).transpose(1, 2).reshape(sizes).contiguous();
}
torch::Tensor permute_from_gguf(const torch::Tensor& w, int64_t n_head) {
    auto sizes = w.sizes().vec();
    std::vector<int64_t> shape = {n_head, sizes[0] / n_head / 2, 2};
    shape.insert(shape.end(), sizes.begin() + 1, sizes.end());
    return w.reshape(shape).transpose(1, 2).reshape(sizes).contiguous();
}
// The head count a q/k tensor is permuted with (0: not permuted).
int64_t permute_heads(const ModelConfig& c, const std::string& hf) {
    if (!architecture_of(c).gguf_permute_qk) return 0;
    if (hf.find("q_proj.") != std::string::npos) return c.num_attention_heads;
    if (hf.find("k_proj.") != std::string::npos) return c.num_key_value_heads;
    return 0;
}

// A float read from an F32 field, as the shortest decimal that gives the same float
// (1e-05, not 9.99999974737875e-06), so that configs round-trip.
double tidy_f32(double v) {
    const float f = float(v);
    char buf[32];
    for (int prec = 1; prec <= 9; ++prec) {
        std::snprintf(buf, sizeof buf, "%.*g", prec, double(f));
        if (std::strtof(buf, nullptr) == f) return std::strtod(buf, nullptr);
    }
    return v;
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool is_gguf_path(const std::string& path) { return file_exists(path); }

// The rows of a q / k matrix in HF order, read from GGUF's (see permute_from_gguf): HF row
// head * D + s * D/2 + j is GGUF row head * D + 2j + s.
std::vector<int32_t> rows_from_gguf(int64_t rows, int64_t n_head) {
    const int64_t D = rows / n_head;
    std::vector<int32_t> map(static_cast<size_t>(rows));
    for (int64_t h = 0; h < n_head; ++h)
        for (int64_t s = 0; s < 2; ++s)
            for (int64_t j = 0; j < D / 2; ++j) map[size_t(h * D + s * (D / 2) + j)] = int32_t(h * D + 2 * j + s);
    return map;
}

LoadedModel load_gguf_model(const std::string& path, bool packed) {
    auto file = std::make_shared<GgufFile>(path);
    const GgufFile& f = *file;
    const std::string src = "'" + path + "'";
    const std::string arch = f.get_string("general.architecture");
    const Architecture& table_row = architecture(arch, src);
    auto key = [&](const std::string& k) { return arch + "." + k; };
    if (f.has(key("rope.scaling.type"))) {
        const std::string s = f.get_string(key("rope.scaling.type"));
        DISTILL_CHECK(s == "none", src, ": RoPE scaling '", s, "' is not supported");
    }
    DISTILL_CHECK(!f.find_tensor("rope_freqs.weight"), src,
                  ": has rope_freqs.weight (scaled RoPE, e.g. Llama 3.1), which is not supported");
    const GgufTensorInfo* emb = f.find_tensor("token_embd.weight");
    DISTILL_CHECK(emb && emb->dims.size() == 2, src, ": missing the 2-D tensor token_embd.weight");

    ModelConfig c;
    c.architecture = arch;
    c.hidden_size = f.get_int(key("embedding_length"));
    c.num_hidden_layers = f.get_int(key("block_count"));
    c.intermediate_size = f.get_int(key("feed_forward_length"));
    c.num_attention_heads = f.get_int(key("attention.head_count"));
    c.num_key_value_heads = f.has(key("attention.head_count_kv"))
                                ? f.get_int(key("attention.head_count_kv"))
                                : c.num_attention_heads;
    c.rope_theta = f.has(key("rope.freq_base")) ? tidy_f32(f.get_float(key("rope.freq_base"))) : 10000.0;
    c.rms_norm_eps = tidy_f32(f.get_float(key("attention.layer_norm_rms_epsilon")));
    c.max_position_embeddings = f.get_int(key("context_length"));
    c.vocab_size = emb->dims[1];
    c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
    c.attention_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
    c.qk_norm = table_row.qk_norm;
    // Qwen3's heads are wider than embedding_length / head_count.
    if (f.has(key("attention.key_length")) && c.num_attention_heads > 0) {
        const int64_t kl = f.get_int(key("attention.key_length"));
        if (kl * c.num_attention_heads != c.hidden_size) c.explicit_head_dim = kl;
    }
    if (f.has("tokenizer.ggml.bos_token_id")) c.bos_token_id = f.get_int("tokenizer.ggml.bos_token_id");
    if (f.has("tokenizer.ggml.eos_token_id")) c.eos_token_id = f.get_int("tokenizer.ggml.eos_token_id");
    // llama.cpp also stops on end-of-turn / end-of-message tokens (Llama 3 Instruct's <|eot_id|>).
    if (c.eos_token_id >= 0) c.eos_token_ids.push_back(c.eos_token_id);
    for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"})
        if (f.has(key)) {
            const int64_t id = f.get_int(key);
            if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end())
                c.eos_token_ids.push_back(id);
        }
    try {
        c.validate();
    } catch (const Error& e) {
        throw Error(str_cat(src, ": ", e.what()));
    }
    if (f.has(key("attention.value_length")))
        DISTILL_CHECK(f.get_int(key("attention.value_length")) == c.head_dim(), src,
                      ": attention.value_length differs from attention.key_length (not supported)");
    if (f.has(key("rope.dimension_count")))
        DISTILL_CHECK(f.get_int(key("rope.dimension_count")) == c.head_dim(), src,
                      ": rope.dimension_count differs from the head size (partial RoPE is not supported)");

    LoadedModel m;
    m.path = path;
    m.config = c;
    m.model = Llama(c, packed);
    torch::NoGradGuard ng;
    const std::string cfg_text = config_to_json(c).dump();
    uint64_t fp = hash64(cfg_text.data(), cfg_text.size(), 0);
    std::set<std::string> used;
    std::string missing;
    for (auto& p : m.model->named_parameters()) {
        const std::string name = gguf_tensor_name(p.key());
        const GgufTensorInfo* t = f.find_tensor(name);
        if (!t) {
            missing += (missing.empty() ? "" : ", ") + name;
            continue;
        }
        const bool slot = packed && p.value().numel() == 0;
        std::vector<int64_t> want = slot ? m.model->packed_shape(p.key()) : p.value().sizes().vec();
        std::vector<int64_t> have(t->dims.rbegin(), t->dims.rend());
        DISTILL_CHECK(have == want, src, ": tensor '", name, "' has shape ", torch::IntArrayRef(have),
                      " but the metadata implies ", torch::IntArrayRef(want));
        const GgmlTypeInfo* info = ggml_type_info(uint32_t(t->type));
        if (slot && info && info->to_float) {
            const int64_t h = permute_heads(c, p.key());
            auto mat = std::make_shared<PackedMatrix>(t->type, f.tensor_data(*t), want[0], want[1], file,
                                                      h ? rows_from_gguf(want[0], h) : std::vector<int32_t>{});
            m.model->attach(p.key(), mat);
            fp = mat->hash_as_float(fp);
            used.insert(name);
            continue;
        }
        if (slot) (void)f.tensor_f32(*t);  // a type that cannot be read: throws, naming it
        DISTILL_ASSERT(!slot, "tensor_f32 reads every type that has to_float");
        std::vector<float> data = f.tensor_f32(*t);
        torch::Tensor v = torch::from_blob(data.data(), want, torch::kFloat32);
        if (int64_t h = permute_heads(c, p.key())) v = permute_from_gguf(v, h);
        p.value().copy_(v);
        fp = hash64(p.value().data_ptr(), p.value().numel() * sizeof(float), fp);
        used.insert(name);
    }
    DISTILL_CHECK(missing.empty(), src, ": missing tensors: ", missing);
    std::string unexpected;
    for (const auto& t : f.tensors())
        if (!used.count(t.name)) unexpected += (unexpected.empty() ? "" : ", ") + t.name;
    DISTILL_CHECK(unexpected.empty(), src, ": tensors that a ", arch, " model does not have: ",
                  unexpected.substr(0, 400));
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(fp));
    m.fingerprint = buf;
    if (f.has("tokenizer.ggml.model")) {
        m.tokenizer = Tokenizer::from_json(tokenizer_json_from_gguf(f));
        m.has_tokenizer = true;
        DISTILL_CHECK(m.tokenizer.vocab_size() <= c.vocab_size, src, ": the tokenizer has ",
                      m.tokenizer.vocab_size(), " tokens but token_embd.weight only ", c.vocab_size, " rows");
    }
    m.model->eval();
    return m;
}

std::string save_gguf_model(const std::string& path, Llama& model, const Tokenizer& tok,
                            const GgufExportOptions& opts) {
    const ModelConfig& c = model->config();
    architecture_of(c);  // every architecture in the table has a GGUF form
    DISTILL_CHECK(c.rope_scaling.type.empty(),
                  "cannot export to GGUF: RoPE scaling is not supported; use --format hf");
    const GgmlTypeInfo* want = ggml_type_by_name(opts.type);
    DISTILL_CHECK(want && want->from_float, "--type '", opts.type,
                  "' is not supported (supported: f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k)");

    // The tokenizer's metadata first: an error in it stops the export before anything is written.
    auto tok_kv = tokenizer_gguf_metadata(tok, c.vocab_size, c.bos_token_id, c.eos_token_id);

    const std::string arch = c.architecture;
    std::vector<std::pair<std::string, GgufValue>> kv = {
        {"general.architecture", GgufValue::str(arch)},
        {"general.name", GgufValue::str(opts.name.empty() ? "distill" : opts.name)},
        {arch + ".context_length", GgufValue::u32(uint32_t(c.max_position_embeddings))},
        {arch + ".embedding_length", GgufValue::u32(uint32_t(c.hidden_size))},
        {arch + ".block_count", GgufValue::u32(uint32_t(c.num_hidden_layers))},
        {arch + ".feed_forward_length", GgufValue::u32(uint32_t(c.intermediate_size))},
        {arch + ".attention.head_count", GgufValue::u32(uint32_t(c.num_attention_heads))},
        {arch + ".attention.head_count_kv", GgufValue::u32(uint32_t(c.num_key_value_heads))},
        {arch + ".rope.dimension_count", GgufValue::u32(uint32_t(c.head_dim()))},
        {arch + ".attention.key_length", GgufValue::u32(uint32_t(c.head_dim()))},
        {arch + ".attention.value_length", GgufValue::u32(uint32_t(c.head_dim()))},
        {arch + ".rope.freq_base", GgufValue::f32(float(c.rope_theta))},
        {arch + ".attention.layer_norm_rms_epsilon", GgufValue::f32(float(c.rms_norm_eps))},
        {arch + ".vocab_size", GgufValue::u32(uint32_t(c.vocab_size))},
    };
    kv.insert(kv.end(), std::make_move_iterator(tok_kv.begin()),
              std::make_move_iterator(tok_kv.end()));
    if (!opts.chat_template.empty()) kv.emplace_back("tokenizer.chat_template", GgufValue::str(opts.chat_template));
    if (want->block > 1) kv.emplace_back("general.quantization_version", GgufValue::u32(2));

    std::vector<GgufTensorOut> out;
    std::map<std::string, int> counts;
    std::string fallbacks;
    torch::NoGradGuard ng;
    for (auto& p : model->named_parameters()) {
        GgufTensorOut t;
        t.name = gguf_tensor_name(p.key());
        torch::Tensor v = p.value().detach().to(torch::kCPU, torch::kFloat32).contiguous();
        if (int64_t h = permute_heads(c, p.key())) v = permute_to_gguf(v, h);
        auto sizes = v.sizes().vec();
        t.dims.assign(sizes.rbegin(), sizes.rend());
        const bool matrix = v.dim() == 2 && !ends_with(t.name, "_norm.weight");
        const GgmlTypeInfo* type = ggml_type_info(uint32_t(GgmlType::F32));
        if (matrix) {
            type = want;
            for (GgmlType fb : {GgmlType::Q8_0, GgmlType::F16}) {
                if (t.dims[0] % type->block == 0) break;
                type = ggml_type_info(uint32_t(fb));
            }
            if (type != want) fallbacks += str_cat(fallbacks.empty() ? "" : ", ", t.name, " -> ", type->name);
        }
        t.type = type->type;
        t.data.resize(size_t(row_bytes(t.type, v.numel())));
        quantize_row(t.type, v.data_ptr<float>(), reinterpret_cast<uint8_t*>(t.data.data()), v.numel());
        counts[type->name]++;
        out.push_back(std::move(t));
    }
    if (!fallbacks.empty())
        log_info(str_cat("rows not a whole number of ", want->name, " blocks, written as: ", fallbacks));
    write_gguf(path, kv, out);
    std::string summary;
    for (const auto& [name, n] : counts) summary += str_cat(summary.empty() ? "" : ", ", n, " ", name);
    return summary;
}

}  // namespace distill
