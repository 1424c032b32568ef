// Fuzz target: EtcdClient's readers of etcd gateway answers (etcd_client.cpp)
// and open_sealed (seal.cpp), on arbitrary bytes. Both parse what etcd
// hands back, which any host with etcd access could have written.
//
// Input: byte 0 picks the call (range of a key, range of a prefix, txn,
// lease grant, keepalive, revoke) and the HTTP status; the rest is the
// answer's body, and is also given to open_sealed as a sealed string.
//
// Promises checked: an error is one printable line of a kind the client
// names; a range's keys are the key asked for or under the prefix, with
// revisions etcd could have (create > 0, mod >= create, version > 0, none
// newer than the answer); a grant has a positive id and TTL; a keepalive's
// TTL is not negative; open_sealed never opens bytes that no one sealed with
// its key, and says malformed or does_not_open in one printable line.
#include "etcd_client.hpp"
#include "fuzz_check.hpp"
#include "seal.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace {

using namespace tokenshm::refresher;
using namespace std::chrono_literals;
using tokenshm::fuzz::expect;
using tokenshm::fuzz::one_printable_line;

struct OneAnswer : EtcdGateway {
    long status = 200;
    std::string body;
    GatewayAnswer post(std::string_view, const WipedString&, const Secret&) override {
        GatewayAnswer a;
        a.outcome = GatewayAnswer::Outcome::answer;
        a.status = status;
        a.body = WipedString(body);
        return a;
    }
};

template <class T>
void check_error(const tokenshm::Expected<T, EtcdError>& r) {
    if (r) return;
    expect(one_printable_line(r.error().message), "an etcd error is one printable line");
    expect(std::string_view(to_string(r.error().kind)) != "unknown", "an etcd error has a kind");
}

void check_range(const tokenshm::Expected<EtcdRange, EtcdError>& r, std::string_view asked,
                 bool prefix) {
    check_error(r);
    if (!r) return;
    for (const EtcdKeyValue& kv : r->kvs) {
        expect(prefix ? kv.key.starts_with(asked) : kv.key == asked, "a key in the range asked");
        expect(kv.create_revision > 0 && kv.mod_revision >= kv.create_revision && kv.version > 0,
               "revisions etcd could have");
        expect(kv.mod_revision <= r->revision, "no key newer than the answer");
    }
}

void run_call(unsigned selector, OneAnswer& gw) {
    EtcdClient client(gw);
    switch (selector % 6) {
        case 0:
            return check_range(client.range("/t/leader"), "/t/leader", false);
        case 1:
            return check_range(client.range("/t/", RangeScope::prefix), "/t/", true);
        case 2: {
            EtcdTxn t;
            t.compare.push_back(EtcdCompare::absent("/t/leader"));
            t.success.push_back(EtcdOp::put("/t/leader", "v", 5));
            const auto r = client.txn(t);
            check_error(r);
            expect(!r || r->revision > 0, "a txn's revision is positive");
            return;
        }
        case 3: {
            const auto r = client.lease_grant(15s);
            check_error(r);
            expect(!r || (r->id > 0 && r->ttl.count() > 0), "a lease has an id and a TTL");
            return;
        }
        case 4: {
            const auto r = client.lease_keepalive(5);
            check_error(r);
            expect(!r || r->ttl.count() >= 0, "a keepalive's TTL is not negative");
            return;
        }
        default:
            return check_error(client.lease_revoke(5));
    }
}

void check_sealed(std::string_view text) {
    static const SealKey key(std::array<unsigned char, SealKey::kBytes>{1, 2, 3});
    const auto r = open_sealed(key, "storage", 1, text);
    expect(!r, "bytes no one sealed do not open");
    expect(r.error().kind == SealError::Kind::malformed ||
               r.error().kind == SealError::Kind::does_not_open,
           "a sealed string is malformed or does not open");
    expect(one_printable_line(r.error().message), "a seal error is one printable line");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    static constexpr std::array<long, 4> statuses = {200, 200, 400, 401};
    OneAnswer gw;
    gw.status = statuses[(data[0] >> 4) % statuses.size()];
    gw.body.assign(reinterpret_cast<const char*>(data) + 1, size - 1);
    run_call(data[0] & 0x0f, gw);
    check_sealed(gw.body);
    return 0;
}
