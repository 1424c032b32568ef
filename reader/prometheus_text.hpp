// The Prometheus text exposition format (node_exporter's textfile collector
// reads it), for `tokenshm status --prometheus` and the refresher's
// metrics_textfile: one renderer, so both show the segment the same way.
//
// What the segment shows (SegmentSample) becomes gauges labelled
// credential="<name>"; the state is one-hot, tokenshm_credential_state
// {state="valid"} 1 and 0 for every other state, so that a query never
// needs to know a numeric encoding (kube-state-metrics' convention). The
// refresher adds its counters and histograms through MetricsText.
#pragma once

#include <tokenshm/shm/record.hpp>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tokenshm::metrics {

// The state a person should see: a token past its expiry is "expired"
// whatever the record says, except "reauth", which says more.
shm::RecordState shown_state(shm::RecordState s, std::int64_t expires_at_ms,
                             std::int64_t now_ms) noexcept;

// A sample value as the format spells it: shortest round-trip decimal,
// +Inf, -Inf, NaN.
std::string format_number(double v);

// A label value escaped as the exposition format wants: \\, \" and \n.
std::string escape_label_value(std::string_view v);

using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;

// Builds exposition text family by family: every sample of a family must
// follow its # HELP and # TYPE lines, before the next family starts.
class MetricsText {
  public:
    // `name` without the tokenshm_ prefix, which this adds; type "gauge",
    // "counter" or "histogram".
    void family(std::string_view name, std::string_view type, std::string_view help);
    // A sample of the current family; `suffix` is "_total", "_bucket", ... or "".
    void sample(std::string_view suffix, Labels labels, double value);
    void sample(Labels labels, double value) { sample("", labels, value); }
    const std::string& text() const noexcept { return text_; }

  private:
    std::string text_;
    std::string family_;  // the current family's full name
};

struct CredentialSample {
    std::string name;
    shm::RecordState state = shm::RecordState::empty;
    std::uint64_t version = 0;
    std::int64_t expires_at_ms = 0;  // Unix ms; meaningless while state is empty
    std::uint32_t failures = 0;
};

struct SegmentSample {
    std::int64_t now_ms = 0;        // Unix ms, the reader's clock
    std::int64_t heartbeat_ms = 0;  // Unix ms of the refresher's last beat
    // Only a live reader knows these: the refresher's own file would show
    // them as of its writing, which a dead refresher never corrects.
    bool live = true;
    bool refresher_up = false;
    std::vector<CredentialSample> credentials;
};

// The gauges of what the segment shows. Live: tokenshm_refresher_up and
// tokenshm_refresher_heartbeat_age_seconds too.
void render_segment(MetricsText& out, const SegmentSample& s);

}  // namespace tokenshm::metrics
