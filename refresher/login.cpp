#include "login.hpp"

#include "curl_transport.hpp"
#include "oauth.hpp"
#include "state_store.hpp"

#include <tokenshm/shm/posix.hpp>

#include <openssl/evp.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <spawn.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <sstream>
#include <utility>
#include <vector>

extern char** environ;

namespace tokenshm::refresher {

namespace {

using Clock = std::chrono::steady_clock;

Unexpected<LoginError> login_error(int code, std::string message) {
    return Unexpected{LoginError{code, std::move(message)}};
}

std::string sys_message(const char* call) {
    return std::string(call) + ": " + std::strerror(errno);
}

// Printable ASCII only, at most `max` bytes: for words the server chose.
std::string printable(std::string_view s, std::size_t max) {
    std::string out;
    for (char c : s.substr(0, max))
        out += (c >= 0x20 && c <= 0x7e) ? c : '?';
    return out;
}

// `n` bytes from the kernel's CSPRNG, as base64url: a PKCE verifier (32
// bytes give the 43 characters RFC 7636 §4.1 asks for at least) or a state.
Expected<Secret, LoginError> random_base64url(std::size_t n) {
    WipedString bytes;
    bytes.assign(n, '\0');
    std::size_t got = 0;
    while (got < n) {
        const ssize_t r = ::getrandom(const_cast<char*>(bytes.data()) + got, n - got, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return login_error(login_exit::runtime, sys_message("getrandom"));
        got += static_cast<std::size_t>(r);
    }
    return Secret(base64url_encode(bytes.view()));
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Form decoding: "+" is a space, %XX a byte. Into a wiped buffer: a value may be the code.
bool form_decode(std::string_view in, WipedString& out) {
    for (std::size_t i = 0; i < in.size(); ++i) {
        char c = in[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            if (i + 2 >= in.size()) return false;
            const int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
            if (hi < 0 || lo < 0) return false;
            c = static_cast<char>(hi * 16 + lo);
            i += 2;
        }
        out.append(&c, 1);
    }
    return true;
}

}  // namespace

namespace login_detail {

std::string s256_challenge(std::string_view verifier) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(verifier.data(), verifier.size(), digest, &len, EVP_sha256(), nullptr) != 1)
        return {};
    return base64url_encode(std::string_view(reinterpret_cast<const char*>(digest), len));
}

Expected<Callback, std::string> parse_callback_query(std::string_view query) {
    Callback cb;
    std::vector<std::string> seen;
    while (!query.empty()) {
        const std::size_t amp = query.find('&');
        const std::string_view pair = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
        if (pair.empty()) continue;
        const std::size_t eq = pair.find('=');
        const std::string key = printable(pair.substr(0, eq), 64);
        WipedString value;
        if (!form_decode(eq == std::string_view::npos ? "" : pair.substr(eq + 1), value))
            return Unexpected{"the redirect's parameter " + key + " has a malformed %-escape"};
        if (std::find(seen.begin(), seen.end(), key) != seen.end())
            return Unexpected{"the redirect has parameter " + key + " twice"};
        seen.push_back(key);
        if (key == "code")
            cb.code = Secret(std::move(value));
        else if (key == "state")
            cb.state = std::string(value.view());
        else if (key == "error")
            cb.error = printable(value.view(), 64);
        else if (key == "error_description")
            cb.error_description = printable(value.view(), 200);
        else if (key == "iss")
            cb.iss = std::string(value.view());
    }
    return cb;
}

std::string login_scope(const std::optional<std::string>& configured,
                        const std::vector<std::string>& scopes_supported) {
    std::vector<std::string> words;
    if (configured) {
        std::istringstream in(*configured);
        for (std::string w; in >> w;)
            words.push_back(w);
    }
    const auto has = [](const std::vector<std::string>& v, const char* w) {
        return std::find(v.begin(), v.end(), w) != v.end();
    };
    if (has(scopes_supported, "offline_access") && !has(words, "offline_access")) {
        if (has(scopes_supported, "openid") && !has(words, "openid")) words.push_back("openid");
        words.push_back("offline_access");
    }
    std::string out;
    for (const auto& w : words)
        out += (out.empty() ? "" : " ") + w;
    return out;
}

}  // namespace login_detail

namespace {

using login_detail::Callback;

using shm::Fd;  // closes its descriptor when it goes

// Milliseconds left until `deadline`, at least 0, at most `cap`.
int ms_left(Clock::time_point deadline, std::chrono::milliseconds cap) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    return static_cast<int>(std::clamp(left, std::chrono::milliseconds(0), cap).count());
}

// The loopback listener the browser is redirected to. Only 127.0.0.1.
class LoopbackListener {
  public:
    static Expected<LoopbackListener, LoginError> open(std::uint16_t port) {
        Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (s.get() < 0) return login_error(login_exit::runtime, sys_message("socket"));
        const int one = 1;
        if (::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
            return login_error(login_exit::runtime, sys_message("setsockopt(SO_REUSEADDR)"));
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
            return login_error(
                login_exit::runtime,
                sys_message(("bind(127.0.0.1:" + std::to_string(port) + ")").c_str()) +
                    (port ? " (redirect_uri's port; is another login running?)" : ""));
        if (::listen(s.get(), 8) != 0) return login_error(login_exit::runtime, sys_message("listen"));
        socklen_t len = sizeof a;
        if (::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
            return login_error(login_exit::runtime, sys_message("getsockname"));
        LoopbackListener l;
        l.sock_ = std::move(s);
        l.port_ = ntohs(a.sin_port);
        return l;
    }

    std::uint16_t port() const noexcept { return port_; }

    // The next connection whose request is a GET of `path`; its query in
    // `query`. Others get 404 and are closed. Times out at `deadline`.
    Expected<Fd, LoginError> accept_callback(const std::string& path, Clock::time_point deadline,
                                             WipedString& query) {
        for (;;) {
            pollfd p{sock_.get(), POLLIN, 0};
            const int n = ::poll(&p, 1, ms_left(deadline, std::chrono::hours(1)));
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return login_error(login_exit::runtime, sys_message("poll"));
            if (n == 0)
                return login_error(login_exit::no_token,
                                   "no redirect from the browser arrived in time (--timeout)");
            Fd c(::accept4(sock_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
            if (c.get() < 0) {
                if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) continue;
                return login_error(login_exit::runtime, sys_message("accept4"));
            }
            WipedString head;
            if (!read_head(c.get(), deadline, head)) continue;  // a client that said nothing
            std::string_view target;
            if (!request_target(head.view(), target)) {
                respond(c.get(), "400 Bad Request", "Bad request", "tokenshm login expected a GET.");
                continue;
            }
            const std::size_t q = target.find('?');
            if (target.substr(0, q) != path) {
                respond(c.get(), "404 Not Found", "Not found", "This is tokenshm login's listener.");
                continue;
            }
            query = WipedString(std::string());
            if (q != std::string_view::npos)
                query.append(target.data() + q + 1, target.size() - q - 1);
            return c;
        }
    }

    // A small HTML page for the browser; escaped, no secret in it.
    static void respond(int fd, const char* status, const std::string& title,
                        const std::string& text) {
        std::string body = "<!doctype html><html><head><meta charset=\"utf-8\"><title>" +
                           html(title) + "</title></head><body><h1>" + html(title) + "</h1><p>" +
                           html(text) + "</p></body></html>\n";
        std::string msg =
            std::string("HTTP/1.1 ") + status +
            "\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n"
            "Connection: close\r\nContent-Length: " +
            std::to_string(body.size()) + "\r\n\r\n" + body;
        std::size_t off = 0;
        const auto until = Clock::now() + std::chrono::seconds(5);
        while (off < msg.size()) {
            const ssize_t w = ::send(fd, msg.data() + off, msg.size() - off, MSG_NOSIGNAL);
            if (w > 0) {
                off += static_cast<std::size_t>(w);
                continue;
            }
            if (w < 0 && errno != EAGAIN && errno != EINTR) return;  // the browser left
            pollfd p{fd, POLLOUT, 0};
            if (::poll(&p, 1, ms_left(until, std::chrono::seconds(5))) <= 0) return;
        }
    }

  private:
    static std::string html(const std::string& s) {
        std::string out;
        for (char c : s) {
            switch (c) {
                case '<':
                    out += "&lt;";
                    break;
                case '>':
                    out += "&gt;";
                    break;
                case '&':
                    out += "&amp;";
                    break;
                case '"':
                    out += "&quot;";
                    break;
                default:
                    out += c;
            }
        }
        return out;
    }

    // Reads up to the end of the request head (at most 16 KiB, 5 s: a browser
    // sends its request at once; an idle connection must not hold the real one up long).
    static bool read_head(int fd, Clock::time_point deadline, WipedString& head) {
        const auto until = std::min(deadline, Clock::now() + std::chrono::seconds(5));
        char buf[2048];
        while (head.size() < 16384 && head.view().find("\r\n\r\n") == std::string_view::npos) {
            pollfd p{fd, POLLIN, 0};
            const int n = ::poll(&p, 1, ms_left(until, std::chrono::seconds(10)));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
            const ssize_t r = ::recv(fd, buf, sizeof buf, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) return false;
            head.append(buf, static_cast<std::size_t>(r));
        }
        ::explicit_bzero(buf, sizeof buf);
        return head.view().find("\r\n") != std::string_view::npos;
    }

    // "GET <target> HTTP/1.x" -> target.
    static bool request_target(std::string_view head, std::string_view& target) {
        const std::string_view line = head.substr(0, head.find("\r\n"));
        if (line.substr(0, 4) != "GET ") return false;
        const std::size_t sp = line.find(' ', 4);
        if (sp == std::string_view::npos || line.substr(sp + 1, 5) != "HTTP/") return false;
        target = line.substr(4, sp - 4);
        return !target.empty() && target[0] == '/';
    }

    Fd sock_;
    std::uint16_t port_ = 0;
};

// One request through the transport, waiting for its answer (the request
// carries its own timeout, so this ends).
HttpResponse fetch(Transport& t, HttpRequest request) {
    t.start(1, std::move(request));
    for (;;) {
        auto done = t.poll(std::chrono::seconds(1), -1);
        if (!done.empty()) return std::move(done.front().second);
    }
}

// The issuer's metadata: each discovery URL in turn, the first good answer.
Expected<AuthorizationServer, LoginError> discover(Transport& t, const CredentialConfig& c) {
    std::string errors;
    for (const EndpointUrl& url : discovery_urls(*c.issuer)) {
        auto server =
            parse_authorization_server(fetch(t, build_discovery_request(url, c)), *c.issuer);
        if (server) return std::move(*server);
        errors += (errors.empty() ? "" : "; ") + server.error().message;
    }
    return login_error(login_exit::runtime,
                       "discovery at " + c.issuer->text() + " failed: " + errors);
}

std::string authorization_url(const AuthorizationServer& server, const CredentialConfig& c,
                              const std::string& redirect_uri, const Secret& state,
                              const std::string& challenge) {
    const std::string scope = login_detail::login_scope(c.scope, server.scopes_supported);
    std::string url = server.authorization_endpoint.text();
    url += url.find('?') == std::string::npos ? '?' : '&';
    const auto add = [&url](std::string_view k, std::string_view v) {
        if (url.back() != '?' && url.back() != '&') url += '&';
        url += form_urlencode(k) + "=" + form_urlencode(v);
    };
    add("response_type", "code");
    add("client_id", c.client_id);
    add("redirect_uri", redirect_uri);
    if (!scope.empty()) add("scope", scope);
    // OpenID Connect Core §11: offline_access is granted only with consent.
    if (scope.find("offline_access") != std::string::npos) add("prompt", "consent");
    add("state", state.reveal());
    add("code_challenge", challenge);
    add("code_challenge_method", "S256");
    for (const auto& [k, v] : c.extra_params)
        add(k, v);
    return url;
}

// Runs `xdg-open URL` without waiting for the browser; a failure is a note.
void open_in_browser(const std::string& url, const LoginOptions& o) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    pid_t pid = -1;
    std::string arg0 = "xdg-open";
    std::string arg1 = url;
    char* argv[] = {arg0.data(), arg1.data(), nullptr};
    const int rc = ::posix_spawnp(&pid, "xdg-open", &fa, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0 && o.note)
        o.note(std::string("could not run xdg-open (") + std::strerror(rc) +
               "); open the URL yourself");
}

bool state_matches(const Callback& cb, const Secret& state) {
    return cb.state.size() == state.size() &&
           CRYPTO_memcmp(cb.state.data(), state.reveal().data(), state.size()) == 0;
}

// The redirect must carry our state (else it is not the answer to our
// request: a forged or stale redirect), then either a code or an error.
Expected<Done, LoginError> check_callback(const Callback& cb, const Secret& state,
                                          const AuthorizationServer& server,
                                          const EndpointUrl& issuer) {
    if (!state_matches(cb, state))
        return login_error(login_exit::no_token,
                           "the redirect's state does not match this login's (a stale or forged "
                           "redirect); nothing was stored");
    if (cb.iss && *cb.iss != issuer.text() && *cb.iss + "/" != issuer.text() &&
        *cb.iss != issuer.text() + "/")
        return login_error(login_exit::no_token,
                           "the redirect's iss is not the configured issuer "
                           "(RFC 9207: a mix-up); nothing was stored");
    if (!cb.iss && server.iss_parameter && cb.error.empty())
        return login_error(login_exit::no_token,
                           "the redirect lacks iss, which the issuer promises (RFC 9207)");
    if (!cb.error.empty())
        return login_error(
            login_exit::no_token,
            "the authorization server answered error=" + cb.error +
                (cb.error_description.empty() ? "" : " (" + cb.error_description + ")") +
                "; nothing was stored");
    if (cb.code.empty())
        return login_error(login_exit::no_token, "the redirect carries neither code nor error");
    return Done{};
}

// The code for tokens; the refresh token, or why there is none.
Expected<Secret, LoginError> exchange(Transport& t, const CredentialConfig& c, const Config& cfg,
                                      const EndpointUrl& token_endpoint, const Secret& code,
                                      const std::string& redirect_uri, const Secret& verifier) {
    const HttpResponse response =
        fetch(t, build_code_exchange_request(c, token_endpoint, code, redirect_uri, verifier));
    TokenOutcome outcome = parse_token_response(response, c.default_lifetime, cfg.max_token_bytes);
    if (!outcome.ok()) {
        const TokenFailure& f = outcome.failure();
        return login_error(f.status == 0 ? login_exit::runtime : login_exit::no_token,
                           "exchanging the code failed: " + f.message);
    }
    if (!outcome.success().refresh_token)
        return login_error(login_exit::no_token,
                           "the token endpoint issued no refresh token (is the client allowed the "
                           "refresh_token grant, and the scope one that yields it?)");
    return std::move(*outcome.success().refresh_token);
}

// Saves like a rotation would, minus the ledger of spent predecessors: a
// freshly issued token replaces nothing spent. One already in the ledger
// would never be sent, so it is refused here rather than stored.
Expected<std::string, LoginError> store_refresh_token(StateStore& store, const std::string& name,
                                                      const Secret& token) {
    auto spent = store.spent_by(refresh_token_fingerprint(token.reveal()));
    if (!spent) return login_error(login_exit::runtime, spent.error().message);
    if (*spent)
        return login_error(login_exit::no_token,
                           "the server issued a refresh token the spent ledger already holds; "
                           "nothing was stored");
    if (auto ok = store.save(name, token); !ok)
        return login_error(login_exit::runtime, ok.error().message);
    return store.token_path(name);
}

// The configured credential, if login can serve it.
Expected<const CredentialConfig*, LoginError> login_credential(const Config& cfg,
                                                               const std::string& name) {
    const auto it = std::find_if(cfg.credentials.begin(), cfg.credentials.end(),
                                 [&](const CredentialConfig& c) { return c.name == name; });
    if (it == cfg.credentials.end())
        return login_error(
            login_exit::no_such_credential,
            "no credential named '" + printable(name, 64) + "' in the configuration");
    if (it->grant != Grant::refresh_token)
        return login_error(login_exit::usage, "credential " + name +
                                                  " uses grant client_credentials, which needs no "
                                                  "login");
    if (!it->issuer)
        return login_error(login_exit::usage,
                           "credential " + name +
                               ": login needs issuer (its authorization_endpoint comes from "
                               "discovery); token_endpoint alone is not enough");
    return &*it;
}

struct Prepared {
    AuthorizationServer server;
    Secret verifier;
    Secret state;
};

Expected<Prepared, LoginError> prepare(Transport& t, const CredentialConfig& c) {
    auto server = discover(t, c);
    if (!server) return Unexpected{server.error()};
    auto verifier = random_base64url(32);
    if (!verifier) return Unexpected{verifier.error()};
    auto state = random_base64url(16);
    if (!state) return Unexpected{state.error()};
    return Prepared{std::move(*server), std::move(*verifier), std::move(*state)};
}

// From the redirect to the stored token; the browser is told how it went.
Expected<std::string, LoginError> finish(Transport& t, const Config& cfg, const CredentialConfig& c,
                                         const Prepared& p, LoopbackListener& listener,
                                         const std::string& redirect, Clock::time_point deadline,
                                         StateStore& store) {
    // A redirect without this login's state is not its answer (a stale tab,
    // or any local process or web page requesting the callback): it gets a
    // 400 and the login waits on, so it cannot end a person's login.
    for (;;) {
        WipedString query;
        auto conn = listener.accept_callback(c.redirect_uri ? c.redirect_uri->path : "/callback",
                                             deadline, query);
        if (!conn) return Unexpected{conn.error()};
        auto cb = login_detail::parse_callback_query(query.view());
        if (cb && !state_matches(*cb, p.state)) {
            LoopbackListener::respond(conn->get(), "400 Bad Request",
                                      "tokenshm: not this login's redirect",
                                      "Its state is not the one this login sent; still waiting.");
            continue;
        }
        auto result = [&]() -> Expected<std::string, LoginError> {
            if (!cb) return login_error(login_exit::no_token, cb.error() + "; nothing was stored");
            if (auto ok = check_callback(*cb, p.state, p.server, *c.issuer); !ok)
                return Unexpected{ok.error()};
            auto rt = exchange(t, c, cfg, p.server.token_endpoint, cb->code, redirect, p.verifier);
            if (!rt) return Unexpected{rt.error()};
            return store_refresh_token(store, c.name, *rt);
        }();
        if (result)
            LoopbackListener::respond(
                conn->get(), "200 OK", "tokenshm: logged in",
                "The refresh token for " + c.name + " is stored. You can close this page.");
        else
            LoopbackListener::respond(conn->get(), "400 Bad Request", "tokenshm: login failed",
                                      result.error().message);
        return result;
    }
}

}  // namespace

Expected<LoginResult, LoginError> run_login(const LoginOptions& o) {
    auto cfg = load_config(o.config_path);
    if (!cfg) return login_error(login_exit::usage, cfg.error().message);
    auto cred = login_credential(*cfg, o.name);
    if (!cred) return Unexpected{cred.error()};
    const CredentialConfig& c = **cred;

    // The state directory must take the token before a person is asked to log in.
    PosixFileSystem fs;
    StateStore store(fs, cfg->state_dir);
    if (auto ok = store.prepare(); !ok) return login_error(login_exit::runtime, ok.error().message);
    auto transport = CurlTransport::create();
    if (!transport) return login_error(login_exit::runtime, transport.error().message);
    auto prepared = prepare(**transport, c);
    if (!prepared) return Unexpected{prepared.error()};
    auto listener = LoopbackListener::open(c.redirect_uri ? c.redirect_uri->port : 0);
    if (!listener) return Unexpected{listener.error()};
    const std::string redirect =
        (c.redirect_uri ? *c.redirect_uri : RedirectUri{}).text(listener->port());

    const std::string url =
        authorization_url(prepared->server, c, redirect, prepared->state,
                          login_detail::s256_challenge(prepared->verifier.reveal()));
    const auto deadline = Clock::now() + o.timeout;
    if (o.show_url) o.show_url(url, redirect);
    if (o.open_browser) open_in_browser(url, o);
    auto path = finish(**transport, *cfg, c, *prepared, *listener, redirect, deadline, store);
    if (!path) return Unexpected{path.error()};
    return LoginResult{std::move(*path), cfg->segment};
}

}  // namespace tokenshm::refresher
