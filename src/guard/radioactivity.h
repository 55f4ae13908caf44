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
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/eval.h"
#include "eval/scorer.h"
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

// ---- the soft test (distill's variant; docs/guard.md) ---------------------------------------
//
// The suspect's whole next-token distribution instead of its top-1. It reads a text that does not
// depend on the key (a public book, a held-out text: never our watermarked outputs, which it may
// copy from in context); for each distinct context c of h tokens, q_c is its next-token
// distribution averaged over the positions after c (its top-M at each, the rest counted 0). The
// score is S = sum over the distinct pairs (c, v) of w = q_c(v) times [v green after c]: the green
// mass the suspect learned to prefer. When the suspect knows nothing of the key each pair is an
// independent Bernoulli(gamma) weighted by w, so S has mean gamma sum w, and its tail is bounded by
// Chernoff's inequality with the exact moment-generating function,
//   P(S >= s) <= min over l >= 0 of exp(-l s) prod (1 - gamma + gamma e^{l w}),
// a valid (conservative) p-value at any depth, with no normal approximation.

struct SoftRadioactivityResult {
    int64_t positions = 0;  // positions read (after at least h of the text's own tokens)
    int64_t contexts = 0;   // distinct contexts
    int64_t pairs = 0;      // distinct (context, token) pairs weighted
    double score = 0;       // S
    double mean = 0;        // gamma sum w: S's mean when the suspect knows nothing of the key
    double sd = 0;          // sqrt(gamma (1 - gamma) sum w^2)
    double z = 0;           // (S - mean) / sd
    double green_mass = 0;  // S / sum w: the suspect's share of probability on green tokens
    double p = 1, log10_p = 0;  // Chernoff's bound on P(S >= score); log10_p is exact where p underflows
};

// Accumulates the suspect's distributions per context; result() scores them.
class SoftTally {
public:
    explicit SoftTally(const WatermarkOptions& o);
    // One position after the h ids at `context` (context[0] the oldest): the suspect's m most likely
    // next tokens and their probabilities.
    void add(const int64_t* context, const int64_t* ids, const float* probs, int64_t m);
    // Scores the distributions with the key and settings given at construction, or with `o` (its
    // context must be the tally's): the distributions do not depend on the key.
    SoftRadioactivityResult result() const { return result(o_); }
    SoftRadioactivityResult result(const WatermarkOptions& o) const;

private:
    struct Context {
        std::vector<int64_t> ids;  // the context's h ids
        int64_t count = 0;
        std::unordered_map<int64_t, double> mass;  // token -> summed probability
    };
    WatermarkOptions o_;
    std::unordered_map<std::string, Context> contexts_;
    int64_t positions_ = 0;
};

// Open mode: the suspect's own forward over `text` (with BOS in front when the tokenizer has one)
// in windows `w`, its top_m probabilities at each position.
SoftTally soft_tally_open(Llama& suspect, const Tokenizer& tok, const std::string& text, const WatermarkOptions& o,
                          const WindowOptions& w, int64_t top_m);
SoftRadioactivityResult radioactivity_soft_open(Llama& suspect, const Tokenizer& tok, const std::string& text,
                                                const WatermarkOptions& o, const WindowOptions& w, int64_t top_m);

// Closed mode: the suspect's API reads `text` as our token ids (it must share our tokenizer), in
// windows `w`, with echo and its top_m log-probs at each position (top_m <= the API's cap, 20 for
// OpenAI's), which the tally weighs as the open mode weighs the suspect's own.
SoftRadioactivityResult radioactivity_soft_closed(const RemoteOptions& remote, const Tokenizer& tok,
                                                  const std::string& text, const WatermarkOptions& o,
                                                  const WindowOptions& w, int64_t top_m);

// log10 of Chernoff's bound on P(sum_i w_i B_i >= s), B_i independent Bernoulli(gamma), w_i >= 0;
// 0 when s is at or below the mean.
double chernoff_log10_tail(const std::vector<double>& w, double gamma, double s);

// {mode: "open" / "closed", score: "soft", positions, contexts, pairs, S, mean, sd, z, green_mass,
// p, log10_p, gamma, context, key_hash}; p and log10_p null (with `reason`) when nothing was scored.
nlohmann::ordered_json soft_result_json(const WatermarkOptions& o, const SoftRadioactivityResult& r);

}  // namespace distill
