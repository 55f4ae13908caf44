// distill — radioactivity (Sander et al. 2024, "Watermarking Makes Language Models Radioactive"):
// was a suspect model trained on text that carries our watermark? A model that learned from it
// prefers, after a context, the tokens our key made green there, so its own choices are green
// more often than gamma. Each distinct (context, token) tuple is scored once, as in detection,
// and the p-value is the same exact binomial tail (docs/guard.md).
//
//   open:   the suspect's weights. It reads our watermarked texts; at each position its top-1
//           prediction (or its top K, each a tuple of its own) is scored after the text's
//           previous h tokens. Which tokens are scored depends on the suspect alone, never on
//           the key, so under "not trained on our texts" each distinct tuple is still green with
//           probability gamma, and K > 1 scores more tuples of the same kind.
//   closed: only an API. Its completions of prompts are scored after their previous h tokens;
//           tuples that occur in the prompt are skipped (copying the prompt is not learning),
//           and optionally only contexts frequent in our watermarked texts are kept (the ones
//           the suspect most likely trained on).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "eval/eval.h"
#include "guard/detect.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace distill {

struct RadioactivityResult {
    DetectResult detect;       // T, S, z, p over the scored tuples
    int64_t texts = 0;         // texts read (open) or samples scored (closed)
    int64_t positions = 0;     // candidate positions before de-duplication and filters
    int64_t in_prompt = 0;     // closed: tuples skipped because the prompt holds them
    int64_t filtered_out = 0;  // closed: tuples whose context is not frequent in our texts
};

// Open mode: `suspect` (its vocabulary must be the tokenizer's) over each text's tokens, with BOS
// in front when the tokenizer has one (the tuples use the text's tokens only), in windows `w`;
// the suspect's `top_k` most likely tokens at each position (1: its top-1, as the paper).
RadioactivityResult radioactivity_open(Llama& suspect, const Tokenizer& tok, const std::vector<std::string>& texts,
                                       const WatermarkOptions& o, const WindowOptions& w, int64_t top_k = 1);

// Contexts (h ids as u32-LE bytes) and how often each occurs in `texts`, for the closed filter.
using ContextCounts = std::map<std::string, int64_t>;
ContextCounts watermark_context_counts(const Tokenizer& tok, const std::vector<std::string>& texts, int64_t h);

// One completion of the suspect: the prompt it was given and the text it returned.
struct SuspectSample {
    std::string prompt, completion;
};

// Closed mode: the completion's tokens (the prompt's tokens in front give the first contexts);
// with `frequent`, only tuples whose context occurs >= min_count times there.
RadioactivityResult radioactivity_closed(const Tokenizer& tok, const std::vector<SuspectSample>& samples,
                                         const WatermarkOptions& o, const ContextCounts* frequent = nullptr,
                                         int64_t min_count = 1);

}  // namespace distill
