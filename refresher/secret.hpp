// Secret: a string that cannot be printed. Client secrets, refresh tokens and
// access tokens live in this type from the moment they are read until the
// moment they go on the wire or into the segment; the only way out is
// reveal(), which is easy to grep for. There is no operator<<, no implicit
// conversion, and formatting one is a compile error.
#pragma once

#include <string.h>

#include <ostream>
#include <string>
#include <string_view>
#include <utility>

namespace tokenshm::refresher {

class Secret {
  public:
    Secret() = default;
    explicit Secret(std::string value) : v_(std::move(value)) {}
    Secret(const Secret&) = default;
    Secret(Secret&& o) noexcept : v_(std::move(o.v_)) { o.wipe(); }
    Secret& operator=(const Secret& o) {
        if (this != &o) {
            wipe();
            v_ = o.v_;
        }
        return *this;
    }
    Secret& operator=(Secret&& o) noexcept {
        if (this != &o) {
            wipe();
            v_ = std::move(o.v_);
            o.wipe();
        }
        return *this;
    }
    ~Secret() { wipe(); }

    // The only way to the value. Call it where the value leaves the process
    // (HTTP body or header, the segment, the state file) and nowhere else.
    std::string_view reveal() const noexcept { return v_; }
    bool empty() const noexcept { return v_.empty(); }
    std::size_t size() const noexcept { return v_.size(); }
    friend bool operator==(const Secret& a, const Secret& b) noexcept { return a.v_ == b.v_; }

    // What logs and error messages may show instead of the value.
    static constexpr std::string_view redacted = "[redacted]";

  private:
    void wipe() noexcept {
        if (!v_.empty()) ::explicit_bzero(v_.data(), v_.size());
        v_.clear();
    }
    std::string v_;
};

std::ostream& operator<<(std::ostream&, const Secret&) = delete;

}  // namespace tokenshm::refresher
