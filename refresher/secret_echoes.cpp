#include "secret_echoes.hpp"

#include "oauth.hpp"

#include <algorithm>
#include <utility>

namespace tokenshm::refresher {

namespace {

// Base64 characters shorter than this are not matched on their own.
constexpr std::size_t kMinFragment = 4;

WipedString url_safe(std::string_view b64) {
    WipedString out;
    out.reserve(b64.size());
    for (char c : b64) {
        const char u = c == '+' ? '-' : c == '/' ? '_' : c;
        out.append(&u, 1);
    }
    return out;
}

WipedString without_padding(std::string_view b64) {
    WipedString out;
    const std::size_t end = b64.find_last_not_of('=');
    if (end != std::string_view::npos) out.append(b64.data(), end + 1);
    return out;
}

WipedString lowercase_hex(std::string_view form) {
    WipedString out;
    out.reserve(form.size());
    for (std::size_t i = 0; i < form.size(); ++i) {
        char c = form[i];
        const bool in_escape = (i >= 1 && form[i - 1] == '%') || (i >= 2 && form[i - 2] == '%');
        if (in_escape && c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
        out.append(&c, 1);
    }
    return out;
}

}  // namespace

void SecretEchoes::add_pattern(std::string_view pattern) {
    if (pattern.size() < kMinFragment) return;
    const bool known = std::any_of(patterns_.begin(), patterns_.end(),
                                   [&](const Secret& p) { return p.reveal() == pattern; });
    if (known) return;
    patterns_.emplace_back(std::string(pattern));
    std::stable_sort(patterns_.begin(), patterns_.end(),
                     [](const Secret& a, const Secret& b) { return a.size() > b.size(); });
}

// The Base64 of `bytes` on its own, and the characters that depend on `bytes`
// alone when it sits at offset 0, 1 or 2 (mod 3) of a longer encoded text.
void SecretEchoes::add_base64_forms(std::string_view bytes) {
    WipedString whole;
    append_base64(whole, bytes);
    for (const WipedString& form : {without_padding(whole.view()), whole}) {
        add_pattern(form.view());
        add_pattern(url_safe(form.view()).view());
    }
    for (std::size_t align = 0; align < 3; ++align) {
        WipedString shifted;
        shifted.reserve(bytes.size() + 5);
        shifted.append("\0\0", align);
        shifted.append(bytes.data(), bytes.size());
        WipedString b64;
        append_base64(b64, shifted.view());
        // Character j carries bits [6j, 6j + 6); the secret's are [8a, 8(a + n)).
        const std::size_t first = (8 * align + 5) / 6;
        const std::size_t end = 8 * (align + bytes.size()) / 6;
        if (end <= first) continue;
        const std::string_view fragment = b64.view().substr(first, end - first);
        add_pattern(fragment);
        add_pattern(url_safe(fragment).view());
    }
}

void SecretEchoes::add(std::string_view secret) {
    if (secret.size() < kMinSecret) return;
    add_pattern(secret);
    WipedString form;
    form.reserve(secret.size() * 3);
    append_form_urlencoded(form, secret);
    add_pattern(form.view());
    add_pattern(lowercase_hex(form.view()).view());
    add_base64_forms(secret);
    if (form.view() != secret) add_base64_forms(form.view());
}

void SecretEchoes::add_basic_pair(std::string_view client_id, std::string_view secret) {
    if (secret.size() < kMinSecret) return;
    add(secret);
    WipedString raw;
    raw.reserve(client_id.size() + 1 + secret.size());
    raw.append(client_id.data(), client_id.size());
    raw.append(":", 1);
    raw.append(secret.data(), secret.size());
    WipedString form;
    form.reserve(3 * raw.size());
    append_form_urlencoded(form, client_id);
    form.append(":", 1);
    append_form_urlencoded(form, secret);
    for (const WipedString* pair : {&raw, &form}) {
        WipedString b64;
        append_base64(b64, pair->view());
        add_pattern(b64.view());
        add_pattern(url_safe(b64.view()).view());
        add_pattern(without_padding(b64.view()).view());
        add_pattern(url_safe(without_padding(b64.view()).view()).view());
    }
}

// The text may hold secrets until every pattern is replaced: it is worked on
// in WipedStrings, one pass per pattern, and only the redacted result leaves
// as a plain string.
std::string SecretEchoes::redact(std::string text) const {
    WipedString current(std::move(text));
    for (const Secret& p : patterns_) {
        const std::string_view pattern = p.reveal();
        const std::string_view in = current.view();
        if (in.find(pattern) == std::string_view::npos) continue;
        WipedString next;
        next.reserve(in.size());
        std::size_t from = 0;
        for (std::size_t at; (at = in.find(pattern, from)) != std::string_view::npos;) {
            next.append(in.data() + from, at - from);
            next.append(Secret::redacted.data(), Secret::redacted.size());
            from = at + pattern.size();
        }
        next.append(in.data() + from, in.size() - from);
        current = std::move(next);
    }
    return std::string(current.view());
}

}  // namespace tokenshm::refresher
