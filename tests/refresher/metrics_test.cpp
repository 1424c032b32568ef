// Metrics: the exposition text both `tokenshm status --prometheus` and the
// refresher's metrics_textfile use (reader/prometheus_text), and what the
// refresher counts (refresher/metrics). The command tests parse the text with
// prometheus_client; these check values and the file's writing.
#include "metrics.hpp"
#include "prometheus_text.hpp"
#include "replace_file.hpp"
#include "temp_dir.hpp"

#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <string>

using namespace tokenshm::refresher;
namespace metrics = tokenshm::metrics;
using tokenshm::shm::RecordState;

namespace {

bool has_line(const std::string& text, const std::string& line) {
    return ("\n" + text).find("\n" + line + "\n") != std::string::npos;
}

std::string read(const std::string& path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

Published published(RecordState state, std::int64_t expires_at_ms, std::uint32_t failures) {
    Published p;
    p.state = state;
    p.expires_at_ms = expires_at_ms;
    p.failures = failures;
    return p;
}

HttpRequest request(const char* method) {
    auto url = EndpointUrl::parse("http://127.0.0.1:1/token", EndpointUrl::Role::endpoint);
    REQUIRE(url.has_value());
    HttpRequest r(*url);
    r.method = method;
    return r;
}

}  // namespace

TEST_CASE("label values are escaped as the exposition format says", "[metrics]") {
    CHECK(metrics::escape_label_value("plain-name.1") == "plain-name.1");
    CHECK(metrics::escape_label_value("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
    metrics::MetricsText t;
    t.family("x", "gauge", "An x.");
    t.sample({{"credential", "q\"uote"}}, 1.5);
    CHECK(t.text() ==
          "# HELP tokenshm_x An x.\n# TYPE tokenshm_x gauge\ntokenshm_x{credential=\"q\\\"uote\"} "
          "1.5\n");
    CHECK(metrics::format_number(1.0 / 0.0) == "+Inf");
    CHECK(metrics::format_number(3) == "3");
}

TEST_CASE("the segment's gauges: one-hot state, expiry, failures, version", "[metrics]") {
    metrics::SegmentSample s;
    s.now_ms = 1'000'000;
    s.heartbeat_ms = 998'500;
    s.refresher_up = true;
    s.credentials = {{"fresh", RecordState::valid, 7, 1'060'000, 0},
                     {"late", RecordState::stale, 3, 990'000, 2},
                     {"new", RecordState::empty, 1, 0, 0}};
    metrics::MetricsText out;
    metrics::render_segment(out, s);
    const std::string& t = out.text();
    INFO(t);
    CHECK(has_line(t, "tokenshm_refresher_up 1"));
    CHECK(has_line(t, "tokenshm_refresher_heartbeat_age_seconds 1.5"));
    CHECK(has_line(t, "tokenshm_credential_state{credential=\"fresh\",state=\"valid\"} 1"));
    CHECK(has_line(t, "tokenshm_credential_state{credential=\"fresh\",state=\"stale\"} 0"));
    // Past its expiry, a stale token shows as expired (as `tokenshm status` does).
    CHECK(has_line(t, "tokenshm_credential_state{credential=\"late\",state=\"expired\"} 1"));
    CHECK(has_line(t, "tokenshm_credential_state{credential=\"late\",state=\"stale\"} 0"));
    CHECK(has_line(t, "tokenshm_token_expires_in_seconds{credential=\"fresh\"} 60"));
    CHECK(has_line(t, "tokenshm_token_expires_in_seconds{credential=\"late\"} -10"));
    CHECK(t.find("tokenshm_token_expires_in_seconds{credential=\"new\"}") == std::string::npos);
    CHECK(has_line(t, "tokenshm_credential_consecutive_failures{credential=\"late\"} 2"));
    CHECK(has_line(t, "tokenshm_token_version{credential=\"fresh\"} 7"));

    s.live = false;  // the refresher's own file
    metrics::MetricsText file;
    metrics::render_segment(file, s);
    CHECK(file.text().find("tokenshm_refresher_up") == std::string::npos);
    CHECK(has_line(file.text(), "tokenshm_refresher_heartbeat_timestamp_seconds 998.5"));
}

TEST_CASE("token requests are counted by outcome, with their latency", "[metrics]") {
    tokenshm::test::TempDir dir("metrics_test");
    PosixFileSystem fs;
    RefresherMetrics m(fs, "");
    m.published("storage", published(RecordState::valid, 5'000'000, 0), 4);
    m.request_started(1, "storage", request("POST"), 1000);
    m.request_finished(1, RefresherMetrics::Outcome::success, 1300);
    m.request_started(2, "storage", request("POST"), 2000);
    m.request_finished(2, RefresherMetrics::Outcome::network_error, 12'000);
    m.request_started(3, "storage", request("GET"), 2000);  // discovery: not a token request
    m.request_finished(3, RefresherMetrics::Outcome::transient_error, 2100);
    m.replay_refused("storage");

    const std::string t = m.render(4'000'000);
    INFO(t);
    const std::string c = "credential=\"storage\"";
    CHECK(has_line(t, "tokenshm_token_requests_total{" + c + ",outcome=\"success\"} 1"));
    CHECK(has_line(t, "tokenshm_token_requests_total{" + c + ",outcome=\"network_error\"} 1"));
    CHECK(has_line(t, "tokenshm_token_requests_total{" + c + ",outcome=\"transient_error\"} 0"));
    CHECK(has_line(t, "tokenshm_token_requests_total{" + c + ",outcome=\"rejected\"} 0"));
    CHECK(has_line(t, "tokenshm_token_request_duration_seconds_bucket{" + c + ",le=\"0.25\"} 0"));
    CHECK(has_line(t, "tokenshm_token_request_duration_seconds_bucket{" + c + ",le=\"0.5\"} 1"));
    CHECK(has_line(t, "tokenshm_token_request_duration_seconds_bucket{" + c + ",le=\"10\"} 2"));
    CHECK(has_line(t, "tokenshm_token_request_duration_seconds_bucket{" + c + ",le=\"+Inf\"} 2"));
    CHECK(has_line(t, "tokenshm_token_request_duration_seconds_count{" + c + "} 2"));
    CHECK(has_line(t, "tokenshm_token_request_duration_seconds_sum{" + c + "} 10.3"));
    CHECK(has_line(t, "tokenshm_replays_refused_total{" + c + "} 1"));
    CHECK(has_line(t, "tokenshm_token_version{" + c + "} 4"));
    CHECK(has_line(t, "tokenshm_token_expires_in_seconds{" + c + "} 1000"));

    m.removed("storage");
    CHECK(m.render(4'000'000).find(c) == std::string::npos);
}

TEST_CASE("the textfile is written atomically, on change but not more often than the gap",
          "[metrics]") {
    tokenshm::test::TempDir dir("metrics_test");
    PosixFileSystem fs;
    const std::string file = dir.path + "/tokenshm.prom";
    RefresherMetrics m(fs, file);
    const mode_t old_umask = ::umask(022);
    m.published("storage", published(RecordState::valid, 5'000'000, 0), 1);
    m.write_if_due(Now{100'000, 4'000'000});
    ::umask(old_umask);
    REQUIRE(has_line(read(file), "tokenshm_token_version{credential=\"storage\"} 1"));
    struct stat st {};
    REQUIRE(::stat(file.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0644);
    CHECK_FALSE(std::filesystem::exists(temp_path_for(file)));

    m.published("storage", published(RecordState::valid, 5'000'000, 0), 2);
    m.write_if_due(Now{100'000 + RefresherMetrics::kMinWriteGapMs - 1, 4'000'000});
    CHECK(has_line(read(file), "tokenshm_token_version{credential=\"storage\"} 1"));
    m.write_if_due(Now{100'000 + RefresherMetrics::kMinWriteGapMs, 4'000'000});
    CHECK(has_line(read(file), "tokenshm_token_version{credential=\"storage\"} 2"));

    // Unchanged: rewritten only every kRefreshEveryMs, for the relative gauges.
    const std::int64_t at = 100'000 + RefresherMetrics::kMinWriteGapMs;
    m.write_if_due(Now{at + RefresherMetrics::kRefreshEveryMs - 1, 4'000'500});
    CHECK(has_line(read(file), "tokenshm_token_expires_in_seconds{credential=\"storage\"} 1000"));
    m.write_if_due(Now{at + RefresherMetrics::kRefreshEveryMs, 4'001'000});
    CHECK(has_line(read(file), "tokenshm_token_expires_in_seconds{credential=\"storage\"} 999"));

    // At exit, a change is written at once; nothing changed, nothing written.
    m.replay_refused("storage");
    m.flush(Now{at + RefresherMetrics::kRefreshEveryMs + 1, 4'001'001});
    CHECK(has_line(read(file), "tokenshm_replays_refused_total{credential=\"storage\"} 1"));
    REQUIRE(::unlink(file.c_str()) == 0);
    m.flush(Now{at + RefresherMetrics::kRefreshEveryMs + 2, 4'001'002});
    CHECK_FALSE(std::filesystem::exists(file));
}
