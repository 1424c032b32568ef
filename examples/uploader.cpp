// An HTTP client that takes its bearer token from tokenshm, per request.
//
//   uploader NAME URL [--requests N] [--min-valid S]
//
// Sends N (default 3) small POSTs to URL. Before each it asks the reader for
// credential NAME's token valid for at least S more seconds (default 60): no
// syscall, no lock, so there is no reason to cache a token in the client.
// When the server answers 401, the token was rejected before its expiry
// (revoked, rotated keys): the client reports that version to the refresher
// (Handle::report_invalid, over the control socket), waits for the version
// that replaces it, and retries once. A hundred clients reporting the same
// version cause one token request.
//
// Prints one line per answer, never the token:
//   request 2: HTTP 401 with token version 3; reported, retrying with version 4
//   request 2: HTTP 200 with token version 4
// Exit 0 when every request ended 2xx, 1 otherwise, 2 on usage errors.
// Segment: $TOKENSHM_SEGMENT, else "tokenshm".
#include <tokenshm/reader.hpp>

#include <curl/curl.h>

#include <charconv>
#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>

namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr milliseconds kWaitForToken = seconds(30);

struct Args {
    std::string name, url;
    int requests = 3;
    long min_valid_s = 60;
};

int usage(const char* why) {
    std::fprintf(stderr, "uploader: %s\nusage: uploader NAME URL [--requests N] [--min-valid S]\n",
                 why);
    return 2;
}

template <class T>
bool parse_int(std::string_view s, T& out, T lo, T hi) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc{} && p == s.data() + s.size() && out >= lo && out <= hi;
}

bool parse_args(int argc, char** argv, Args& a, const char*& why) {
    if (argc < 3) return (why = "expected NAME and URL"), false;
    a.name = argv[1];
    a.url = argv[2];
    if (a.url.rfind("http://", 0) != 0 && a.url.rfind("https://", 0) != 0)
        return (why = "URL must start with http:// or https://"), false;
    for (int i = 3; i < argc; i += 2) {
        const std::string_view opt = argv[i];
        if (i + 1 >= argc) return (why = "an option lacks its value"), false;
        if (opt == "--requests") {
            if (!parse_int(argv[i + 1], a.requests, 1, 1'000'000))
                return (why = "--requests must be in [1, 1000000]"), false;
        } else if (opt == "--min-valid") {
            if (!parse_int(argv[i + 1], a.min_valid_s, 0L, 86'400L * 365))
                return (why = "--min-valid must be seconds in [0, 31536000]"), false;
        } else {
            return (why = "unknown option"), false;
        }
    }
    return true;
}

// What a request needs from a Token, copied: the Token is a view that the
// next call on the handle may overwrite.
struct Credential {
    std::string header;  // "Authorization: <type> <token>"
    std::uint64_t version = 0;
    std::int64_t issued_at_ms = 0;  // tells a new token from the same one republished
};

tokenshm::Expected<Credential, tokenshm::Error> credential_of(
    const tokenshm::Expected<tokenshm::Token, tokenshm::Error>& t) {
    if (!t) return tokenshm::Unexpected{t.error()};
    Credential c;
    c.header = "Authorization: ";
    c.header.append(t->token_type()).append(" ").append(t->token());
    c.version = t->version();
    c.issued_at_ms = t->issued_at_ms();
    return c;
}

// The token valid for min_valid; when there is none (yet), or it expires
// too soon, waits for the refresher's next version.
tokenshm::Expected<Credential, tokenshm::Error> current(tokenshm::Handle& h,
                                                        milliseconds min_valid) {
    auto t = h.get(min_valid);
    if (t || (t.error() != tokenshm::Error::empty && t.error() != tokenshm::Error::expiring))
        return credential_of(t);
    auto seen = h.inspect();
    return credential_of(h.wait(seen ? seen->version() : 0, kWaitForToken, min_valid));
}

// After a 401 for `rejected`: the refresher's replacement for it. A record
// with the rejected token again (republished as stale after a failed try) is
// no replacement: wait on for one issued later.
tokenshm::Expected<Credential, tokenshm::Error> replacement(tokenshm::Handle& h,
                                                            const Credential& rejected,
                                                            milliseconds min_valid) {
    auto now = h.report_invalid(rejected.version);
    if (!now) return tokenshm::Unexpected{now.error()};
    if (*now > rejected.version) return current(h, min_valid);  // a newer one is already there
    const auto until = std::chrono::steady_clock::now() + kWaitForToken;
    std::uint64_t seen = rejected.version;
    for (;;) {
        const auto left =
            std::chrono::duration_cast<milliseconds>(until - std::chrono::steady_clock::now());
        if (left <= milliseconds(0)) return tokenshm::Unexpected{tokenshm::Error::timeout};
        auto t = h.wait(seen, left, min_valid);
        if (!t || t->issued_at_ms() != rejected.issued_at_ms) return credential_of(t);
        seen = t->version();
    }
}

size_t discard(char*, size_t size, size_t n, void*) {
    return size * n;
}

// One POST; the HTTP status, or -1 with the reason on stderr.
long post(CURL* curl, const std::string& url, const Credential& c, int i) {
    curl_slist* headers = curl_slist_append(nullptr, c.header.c_str());
    if (!headers) {
        std::fprintf(stderr, "uploader: request %d: out of memory\n", i);
        return -1;
    }
    const std::string body = "upload " + std::to_string(i);
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_COPYPOSTFIELDS, body.c_str());
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, 30L);
    const CURLcode rc = curl_easy_perform(curl);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, nullptr);
    curl_slist_free_all(headers);
    if (rc != CURLE_OK) {
        std::fprintf(stderr, "uploader: request %d: %s\n", i, curl_easy_strerror(rc));
        return -1;
    }
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    return status;
}

// One request with at most one retry after a 401; true when it ended 2xx.
bool request(CURL* curl, tokenshm::Handle& h, const Args& a, int i) {
    const milliseconds min_valid = seconds(a.min_valid_s);
    auto cred = current(h, min_valid);
    if (!cred) {
        std::fprintf(stderr, "uploader: request %d: %s\n", i, tokenshm::to_string(cred.error()));
        return false;
    }
    long status = post(curl, a.url, *cred, i);
    if (status == 401) {
        const Credential was = *cred;
        const std::uint64_t rejected = was.version;
        cred = replacement(h, was, min_valid);
        if (!cred) {
            std::printf("request %d: HTTP 401 with token version %llu; no replacement: %s\n", i,
                        static_cast<unsigned long long>(rejected),
                        tokenshm::to_string(cred.error()));
            return false;
        }
        std::printf(
            "request %d: HTTP 401 with token version %llu; reported, retrying with "
            "version %llu\n",
            i, static_cast<unsigned long long>(rejected),
            static_cast<unsigned long long>(cred->version));
        status = post(curl, a.url, *cred, i);
    }
    if (status < 0) return false;
    std::printf("request %d: HTTP %ld with token version %llu\n", i, status,
                static_cast<unsigned long long>(cred->version));
    std::fflush(stdout);
    return status >= 200 && status < 300;
}

}  // namespace

int main(int argc, char** argv) {
    Args a;
    const char* why = nullptr;
    if (!parse_args(argc, argv, a, why)) return usage(why);
    auto reader = tokenshm::Reader::open();
    if (!reader) {
        std::fprintf(stderr, "uploader: %s\n", reader.error().message.c_str());
        return 1;
    }
    auto handle = reader->lookup(a.name);
    if (!handle) {
        std::fprintf(stderr, "uploader: %s\n", handle.error().message.c_str());
        return 1;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        std::fprintf(stderr, "uploader: curl_global_init failed\n");
        return 1;
    }
    CURL* curl = curl_easy_init();
    if (!curl) {
        std::fprintf(stderr, "uploader: curl_easy_init failed\n");
        curl_global_cleanup();
        return 1;
    }
    bool ok = true;
    for (int i = 1; i <= a.requests; ++i)
        ok = request(curl, *handle, a, i) && ok;
    curl_easy_cleanup(curl);
    curl_global_cleanup();
    return ok ? 0 : 1;
}
