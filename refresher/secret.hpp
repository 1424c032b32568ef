// Secret: a string that cannot be printed. Client secrets, refresh tokens and
// access tokens are held in this type once the refresher has picked them out
// of what it read; the only way out is reveal(), which is easy to grep for.
// There is no operator<<, no implicit conversion, and formatting one is a
// compile error.
//
// What is wiped (explicit_bzero) and what is not:
//  - every Secret, when it is destroyed, assigned over or moved from;
//  - an HTTP response body (a WipedString) and the curl transport's copy of
//    the Authorization header, when the response or request goes;
//  - the read buffers of a refresh token file (state_store.cpp) and of a
//    client secret file (config.cpp), on every path.
// Not wiped: RapidJSON's parse of a response (its strings are copied into a
// Secret, then the document is freed unwiped); the process environment a
// client_secret_env comes from; the few bytes a short std::string leaves in
// its inline buffer when it is moved into a Secret; libcurl's and OpenSSL's
// own buffers (the request body on the socket, TLS records); and the shared
// segment, which holds the access token for readers by design and is never
// cleared by the refresher (it is mapped MADV_DONTDUMP, mode 0600 or 0640).
#pragma once

#include <string.h>

#include <algorithm>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>

namespace tokenshm::refresher {

class Secret {
  public:
    Secret() = default;
    explicit Secret(std::string value) : v_(std::move(value)) {}
    Secret(const Secret&) = default;
    Secret(Secret&& o) noexcept : v_(std::move(o.v_)) { o.wipe(); }
    Secret& operator=(const Secret& o) {
        if (this != &o) {
            wipe();
            v_ = o.v_;
        }
        return *this;
    }
    Secret& operator=(Secret&& o) noexcept {
        if (this != &o) {
            wipe();
            v_ = std::move(o.v_);
            o.wipe();
        }
        return *this;
    }
    ~Secret() { wipe(); }

    // The only way to the value. Call it where the value leaves the process
    // (HTTP body or header, the segment, the state file) and nowhere else.
    std::string_view reveal() const noexcept { return v_; }
    bool empty() const noexcept { return v_.empty(); }
    std::size_t size() const noexcept { return v_.size(); }
    friend bool operator==(const Secret& a, const Secret& b) noexcept { return a.v_ == b.v_; }

    // What logs and error messages may show instead of the value.
    static constexpr std::string_view redacted = "[redacted]";

  private:
    void wipe() noexcept {
        if (!v_.empty()) ::explicit_bzero(v_.data(), v_.size());
        v_.clear();
    }
    std::string v_;
};

std::ostream& operator<<(std::ostream&, const Secret&) = delete;

// WipedString: bytes that may hold a secret but must be parsed (an HTTP
// response body). Readable, unlike Secret, and wiped when destroyed, assigned
// over or cleared; growing it wipes the buffer it leaves.
class WipedString {
  public:
    WipedString() = default;
    WipedString(std::string value) : v_(std::move(value)) {}  // NOLINT: implicit on purpose
    WipedString(const char* value) : v_(value) {}             // NOLINT
    WipedString(const WipedString&) = default;
    WipedString(WipedString&& o) noexcept : v_(std::move(o.v_)) { o.clear(); }
    WipedString& operator=(WipedString o) noexcept {
        clear();
        v_.swap(o.v_);
        return *this;
    }
    ~WipedString() { clear(); }

    std::string_view view() const noexcept { return v_; }
    const char* data() const noexcept { return v_.data(); }
    std::size_t size() const noexcept { return v_.size(); }
    bool empty() const noexcept { return v_.empty(); }
    void reserve(std::size_t n) { v_.reserve(n); }
    void append(const char* data, std::size_t n) {
        if (n > v_.capacity() - v_.size()) {
            std::string bigger;
            bigger.reserve(std::max(v_.capacity() * 2, v_.size() + n));
            bigger.append(v_);
            clear();
            v_.swap(bigger);
        }
        v_.append(data, n);
    }
    void assign(std::size_t n, char c) {
        clear();
        v_.assign(n, c);
    }
    void clear() noexcept {
        if (!v_.empty()) ::explicit_bzero(v_.data(), v_.size());
        v_.clear();
    }
    friend bool operator==(const WipedString& a, std::string_view b) noexcept {
        return a.view() == b;
    }

  private:
    std::string v_;
};

// A secret file's content without its line end: one trailing "\r\n" or "\n"
// is dropped, the same way for every secret file (client secret, refresh
// token), whichever editor wrote it.
inline std::string_view without_line_end(std::string_view content) noexcept {
    if (content.ends_with("\r\n")) {
        content.remove_suffix(2);
    } else if (content.ends_with('\n')) {
        content.remove_suffix(1);
    }
    return content;
}

}  // namespace tokenshm::refresher
