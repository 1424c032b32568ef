"""Shared pieces of the refresher's integration tests (stdlib only).

Each test file is one meson test: `python3 test_x.py REFRESHER TOKENSHM`
(or the paths in TOKENSHM_REFRESHER / TOKENSHM_CLI, else under
TOKENSHM_BUILD_DIR). It calls harness.main(), which runs the file's unittest
cases under a global deadline, then scans every log the file produced for
every secret and token it saw and every one the test servers issued (their
--issued-log files), in any 12-character piece, form-encoded or Base64
(`zz_secrets_never_logged`), then stops every process it started and unlinks
every segment it named.

Secrets and tokens are kept in SECRETS and never printed: tests compare
values, and failure messages name what differs, not the values.
"""

import atexit
import base64
import ctypes
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest
import urllib.parse
import urllib.request

SOURCE_DIR = os.environ.get(
    "TOKENSHM_SOURCE_DIR",
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD_DIR = os.environ.get("TOKENSHM_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
AUTHSERVER_DIR = os.path.join(SOURCE_DIR, "tests", "authserver")

REFRESHER = None
TOKENSHM = None

POLL_S = 0.1            # poll interval for every condition
FILE_DEADLINE_S = int(os.environ.get("TOKENSHM_IT_DEADLINE", "200"))
_KEEP = os.environ.get("TOKENSHM_IT_KEEP") == "1"

# ---------------------------------------------------------------- secrets

SECRETS = set()          # every secret / token value a test used or saw
PUBLIC = set()           # values that are no secret (client ids), see scan_logs
_secrets_lock = threading.Lock()


def remember(value):
    """Adds a secret or token (and its common encodings) to the scan list."""
    if value is None:
        return
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = value.strip()
    if len(value) < 6:
        raise AssertionError("harness: a secret shorter than 6 characters cannot be scanned for")
    with _secrets_lock:
        SECRETS.add(value)
        form = urllib.parse.quote_plus(value, safe="")
        if form != value:
            SECRETS.add(form)


def remember_basic(client_id, secret):
    """The Authorization: Basic value a client would send (both encodings)."""
    q = lambda s: urllib.parse.quote_plus(s, safe="")  # noqa: E731
    for pair in (q(client_id) + ":" + q(secret), client_id + ":" + secret):
        remember(base64.b64encode(pair.encode()).decode())


# ---------------------------------------------------------------- processes

_procs = []              # every long-lived Popen we started
_workspaces = []
_segments = set()
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    # The refresher does not watch its parent: make the kernel kill it if the
    # test process dies without cleaning up.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(argv, stdout, stderr, env=None):
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                         env=env, preexec_fn=_die_with_parent, close_fds=True)
    _procs.append(p)
    return p


def stop_process(p, sig=signal.SIGTERM, grace_s=3.0):
    """Signals p (TERM by default), waits, then SIGKILLs it. Returns its exit code."""
    if p.poll() is None:
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)
    return p.returncode


def kill9(p):
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    p.wait(5)


def unlink_segment(name):
    try:
        os.unlink("/dev/shm/" + name)
    except FileNotFoundError:
        pass


def cleanup_all():
    for p in reversed(_procs):
        try:
            stop_process(p, grace_s=2.0)
        except Exception:  # noqa: BLE001 - cleanup must go on
            pass
    _procs.clear()
    for s in list(_segments):
        unlink_segment(s)


atexit.register(cleanup_all)

def control_request(path, request, timeout=5):
    """One request line (a dict) on a refresher's control socket; the answer, decoded."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


# ---------------------------------------------------------------- waiting


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()

    def expired(self):
        return self.left() <= 0


def wait_for(pred, timeout_s, what, interval_s=POLL_S):
    """Polls pred() until it returns a truthy value; fails naming `what`."""
    d = Deadline(timeout_s)
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - the condition may not be readable yet
            last_exc = e
        if d.expired():
            extra = f" (last error: {type(last_exc).__name__}: {last_exc})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout_s:.1f}s waiting for {what}{extra}")
        time.sleep(interval_s)


# ---------------------------------------------------------------- servers

_certs_dir = None


def certs():
    """A CA, a server certificate for 127.0.0.1 and an unrelated CA, made once per file."""
    global _certs_dir
    if _certs_dir is None:
        d = tempfile.mkdtemp(prefix="tokenshm-it-certs-")
        _workspaces_extra.append(d)
        subprocess.run(["sh", os.path.join(AUTHSERVER_DIR, "make_certs.sh"), d], check=True,
                       timeout=30)
        _certs_dir = d
    return {k: os.path.join(_certs_dir, k + ".pem") for k in ("ca", "server", "other_ca")} | {
        "server_key": os.path.join(_certs_dir, "server.key")}


_workspaces_extra = []


class Server:
    """A test authorization server (oidc_server.mjs or fault_server.mjs)."""

    def __init__(self, ws, kind, args=(), port=0, tls=False, name=None):
        self.ws = ws
        self.kind = kind
        self.tls = tls
        n = name or kind
        self.stderr_path = ws.log_path(f"{n}.stderr")
        self.log_file = ws.log_path(f"{n}.jsonl") if kind == "oidc" else None
        script = os.path.join(AUTHSERVER_DIR, f"{kind}_server.mjs")
        argv = ["node", script, "--port", str(port)]
        if tls:
            c = certs()
            argv += ["--tls-cert", c["server"], "--tls-key", c["server_key"]]
        if self.log_file:
            argv += ["--log", self.log_file]
        self.issued_log = os.path.join(ws.secrets, f"issued-{n}.jsonl")
        argv += ["--issued-log", self.issued_log]
        _issued_logs.append(self.issued_log)
        argv += list(args)
        with open(self.stderr_path, "ab") as err:
            self.proc = spawn(argv, subprocess.PIPE, err)
        ready = self._read_ready(30)
        self.port = ready["port"]
        self.pid = ready["pid"]
        self.base = ready["issuer"]

    def _read_ready(self, timeout_s):
        d = Deadline(timeout_s)
        buf = b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buf:
            if d.expired():
                raise AssertionError(f"{self.kind} server: no ready line within {timeout_s}s "
                                     f"(see {self.stderr_path})")
            r, _, _ = select.select([fd], [], [], min(0.2, max(0.01, d.left())))
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise AssertionError(f"{self.kind} server exited before its ready line, rc="
                                         f"{self.proc.wait(5)} (see {self.stderr_path})")
                buf += chunk
        line = json.loads(buf.split(b"\n", 1)[0])
        assert line.get("ready") is True, "server ready line without ready:true"
        return line

    @property
    def token_endpoint(self):
        return self.base + "/token"

    def stop(self):
        stop_process(self.proc)

    # -- oidc_server: its JSON log of token requests
    def token_log(self):
        """Token-request lines (not minting events) of the oidc server's log."""
        if not self.log_file or not os.path.exists(self.log_file):
            return []
        out = []
        with open(self.log_file) as f:
            for line in f:
                line = line.strip()
                if line:
                    o = json.loads(line)
                    if "event" not in o:
                        out.append(o)
        return out

    def events(self, name):
        if not self.log_file or not os.path.exists(self.log_file):
            return []
        with open(self.log_file) as f:
            return [o for o in (json.loads(x) for x in f if x.strip()) if o.get("event") == name]

    # -- fault_server: /control
    def control(self, script=None, reset_log=False):
        body = {}
        if script is not None:
            body["script"] = script
        if reset_log:
            body["reset_log"] = True
        req = urllib.request.Request(self.base + "/control", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def control_state(self):
        with urllib.request.urlopen(self.base + "/control", timeout=5) as r:
            return json.loads(r.read())


# ---------------------------------------------------------------- workspace

_seg_counter = 0


class Refresher:
    def __init__(self, ws, config_path, args=(), name="refresher"):
        self.ws = ws
        self.log_path = ws.log_path(f"{name}.log")
        with open(self.log_path, "ab") as err:
            self.proc = spawn([REFRESHER, "--config", config_path, *args], subprocess.DEVNULL, err)
        self.pid = self.proc.pid

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_lines(self, event=None, cred=None):
        out = []
        for line in self.log().splitlines():
            if event and f" event={event}" not in line:
                continue
            if cred and f" cred={cred} " not in line:
                continue
            out.append(line)
        return out

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM):
        return stop_process(self.proc, sig)

    def kill9(self):
        kill9(self.proc)


def log_time(line):
    """Seconds since the epoch of a refresher log line's timestamp."""
    import datetime
    ts = line.split(" ", 1)[0]
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


class Workspace:
    """A temp dir with logs/, secrets/, state/, a config and a segment name."""

    def __init__(self, tag):
        global _seg_counter
        self.dir = tempfile.mkdtemp(prefix=f"tokenshm-it-{tag}-")
        _workspaces.append(self.dir)
        self.logs = os.path.join(self.dir, "logs")
        self.secrets = os.path.join(self.dir, "secrets")
        self.state_dir = os.path.join(self.dir, "state")
        os.mkdir(self.logs)
        os.mkdir(self.secrets, 0o700)
        _seg_counter += 1
        self.segment = f"tokenshm-it-{os.getpid()}-{_seg_counter}"
        _segments.add(self.segment)
        self._n = 0
        self.servers = []
        self.refreshers = []

    def log_path(self, name):
        return os.path.join(self.logs, name)

    def secret_file(self, name, value):
        remember(value)
        path = os.path.join(self.secrets, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        os.chmod(path, 0o600)
        return path

    def mint_args(self, *client_ids):
        """oidc_server args minting one refresh token per client id, into secrets/."""
        args, paths = [], []
        for i, cid in enumerate(client_ids):
            p = os.path.join(self.secrets, f"minted-{i}.refresh")
            args += ["--mint-refresh-token", cid, "--refresh-token-out", p]
            paths.append(p)
        return args, paths

    def remember_files(self, paths):
        for p in paths:
            with open(p) as f:
                remember(f.read())

    def remember_state(self):
        """Every refresh token now in the state directory joins SECRETS."""
        if not os.path.isdir(self.state_dir):
            return
        for n in os.listdir(self.state_dir):
            p = os.path.join(self.state_dir, n)
            try:
                with open(p) as f:
                    v = f.read()
            except OSError:
                continue
            if len(v.strip()) >= 6:
                remember(v)

    def server(self, kind, *args, **kw):
        s = Server(self, kind, *args, **kw)
        self.servers.append(s)
        return s

    def config(self, credentials, name="config.json", **top):
        for c in credentials:
            if isinstance(c.get("client_id"), str):
                PUBLIC.add(c["client_id"])
        cfg = {"segment": self.segment, "state_dir": self.state_dir,
               "control_socket": os.path.join(self.dir, "ctl.sock"),
               "credentials": credentials}
        cfg.update(top)
        path = os.path.join(self.dir, name)
        with open(path + ".tmp", "w") as f:
            json.dump(cfg, f, indent=2)
        os.rename(path + ".tmp", path)
        return path

    def refresher(self, config_path, *args, name=None):
        self._n += 1
        r = Refresher(self, config_path, args, name or f"refresher-{self._n}")
        self.refreshers.append(r)
        return r

    # -- the command
    def cli(self, *args, timeout=10):
        """Runs `tokenshm ARGS --segment SEG`; logs stdout and stderr unless it is `get`."""
        argv = [TOKENSHM, *args, "--segment", self.segment]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        with open(self.log_path("cli.log"), "ab") as f:
            f.write(f"$ tokenshm {' '.join(args)} -> {r.returncode}\n".encode())
            if args[0] != "get":
                f.write(r.stdout)
            f.write(r.stderr)
        return r

    def status(self):
        r = self.cli("status", "--json")
        if r.returncode != 0:
            raise RuntimeError(f"tokenshm status exited {r.returncode}: "
                               f"{r.stderr.decode(errors='replace').strip()}")
        return json.loads(r.stdout)

    def cred(self, name):
        """The status --json object of credential NAME (None when absent)."""
        for c in self.status()["credentials"]:
            if c["name"] == name:
                return c
        return None

    def get(self, name, *args):
        """(exit code, token or None, stderr text). The token joins SECRETS."""
        r = self.cli("get", name, *args)
        tok = None
        if r.returncode == 0:
            tok = r.stdout.decode().strip()
            if tok.startswith("Authorization: "):
                remember(tok.split(" ", 2)[2])
            else:
                remember(tok)
        return r.returncode, tok, r.stderr.decode(errors="replace").strip()

    def heartbeat_ms(self):
        """The refresher's last heartbeat (Unix ms), from `status --json`."""
        t0 = time.time()
        st = self.status()
        t1 = time.time()
        return int((t0 + t1) * 500) - st["refresher"]["heartbeat_age_ms"]

    def refresher_ran_for(self, seconds, what):
        """Waits until the refresher's heartbeat has moved `seconds` past its
        value now: evidence that its loop ran through the whole window, which a
        fixed sleep on a loaded machine is not. Bounded (generously); returns
        the wall-clock seconds the window took."""
        t0 = time.monotonic()
        start = self.heartbeat_ms()
        wait_for(lambda: self.heartbeat_ms() - start >= seconds * 1000, seconds * 4 + 30,
                 f"the refresher's heartbeat to advance {seconds}s ({what})")
        return time.monotonic() - t0

    def wait_state(self, name, states, timeout_s, what=None):
        if isinstance(states, str):
            states = (states,)

        def pred():
            c = self.cred(name)
            return c if c and c.get("state") in states else None
        return wait_for(pred, timeout_s, what or f"credential {name} in state {'/'.join(states)}")

    def stop_all(self):
        for r in self.refreshers:
            r.stop()
        for s in self.servers:
            s.stop()
        self.remember_state()


class ReaderSampler(threading.Thread):
    """Runs `tokenshm get NAME` every ~100 ms; records (time, rc, message)."""

    def __init__(self, ws, name, interval_s=POLL_S):
        super().__init__(daemon=True)
        self.ws, self.name, self.interval = ws, name, interval_s
        self.samples = []
        self.tokens = set()
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            t = time.time()
            try:
                rc, tok, err = self.ws.get(self.name)
            except Exception as e:  # noqa: BLE001
                rc, tok, err = -1, None, str(e)
            if tok:
                self.tokens.add(tok)
            self.samples.append((t, rc, err))
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(10)

    def failures_after_first_token(self):
        """Samples that failed after the first successful one."""
        first = next((i for i, s in enumerate(self.samples) if s[1] == 0), None)
        if first is None:
            return None
        return [s for s in self.samples[first:] if s[1] != 0]


# ---------------------------------------------------------------- test base


def credential(name, client_id, secret_file, endpoint=None, issuer=None,
               grant="client_credentials", refresh_before_s=2, timeout_s=5, **kw):
    """A credential for the test servers, with the quick timings every test
    uses (min_interval_s 1, backoff 1 to 4 s); `kw` adds or overrides keys."""
    c = {"name": name, "grant": grant, "client_id": client_id,
         "client_secret_file": secret_file, "refresh_before_s": refresh_before_s,
         "min_interval_s": 1, "min_backoff_s": 1, "max_backoff_s": 4, "timeout_s": timeout_s}
    if endpoint is not None:
        c["token_endpoint"] = endpoint
    if issuer is not None:
        c["issuer"] = issuer
    c.update(kw)
    return c


class IntegrationTest(unittest.TestCase):
    """Each test gets a workspace; everything it started is stopped afterwards."""

    maxDiff = None

    def setUp(self):
        self.ws = Workspace(self._testMethodName.replace("test_", "")[:20])
        self.addCleanup(self.ws.stop_all)


# ---------------------------------------------------------------- scan
#
# The scan looks for every value in SECRETS and every value the test servers
# recorded in their --issued-log files (tokens the tests never saw included),
# in each form a leak could take: the value, its form encoding
# (application/x-www-form-urlencoded) and its Base64 (standard and URL-safe)
# at each of the three offsets it could start at inside a longer encoded text.
# Any 12-character window of any form is a hit, so a truncated or wrapped
# secret is found too; a window that also occurs in a public value (a client
# id) is no evidence and is left out. Hits name the file, the recorded item
# (source, index, kind) and the form, never the value.

WINDOW = 12
MIN_SCANNABLE = 6
_issued_logs = []        # every --issued-log a server was started with


def _base64_cores(raw):
    """For each offset (0, 1, 2) at which `raw` may start inside a longer
    plaintext, the Base64 characters that depend on `raw` alone."""
    cores = []
    for a in range(3):
        enc = base64.b64encode(b"\0" * a + raw).decode()
        first = (a + 2) // 3                 # the first 3-byte group wholly inside raw
        last = (a + len(raw)) // 3           # one past the last whole group
        if last > first:
            cores.append((a, enc[4 * first:4 * last]))
    return cores


def _forms(value):
    """(form name, text) for every encoding of `value` the scan looks for."""
    form = urllib.parse.quote_plus(value, safe="")
    out = [("raw", value)]
    if form != value:
        out.append(("form-encoded", form))
    for label, text in (("", value), ("form-encoded ", form)):
        if label and form == value:
            continue
        for a, core in _base64_cores(text.encode()):
            out.append((f"{label}base64@{a}", core))
            url = core.replace("+", "-").replace("/", "_")
            if url != core:
                out.append((f"{label}base64url@{a}", url))
    return out


def _load_issued():
    """(items, public values, problems): items are (source, index, kind, value)
    from every issued log of every workspace."""
    items, public, problems = [], [], []
    paths = set(_issued_logs)
    for root in _workspaces:
        d = os.path.join(root, "secrets")
        if os.path.isdir(d):
            paths.update(os.path.join(d, n) for n in os.listdir(d)
                         if n.startswith("issued-") and n.endswith(".jsonl"))
    for path in sorted(paths):
        source = os.path.relpath(path, "/tmp")
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError as e:
            problems.append(f"{source}: unreadable ({e.strerror})")
            continue
        for i, line in enumerate(lines):
            try:
                o = json.loads(line)
                kind, value = o["kind"], o["value"]
            except (ValueError, KeyError, TypeError):
                problems.append(f"{source} line {i + 1}: not a {{kind, value}} object")
                continue
            if kind == "client_id":
                public.append(value)
            else:
                items.append((source, i, kind, value))
    return items, public, problems


def _windows(text):
    return (text[k:k + WINDOW] for k in range(len(text) - WINDOW + 1))


def _patterns():
    """{window: what}, [(short text, what)], problems and the number of values;
    `what` names the item and the form."""
    items, public, problems = _load_issued()
    items += [("remembered", i, "secret", v) for i, v in enumerate(sorted(SECRETS))]
    public_texts = [text for p in set(public) | PUBLIC for _, text in _forms(p)]
    public_windows = {w for text in public_texts for w in _windows(text)}
    windows, short = {}, []
    unscannable = 0
    for source, index, kind, value in items:
        for form, text in _forms(value):
            what = f"{source} item {index} ({kind}), {form}"
            if len(text) < MIN_SCANNABLE:
                unscannable += form == "raw"
                continue
            if len(text) < WINDOW:
                if not any(text in p for p in public_texts):
                    short.append((text, what))
                continue
            for w in _windows(text):
                if w not in windows and w not in public_windows:
                    windows[w] = what
    if unscannable:
        print(f"(the scan cannot look for {unscannable} value(s) shorter than "
              f"{MIN_SCANNABLE} characters) ", end="")
    return windows, short, problems, len(items)


def _hits_in(data, windows, short, limit=3):
    hits = []
    for k in range(len(data) - WINDOW + 1):
        what = windows.get(data[k:k + WINDOW])
        if what and what not in hits:
            hits.append(what)
            if len(hits) >= limit:
                return hits
    for text, what in short:
        if text in data and what not in hits:
            hits.append(what)
    return hits


def _scanned_files(roots):
    """Every regular file under `roots`, except the secret files themselves,
    the state directories and the test PKI."""
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            top = os.path.relpath(dirpath, root).split(os.sep)[0]
            if top in ("secrets", "state"):
                dirnames[:] = []
                continue
            for fn in filenames:
                p = os.path.join(dirpath, fn)
                if not os.path.islink(p) and os.path.isfile(p):
                    yield p


def scan_logs():
    """(files scanned, {file: [what matched]}, problems loading the lists,
    number of values looked for)."""
    windows, short, problems, values = _patterns()
    files, hits = 0, {}
    for p in _scanned_files(list(_workspaces)):
        try:
            with open(p, "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        files += 1
        found = _hits_in(data, windows, short)
        if found:
            hits[os.path.relpath(p, "/tmp")] = found
    return files, hits, problems, values


def _plant_probes():
    """A probe workspace with an issued log of one value and files holding a
    12-character piece of it, its form encoding and its Base64 at each offset.
    Returns (dir, {file name: the form that must be found in it})."""
    d = tempfile.mkdtemp(prefix="tokenshm-it-probe-")
    os.mkdir(os.path.join(d, "secrets"), 0o700)
    # '/' every 4 characters: no 12-character window of the raw value survives
    # form encoding, so the form-encoded probe proves the form-encoded match.
    chunks = [base64.b32encode(os.urandom(5)).decode()[:4] for _ in range(10)]
    value = "/".join(chunks)
    with open(os.path.join(d, "secrets", "issued-probe.jsonl"), "w") as f:
        f.write(json.dumps({"kind": "access_token", "value": value}) + "\n")
    plants = {"probe-piece.log": ("raw", "x " + value[9:9 + WINDOW] + " y\n"),
              "probe-form.log": ("form-encoded", "body=a&token=" +
                                 urllib.parse.quote_plus(value, safe="") + "&z=1\n")}
    for a in range(3):
        text = base64.b64encode(b"u:" + b"p" * a + value.encode()).decode()
        plants[f"probe-base64-{a}.log"] = (f"base64@{(2 + a) % 3}", "Basic " + text + "\n")
    expect = {}
    for name, (form, text) in plants.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
        expect[name] = form
    return d, expect


def _probe_verdict(hits, probe_dir, expect):
    """Problems with the scan's answer on the probes (empty when each was found
    as the form it was planted in)."""
    rel = os.path.relpath(probe_dir, "/tmp")
    bad = []
    for name, form in expect.items():
        found = hits.get(os.path.join(rel, name), [])
        if not any(w.endswith(", " + form) for w in found):
            bad.append(f"{name} (planted as {form}; matched {found or 'nothing'})")
    return bad


def _run_scan():
    print("zz_secrets_never_logged ... ", end="", flush=True)
    missing = [os.path.relpath(p, "/tmp") for p in _issued_logs if not os.path.exists(p)]
    if missing:
        print(f"FAIL: a test server wrote no --issued-log: {missing}")
        return False
    # The scan must be able to find something: plant values and look.
    probe_dir, expect = _plant_probes()
    _workspaces.append(probe_dir)
    try:
        files, hits, problems, values = scan_logs()
    finally:
        _workspaces.remove(probe_dir)
        shutil.rmtree(probe_dir, ignore_errors=True)
    rel = os.path.relpath(probe_dir, "/tmp") + os.sep
    bad_probes = _probe_verdict(hits, probe_dir, expect)
    hits = {f: w for f, w in hits.items() if not f.startswith(rel)}
    if problems:
        print(f"FAIL: the issued logs cannot be read: {problems}")
        return False
    if values <= 1:  # the probe's own value
        print("FAIL: no secret or token was recorded, nothing to scan for")
        return False
    if bad_probes:
        print(f"FAIL: the scan missed planted values: {bad_probes}")
        return False
    if hits:
        print(f"FAIL: secrets or tokens found in {len(hits)} file(s):")
        for f, what in sorted(hits.items()):
            print(f"  {f}: {'; '.join(what)}")
        return False
    print(f"ok ({values - 1} values: {len(SECRETS)} remembered, the rest issued; "
          f"{files - len(expect)} files)")
    return True


# ---------------------------------------------------------------- main


def _find_binaries(argv):
    global REFRESHER, TOKENSHM
    rest = list(argv)
    REFRESHER = os.environ.get("TOKENSHM_REFRESHER")
    TOKENSHM = os.environ.get("TOKENSHM_CLI")
    if len(rest) >= 2 and not rest[0].startswith("-"):
        REFRESHER, TOKENSHM = rest[0], rest[1]
        rest = rest[2:]
    REFRESHER = REFRESHER or os.path.join(BUILD_DIR, "refresher", "tokenshm-refresher")
    TOKENSHM = TOKENSHM or os.path.join(BUILD_DIR, "reader", "tokenshm")
    return rest


def _skip(msg):
    """Exits 77 (meson: skipped), or 1 under TOKENSHM_CI=1: a skip is no pass."""
    if os.environ.get("TOKENSHM_CI") == "1":
        print(f"FAIL: cannot run here, and TOKENSHM_CI=1 makes that a failure: {msg}")
        sys.exit(1)
    print(f"SKIP: {msg}")
    sys.exit(77)


class _Abort(KeyboardInterrupt):
    """Raised by the deadline alarm or SIGTERM; unittest re-raises KeyboardInterrupt."""


def main():
    rest = _find_binaries(sys.argv[1:])
    for b in (REFRESHER, TOKENSHM):
        if not os.access(b, os.X_OK):
            print(f"integration: {b} is not an executable; build it first")
            sys.exit(1)
    if shutil.which("node") is None:
        _skip("node not found (needed for the test authorization servers)")
    if not os.path.exists(os.path.join(AUTHSERVER_DIR, "node_modules", "oidc-provider",
                                       "package.json")):
        _skip("tests/authserver/node_modules missing: run tests/authserver/install.sh")

    def on_term(signum, frame):
        raise _Abort(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    def on_alarm(signum, frame):
        raise _Abort(f"the file's global deadline of {FILE_DEADLINE_S}s passed")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(FILE_DEADLINE_S)

    t0 = time.monotonic()
    ok = False
    try:
        prog = unittest.main(module="__main__", argv=[sys.argv[0], "-v", *rest], exit=False)
        ok = prog.result.wasSuccessful()
        if prog.result.testsRun == 0:
            print("FAIL: no test ran (a filter that matched nothing is no pass)")
            ok = False
        signal.alarm(0)
    except _Abort as e:
        print(f"FAIL: aborted: {e}")
        traceback.print_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the rest is short; finish it
        cleanup_all()
    scan_ok = _run_scan()
    print(f"integration: {os.path.basename(sys.argv[0])} took {time.monotonic() - t0:.1f}s")
    if ok and scan_ok and not _KEEP:
        for d in _workspaces + _workspaces_extra:
            shutil.rmtree(d, ignore_errors=True)
    else:
        print("integration: kept the work dirs: " + " ".join(_workspaces))
    sys.exit(0 if ok and scan_ok else 1)
