// distill — the steps that the commands and the demo share: held-out split, tokenizer
// resolution, model configs, and the run settings (with their fingerprints) of each stage.
// A run directory refuses to resume under other settings, so the CLI and the demo must build
// the same settings for the same work: both build them here.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "distill/losses.h"
#include "model/config.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "train/trainer.h"

namespace distill {

class TokenShard;
struct LoadedModel;

// Loads a model directory or .gguf and moves it to the process's compute device (--device).
LoadedModel load_model(const std::string& path);
// The same, for a model that only runs forward (a teacher, a model to score or serve): on the
// CPU its matrices stay in the file's type (load_model_dir's packed), so it needs about its
// file's size in memory; on a GPU it is load_model. It cannot be trained or saved.
LoadedModel load_model_for_inference(const std::string& path);
// Moves a freshly built model to the compute device.
void to_compute_device(Llama& model);

// Splits `text` into (train, held out): the held-out part is the last `fraction` of the bytes,
// starting after a line break so that no line is cut. fraction in [0, 1).
std::pair<std::string, std::string> split_heldout(const std::string& text, double fraction);

// A model config from a config.json file; vocab_size filled from the tokenizer if absent, and
// bos / eos ids from the tokenizer when the file names none.
ModelConfig config_for(const std::string& config_path, const Tokenizer& tok);
// The same, for a config built in code.
ModelConfig fill_special_ids(ModelConfig c, const Tokenizer& tok);

// What a training stage records in run.json. The same work gives the same JSON, whoever runs it.
nlohmann::json pretrain_settings(const ModelConfig& cfg, const TrainOptions& train, const TokenShard& shard,
                                 const Tokenizer& tok);
// `teacher`: null for the no-teacher baseline, else what identifies the teacher (the cache's
// teacher fingerprint and top-K, or a live teacher's fingerprint). `init`: "" for a new student.
nlohmann::json distill_settings(const ModelConfig& cfg, const std::string& init, const TrainOptions& train,
                                const LossOptions& loss, const nlohmann::json& teacher, const TokenShard& shard,
                                const Tokenizer& tok);
// `train --sequences`: a student from an API dataset (its fingerprint: SequenceSet::fingerprint).
nlohmann::json sequence_settings(const ModelConfig& cfg, const std::string& init, const TrainOptions& train,
                                 const LossOptions& loss, const std::string& dataset_fingerprint,
                                 const Tokenizer& tok);

}  // namespace distill
