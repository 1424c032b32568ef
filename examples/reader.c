/* Reading a token through libtokenshm's C ABI.
 *
 *   reader NAME [MIN_VALID_S]
 *
 * Opens the segment ($TOKENSHM_SEGMENT, else "tokenshm"), looks up credential
 * NAME and gets its token, valid for at least MIN_VALID_S more seconds
 * (default 60). When the refresher has not obtained one yet, waits up to 30 s
 * for it. A real consumer would put the token in an Authorization header;
 * this one prints what it got without the token itself:
 *
 *   storage: version 7, Bearer token of 1024 bytes, expires in 3541 s (valid)
 *
 * Exit 0 on success, 2 on usage errors, 1 otherwise (the reason on stderr).
 * Build: cc reader.c $(pkg-config --cflags --libs tokenshm) */
#include <tokenshm/tokenshm.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int usage(const char* why) {
    fprintf(stderr, "reader: %s\nusage: reader NAME [MIN_VALID_S]\n", why);
    return 2;
}

static int64_t now_ms(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The token, waiting up to 30 s for a first one. */
static tokenshm_error get_token(tokenshm_handle* h, int64_t min_valid_ms, tokenshm_token* t) {
    tokenshm_error e = tokenshm_get(h, min_valid_ms, t);
    if (e == TOKENSHM_ERR_EMPTY) e = tokenshm_wait(h, 0, 30000, min_valid_ms, t);
    return e;
}

int main(int argc, char** argv) {
    if (argc < 2 || argc > 3) return usage("expected NAME and optionally MIN_VALID_S");
    long min_valid_s = 60;
    if (argc == 3) {
        char* end = NULL;
        errno = 0;
        min_valid_s = strtol(argv[2], &end, 10);
        if (errno != 0 || end == argv[2] || *end != '\0' || min_valid_s < 0 ||
            min_valid_s > 86400 * 365)
            return usage("MIN_VALID_S is not a number of seconds in [0, 31536000]");
    }

    tokenshm_reader* reader = NULL;
    char why[256];
    tokenshm_error e = tokenshm_open_ex(NULL, NULL, &reader, why, sizeof why);
    if (e != TOKENSHM_OK) {
        fprintf(stderr, "reader: %s\n", why);
        return 1;
    }
    tokenshm_handle* h = NULL;
    e = tokenshm_lookup(reader, argv[1], &h);
    tokenshm_close(reader); /* the handle keeps the mapping */
    if (e != TOKENSHM_OK) {
        fprintf(stderr, "reader: credential '%s': %s\n", argv[1], tokenshm_strerror(e));
        return 1;
    }
    tokenshm_token t = {0};
    e = get_token(h, (int64_t)min_valid_s * 1000, &t);
    if (e != TOKENSHM_OK) {
        fprintf(stderr, "reader: credential '%s': %s\n", argv[1], tokenshm_strerror(e));
        tokenshm_handle_close(h);
        return 1;
    }
    printf("%s: version %llu, %.*s token of %zu bytes, expires in %lld s (%s)\n", argv[1],
           (unsigned long long)t.version, (int)t.token_type_len, t.token_type, t.token_len,
           (long long)((t.expires_at_ms - now_ms()) / 1000), tokenshm_state_name(t.state));
    tokenshm_handle_close(h);
    return 0;
}
