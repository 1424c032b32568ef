// The name rule for segments and credentials, in one place: the segment,
// the refresher's config and its state directory all call these.
#pragma once

#include <tokenshm/layout.h>

#include <cstddef>
#include <string_view>

namespace tokenshm::shm {

inline constexpr std::size_t kSegmentNameMax = TOKENSHM_SEGMENT_NAME_MAX;
inline constexpr std::size_t kCredentialNameMax = TOKENSHM_SLOT_NAME_CAP - 1;  // NUL-padded
// For error messages.
inline constexpr std::string_view kSegmentNameRule = "[A-Za-z0-9._-]{1,200}, not '.' or '..'";
inline constexpr std::string_view kCredentialNameRule = "[A-Za-z0-9._-]{1,63}, not '.' or '..'";

namespace detail {
constexpr bool valid_name(std::string_view n, std::size_t max) noexcept {
    if (n.empty() || n.size() > max || n == "." || n == "..") return false;
    for (char c : n) {
        const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                        (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
        if (!ok) return false;
    }
    return true;
}
}  // namespace detail

// A segment name: also a file name under /dev/shm, hence no slash, "." or "..".
constexpr bool valid_segment_name(std::string_view name) noexcept {
    return detail::valid_name(name, kSegmentNameMax);
}
// A credential (slot) name: also a file name in the state directory.
constexpr bool valid_credential_name(std::string_view name) noexcept {
    return detail::valid_name(name, kCredentialNameMax);
}

}  // namespace tokenshm::shm
