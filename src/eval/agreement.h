// distill — how closely a student follows its teacher on a held-out text: top-1 agreement and
// KL(teacher || student). With the same tokenizer every position is compared over the whole
// vocabulary (eval_compare); with different tokenizers only at the byte offsets where both
// tokenizations start a token (docs/eval.md, "Agreement across tokenizers").
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "eval/eval.h"
#include "model/checkpoint.h"

namespace distill {

struct AgreementResult {
    double top1_agreement = 0;  // same tokenizer: argmax ids equal; else: argmax tokens' bytes equal
    double kl_to_teacher = 0;   // same tokenizer: full-vocabulary KL; else: KL of the span Bernoullis
    int64_t positions = 0;      // positions (same tokenizer) or common boundaries compared
    bool same_tokenizer = false;
    nlohmann::json to_json() const;
};

// Per target position t = 1 .. N-1 of `ids`: log q(ids[t]) and the argmax id (what the
// cross-tokenizer comparison needs from each model).
struct TokenScores {
    std::vector<double> logprob;
    std::vector<int64_t> argmax;
};
TokenScores score_tokens(Llama& model, const std::vector<int64_t>& ids, const WindowOptions& opts);

// The comparison across tokenizers from each model's ids (BOS first when the tokenizer has one)
// and scores: at every byte offset c where both tokenizations start a token that both models
// predict, with c' the next such common boundary (or the end of the text), the probability each
// model gives to the bytes [c, c') (the product over its own tokens there) is P_t and P_s;
// KL(Bern(P_t) || Bern(P_s)) is averaged, and top-1 counts where both argmax tokens at c have the
// same bytes.
AgreementResult compare_across_tokenizers(const Tokenizer& teacher_tok, const std::vector<int64_t>& teacher_ids,
                                          const TokenScores& teacher, const Tokenizer& student_tok,
                                          const std::vector<int64_t>& student_ids, const TokenScores& student);

// Teacher vs student on `text`: eval_compare when the tokenizers are the same, else the above.
AgreementResult eval_agreement(LoadedModel& teacher, LoadedModel& student, const std::string& text,
                               const WindowOptions& opts);

}  // namespace distill
