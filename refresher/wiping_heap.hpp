// Heap functions that wipe a block before it goes back to malloc, for the
// libraries that keep copies of our secrets in their own buffers: libcurl
// (request body, Authorization header, response; installed by
// curl_transport.cpp with curl_global_init_mem), OpenSSL under it (TLS
// records) and RapidJSON (its parse
// stack and value pool hold the tokens of a response, or etcd's values;
// wiping_json.hpp). The block's
// size comes from malloc_usable_size, so every byte the block had is wiped.
#pragma once

#include <cstddef>

namespace tokenshm::refresher {

void* wiping_malloc(std::size_t size);
void* wiping_calloc(std::size_t count, std::size_t size);
// Wipes the whole block, then frees it. Null is a no-op.
void wiping_free(void* p);
// A new block with the old one's first bytes; the old one wiped and freed.
// (Never grows in place, which would leave nothing to wipe but could leave
// the old bytes behind when the allocator moves the block.)
void* wiping_realloc(void* p, std::size_t new_size);
char* wiping_strdup(const char* s);

// Routes OpenSSL's heap (TLS records, decrypted in place: the response in
// clear) through the functions above. OpenSSL accepts this only before its
// first allocation, so call it before libcurl initialises OpenSSL; false
// when it was too late.
bool install_wiping_heap_for_openssl();

}  // namespace tokenshm::refresher
