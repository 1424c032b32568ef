// The Python module `tokenshm`: libtokenshm's C++ API as a compiled extension.
//
//   import tokenshm
//   reader = tokenshm.Reader()                 # $TOKENSHM_SEGMENT or "tokenshm"
//   handle = reader.lookup("storage")
//   tok = handle.get(min_valid=300)            # seconds; raises tokenshm.Error
//   headers = {"Authorization": f"{tok.token_type} {tok.token}"}
//
// Not ctypes: get() runs the library's inline fast path and, while the version
// is unchanged, returns the Token object it built for that version, so a call
// costs little more than Python's own method call (bench/python_read_bench.py).
// wait() and report_invalid() release the GIL while they block; each such
// call uses a C++ handle of its own (a Handle belongs to one thread at a
// time), taken from a small pool, so get() from other threads never shares
// one with it. python/README.md documents the API.
//
// Every error is a tokenshm.Error whose .name is the reader's error as an
// identifier ("expired", "expiring", "timeout", "no_such_credential"...) and
// .code its number (tokenshm_error); str() of it is the one-line message.
// A Token's repr never shows the token.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <tokenshm/reader.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#ifndef TOKENSHM_VERSION
#error "TOKENSHM_VERSION must be defined (meson passes project_version())"
#endif

namespace {

using std::chrono::milliseconds;

PyObject* g_error_type = nullptr;  // tokenshm.Error
PyTypeObject* g_token_type = nullptr;
PyTypeObject* g_handle_type = nullptr;
PyTypeObject* g_reader_type = nullptr;

// tokenshm.Error.name: the reader's error as an identifier, indexed by its
// number (tokenshm_error); the control socket's error words use the same.
const char* error_name(tokenshm::Error code) {
    static constexpr const char* kNames[] = {
        "ok",      "no_segment",       "incompatible",     "untrusted", "no_such_credential",
        "empty",   "expired",          "expiring",         "reauth",    "timeout",
        "busy",    "invalid_argument", "buffer_too_small", "system",    "unreachable",
        "refused",
    };
    const auto i = static_cast<std::size_t>(code);
    return i < std::size(kNames) ? kNames[i] : "error";
}

// Releases the GIL for its lifetime (Py_BEGIN/END_ALLOW_THREADS as a scope).
// Nothing in its scope may touch a Python object.
class WithoutGil {
  public:
    WithoutGil() noexcept : state_(PyEval_SaveThread()) {}
    ~WithoutGil() { PyEval_RestoreThread(state_); }
    WithoutGil(const WithoutGil&) = delete;
    WithoutGil& operator=(const WithoutGil&) = delete;

  private:
    PyThreadState* state_;
};

// Raises tokenshm.Error(message) with .name and .code; returns nullptr.
PyObject* raise(tokenshm::Error code, const std::string& message) {
    PyObject* exc = PyObject_CallFunction(g_error_type, "s#", message.data(),
                                          static_cast<Py_ssize_t>(message.size()));
    if (!exc) return nullptr;
    PyObject* name = PyUnicode_FromString(error_name(code));
    PyObject* num = PyLong_FromLong(static_cast<long>(code));
    if (name && num && PyObject_SetAttrString(exc, "name", name) == 0 &&
        PyObject_SetAttrString(exc, "code", num) == 0)
        PyErr_SetObject(g_error_type, exc);
    Py_XDECREF(name);
    Py_XDECREF(num);
    Py_DECREF(exc);
    return nullptr;
}
PyObject* raise(tokenshm::Error code) {
    return raise(code, tokenshm::to_string(code));
}

// Seconds (int or float, >= 0) as milliseconds, rounded up so that a
// min_valid is never weakened; false with a ValueError/TypeError set.
bool seconds_to_ms(PyObject* obj, const char* what, milliseconds& out) {
    const double s = PyFloat_AsDouble(obj);
    if (s == -1.0 && PyErr_Occurred()) return false;
    if (!std::isfinite(s) || s < 0 || s > 9.2e15) {
        PyErr_Format(PyExc_ValueError, "%s must be a finite number of seconds >= 0", what);
        return false;
    }
    out = milliseconds(static_cast<std::int64_t>(std::ceil(s * 1000.0)));
    return true;
}

// PyArg "O&" converter for a version: an int from 0 to 2**64-1. PyArg's "K"
// does no overflow check: -1 would become 2**64-1, a version nobody has.
int to_version(PyObject* obj, void* out) {
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "a version must be an int, not %.50s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    const unsigned long long v = PyLong_AsUnsignedLongLong(obj);  // OverflowError if < 0
    if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) return 0;
    *static_cast<unsigned long long*>(out) = v;
    return 1;
}

// ---- Token ------------------------------------------------------------------

struct TokenObject {
    PyObject_HEAD PyObject* token;
    PyObject* token_type;
    PyObject* scope;
    PyObject* last_error;
    PyObject* state;
    PyObject* version;
    PyObject* failures;
    PyObject* expires_at;
    PyObject* issued_at;
    PyObject* next_refresh;
    PyObject* last_attempt;
    std::uint64_t version_value;
    std::uint32_t state_value;
};

PyObject** token_fields(TokenObject* t) {
    return &t->token;
}
constexpr int kTokenFields = 11;

PyObject* str_of(std::string_view s) {
    return PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
}
PyObject* unix_seconds(std::int64_t ms) {
    if (ms == 0) Py_RETURN_NONE;  // the record never had that time
    return PyFloat_FromDouble(static_cast<double>(ms) / 1000.0);
}

// A new Token holding a copy of `t`'s record.
PyObject* token_from(const tokenshm::Token& t) {
    auto* o = PyObject_New(TokenObject, g_token_type);
    if (!o) return nullptr;
    PyObject** f = token_fields(o);
    f[0] = str_of(t.token());
    f[1] = str_of(t.token_type());
    f[2] = str_of(t.scope());
    f[3] = str_of(t.last_error());
    f[4] = PyUnicode_FromString(tokenshm::to_string(t.state()));
    f[5] = PyLong_FromUnsignedLongLong(t.version());
    f[6] = PyLong_FromUnsignedLong(t.failures());
    f[7] = unix_seconds(t.expires_at_ms());
    f[8] = unix_seconds(t.issued_at_ms());
    f[9] = unix_seconds(t.next_refresh_ms());
    f[10] = unix_seconds(t.last_attempt_ms());
    o->version_value = t.version();
    o->state_value = static_cast<std::uint32_t>(t.state());
    PyObject* obj = reinterpret_cast<PyObject*>(o);
    for (int i = 0; i < kTokenFields; ++i)
        if (!f[i]) {
            for (int j = i + 1; j < kTokenFields; ++j)
                f[j] = nullptr;
            Py_DECREF(obj);
            return nullptr;
        }
    return obj;
}

void token_dealloc(PyObject* self) {
    PyObject** f = token_fields(reinterpret_cast<TokenObject*>(self));
    for (int i = 0; i < kTokenFields; ++i)
        Py_XDECREF(f[i]);
    PyTypeObject* tp = Py_TYPE(self);
    PyObject_Free(self);
    Py_DECREF(tp);
}

// Never the token itself: a repr ends up in logs.
PyObject* token_repr(PyObject* self) {
    auto* t = reinterpret_cast<TokenObject*>(self);
    return PyUnicode_FromFormat("<tokenshm.Token version=%S state=%S expires_at=%R>", t->version,
                                t->state, t->expires_at);
}

#define TOKEN_MEMBER(field, doc) \
    { #field, T_OBJECT_EX, offsetof(TokenObject, field), READONLY, PyDoc_STR(doc) }
PyMemberDef token_members[] = {
    TOKEN_MEMBER(token, "the access token (str)"),
    TOKEN_MEMBER(token_type, "its type, as the server said (usually 'Bearer')"),
    TOKEN_MEMBER(scope, "the granted scope (str, may be empty)"),
    TOKEN_MEMBER(last_error, "the refresher's last error for this credential ('' if none)"),
    TOKEN_MEMBER(state, "'valid', 'stale' (refreshes failing), 'expired', 'reauth' or 'empty'"),
    TOKEN_MEMBER(version, "grows with every publish, across refresher restarts (int)"),
    TOKEN_MEMBER(failures, "consecutive failed refreshes (int)"),
    TOKEN_MEMBER(expires_at, "Unix time (float seconds) the token expires, None if unknown"),
    TOKEN_MEMBER(issued_at, "Unix time (float seconds) it was obtained, None if never"),
    TOKEN_MEMBER(next_refresh, "Unix time (float seconds) of the next planned refresh, or None"),
    TOKEN_MEMBER(last_attempt, "Unix time (float seconds) of the last refresh attempt, or None"),
    {nullptr, 0, 0, 0, nullptr},
};
#undef TOKEN_MEMBER

PyType_Slot token_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(token_dealloc)},
    {Py_tp_repr, reinterpret_cast<void*>(token_repr)},
    {Py_tp_members, token_members},
    {Py_tp_doc, const_cast<char*>("A token and its record, as one version published it. "
                                  "Immutable; its repr omits the token.")},
    {0, nullptr},
};
PyType_Spec token_spec = {"tokenshm.Token", sizeof(TokenObject), 0,
                          Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, token_slots};

// ---- Handle -----------------------------------------------------------------

struct HandleObject {
    PyObject_HEAD
        // The C++ objects live in storage the Python allocator gave us, so they
        // are built with placement new (handle_new) and destroyed in dealloc.
        std::optional<tokenshm::Reader>* reader_storage;
    std::optional<tokenshm::Handle>* main;  // get() only, always with the GIL held
    std::vector<tokenshm::Handle>* spares;  // for calls that release the GIL
    PyObject* cached;                       // the Token of main's last version
    PyObject* name;
};

void handle_dealloc(PyObject* self) {
    auto* h = reinterpret_cast<HandleObject*>(self);
    delete h->main;
    delete h->spares;
    delete h->reader_storage;
    Py_XDECREF(h->cached);
    Py_XDECREF(h->name);
    PyTypeObject* tp = Py_TYPE(self);
    PyObject_Free(self);
    Py_DECREF(tp);
}

PyObject* handle_from(const tokenshm::Reader& reader, tokenshm::Handle&& main, PyObject* name) {
    auto* h = PyObject_New(HandleObject, g_handle_type);
    if (!h) return nullptr;
    h->reader_storage = nullptr;
    h->main = nullptr;
    h->spares = nullptr;
    h->cached = nullptr;
    h->name = Py_NewRef(name);
    try {
        h->reader_storage = new std::optional<tokenshm::Reader>(reader);
        h->main = new std::optional<tokenshm::Handle>(std::move(main));
        h->spares = new std::vector<tokenshm::Handle>();
    } catch (const std::bad_alloc&) {
        Py_DECREF(h);
        return PyErr_NoMemory();
    }
    return reinterpret_cast<PyObject*>(h);
}

// A handle of its own for a call that releases the GIL: a spare, or a new one.
std::optional<tokenshm::Handle> take_spare(HandleObject* h) {
    if (!h->spares->empty()) {
        std::optional<tokenshm::Handle> s(std::move(h->spares->back()));
        h->spares->pop_back();
        return s;
    }
    const char* name = PyUnicode_AsUTF8(h->name);
    if (!name) return std::nullopt;
    auto r = (**h->reader_storage).lookup(name);
    if (!r) {
        raise(r.error().code, r.error().message);
        return std::nullopt;
    }
    return std::optional<tokenshm::Handle>(std::move(*r));
}
void give_back(HandleObject* h, tokenshm::Handle&& s) {
    constexpr std::size_t kMaxSpares = 8;  // as many as threads usually wait at once
    if (h->spares->size() < kMaxSpares) h->spares->push_back(std::move(s));
}

PyObject* handle_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    auto* h = reinterpret_cast<HandleObject*>(self);
    PyObject* mv = nargs == 1 ? args[0] : nullptr;
    const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 1 || nkw > 1 ||
        (nkw == 1 && (mv || PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0),
                                                             "min_valid") != 0))) {
        PyErr_SetString(PyExc_TypeError, "get() takes one optional argument, min_valid");
        return nullptr;
    }
    if (nkw == 1) mv = args[nargs];
    milliseconds min_valid{0};
    if (mv && !seconds_to_ms(mv, "min_valid", min_valid)) return nullptr;
    auto r = (**h->main).get(min_valid);
    if (!r) return raise(r.error());
    // One version is one record: while it stays, the Token built for it stands.
    auto* c = reinterpret_cast<TokenObject*>(h->cached);
    if (c && c->version_value == r->version() &&
        c->state_value == static_cast<std::uint32_t>(r->state()))
        return Py_NewRef(h->cached);
    PyObject* t = token_from(*r);
    if (!t) return nullptr;
    Py_XSETREF(h->cached, Py_NewRef(t));
    return t;
}

// Waits in slices so that Ctrl-C (a pending signal) interrupts a long wait.
PyObject* wait_on(tokenshm::Handle& s, std::uint64_t seen, std::optional<milliseconds> timeout,
                  milliseconds min_valid) {
    constexpr milliseconds kSlice{200};
    const auto deadline = std::chrono::steady_clock::now() + timeout.value_or(milliseconds{0});
    for (;;) {
        milliseconds slice = kSlice;
        if (timeout) {
            const auto left =
                std::chrono::ceil<milliseconds>(deadline - std::chrono::steady_clock::now());
            slice = std::max(milliseconds{0}, std::min(kSlice, left));
        }
        std::optional<tokenshm::Expected<tokenshm::Token, tokenshm::Error>> r;
        {
            const WithoutGil nogil;
            r.emplace(s.wait(seen, slice, min_valid));
        }
        if (*r) return token_from(**r);
        if (r->error() != tokenshm::Error::timeout) return raise(r->error());
        if (timeout && std::chrono::steady_clock::now() >= deadline) return raise(r->error());
        if (PyErr_CheckSignals() != 0) return nullptr;
    }
}

PyObject* handle_wait(PyObject* self, PyObject* args, PyObject* kwargs) {
    auto* h = reinterpret_cast<HandleObject*>(self);
    static const char* kw[] = {"seen_version", "timeout", "min_valid", nullptr};
    unsigned long long seen = 0;
    PyObject* timeout_obj = Py_None;
    PyObject* mv_obj = nullptr;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O&OO:wait", const_cast<char**>(kw), to_version,
                                     &seen, &timeout_obj, &mv_obj))
        return nullptr;
    std::optional<milliseconds> timeout;
    if (timeout_obj != Py_None) {
        milliseconds t{0};
        if (!seconds_to_ms(timeout_obj, "timeout", t)) return nullptr;
        timeout = t;
    }
    milliseconds min_valid{0};
    if (mv_obj && !seconds_to_ms(mv_obj, "min_valid", min_valid)) return nullptr;
    std::optional<tokenshm::Handle> s = take_spare(h);
    if (!s) return nullptr;
    PyObject* result = wait_on(*s, seen, timeout, min_valid);
    give_back(h, std::move(*s));
    return result;
}

PyObject* handle_report_invalid(PyObject* self, PyObject* args, PyObject* kwargs) {
    auto* h = reinterpret_cast<HandleObject*>(self);
    static const char* kw[] = {"version", "timeout", nullptr};
    unsigned long long version = 0;
    PyObject* timeout_obj = nullptr;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&|O:report_invalid", const_cast<char**>(kw),
                                     to_version, &version, &timeout_obj))
        return nullptr;
    milliseconds timeout = std::chrono::seconds(5);
    if (timeout_obj && !seconds_to_ms(timeout_obj, "timeout", timeout)) return nullptr;
    std::optional<tokenshm::Handle> s = take_spare(h);
    if (!s) return nullptr;
    std::optional<tokenshm::Expected<std::uint64_t, tokenshm::Error>> r;
    {
        const WithoutGil nogil;
        r.emplace(s->report_invalid(version, timeout));
    }
    give_back(h, std::move(*s));
    if (!*r) return raise(r->error());
    return PyLong_FromUnsignedLongLong(**r);
}

PyObject* handle_name(PyObject* self, void*) {
    return Py_NewRef(reinterpret_cast<HandleObject*>(self)->name);
}

PyObject* handle_repr(PyObject* self) {
    return PyUnicode_FromFormat("<tokenshm.Handle %R>",
                                reinterpret_cast<HandleObject*>(self)->name);
}

PyMethodDef handle_methods[] = {
    {"get", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(handle_get)),
     METH_FASTCALL | METH_KEYWORDS,
     PyDoc_STR("get(min_valid=0) -> Token\n\nThe current token, if it is valid for at least "
               "min_valid more seconds;\nelse raises tokenshm.Error (.name 'expiring', "
               "'expired', 'empty', 'reauth'...).\nMakes no syscall. Returns the same Token object "
               "while the "
               "version stays.")},
    {"wait", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(handle_wait)),
     METH_VARARGS | METH_KEYWORDS,
     PyDoc_STR("wait(seen_version=0, timeout=None, min_valid=0) -> Token\n\nBlocks (without "
               "the GIL) until the version exceeds seen_version, then\nreturns get(min_valid)'s "
               "result. timeout in seconds, None: forever;\nraises tokenshm.Error 'timeout' when "
               "it passes first.")},
    {"report_invalid",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(handle_report_invalid)),
     METH_VARARGS | METH_KEYWORDS,
     PyDoc_STR("report_invalid(version, timeout=5.0) -> int\n\nTells the refresher that the "
               "token of `version` was rejected (a 401).\nReturns the version it calls current: "
               "if greater than `version`, get()\nhas a newer token; else a refresh runs and "
               "wait(version, ...) returns\nit. Releases the GIL; raises tokenshm.Error "
               "('unreachable', 'refused'...).")},
    {nullptr, nullptr, 0, nullptr},
};
PyGetSetDef handle_getset[] = {
    {"name", handle_name, nullptr, PyDoc_STR("the credential's name"), nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};
PyType_Slot handle_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(handle_dealloc)},
    {Py_tp_repr, reinterpret_cast<void*>(handle_repr)},
    {Py_tp_methods, handle_methods},
    {Py_tp_getset, handle_getset},
    {Py_tp_doc, const_cast<char*>("One credential of a Reader's segment (Reader.lookup).")},
    {0, nullptr},
};
PyType_Spec handle_spec = {"tokenshm.Handle", sizeof(HandleObject), 0,
                           Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, handle_slots};

// ---- Reader -----------------------------------------------------------------

struct ReaderObject {
    PyObject_HEAD std::optional<tokenshm::Reader>* reader;
};

void reader_dealloc(PyObject* self) {
    delete reinterpret_cast<ReaderObject*>(self)->reader;
    PyTypeObject* tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

PyObject* reader_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
    static const char* kw[] = {"segment", nullptr};
    const char* segment = nullptr;
    Py_ssize_t len = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|z#:Reader", const_cast<char**>(kw), &segment,
                                     &len))
        return nullptr;
    auto r = tokenshm::Reader::open(segment ? std::string_view(segment, len) : std::string_view{});
    if (!r) return raise(r.error().code, r.error().message);
    auto* self = reinterpret_cast<ReaderObject*>(type->tp_alloc(type, 0));
    if (!self) return nullptr;
    try {
        self->reader = new std::optional<tokenshm::Reader>(std::move(*r));
    } catch (const std::bad_alloc&) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return reinterpret_cast<PyObject*>(self);
}

PyObject* reader_lookup(PyObject* self, PyObject* name) {
    Py_ssize_t len = 0;
    const char* s = PyUnicode_AsUTF8AndSize(name, &len);
    if (!s) return nullptr;
    const tokenshm::Reader& reader = **reinterpret_cast<ReaderObject*>(self)->reader;
    auto h = reader.lookup(std::string_view(s, static_cast<std::size_t>(len)));
    if (!h) return raise(h.error().code, h.error().message);
    return handle_from(reader, std::move(*h), name);
}

PyObject* reader_credentials(PyObject* self, PyObject*) {
    const auto names = (**reinterpret_cast<ReaderObject*>(self)->reader).credentials();
    PyObject* list = PyList_New(static_cast<Py_ssize_t>(names.size()));
    if (!list) return nullptr;
    for (std::size_t i = 0; i < names.size(); ++i) {
        PyObject* n = str_of(names[i]);
        if (!n) {
            Py_DECREF(list);
            return nullptr;
        }
        PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), n);
    }
    return list;
}

PyObject* reader_segment(PyObject* self, void*) {
    return str_of((**reinterpret_cast<ReaderObject*>(self)->reader).segment_name());
}

PyMethodDef reader_methods[] = {
    {"lookup", reader_lookup, METH_O,
     PyDoc_STR("lookup(name) -> Handle\n\nThe credential `name`; raises tokenshm.Error "
               "'no_such_credential'.")},
    {"credentials", reader_credentials, METH_NOARGS,
     PyDoc_STR("credentials() -> list of the active credentials' names")},
    {nullptr, nullptr, 0, nullptr},
};
PyGetSetDef reader_getset[] = {
    {"segment", reader_segment, nullptr, PyDoc_STR("the segment's name"), nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};
PyType_Slot reader_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(reader_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(reader_dealloc)},
    {Py_tp_methods, reader_methods},
    {Py_tp_getset, reader_getset},
    {Py_tp_doc, const_cast<char*>("Reader(segment=None)\n\nOpens a tokenshm segment: None means "
                                  "$TOKENSHM_SEGMENT, else 'tokenshm'.\nRaises tokenshm.Error "
                                  "('no_segment', 'untrusted', 'incompatible'...).")},
    {0, nullptr},
};
PyType_Spec reader_spec = {"tokenshm.Reader", sizeof(ReaderObject), 0, Py_TPFLAGS_DEFAULT,
                           reader_slots};

// ---- module -----------------------------------------------------------------

bool add_type(PyObject* m, PyType_Spec* spec, PyTypeObject*& out) {
    out = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(spec));
    if (!out) return false;
    const char* dot = std::strrchr(spec->name, '.');
    return PyModule_AddObjectRef(m, dot + 1, reinterpret_cast<PyObject*>(out)) == 0;
}

bool add_error(PyObject* m) {
    g_error_type = PyErr_NewExceptionWithDoc(
        "tokenshm.Error",
        "A libtokenshm error: .name is the reader's error ('no_segment', 'expired', "
        "'expiring', 'timeout', 'no_such_credential', 'unreachable'...), .code its "
        "tokenshm_error number; str() is the one-line message.",
        nullptr, nullptr);
    if (!g_error_type) return false;
    return PyModule_AddObjectRef(m, "Error", g_error_type) == 0;
}

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "tokenshm",
    PyDoc_STR("Read OAuth 2.0 access tokens that tokenshm-refresher keeps in shared memory."),
    -1,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit_tokenshm() {
    PyObject* m = PyModule_Create(&module_def);
    if (!m) return nullptr;
    if (!add_error(m) || !add_type(m, &token_spec, g_token_type) ||
        !add_type(m, &handle_spec, g_handle_type) || !add_type(m, &reader_spec, g_reader_type) ||
        PyModule_AddStringConstant(m, "__version__", TOKENSHM_VERSION) != 0) {
        Py_DECREF(m);
        return nullptr;
    }
    return m;
}
