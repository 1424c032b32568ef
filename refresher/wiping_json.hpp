// RapidJSON on the wiping heap (wiping_heap.hpp), for documents that hold
// secrets: a token response (oauth.cpp), an etcd answer carrying sealed
// refresh tokens and published records (etcd_client.cpp). Its parse stack
// and its value pool both get copies of every string: each block is wiped
// before it is freed, and growing one wipes the block it leaves.
#pragma once

#include "secret.hpp"
#include "wiping_heap.hpp"

#include <rapidjson/document.h>

#include <cstddef>

namespace tokenshm::refresher {

struct WipingAllocator {
    [[maybe_unused]] static const bool kNeedFree = true;  // RapidJSON's Allocator concept
    void* Malloc(std::size_t size) { return size != 0 ? wiping_malloc(size) : nullptr; }
    void* Realloc(void* old, std::size_t /*old_size*/, std::size_t new_size) {
        return wiping_realloc(old, new_size);
    }
    static void Free(void* p) { wiping_free(p); }
};
using JsonDocument =
    rapidjson::GenericDocument<rapidjson::UTF8<>, rapidjson::MemoryPoolAllocator<WipingAllocator>,
                               WipingAllocator>;
using JsonValue = JsonDocument::ValueType;

// RapidJSON's output stream concept over a WipedString: a Writer<WipedJsonOut>
// composes JSON that holds secrets without an unwiped copy (publication.cpp,
// etcd_client.cpp's request bodies).
struct WipedJsonOut {
    using Ch = char;
    WipedString& out;
    void Put(char c) { out.append(&c, 1); }
    void Flush() {}
};

}  // namespace tokenshm::refresher
