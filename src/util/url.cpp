#include "util/url.h"

#include <regex>

#include "util/error.h"

namespace distill {

std::pair<std::string, std::string> split_api_url(const std::string& url, const std::string& flag) {
    // scheme, host (a name, an IPv4 address or a bracketed IPv6 one), an optional port, a path
    static const std::regex re(R"(^(https?://(\[[0-9A-Fa-f:.]+\]|[^/:\[\]@?#]+)(:([0-9]{1,5}))?)(/.*)?$)");
    std::smatch m;
    if (!std::regex_match(url, m, re) || (m[4].matched && std::stoi(m[4].str()) > 65535))
        throw Error(str_cat(flag, " '", url, "' is not an http:// or https:// URL with a host and an optional port",
                            " (e.g. http://127.0.0.1:8000/v1)"));
    std::string path = m[5].matched ? m[5].str() : "";
    while (!path.empty() && path.back() == '/') path.pop_back();
    return {m[1].str(), path};
}

}  // namespace distill
