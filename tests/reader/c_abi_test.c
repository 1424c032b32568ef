/* The C ABI from C11. Run by run_with_publisher.py, which
 * starts a publisher holding SEGMENT with credential NAME = TOKEN and passes
 * the three as arguments:
 *
 *   c_abi_test SEGMENT NAME TOKEN
 *
 * Prints one line per check ("ok" / "FAIL") and exits 0 only if all pass. */
#include <tokenshm/tokenshm.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int g_failures;
static int g_checks;

#define CHECK(cond)                                                 \
    do {                                                            \
        ++g_checks;                                                 \
        if (cond) {                                                 \
            printf("ok   %s\n", #cond);                             \
        } else {                                                    \
            ++g_failures;                                           \
            printf("FAIL %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
        }                                                           \
    } while (0)

static int same(const char* p, size_t n, const char* want) {
    return p != NULL && n == strlen(want) && memcmp(p, want, n) == 0;
}

int main(int argc, char** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: c_abi_test SEGMENT NAME TOKEN\n");
        return 2;
    }
    const char* segment = argv[1];
    const char* name = argv[2];
    const char* token = argv[3];
    const size_t token_len = strlen(token);

    /* No segment: a typed error and a message, no reader. */
    char absent[128];
    snprintf(absent, sizeof absent, "tokenshm-test-cabi-absent-%d", (int)getpid());
    tokenshm_reader* none = (tokenshm_reader*)1;
    CHECK(tokenshm_open(absent, &none) == TOKENSHM_ERR_NO_SEGMENT);
    CHECK(none == NULL);
    char errbuf[256] = {0};
    CHECK(tokenshm_open_ex(absent, NULL, &none, errbuf, sizeof errbuf) == TOKENSHM_ERR_NO_SEGMENT);
    CHECK(strstr(errbuf, absent) != NULL);
    char tiny[8];
    CHECK(tokenshm_open_ex(absent, NULL, &none, tiny, sizeof tiny) == TOKENSHM_ERR_NO_SEGMENT);
    CHECK(strlen(tiny) == sizeof tiny - 1); /* truncated, still terminated */
    CHECK(tokenshm_open("../etc/passwd", &none) == TOKENSHM_ERR_INVALID_ARGUMENT);
    CHECK(tokenshm_open(segment, NULL) == TOKENSHM_ERR_INVALID_ARGUMENT);

    tokenshm_reader* reader = NULL;
    tokenshm_open_options opts = {-1};
    CHECK(tokenshm_open_ex(segment, &opts, &reader, errbuf, sizeof errbuf) == TOKENSHM_OK);
    if (reader == NULL) {
        printf("cannot continue without a reader: %s\n", errbuf);
        return 1;
    }

    /* Lookup. */
    tokenshm_handle* missing = (tokenshm_handle*)1;
    CHECK(tokenshm_lookup(reader, "no-such-credential", &missing) ==
          TOKENSHM_ERR_NO_SUCH_CREDENTIAL);
    CHECK(missing == NULL);
    CHECK(tokenshm_lookup(reader, NULL, &missing) == TOKENSHM_ERR_INVALID_ARGUMENT);
    CHECK(tokenshm_lookup(NULL, name, &missing) == TOKENSHM_ERR_INVALID_ARGUMENT);
    tokenshm_handle* h = NULL;
    CHECK(tokenshm_lookup(reader, name, &h) == TOKENSHM_OK);
    if (h == NULL) return 1;

    /* tokenshm_get: a view into the handle's copy. */
    tokenshm_token t;
    memset(&t, 0, sizeof t);
    CHECK(tokenshm_get(h, 0, &t) == TOKENSHM_OK);
    CHECK(same(t.token, t.token_len, token));
    CHECK(same(t.token_type, t.token_type_len, "Bearer"));
    CHECK(same(t.scope, t.scope_len, "test.scope"));
    CHECK(t.last_error_len == 0);
    CHECK(t.state == TOKENSHM_TOKEN_VALID);
    CHECK(t.version >= 1);
    CHECK(t.expires_at_ms > t.issued_at_ms);
    CHECK(t.failures == 0);
    CHECK(t.writer_alive == 1);
    CHECK(t.heartbeat_age_ms < 3000);
    const uint64_t version = t.version;

    /* min_valid beyond the token's lifetime. */
    CHECK(tokenshm_get(h, INT64_C(1) << 40, &t) == TOKENSHM_ERR_EXPIRING);
    CHECK(tokenshm_get(h, 1000, &t) == TOKENSHM_OK);
    CHECK(tokenshm_get(NULL, 0, &t) == TOKENSHM_ERR_INVALID_ARGUMENT);
    CHECK(tokenshm_get(h, 0, NULL) == TOKENSHM_ERR_INVALID_ARGUMENT);

    /* tokenshm_get_into: a NUL-terminated copy into the caller's buffer. */
    char buf[1024];
    size_t len = 0;
    tokenshm_token meta;
    memset(&meta, 0, sizeof meta);
    memset(buf, 'x', sizeof buf);
    CHECK(tokenshm_get_into(h, 0, buf, sizeof buf, &len, &meta) == TOKENSHM_OK);
    CHECK(len == token_len);
    CHECK(strcmp(buf, token) == 0);
    CHECK(meta.version == version);
    CHECK(same(meta.token_type, meta.token_type_len, "Bearer"));
    CHECK(tokenshm_get_into(h, 0, buf, sizeof buf, NULL, NULL) == TOKENSHM_OK);

    /* Too small: exactly the token's length leaves no room for the NUL. */
    char small[1024];
    memset(small, 'y', sizeof small);
    len = 0;
    CHECK(tokenshm_get_into(h, 0, small, token_len, &len, NULL) == TOKENSHM_ERR_BUFFER_TOO_SMALL);
    CHECK(len == token_len); /* says how much is needed */
    CHECK(small[0] == 'y');  /* and wrote nothing */
    CHECK(tokenshm_get_into(h, 0, small, 0, &len, NULL) == TOKENSHM_ERR_BUFFER_TOO_SMALL);
    CHECK(tokenshm_get_into(h, 0, small, token_len + 1, &len, NULL) == TOKENSHM_OK);
    CHECK(strcmp(small, token) == 0);
    CHECK(tokenshm_get_into(h, 0, NULL, 10, &len, NULL) == TOKENSHM_ERR_INVALID_ARGUMENT);

    /* tokenshm_wait: past the seen version returns at once; else times out. */
    CHECK(tokenshm_wait(h, version - 1, 1000, 0, &t) == TOKENSHM_OK);
    CHECK(t.version == version);
    CHECK(tokenshm_wait(h, version, 50, 0, &t) == TOKENSHM_ERR_TIMEOUT);

    /* Error and state names. */
    for (int e = TOKENSHM_OK; e <= TOKENSHM_ERR_SYSTEM; ++e) {
        const char* s = tokenshm_strerror((tokenshm_error)e);
        CHECK(s != NULL && s[0] != '\0');
    }
    CHECK(strcmp(tokenshm_strerror(TOKENSHM_OK), "ok") == 0);
    CHECK(strcmp(tokenshm_strerror(TOKENSHM_ERR_NO_SUCH_CREDENTIAL), "no such credential") == 0);
    CHECK(strcmp(tokenshm_strerror((tokenshm_error)999), "unknown error") == 0);
    CHECK(strcmp(tokenshm_state_name(TOKENSHM_TOKEN_VALID), "valid") == 0);
    CHECK(strcmp(tokenshm_state_name(TOKENSHM_TOKEN_REAUTH), "reauth") == 0);
    CHECK(strcmp(tokenshm_state_name(99), "unknown") == 0);

    /* A handle outlives its reader. */
    tokenshm_close(reader);
    CHECK(tokenshm_get(h, 0, &t) == TOKENSHM_OK);
    CHECK(same(t.token, t.token_len, token));
    tokenshm_handle_close(h);
    tokenshm_close(NULL);
    tokenshm_handle_close(NULL);

    printf("%d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
