// libFuzzer target: the OpenAI request bodies `distill serve` reads (serve/openai.h). Any input
// must give a parsed request or an ApiError with a 4xx status; anything else (another
// exception, a crash, UB, a leak) is a finding.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "serve/openai.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string body(reinterpret_cast<const char*>(data), size);
    distill::api::Limits lim;
    for (int which = 0; which < 2; ++which) {
        try {
            if (which == 0) {
                auto r = distill::api::parse_completion(body, lim);
                if (r.prompts.empty()) std::abort();
                if (r.sampling.max_tokens < 0 || r.sampling.max_tokens > lim.max_tokens) std::abort();
                if (r.sampling.n < 1 || r.sampling.n > lim.max_n) std::abort();
            } else {
                auto r = distill::api::parse_chat(body, lim);
                if (!r.messages.is_array() || r.messages.empty()) std::abort();
                if (r.top_logprobs < 0 || r.top_logprobs > lim.max_top_logprobs) std::abort();
                for (const auto& m : r.messages)
                    if (!m["role"].is_string() || !(m["content"].is_string() || m["content"].is_null())) std::abort();
            }
        } catch (const distill::api::ApiError& e) {
            if (e.status < 400 || e.status >= 500) std::abort();
            (void)e.body().dump();
        }
    }
    return 0;
}
