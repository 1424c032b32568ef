// The refresher's configuration (SPEC.md, "Configuration"), parsed and
// validated strictly. Every error names the key's path, e.g.
//   credentials[1].grant: expected "refresh_token" or "client_credentials"
#pragma once

#include "endpoint_url.hpp"
#include "error.hpp"
#include "redirect_uri.hpp"
#include "secret.hpp"

#include <tokenshm/expected.hpp>

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tokenshm::refresher {

enum class Grant { refresh_token, client_credentials };
enum class AuthMethod { client_secret_basic, client_secret_post };
enum class BasicEncoding { form, raw };

const char* to_string(Grant g) noexcept;
const char* to_string(AuthMethod m) noexcept;

// What a sink file holds (SPEC.md, "Configuration"): the bare token,
// "Authorization: <Type> <token>", or a JSON object; each ends with "\n".
enum class SinkFormat { token, header, json };
const char* to_string(SinkFormat f) noexcept;

// A file a credential's token is copied to, for tools that only read files.
struct SinkConfig {
    std::string path;    // absolute
    mode_t mode = 0600;  // never readable or writable by others
    std::optional<std::string> group;
    std::optional<gid_t> group_id;  // resolved from `group`
    SinkFormat format = SinkFormat::token;
    friend bool operator==(const SinkConfig&, const SinkConfig&) = default;
};

struct CredentialConfig {
    std::string name;                           // shm::valid_credential_name, unique
    std::optional<EndpointUrl> issuer;          // exactly one of issuer and
    std::optional<EndpointUrl> token_endpoint;  // token_endpoint
    Grant grant = Grant::refresh_token;
    std::string client_id;
    Secret client_secret;
    std::string client_secret_source;  // "file /etc/x" or "env NAME": for messages
    AuthMethod auth_method = AuthMethod::client_secret_basic;
    BasicEncoding basic_encoding = BasicEncoding::form;
    std::optional<std::string> refresh_token_file;
    std::optional<std::string> scope;
    std::vector<std::pair<std::string, std::string>> extra_params;  // in file order
    std::chrono::seconds default_lifetime{3600};
    std::chrono::seconds refresh_before{300};
    std::chrono::seconds min_interval{5};
    std::chrono::seconds min_backoff{1};
    std::chrono::seconds max_backoff{300};
    std::chrono::seconds timeout{20};
    std::optional<std::string> ca_file;
    // Where `tokenshm login` listens for the browser; none: a free port.
    std::optional<RedirectUri> redirect_uri;
    // Sinks are settings too: a reload that changes them rebuilds the
    // credential like any other change (refresh_soon, min_interval_s holds).
    std::vector<SinkConfig> sinks;

    // Same settings and same secret: a reload leaves such a credential alone.
    friend bool operator==(const CredentialConfig&, const CredentialConfig&) = default;
};

// etcd, where the hosts of one deployment elect a refresher per credential
// and publish its tokens (issue 12; SPEC.md's `coordination.etcd`).
struct EtcdConfig {
    // Client URLs of etcd members, tried in turn: https://, or http:// to a
    // loopback address; scheme, host and port only. At least one, unique.
    std::vector<EndpointUrl> endpoints;
    // Every key of this deployment starts with it: "/" then printable ASCII
    // without spaces, no trailing "/".
    std::string prefix;
    std::chrono::seconds lease_ttl{15};
    std::optional<std::string> ca_file;    // a further CA for https endpoints
    std::optional<std::string> cert_file;  // a client certificate, with key_file
    std::optional<std::string> key_file;
    std::optional<std::string> username;  // etcd auth, with password_file
    std::optional<std::string> password_file;
    Secret password;  // read from password_file (one line) when a username is given
    friend bool operator==(const EtcdConfig&, const EtcdConfig&) = default;
};

// Several hosts, one refresher per credential (SPEC.md, "Configuration").
struct CoordinationConfig {
    EtcdConfig etcd;
    // The AES-256 key refresh tokens are sealed with before they go to etcd
    // (seal.hpp; read by load_seal_key, which checks its mode and form).
    std::string seal_key_file;
    friend bool operator==(const CoordinationConfig&, const CoordinationConfig&) = default;
};

struct Config {
    std::string segment = "tokenshm";
    mode_t mode = 0600;
    std::optional<std::string> group;
    std::optional<gid_t> group_id;  // resolved from `group`
    std::string state_dir = "/var/lib/tokenshm";
    std::string control_socket;  // default "/run/tokenshm/<segment>.sock"
    std::uint32_t max_token_bytes = 8192;
    std::vector<CredentialConfig> credentials;
    // node_exporter textfile the refresher keeps current; none when empty.
    std::string metrics_textfile;
    // None: one host, as before.
    std::optional<CoordinationConfig> coordination;
    // Non-fatal findings (e.g. a secret file readable by group or others).
    std::vector<std::string> warnings;
};

// Where configuration reads come from; tests substitute both.
struct ConfigSources {
    std::function<std::optional<std::string>(const std::string& name)> getenv;
    // Returns the file's contents, or a config error ("/x: No such file or
    // directory"). `loose_mode` is set when the file is readable by group or others.
    // The system's reads through read_regular_file (regular_file.hpp): never
    // blocks on a FIFO, refuses a file owned by another uid than ours or root.
    std::function<Expected<WipedString, RefresherError>(const std::string& path, bool& loose_mode)>
        read_file;
    // Whether a file another library reads (ca_file) exists, is a regular
    // file we may trust and can be opened for reading; a config error if not.
    std::function<Expected<Done, RefresherError>(const std::string& path)> check_file;
    std::function<std::optional<gid_t>(const std::string& group)> group_id;
    static ConfigSources system();
};

// Parses and validates. The error is a config error: one line naming the
// key's path (load_config: the file's path first).
Expected<Config, RefresherError> parse_config(
    std::string_view json, const ConfigSources& sources = ConfigSources::system());
Expected<Config, RefresherError> load_config(
    const std::string& path, const ConfigSources& sources = ConfigSources::system());

}  // namespace tokenshm::refresher
