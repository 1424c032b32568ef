/* A program outside the tree, built against an installed libtokenshm with
 * `pkg-config --cflags --libs tokenshm` (tests/command/test_install.py).
 *
 *   consumer SEGMENT NAME
 *
 * Prints NAME's token on stdout (the only place a token may go); exit 0, or
 * the failing call and its error on stderr and exit 1. */
#include <tokenshm/tokenshm.h>

#include <stdio.h>

int main(int argc, char** argv) {
    if (argc != 3) {
        fputs("usage: consumer SEGMENT NAME\n", stderr);
        return 2;
    }
    tokenshm_reader* reader = NULL;
    tokenshm_handle* handle = NULL;
    char errbuf[256] = "";
    tokenshm_error e = tokenshm_open_ex(argv[1], NULL, &reader, errbuf, sizeof errbuf);
    if (e != TOKENSHM_OK) {
        fprintf(stderr, "consumer: tokenshm_open_ex: %s: %s\n", tokenshm_strerror(e), errbuf);
        return 1;
    }
    e = tokenshm_lookup(reader, argv[2], &handle);
    if (e != TOKENSHM_OK) {
        fprintf(stderr, "consumer: tokenshm_lookup: %s\n", tokenshm_strerror(e));
        tokenshm_close(reader);
        return 1;
    }
    char token[8192];
    size_t len = 0;
    e = tokenshm_get_into(handle, 0, token, sizeof token, &len, NULL);
    if (e == TOKENSHM_OK) printf("%.*s\n", (int)len, token);
    else fprintf(stderr, "consumer: tokenshm_get_into: %s\n", tokenshm_strerror(e));
    tokenshm_handle_close(handle);
    tokenshm_close(reader);
    return e == TOKENSHM_OK ? 0 : 1;
}
