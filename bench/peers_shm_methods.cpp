#include "peers_shm_methods.hpp"

#include <tokenshm/shm/record.hpp>

#include <unistd.h>

namespace peers {

RwlockServer::RwlockServer(const Config& c) : ShmServer(c) {
    pthread_rwlockattr_t a;
    if (int e = ::pthread_rwlockattr_init(&a); e != 0)
        die(std::string("pthread_rwlockattr_init: ") + std::strerror(e));
    if (int e = ::pthread_rwlockattr_setpshared(&a, PTHREAD_PROCESS_SHARED); e != 0)
        die(std::string("pthread_rwlockattr_setpshared: ") + std::strerror(e));
    if (int e = ::pthread_rwlock_init(lock(), &a); e != 0)
        die(std::string("pthread_rwlock_init: ") + std::strerror(e));
    ::pthread_rwlockattr_destroy(&a);
}

void RwlockServer::publish(std::uint64_t v) {
    fill_token(fresh.data(), bytes, v);
    if (int e = ::pthread_rwlock_wrlock(lock()); e != 0)
        die(std::string("pthread_rwlock_wrlock: ") + std::strerror(e));
    std::memcpy(token(), fresh.data(), bytes);
    head().version = v;
    head().expires_under_lock = expires_in_an_hour();
    ::pthread_rwlock_unlock(lock());
}

TokenshmServer::TokenshmServer(const Config& c) : bytes(c.token_bytes) {
    namespace shm = tokenshm::shm;
    name = "peers-tokenshm-" + std::to_string(::getpid());
    shm::SegmentSpec spec;
    spec.name = name;
    spec.slot_count = 1;
    spec.max_token_bytes = 4096;
    auto w = shm::WriterSegment::create_or_attach(spec);
    if (!w) die(w.error().message);
    cleanup::add_shm("/" + name);
    writer.emplace(std::move(*w));
    auto s = writer->claim(kSlotName);
    if (!s) die(s.error().message);
    slot = *s;
    write_note(c.dir, "segment", name);
}

void TokenshmServer::publish(std::uint64_t v) {
    namespace shm = tokenshm::shm;
    fresh = token_of(bytes, v);
    shm::SlotRecord r;
    r.version = v;
    r.state = shm::RecordState::valid;
    r.token_type = "Bearer";
    r.scope = "files.write";
    r.token = fresh;
    r.issued_at_ms = shm::sys::realtime_ms();
    r.expires_at_ms = r.issued_at_ms + 3'600'000;
    r.next_refresh_ms = r.issued_at_ms + 2'880'000;
    r.last_attempt_ms = r.issued_at_ms;
    const auto e = writer->publish(slot, r);
    if (!e) die("publish: " + std::string(shm::to_string(e.error())));
}

TokenshmReader::TokenshmReader(const Config& c) {
    auto reader = tokenshm::Reader::open(read_note(c.dir, "segment"));
    if (!reader) die(reader.error().message);
    auto h = reader->lookup(kSlotName);
    if (!h) die(h.error().message);
    handle.emplace(std::move(*h));
}

TokenshmCReader::TokenshmCReader(const Config& c) : buf(c.token_bytes + 1) {
    const std::string seg = read_note(c.dir, "segment");
    tokenshm_reader* r = nullptr;
    char err[256] = "";
    if (tokenshm_open_ex(seg.c_str(), nullptr, &r, err, sizeof err) != TOKENSHM_OK)
        die(std::string("tokenshm_open: ") + err);
    const tokenshm_error e = tokenshm_lookup(r, kSlotName, &handle);
    tokenshm_close(r);
    if (e != TOKENSHM_OK) die(std::string("tokenshm_lookup: ") + tokenshm_strerror(e));
}

}  // namespace peers
