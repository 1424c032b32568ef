// A client of etcd's v3 JSON gateway (issue 12, design point 2): the key
// range, transactions and leases an election and its publication need, over
// libcurl and RapidJSON. Debian ships no C or C++ etcd client; the gateway is
// etcd's stable public API (https://etcd.io/docs/v3.4/dev-guide/api_grpc_gateway/).
//
// The gateway's JSON is protobuf's JSON mapping, and the client respects it:
//  - 64-bit integers (revisions, versions, lease ids, TTLs) travel as
//    strings; the client sends strings and accepts strings (or plain JSON
//    integers), every one checked to be a whole number in range;
//  - zero and false fields are omitted: a transaction that lost has no
//    "succeeded", an empty range no "kvs", a dead lease's keepalive answers
//    200 with no "TTL"; an absent field reads as 0 / false, by design;
//  - keys and values are bytes, carried as standard Base64.
// Every answer is validated (types, ranges, the keys asked for, one member
// per name) before it is believed; anything else is `bad_answer`.
//
// Errors are one line with a kind, never a value: values will hold sealed
// refresh tokens and the records readers need (access tokens), so no error,
// log line or exception carries one. Answers are parsed on the wiping heap.
//
// The HTTP exchange is an EtcdGateway, so tests answer from canned JSON;
// CurlEtcdGateway is the real one. Watches (a chunked stream): etcd_watch.hpp.
#pragma once

#include "config.hpp"
#include "endpoint_url.hpp"
#include "secret.hpp"

#include <tokenshm/expected.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

typedef void CURL;  // NOLINT: libcurl's own spelling, so this header needs no <curl/curl.h>

namespace tokenshm::refresher {

struct EtcdError {
    enum class Kind {
        unreachable,      // no endpoint took the request: it was not applied
        no_answer,        // sent, then no answer (timeout, dropped): it MAY have been applied
        rejected,         // etcd answered with an error: `code` is its gRPC status code
                          // (also an argument refused before sending: code 3)
        unauthenticated,  // etcd refused our user, password or token
        bad_answer,       // an answer that is not what the gateway sends
    };
    Kind kind;
    int code = 0;         // gRPC status code for `rejected` (3 invalid argument, 5 not found, ...)
    std::string message;  // one printable line, never a key's value, a token or a password
};

const char* to_string(EtcdError::Kind kind) noexcept;

// One POST to the gateway, as the transport saw it.
struct GatewayAnswer {
    enum class Outcome {
        answer,         // an HTTP answer arrived (any status)
        not_sent,       // no endpoint could be reached: resolve, connect, TLS
        sent_no_answer  // sent, then timed out or dropped
    };
    Outcome outcome = Outcome::not_sent;
    long status = 0;
    WipedString body;  // may hold values: wiped when dropped
    bool too_large = false;
    std::string transport_error;  // one line, for not_sent and sent_no_answer
};

// The HTTP exchange behind EtcdClient. `path` is the gateway's ("/v3/kv/range");
// `token`, when not empty, goes into the Authorization header as etcd wants it.
class EtcdGateway {
  public:
    virtual ~EtcdGateway() = default;
    virtual GatewayAnswer post(std::string_view path, const WipedString& body,
                               const Secret& token) = 0;
};

// The real gateway: its own libcurl easy handle (one connection, kept alive),
// synchronous, one request at a time; not thread-safe. Endpoints are tried in
// turn, starting with the last that answered, and only while the request has
// certainly not left (not_sent): a request that may have reached etcd is
// never sent twice, but the next request starts at the next endpoint (a
// member that takes requests and never answers is not tried first again). Policy as CurlTransport: certificates verified (TLS 1.2
// or later, ca_file in addition to the system's CAs), only the endpoint's
// scheme, no redirects, no proxy for loopback, answers capped.
class CurlEtcdGateway final : public EtcdGateway {
  public:
    struct Options {
        std::vector<EndpointUrl> endpoints;  // at least one
        std::string ca_file;                 // empty: the system's CAs only
        std::string cert_file;               // client certificate and key, or both empty
        std::string key_file;
        std::chrono::milliseconds timeout{5000};
        std::chrono::milliseconds connect_timeout{2000};
        std::size_t max_answer_bytes = 64 << 20;
        // From the config's `coordination.etcd`.
        static Options from(const EtcdConfig& etcd);
    };
    static Expected<std::unique_ptr<CurlEtcdGateway>, EtcdError> create(Options options);
    ~CurlEtcdGateway() override;
    CurlEtcdGateway(const CurlEtcdGateway&) = delete;
    CurlEtcdGateway& operator=(const CurlEtcdGateway&) = delete;

    GatewayAnswer post(std::string_view path, const WipedString& body,
                       const Secret& token) override;

  private:
    CurlEtcdGateway(Options options, CURL* easy);
    GatewayAnswer post_to(const EndpointUrl& endpoint, std::string_view path,
                          const WipedString& body, const Secret& token);

    Options options_;
    CURL* easy_ = nullptr;
    std::size_t current_ = 0;  // the endpoint tried first
};

// A key and its value with etcd's bookkeeping (mvccpb.KeyValue).
struct EtcdKeyValue {
    std::string key;    // bytes
    WipedString value;  // bytes; may be a sealed token or a record: wiped
    std::int64_t create_revision = 0;
    std::int64_t mod_revision = 0;
    std::int64_t version = 0;
    std::int64_t lease = 0;  // 0: none
};

struct EtcdRange {
    std::int64_t revision = 0;  // the store's revision when it answered
    std::vector<EtcdKeyValue> kvs;
    bool more = false;  // etcd had more than it sent (a limit)
};

enum class RangeScope {
    key,     // exactly that key
    prefix,  // every key that starts with it
};

// One comparison of a transaction (etcdserverpb.Compare).
struct EtcdCompare {
    enum class Target { create_revision, mod_revision, version, value };
    enum class Result { equal, not_equal, greater, less };
    std::string key;
    Target target = Target::create_revision;
    Result result = Result::equal;
    std::int64_t number = 0;  // for create_revision, mod_revision, version
    WipedString value;        // for value

    // The election's compare: the key does not exist.
    static EtcdCompare absent(std::string key);
    static EtcdCompare create_revision_is(std::string key, std::int64_t revision);
    static EtcdCompare mod_revision_is(std::string key, std::int64_t revision);
    static EtcdCompare version_is(std::string key, std::int64_t version);
    static EtcdCompare value_is(std::string key, std::string_view value);
};

// One operation of a transaction's branch: a put (with a lease, or none) or
// a delete of one key.
struct EtcdOp {
    enum class Kind { put, erase };
    Kind kind = Kind::put;
    std::string key;
    WipedString value;
    std::int64_t lease = 0;
    static EtcdOp put(std::string key, std::string_view value, std::int64_t lease = 0);
    static EtcdOp erase(std::string key);
};

struct EtcdTxn {
    std::vector<EtcdCompare> compare;  // all must hold for `success` to run
    std::vector<EtcdOp> success;
    std::vector<EtcdOp> failure;
};

struct EtcdTxnResult {
    bool succeeded = false;     // absent in the answer: false (it lost)
    std::int64_t revision = 0;  // the header's: after the txn's writes, if any
};

struct EtcdLease {
    std::int64_t id = 0;
    std::chrono::seconds ttl{0};
};

struct EtcdKeepAlive {
    std::chrono::seconds ttl{0};  // what is left after this keepalive; 0: gone
    bool gone() const noexcept { return ttl.count() <= 0; }
};

// The first key after every key that starts with `prefix` (etcd's range_end
// for a prefix): the last byte below 0xff incremented, what follows dropped;
// "\0" (to the end of the keyspace) when every byte is 0xff or it is empty.
std::string prefix_range_end(std::string_view prefix);

class EtcdClient {
  public:
    // `gateway` must outlive the client. With a username, the client
    // authenticates (/v3/auth/authenticate) before its first request, and
    // again, once, when etcd says the token is no longer valid.
    explicit EtcdClient(EtcdGateway& gateway, std::optional<std::string> username = std::nullopt,
                        Secret password = Secret());

    Expected<EtcdRange, EtcdError> range(std::string_view key, RangeScope scope = RangeScope::key);
    Expected<EtcdTxnResult, EtcdError> txn(const EtcdTxn& t);
    Expected<EtcdLease, EtcdError> lease_grant(std::chrono::seconds ttl);
    // One keepalive of `id`; gone() when etcd no longer has the lease.
    Expected<EtcdKeepAlive, EtcdError> lease_keepalive(std::int64_t id);
    // Revokes `id` (its keys go with it); a lease that is already gone is Done too.
    Expected<Done, EtcdError> lease_revoke(std::int64_t id);

    // etcd's auth token for a request this client does not make itself (a
    // watch, etcd_watch.hpp): empty without a username. Authenticates first
    // when it has none yet, and again when `stale` (etcd refused the last).
    Expected<Secret, EtcdError> auth_token(bool stale = false);

  private:
    Expected<WipedString, EtcdError> call(std::string_view path, const WipedString& body);
    Expected<WipedString, EtcdError> call_once(std::string_view path, const WipedString& body);
    Expected<Done, EtcdError> authenticate();

    EtcdGateway& gateway_;
    std::optional<std::string> username_;
    Secret password_;
    Secret token_;
};

}  // namespace tokenshm::refresher
