// The C ABI over the C++ reader. No exception crosses it: the only calls
// that may throw (allocation in open/lookup) are caught here.
#include <tokenshm/tokenshm.h>
#include <tokenshm/reader.hpp>

#include <cstring>
#include <new>

struct tokenshm_reader {
    tokenshm::Reader reader;
};
struct tokenshm_handle {
    tokenshm::Handle handle;
};

namespace {

// The C enums mirror the C++ ones value for value; these keep them tied.
using tokenshm::Error;
using tokenshm::State;
constexpr bool same(tokenshm_error c, Error e) {
    return static_cast<int>(c) == static_cast<int>(e);
}
static_assert(same(TOKENSHM_ERR_NO_SEGMENT, Error::no_segment));
static_assert(same(TOKENSHM_ERR_INCOMPATIBLE, Error::incompatible));
static_assert(same(TOKENSHM_ERR_UNTRUSTED, Error::untrusted));
static_assert(same(TOKENSHM_ERR_NO_SUCH_CREDENTIAL, Error::no_such_credential));
static_assert(same(TOKENSHM_ERR_EMPTY, Error::empty));
static_assert(same(TOKENSHM_ERR_EXPIRED, Error::expired));
static_assert(same(TOKENSHM_ERR_EXPIRING, Error::expiring));
static_assert(same(TOKENSHM_ERR_REAUTH, Error::reauth));
static_assert(same(TOKENSHM_ERR_TIMEOUT, Error::timeout));
static_assert(same(TOKENSHM_ERR_BUSY, Error::busy));
static_assert(same(TOKENSHM_ERR_INVALID_ARGUMENT, Error::invalid_argument));
static_assert(same(TOKENSHM_ERR_BUFFER_TOO_SMALL, Error::buffer_too_small));
static_assert(same(TOKENSHM_ERR_SYSTEM, Error::system));
static_assert(same(TOKENSHM_ERR_UNREACHABLE, Error::unreachable));
static_assert(same(TOKENSHM_ERR_REFUSED, Error::refused));
static_assert(TOKENSHM_OK == 0);  // no Error has 0: success is not an error value

constexpr bool same(tokenshm_state c, State s, unsigned layout) {
    return static_cast<std::uint32_t>(c) == static_cast<std::uint32_t>(s) &&
           static_cast<std::uint32_t>(c) == layout;
}
static_assert(same(TOKENSHM_TOKEN_EMPTY, State::empty, TOKENSHM_STATE_EMPTY));
static_assert(same(TOKENSHM_TOKEN_VALID, State::valid, TOKENSHM_STATE_VALID));
static_assert(same(TOKENSHM_TOKEN_STALE, State::stale, TOKENSHM_STATE_STALE));
static_assert(same(TOKENSHM_TOKEN_EXPIRED, State::expired, TOKENSHM_STATE_EXPIRED));
static_assert(same(TOKENSHM_TOKEN_REAUTH, State::reauth, TOKENSHM_STATE_REAUTH));

tokenshm_error c_error(tokenshm::Error e) noexcept {
    return static_cast<tokenshm_error>(e);
}

void fill(const tokenshm::Token& t, tokenshm_token* out) noexcept {
    out->token = t.token().data();
    out->token_len = t.token().size();
    out->token_type = t.token_type().data();
    out->token_type_len = t.token_type().size();
    out->scope = t.scope().data();
    out->scope_len = t.scope().size();
    out->last_error = t.last_error().data();
    out->last_error_len = t.last_error().size();
    out->expires_at_ms = t.expires_at_ms();
    out->issued_at_ms = t.issued_at_ms();
    out->next_refresh_ms = t.next_refresh_ms();
    out->last_attempt_ms = t.last_attempt_ms();
    out->version = t.version();
    out->state = static_cast<std::uint32_t>(t.state());
    out->failures = t.failures();
    out->heartbeat_age_ms = t.heartbeat_age_ms();
    out->writer_alive = t.writer_alive() ? 1 : 0;
    out->reserved = 0;
}

void put_message(char* buf, size_t len, const std::string& msg) noexcept {
    if (buf == nullptr || len == 0) return;
    const size_t n = msg.size() < len - 1 ? msg.size() : len - 1;
    std::memcpy(buf, msg.data(), n);
    buf[n] = '\0';
}

}  // namespace

extern "C" {

tokenshm_error tokenshm_open(const char* segment, tokenshm_reader** out) {
    return tokenshm_open_ex(segment, nullptr, out, nullptr, 0);
}

tokenshm_error tokenshm_open_ex(const char* segment, const tokenshm_open_options* options,
                                tokenshm_reader** out, char* errbuf, size_t errbuf_len) {
    if (out == nullptr) return TOKENSHM_ERR_INVALID_ARGUMENT;
    *out = nullptr;
    try {
        tokenshm::OpenOptions o;
        if (options != nullptr && options->trusted_uid >= 0)
            o.trusted_uid = static_cast<uid_t>(options->trusted_uid);
        auto r = tokenshm::Reader::open(segment == nullptr ? "" : segment, o);
        if (!r) {
            put_message(errbuf, errbuf_len, r.error().message);
            return c_error(r.error().code);
        }
        *out = new tokenshm_reader{std::move(*r)};
        put_message(errbuf, errbuf_len, "");
        return TOKENSHM_OK;
    } catch (const std::bad_alloc&) {
        put_message(errbuf, errbuf_len, "out of memory");
        return TOKENSHM_ERR_SYSTEM;
    } catch (...) {
        put_message(errbuf, errbuf_len, "unexpected error");
        return TOKENSHM_ERR_SYSTEM;
    }
}

void tokenshm_close(tokenshm_reader* reader) {
    delete reader;
}

tokenshm_error tokenshm_lookup(tokenshm_reader* reader, const char* name, tokenshm_handle** out) {
    if (reader == nullptr || name == nullptr || out == nullptr)
        return TOKENSHM_ERR_INVALID_ARGUMENT;
    *out = nullptr;
    try {
        auto h = reader->reader.lookup(name);
        if (!h) return c_error(h.error().code);
        *out = new tokenshm_handle{std::move(*h)};
        return TOKENSHM_OK;
    } catch (...) {
        return TOKENSHM_ERR_SYSTEM;
    }
}

void tokenshm_handle_close(tokenshm_handle* handle) {
    delete handle;
}

tokenshm_error tokenshm_get(tokenshm_handle* handle, int64_t min_valid_ms, tokenshm_token* out) {
    if (handle == nullptr || out == nullptr) return TOKENSHM_ERR_INVALID_ARGUMENT;
    auto t = handle->handle.get(std::chrono::milliseconds(min_valid_ms));
    if (!t) return c_error(t.error());
    fill(*t, out);
    return TOKENSHM_OK;
}

tokenshm_error tokenshm_get_into(tokenshm_handle* handle, int64_t min_valid_ms, char* buf,
                                 size_t cap, size_t* token_len, tokenshm_token* meta) {
    if (handle == nullptr || buf == nullptr) return TOKENSHM_ERR_INVALID_ARGUMENT;
    auto t = handle->handle.get(std::chrono::milliseconds(min_valid_ms));
    if (!t) return c_error(t.error());
    if (token_len != nullptr) *token_len = t->token().size();
    if (t->token().size() >= cap) return TOKENSHM_ERR_BUFFER_TOO_SMALL;
    std::memcpy(buf, t->token().data(), t->token().size());
    buf[t->token().size()] = '\0';
    if (meta != nullptr) fill(*t, meta);
    return TOKENSHM_OK;
}

tokenshm_error tokenshm_wait(tokenshm_handle* handle, uint64_t seen_version, int64_t timeout_ms,
                             int64_t min_valid_ms, tokenshm_token* out) {
    if (handle == nullptr || out == nullptr) return TOKENSHM_ERR_INVALID_ARGUMENT;
    auto t = handle->handle.wait(seen_version, std::chrono::milliseconds(timeout_ms),
                                 std::chrono::milliseconds(min_valid_ms));
    if (!t) return c_error(t.error());
    fill(*t, out);
    return TOKENSHM_OK;
}

tokenshm_error tokenshm_report_invalid(tokenshm_handle* handle, uint64_t version,
                                       int64_t timeout_ms, uint64_t* current_version) {
    if (handle == nullptr) return TOKENSHM_ERR_INVALID_ARGUMENT;
    const std::chrono::milliseconds timeout(timeout_ms < 0 ? 5000 : timeout_ms);
    auto cur = handle->handle.report_invalid(version, timeout);
    if (!cur) return c_error(cur.error());
    if (current_version != nullptr) *current_version = *cur;
    return TOKENSHM_OK;
}

const char* tokenshm_strerror(tokenshm_error err) {
    if (err == TOKENSHM_OK) return "ok";
    return tokenshm::to_string(static_cast<tokenshm::Error>(err));
}

const char* tokenshm_state_name(uint32_t state) {
    if (state > TOKENSHM_STATE_REAUTH) return "unknown";
    return tokenshm::to_string(static_cast<tokenshm::State>(state));
}

}  // extern "C"
