// Counts every heap allocation the process makes, libtokenshm's included, so
// a test can prove a loop allocates nothing. Include it in exactly ONE source
// file of a test executable: it defines the global allocation functions.
//
// - operator new/delete (all the forms the code under test can reach) are
//   replaced by counting versions over malloc.
// - malloc itself is counted too. Without a sanitizer the executable defines
//   malloc/calloc/realloc/free/aligned_alloc/posix_memalign forwarding to
//   glibc's __libc_* entry points; the executable comes first in symbol
//   lookup, so the shared libtokenshm and libstdc++ call these. Under ASan or
//   TSan the sanitizer owns malloc, so its allocation hook counts instead.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SEGTEST_SANITIZER_MALLOC 1
// From <sanitizer/allocator_interface.h>, which g++ 12 does not ship; the
// ASan and TSan runtimes define it.
extern "C" int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void*,
                                                                             std::size_t),
                                                         void (*free_hook)(const volatile void*));
#endif

namespace segtest {

inline std::atomic<std::uint64_t> g_allocations{0};

inline void count_allocation() noexcept {
    g_allocations.fetch_add(1, std::memory_order_relaxed);
}

// Allocations made so far by this process (in a forked child: by the parent
// before the fork, then by the child).
inline std::uint64_t allocations() noexcept {
    return g_allocations.load(std::memory_order_relaxed);
}

#if defined(SEGTEST_SANITIZER_MALLOC)
namespace detail {
inline void on_malloc(const volatile void*, std::size_t) {
    count_allocation();
}
inline void on_free(const volatile void*) {}
// Installed before main, so allocations() counts from the start.
inline const int kHooksInstalled = __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
}  // namespace detail
#endif

}  // namespace segtest

#if !defined(SEGTEST_SANITIZER_MALLOC)
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);

void* malloc(std::size_t n) noexcept {
    segtest::count_allocation();
    return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t size) noexcept {
    segtest::count_allocation();
    return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t n) noexcept {
    segtest::count_allocation();
    return __libc_realloc(p, n);
}
void free(void* p) noexcept {
    __libc_free(p);
}
void* aligned_alloc(std::size_t align, std::size_t n) noexcept {
    segtest::count_allocation();
    return __libc_memalign(align, n);
}
int posix_memalign(void** out, std::size_t align, std::size_t n) noexcept {
    segtest::count_allocation();
    if (align < sizeof(void*) || (align & (align - 1)) != 0) return EINVAL;
    void* p = __libc_memalign(align, n);
    if (p == nullptr) return ENOMEM;
    *out = p;
    return 0;
}
}
#endif

namespace segtest::detail {
inline void* counted_new(std::size_t n) {
    count_allocation();
    if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
    throw std::bad_alloc();
}
inline void* counted_new_aligned(std::size_t n, std::align_val_t a) {
    count_allocation();
    const std::size_t align = static_cast<std::size_t>(a);
    const std::size_t size = (n + align - 1) / align * align;
    if (void* p = std::aligned_alloc(align, size == 0 ? align : size)) return p;
    throw std::bad_alloc();
}
}  // namespace segtest::detail

void* operator new(std::size_t n) {
    return segtest::detail::counted_new(n);
}
void* operator new[](std::size_t n) {
    return segtest::detail::counted_new(n);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    try {
        return segtest::detail::counted_new(n);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
    try {
        return segtest::detail::counted_new(n);
    } catch (...) {
        return nullptr;
    }
}
void* operator new(std::size_t n, std::align_val_t a) {
    return segtest::detail::counted_new_aligned(n, a);
}
void* operator new[](std::size_t n, std::align_val_t a) {
    return segtest::detail::counted_new_aligned(n, a);
}
void operator delete(void* p) noexcept {
    std::free(p);
}
void operator delete[](void* p) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
    std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
    std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
    std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
    std::free(p);
}
