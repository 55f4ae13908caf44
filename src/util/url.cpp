#include "util/url.h"

#include <regex>

#include "util/error.h"

namespace distill {

std::pair<std::string, std::string> split_api_url(const std::string& url, const std::string& flag) {
    static const std::regex re(R"(^(https?://[^/]+)(/.*)?$)");
    std::smatch m;
    if (!std::regex_match(url, m, re))
        throw Error(str_cat(flag, " '", url, "' is not an http:// or https:// URL (e.g. http://127.0.0.1:8000/v1)"));
    std::string path = m[2].matched ? m[2].str() : "";
    while (!path.empty() && path.back() == '/') path.pop_back();
    return {m[1].str(), path};
}

}  // namespace distill
