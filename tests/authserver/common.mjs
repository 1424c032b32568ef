// Shared bits of the test servers: lifetime management and the ready line.

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
