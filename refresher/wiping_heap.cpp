#include "wiping_heap.hpp"

#include <malloc.h>
#include <openssl/crypto.h>
#include <string.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace tokenshm::refresher {

void* wiping_malloc(std::size_t size) {
    return std::malloc(size);
}

void* wiping_calloc(std::size_t count, std::size_t size) {
    return std::calloc(count, size);
}

void wiping_free(void* p) {
    if (p == nullptr) return;
    ::explicit_bzero(p, ::malloc_usable_size(p));
    std::free(p);
}

void* wiping_realloc(void* p, std::size_t new_size) {
    if (p == nullptr) return std::malloc(new_size);
    if (new_size == 0) {
        wiping_free(p);
        return nullptr;
    }
    void* fresh = std::malloc(new_size);
    if (fresh == nullptr) return nullptr;  // `p` stays valid, as realloc's contract says
    std::memcpy(fresh, p, std::min(::malloc_usable_size(p), new_size));
    wiping_free(p);
    return fresh;
}

char* wiping_strdup(const char* s) {
    const std::size_t n = std::strlen(s) + 1;
    auto* copy = static_cast<char*>(std::malloc(n));
    if (copy != nullptr) std::memcpy(copy, s, n);
    return copy;
}

namespace {

void* openssl_malloc(std::size_t n, const char*, int) {
    return wiping_malloc(n);
}
void* openssl_realloc(void* p, std::size_t n, const char*, int) {
    return wiping_realloc(p, n);
}
void openssl_free(void* p, const char*, int) {
    wiping_free(p);
}

}  // namespace

bool install_wiping_heap_for_openssl() {
    return CRYPTO_set_mem_functions(openssl_malloc, openssl_realloc, openssl_free) == 1;
}

}  // namespace tokenshm::refresher
