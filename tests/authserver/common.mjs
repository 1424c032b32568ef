// Shared bits of the test servers: lifetime management, the ready line and
// the record of every secret they hand out.

import fs from 'node:fs';

// Stop on SIGTERM/SIGINT, and when the parent dies (we get re-parented, so
// process.ppid changes: to 1, or to a subreaper). `cleanup` runs first.
export function manageLifetime(cleanup = () => {}) {
  let stopping = false;
  const stop = (code) => {
    if (stopping) return;
    stopping = true;
    try {
      cleanup();
    } catch {
      // exiting anyway
    }
    process.exit(code);
  };
  process.on('SIGTERM', () => stop(0));
  process.on('SIGINT', () => stop(0));
  process.on('SIGHUP', () => stop(0));
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid !== parent || process.ppid === 1) stop(0);
  }, 500);
  timer.unref();
  return stop;
}

// oidc-provider prints notices with console.info (stdout); stdout is reserved
// for the single ready line, so send every console message to stderr.
export function consoleToStderr() {
  for (const name of ['log', 'info', 'debug']) {
    // eslint-disable-next-line no-console
    console[name] = (...args) => console.error(...args);
  }
}

// --issued-log FILE: every secret a server issues or knows (access, refresh,
// ID tokens, authorization codes, client secrets) as one JSON line
// {"kind","value"}, written before the client can see it, in a file created
// with mode 0600 (and never through a symlink). The integration harness's
// no-secrets scan loads it, so it knows values the tests never saw. Kind
// "client_id" marks a public value: part of a secret that also occurs in one
// is no evidence of a leak. Returns record(kind, value, facts): `facts` are
// extra fields of the line (the oidc server adds an access token's expiry,
// "exp_ms"); a no-op without FILE.
export function openIssuedLog(name, path) {
  if (!path) return () => {};
  let fd;
  try {
    const { O_WRONLY, O_APPEND, O_CREAT, O_NOFOLLOW } = fs.constants;
    fd = fs.openSync(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW, 0o600);
    fs.fchmodSync(fd, 0o600);
  } catch (e) {
    process.stderr.write(`${name}: cannot open --issued-log ${path}: ${e.message}\n`);
    process.exit(2);
  }
  const recorded = new Set();
  return (kind, value, facts = {}) => {
    if (typeof value !== 'string' || value === '') return;
    const key = `${kind}\u0000${value}`;
    if (recorded.has(key)) return;
    recorded.add(key);
    fs.writeSync(fd, `${JSON.stringify({ ...facts, kind, value })}\n`);
  };
}

export function printReady(fields) {
  process.stdout.write(`${JSON.stringify({ ready: true, ...fields })}\n`);
}

export function listen(server, port, host) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address().port);
    });
  });
}

export function hostForUrl(host) {
  return host.includes(':') ? `[${host}]` : host;
}

// Starts `server` on host:port for a test server called `name`: keep-alive as
// clients expect, closed on SIGTERM/SIGINT or parent death, and a clear
// one-line error (exit 1) when the port cannot be had. Returns the bound port.
export async function serve(server, name, port, host) {
  server.keepAliveTimeout = 5000;
  manageLifetime(() => {
    server.closeAllConnections?.();
    server.close();
  });
  try {
    return await listen(server, port, host);
  } catch (e) {
    process.stderr.write(`${name}: cannot listen on ${host}:${port}: ${e.message}\n`);
    process.exit(1);
  }
}
