// RapidJSON on the wiping heap (wiping_heap.hpp), for documents that hold
// secrets: a token response (oauth.cpp), an etcd answer carrying sealed
// refresh tokens and published records (etcd_client.cpp). Its parse stack
// and its value pool both get copies of every string: each block is wiped
// before it is freed, and growing one wipes the block it leaves.
#pragma once

#include "secret.hpp"
#include "wiping_heap.hpp"

#include <rapidjson/document.h>
#include <rapidjson/writer.h>

#include <cstddef>
#include <string_view>
#include <utility>

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

// One JSON object written straight into a WipedString: opened when made,
// closed by done(). The etcd client's request bodies and a publication's
// payload (publication.cpp) add their own field writers on top.
class WipedJsonObject {
  public:
    WipedJsonObject() : out_{text_}, w_(out_) { w_.StartObject(); }
    WipedJsonObject(const WipedJsonObject&) = delete;
    WipedJsonObject& operator=(const WipedJsonObject&) = delete;
    rapidjson::Writer<WipedJsonOut>& w() { return w_; }
    void key(const char* k) { w_.Key(k); }
    void str(const char* k, std::string_view v) {
        w_.Key(k);
        w_.String(v.data(), static_cast<rapidjson::SizeType>(v.size()));
    }
    WipedString done() {
        w_.EndObject();
        return std::move(text_);
    }

  private:
    WipedString text_;
    WipedJsonOut out_;
    rapidjson::Writer<WipedJsonOut> w_;
};

}  // namespace tokenshm::refresher
