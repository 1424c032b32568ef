// A small value-or-error type (std::expected arrives with C++23). Used on
// paths where exceptions are not wanted: the read path and syscall wrappers.
#pragma once

#include <type_traits>
#include <utility>
#include <variant>

namespace tokenshm {

// The value of an Expected<Done, E>: the call succeeded and has nothing to return.
struct Done {};

template <class E>
struct Unexpected {
    E error;
};
template <class E>
Unexpected(E) -> Unexpected<E>;

template <class T, class E>
class Expected {
  public:
    Expected(T value) : v_(std::in_place_index<0>, std::move(value)) {}
    template <class G>
    Expected(Unexpected<G> u) : v_(std::in_place_index<1>, E(std::move(u.error))) {}

    bool has_value() const noexcept { return v_.index() == 0; }
    explicit operator bool() const noexcept { return has_value(); }

    T& value() & { return std::get<0>(v_); }
    const T& value() const& { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T&& operator*() && { return std::move(*this).value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }

    const E& error() const& { return std::get<1>(v_); }
    E&& error() && { return std::get<1>(std::move(v_)); }

  private:
    std::variant<T, E> v_;
};

// Success-or-error with a small error (an enum): the flag and the error, both
// always set. g++ builds the variant above in memory when a function returns
// it: a 1-byte store of the index next to the 4 bytes Done leaves unset, then
// one 8-byte load of both, which cannot be forwarded from the store and waits
// until the store reaches the cache (measured on the reader's copy path,
// reader.cpp copy_record). This one is built and returned in a register.
template <class E>
requires std::is_trivially_copyable_v<E> && std::is_default_constructible_v<E>
class Expected<Done, E> {
  public:
    Expected(Done) noexcept : error_{}, ok_(true) {}
    template <class G>
    Expected(Unexpected<G> u) noexcept : error_(E(u.error)), ok_(false) {}

    bool has_value() const noexcept { return ok_; }
    explicit operator bool() const noexcept { return ok_; }

    Done value() const noexcept { return {}; }
    Done operator*() const noexcept { return {}; }

    // Only meaningful when !has_value().
    const E& error() const& noexcept { return error_; }
    E error() && noexcept { return error_; }

  private:
    E error_;
    bool ok_;
};

}  // namespace tokenshm
