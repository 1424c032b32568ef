// Fuzz target: the control socket's requests (Daemon::control_answer in
// refresher/control_ops.cpp) on arbitrary bytes. The input is split at
// newlines like the socket splits a client's stream, and each line is
// answered by one daemon (a real segment, a transport that sends nothing, a
// fixed clock), so sequences of refresh and invalid reach the coalescing.
//
// Promises checked (SPEC.md, "The control socket"): every answer is one line
// of valid UTF-8 JSON, an object whose "ok" is a bool; an error carries one of
// SPEC's words and a message that is one printable line; a success names a
// configured credential (or is a status) and never carries the token.
#include "daemon.hpp"
#include "fuzz_check.hpp"
#include "log.hpp"

#include <rapidjson/document.h>

#include <tokenshm/shm/posix.hpp>

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>

namespace {

using namespace tokenshm::refresher;
using tokenshm::fuzz::expect;
using tokenshm::fuzz::one_printable_line;

class NoTransport : public Transport {
  public:
    void start(std::uint64_t, HttpRequest) override { ++in_flight_; }
    std::vector<std::pair<std::uint64_t, HttpResponse>> poll(std::chrono::milliseconds,
                                                             int) override {
        return {};
    }
    std::size_t in_flight() const override { return in_flight_; }

  private:
    std::size_t in_flight_ = 0;
};

struct World {
    std::string segment = "tokenshm-fuzz-control-" + std::to_string(::getpid());
    std::string dir;
    NoTransport transport;
    PosixFileSystem posix;
    std::unique_ptr<Daemon> daemon;

    World() {
        set_log_sink([](std::string_view) {});
        char t[] = "/tmp/tokenshm-fuzz-control-XXXXXX";
        if (::mkdtemp(t) == nullptr) std::abort();
        dir = t;
        Config cfg;
        cfg.segment = segment;
        cfg.state_dir = dir + "/state";
        CredentialConfig c;
        c.name = "alpha";
        c.token_endpoint = EndpointUrl::parse("https://alpha.example.test/token").value();
        c.grant = Grant::client_credentials;
        c.client_id = "alpha-client";
        c.client_secret = Secret("secret-alpha");
        c.min_interval = std::chrono::seconds(5);
        cfg.credentials.push_back(c);
        auto d = Daemon::start(cfg, DaemonDeps{&transport, &posix,
                                               [] {
                                                   return Now{7'200'000, 1'700'000'000'000};
                                               },
                                               [] { return 0.5; }});
        if (!d) std::abort();
        daemon = std::move(*d);
    }
    // At exit (a static's destructor): the segment and the state directory go.
    ~World() {
        daemon.reset();
        (void)tokenshm::shm::sys::shm_unlink("/" + segment);
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
    }
};

bool known_error_word(std::string_view w) {
    return w == "bad_request" || w == "no_such_credential" || w == "refused" || w == "busy" ||
           w == "reauth";
}

void check_answer(std::string_view line, const std::string& a) {
    expect(a.find('\n') == std::string::npos, "an answer is one line");
    rapidjson::Document d;
    d.Parse<rapidjson::kParseValidateEncodingFlag>(a.data(), a.size());
    expect(!d.HasParseError() && d.IsObject(), "an answer is a JSON object in valid UTF-8");
    expect(d.HasMember("ok") && d["ok"].IsBool(), "an answer has a bool ok");
    // Unless the client sent it itself (an unknown key is quoted back).
    if (line.find("secret-alpha") == std::string_view::npos)
        expect(a.find("secret-alpha") == std::string::npos, "an answer never holds the secret");
    if (!d["ok"].GetBool()) {
        expect(d.HasMember("error") && d["error"].IsString() &&
                   known_error_word(d["error"].GetString()),
               "an error answer carries one of SPEC's words");
        expect(d.HasMember("message") && d["message"].IsString() &&
                   one_printable_line(
                       std::string_view(d["message"].GetString(), d["message"].GetStringLength())),
               "an error's message is one printable line");
        return;
    }
    if (d.HasMember("name"))
        expect(d["name"].IsString() && std::string_view(d["name"].GetString()) == "alpha",
               "a success names the configured credential");
    else
        expect(d.HasMember("credentials"), "a success is a refresh/invalid answer or a status");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static World world;
    std::string_view in(reinterpret_cast<const char*>(data), size);
    for (int lines = 0; lines < 64; ++lines) {
        const std::size_t nl = in.find('\n');
        const std::string_view line = in.substr(0, nl);
        check_answer(line, world.daemon->control_answer(line));
        if (nl == std::string_view::npos) break;
        in.remove_prefix(nl + 1);
    }
    return 0;
}
