// Secret: a string that cannot be printed. Client secrets, refresh tokens and
// access tokens are held in this type once the refresher has picked them out
// of what it read; the only way out is reveal(), which is easy to grep for.
// There is no operator<<, no implicit conversion, and formatting one is a
// compile error.
//
// What is wiped (explicit_bzero) and what is not:
//  - every Secret and WipedString, when it is destroyed, assigned over,
//    moved from or grown (their whole buffer, not just size() bytes);
//  - the token request: its form body and the Basic header are built in
//    WipedStrings, encoded in place (oauth.cpp), never in a plain string;
//  - libcurl's and OpenSSL's heaps: every block they free (the request
//    composed, the response received, TLS records, header list copies) is
//    wiped first (wiping_heap.hpp, installed before libcurl starts);
//  - RapidJSON's parse of a token response (its stack and value pool are on
//    the same wiping heap) and the HTTP response body (a WipedString);
//  - the read buffers of a client secret file and of the configuration
//    (regular_file.cpp), and of a refresh token file (state_store.cpp);
//  - the seal key (SealKey) and an opened sealed token (seal.cpp), etcd's
//    request and answer bodies, its auth token and RapidJSON's parse of its
//    answers (etcd_client.cpp, wiping_json.hpp), and a watch stream's buffer,
//    request and parse (etcd_watch.cpp, etcd_watch_curl.cpp).
//  - a publication's payload (the record and the refresh token) as composed
//    before sealing and as parsed after opening (publication.cpp).
// Not wiped: the process environment a client_secret_env comes from; the
// stack (a few bytes of a short string moved into a Secret, read buffers);
// memory returned to the kernel by munmap; and the shared
// segment, which holds the access token for readers by design and is never
// cleared by the refresher (it is mapped MADV_DONTDUMP, mode 0600 or 0640).
// The refresher is not dumpable (main.cpp), so none of it reaches a core
// file unless --allow-core-dumps asks for that.
#pragma once

#include <string.h>

#include <algorithm>
#include <concepts>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>

namespace tokenshm::refresher {

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
    // Wipes the whole buffer, not just size() bytes: a short string moved
    // away leaves its bytes in the inline buffer, a shrunk one past size().
    void clear() noexcept {
        ::explicit_bzero(v_.data(), v_.capacity());
        v_.clear();
    }
    friend bool operator==(const WipedString& a, std::string_view b) noexcept {
        return a.view() == b;
    }

  private:
    friend class Secret;
    std::string v_;
};

class Secret {
  public:
    Secret() = default;
    explicit Secret(std::string value) : v_(std::move(value)) {}
    // Takes the bytes over without a copy; `from` is left empty and wiped.
    // (A template so that a string literal does not find two ways here.)
    template <class W>
    requires std::same_as<W, WipedString>
    explicit Secret(W&& from) noexcept : v_(std::move(from.v_)) { from.clear(); }
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
        ::explicit_bzero(v_.data(), v_.capacity());
        v_.clear();
    }
    std::string v_;
};

std::ostream& operator<<(std::ostream&, const Secret&) = delete;

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
