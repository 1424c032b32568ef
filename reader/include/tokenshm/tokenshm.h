/* libtokenshm, C ABI. No function allocates on the read path (tokenshm_get,
 * tokenshm_get_into); no exception crosses this boundary. Link with
 * `pkg-config --libs tokenshm`. Python can use it through ctypes. */
#ifndef TOKENSHM_TOKENSHM_H
#define TOKENSHM_TOKENSHM_H

#include <tokenshm/layout.h>

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tokenshm_error {
    TOKENSHM_OK = 0,
    TOKENSHM_ERR_NO_SEGMENT = 1,
    TOKENSHM_ERR_INCOMPATIBLE = 2,
    TOKENSHM_ERR_UNTRUSTED = 3,
    TOKENSHM_ERR_NO_SUCH_CREDENTIAL = 4,
    TOKENSHM_ERR_EMPTY = 5,
    TOKENSHM_ERR_EXPIRED = 6,
    TOKENSHM_ERR_EXPIRING = 7,
    TOKENSHM_ERR_REAUTH = 8,
    TOKENSHM_ERR_TIMEOUT = 9,
    TOKENSHM_ERR_BUSY = 10,
    TOKENSHM_ERR_INVALID_ARGUMENT = 11,
    TOKENSHM_ERR_BUFFER_TOO_SMALL = 12,
    TOKENSHM_ERR_SYSTEM = 13,
    TOKENSHM_ERR_UNREACHABLE = 14, /* no refresher answers on the control socket */
    TOKENSHM_ERR_REFUSED = 15      /* the refresher refused this process */
} tokenshm_error;

/* A record's state (tokenshm_token.state). The values are layout.h's
 * TOKENSHM_STATE_*, which name the same numbers in the segment. */
typedef enum tokenshm_state {
    TOKENSHM_TOKEN_EMPTY = 0,
    TOKENSHM_TOKEN_VALID = 1,
    TOKENSHM_TOKEN_STALE = 2, /* valid, but refreshes are failing */
    TOKENSHM_TOKEN_EXPIRED = 3,
    TOKENSHM_TOKEN_REAUTH = 4 /* the grant was rejected; a person must act */
} tokenshm_state;

typedef struct tokenshm_reader tokenshm_reader;
typedef struct tokenshm_handle tokenshm_handle;

/* A token and its record. The strings are NOT NUL-terminated: use the
 * lengths. They point into the handle's own copy and stay valid until the
 * next call on that handle. */
typedef struct tokenshm_token {
    const char* token;
    size_t token_len;
    const char* token_type;
    size_t token_type_len;
    const char* scope;
    size_t scope_len;
    const char* last_error;
    size_t last_error_len;
    int64_t expires_at_ms; /* Unix ms */
    int64_t issued_at_ms;
    int64_t next_refresh_ms;
    int64_t last_attempt_ms;
    uint64_t version;
    uint32_t state; /* tokenshm_state */
    uint32_t failures;
    int64_t heartbeat_age_ms;
    int32_t writer_alive; /* heartbeat within TOKENSHM_WRITER_ALIVE_WITHIN_MS (layout.h) */
    int32_t reserved;
} tokenshm_token;

typedef struct tokenshm_open_options {
    int64_t trusted_uid; /* -1: none (then $TOKENSHM_TRUSTED_UID applies) */
} tokenshm_open_options;

/* Opens a segment: `segment` NULL or "" means $TOKENSHM_SEGMENT, else
 * "tokenshm". `errbuf` (may be NULL) receives one line saying what is wrong. */
tokenshm_error tokenshm_open(const char* segment, tokenshm_reader** out);
tokenshm_error tokenshm_open_ex(const char* segment, const tokenshm_open_options* options,
                                tokenshm_reader** out, char* errbuf, size_t errbuf_len);
void tokenshm_close(tokenshm_reader* reader);

/* A handle for one credential. Handles stay usable after tokenshm_close of
 * their reader (they keep the mapping) until tokenshm_handle_close. */
tokenshm_error tokenshm_lookup(tokenshm_reader* reader, const char* name, tokenshm_handle** out);
void tokenshm_handle_close(tokenshm_handle* handle);

/* The current token as a view (see tokenshm_token). min_valid_ms: fail with
 * TOKENSHM_ERR_EXPIRING when it expires sooner. */
tokenshm_error tokenshm_get(tokenshm_handle* handle, int64_t min_valid_ms, tokenshm_token* out);
/* The same, but the token is copied into `buf` (NUL-terminated, so `cap` must
 * exceed the token's length); `meta` (may be NULL) receives the record, whose
 * string views point into the handle. */
tokenshm_error tokenshm_get_into(tokenshm_handle* handle, int64_t min_valid_ms, char* buf,
                                 size_t cap, size_t* token_len, tokenshm_token* meta);
/* Blocks until the version exceeds seen_version, then behaves as tokenshm_get.
 * timeout_ms < 0 waits forever. */
tokenshm_error tokenshm_wait(tokenshm_handle* handle, uint64_t seen_version, int64_t timeout_ms,
                             int64_t min_valid_ms, tokenshm_token* out);

/* Tells the refresher (through the control socket the segment names) that the
 * token of `version` was rejected (HTTP 401). `current_version` (may be NULL)
 * receives the version the refresher calls current: greater than `version`
 * when a newer token is already there (get it); otherwise a refresh was
 * started or joined: tokenshm_wait(handle, version, ...) returns the new one.
 * Makes syscalls, at most timeout_ms (< 0: 5 s); tokenshm_get still makes none. */
tokenshm_error tokenshm_report_invalid(tokenshm_handle* handle, uint64_t version,
                                       int64_t timeout_ms, uint64_t* current_version);

const char* tokenshm_strerror(tokenshm_error err);
const char* tokenshm_state_name(uint32_t state);

#ifdef __cplusplus
}
#endif

#endif /* TOKENSHM_TOKENSHM_H */
