// Fuzz target: the refresher's configuration parser (refresher/config.cpp) on
// arbitrary bytes. The input is the configuration file's text. Secrets come
// from a fake: every environment variable is set, every file reads as a
// one-line secret, except paths containing "missing" (an error) and "loose"
// (readable by others: a warning). No real file or environment is touched.
//
// Promises checked: an error is one printable line; a configuration that
// parses holds only what SPEC allows (valid names, one endpoint, ordered
// backoff, a non-empty secret).
#include "config.hpp"
#include "fuzz_check.hpp"

#include <tokenshm/layout.h>
#include <tokenshm/shm/names.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace {

using namespace tokenshm::refresher;
using tokenshm::fuzz::expect;
using tokenshm::fuzz::one_printable_line;

ConfigSources fake_sources() {
    ConfigSources s;
    s.getenv = [](const std::string& name) -> std::optional<std::string> {
        if (name == "TOKENSHM_SEGMENT") return std::nullopt;
        return std::string("env-secret");
    };
    s.read_file = [](const std::string& path,
                     bool& loose_mode) -> tokenshm::Expected<WipedString, RefresherError> {
        if (path.find("missing") != std::string::npos)
            return tokenshm::Unexpected{
                RefresherError::config_error(path + ": No such file or directory")};
        loose_mode = path.find("loose") != std::string::npos;
        return WipedString("file-secret\r\n");
    };
    s.check_file =
        [](const std::string& path) -> tokenshm::Expected<tokenshm::Done, RefresherError> {
        if (path.find("missing") != std::string::npos)
            return tokenshm::Unexpected{
                RefresherError::config_error(path + ": No such file or directory")};
        return tokenshm::Done{};
    };
    s.group_id = [](const std::string& group) -> std::optional<gid_t> {
        if (group == "nosuchgroup") return std::nullopt;
        return gid_t{1000};
    };
    return s;
}

void check_config(const Config& cfg) {
    expect(tokenshm::shm::valid_segment_name(cfg.segment), "segment name is valid");
    expect(cfg.mode == 0600 || cfg.mode == 0640, "mode is 0600 or 0640");
    expect(cfg.mode != 0640 || cfg.group_id.has_value(), "mode 0640 has a resolved group");
    expect(!cfg.state_dir.empty() && !cfg.control_socket.empty(), "paths are set");
    expect(cfg.max_token_bytes >= TOKENSHM_MIN_TOKEN_BYTES &&
               cfg.max_token_bytes <= TOKENSHM_MAX_TOKEN_BYTES_LIMIT,
           "max_token_bytes within the layout's bounds");
    expect(!cfg.credentials.empty(), "at least one credential");
    for (const auto& c : cfg.credentials) {
        expect(tokenshm::shm::valid_credential_name(c.name), "credential name is valid");
        expect(c.issuer.has_value() != c.token_endpoint.has_value(),
               "exactly one of issuer and token_endpoint");
        expect(!c.client_id.empty(), "client_id is set");
        expect(!c.client_secret.reveal().empty(), "client secret is not empty");
        expect(c.client_secret.reveal().find_first_of("\r\n") == std::string_view::npos,
               "client secret is one line");
        expect(c.min_backoff <= c.max_backoff, "min_backoff_s <= max_backoff_s");
        expect(c.default_lifetime.count() > 0 && c.timeout.count() > 0,
               "lifetime and timeout are positive");
    }
    for (const auto& w : cfg.warnings)
        expect(one_printable_line(w), "a warning is one printable line");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const ConfigSources sources = fake_sources();
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    const auto cfg = parse_config(text, sources);
    if (cfg) {
        check_config(*cfg);
    } else {
        expect(cfg.error().kind == RefresherError::Kind::config,
               "a config error is of kind config");
        expect(one_printable_line(cfg.error().message), "a config error is one printable line");
    }
    return 0;
}
