// A Transport that sends nothing: it keeps the requests the daemon starts,
// and a test answers them by hand (answer) with responses built here. Tests
// of the daemon drive it with a fake clock (on_poll), so nothing sleeps.
#pragma once

#include "transport.hpp"

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace tokenshm::test {

class FakeTransport : public refresher::Transport {
  public:
    using HttpRequest = refresher::HttpRequest;
    using HttpResponse = refresher::HttpResponse;

    std::map<std::uint64_t, HttpRequest> pending;  // started, not answered
    std::deque<std::pair<std::uint64_t, HttpResponse>> ready;
    int started = 0;
    std::vector<std::string> bodies;  // every request body sent, in order
    std::function<void()> on_poll;    // e.g. moves a fake clock on

    void start(std::uint64_t id, HttpRequest request) override {
        ++started;
        bodies.emplace_back(request.body.reveal());
        pending.emplace(id, std::move(request));
    }
    std::vector<std::pair<std::uint64_t, HttpResponse>> poll(std::chrono::milliseconds,
                                                             int) override {
        if (on_poll) on_poll();
        std::vector<std::pair<std::uint64_t, HttpResponse>> out(ready.begin(), ready.end());
        ready.clear();
        return out;
    }
    std::size_t in_flight() const override { return pending.size() + ready.size(); }

    // Answers the pending request whose URL contains `url_part`.
    bool answer(const std::string& url_part, HttpResponse r) {
        for (auto it = pending.begin(); it != pending.end(); ++it) {
            if (it->second.url.text().find(url_part) == std::string::npos) continue;
            ready.emplace_back(it->first, std::move(r));
            pending.erase(it);
            return true;
        }
        return false;
    }
    // The body of the pending request whose URL contains `url_part`.
    std::string body_for(const std::string& url_part) const {
        for (const auto& [id, r] : pending)
            if (r.url.text().find(url_part) != std::string::npos)
                return std::string(r.body.reveal());
        return {};
    }
    // How many request bodies sent so far presented `refresh_token`.
    std::size_t sent_with(const std::string& refresh_token) const {
        std::size_t n = 0;
        for (const auto& b : bodies)
            if (b.find("refresh_token=" + refresh_token + "&") != std::string::npos ||
                b.ends_with("refresh_token=" + refresh_token))
                ++n;
        return n;
    }
};

// A token endpoint's 200: `rt`, when given, is a rotated refresh token.
inline refresher::HttpResponse token_response(const std::string& at, int expires_in,
                                              const std::string& rt = {}) {
    refresher::HttpResponse r;
    r.outcome = refresher::HttpResponse::Outcome::response;
    r.status = 200;
    r.content_type = "application/json";
    r.body = R"({"access_token":")" + at + R"(","token_type":"Bearer","expires_in":)" +
             std::to_string(expires_in) + (rt.empty() ? "" : R"(,"refresh_token":")" + rt + '"') +
             "}";
    return r;
}

}  // namespace tokenshm::test
