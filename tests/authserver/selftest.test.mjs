// Self-test of the test servers (node's built-in runner):
//   cd tests/authserver && ./install.sh && node --test selftest.test.mjs
// Checks the behaviour the integration tests rely on; needs openssl for the
// HTTPS case.

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'authserver-selftest-'));
const children = new Set();

after(() => {
  for (const c of children) c.kill('SIGTERM');
  fs.rmSync(tmp, { recursive: true, force: true });
});

// Start a server; resolves with {child, port, issuer} once the ready line is read.
function start(script, args = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(here, script), ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.add(child);
    child.on('exit', () => children.delete(child));
    let out = '';
    let err = '';
    child.stderr.on('data', (d) => { err += d; });
    child.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) {
        try {
          const ready = JSON.parse(out.slice(0, nl));
          assert.equal(ready.ready, true);
          assert.equal(ready.pid, child.pid);
          resolve({ child, ...ready });
        } catch (e) {
          reject(new Error(`bad ready line ${JSON.stringify(out)}: ${e.message}`));
        }
      }
    });
    child.on('exit', (code) => reject(new Error(`${script} exited ${code} before ready: ${err}`)));
  });
}

function stop(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) {
      resolve(child.exitCode);
      return;
    }
    child.once('exit', (code, sig) => resolve(code ?? sig));
    child.kill('SIGTERM');
  });
}

// Minimal HTTP(S) client: resolves {status, headers, text, json}, or
// {error} when the connection fails.
function request(url, { method = 'GET', headers = {}, body, ca } = {}) {
  return new Promise((resolve) => {
    const u = new URL(url);
    const mod = u.protocol === 'https:' ? https : http;
    const req = mod.request(u, {
      method, headers, ca, agent: false,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', (e) => resolve({ status: res.statusCode, error: e }));
      res.on('aborted', () => resolve({ status: res.statusCode, error: new Error('aborted') }));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({
          status: res.statusCode, headers: res.headers, text, json,
        });
      });
    });
    req.on('error', (error) => resolve({ error }));
    if (body !== undefined) req.write(body);
    req.end();
  });
}

const form = (o) => new URLSearchParams(o).toString();
const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
// RFC 6749 §2.3.1: form-encode id and secret, then Base64.
const basic = (id, secret) => `Basic ${Buffer.from(
  `${form({ a: id }).slice(2)}:${form({ a: secret }).slice(2)}`,
).toString('base64')}`;

function token(base, params, { auth, ca } = {}) {
  return request(`${base}/token`, {
    method: 'POST',
    headers: { ...FORM, ...(auth ? { authorization: auth } : {}) },
    body: form(params),
    ca,
  });
}

describe('oidc_server', () => {
  let srv;
  let base;
  const rt = (n) => path.join(tmp, `rt-${n}`);
  const log = path.join(tmp, 'oidc.log');
  const issued = path.join(tmp, 'oidc-issued.jsonl');

  before(async () => {
    srv = await start('oidc_server.mjs', [
      '--mint-refresh-token', 'tokenshm-demo', '--refresh-token-out', rt('demo'),
      '--mint-refresh-token', 'tokenshm-demo', '--refresh-token-out', rt('demo2'),
      '--mint-refresh-token', 'tokenshm-post', '--refresh-token-out', rt('post'),
      '--mint-refresh-token', 'id:with+odd%chars x', '--refresh-token-out', rt('odd'),
      '--log', log,
      '--issued-log', issued,
    ]);
    base = srv.issuer;
  });
  after(async () => {
    assert.equal(await stop(srv.child), 0);
  });

  test('discovery advertises the token endpoint', async () => {
    const r = await request(`${base}/.well-known/openid-configuration`);
    assert.equal(r.status, 200);
    assert.equal(r.json.issuer, base);
    assert.equal(r.json.token_endpoint, `${base}/token`);
    assert.equal(base, `http://127.0.0.1:${srv.port}`);
  });

  test('minted refresh token file: token only, mode 0600', () => {
    const st = fs.statSync(rt('demo'));
    assert.equal(st.mode & 0o777, 0o600);
    assert.match(fs.readFileSync(rt('demo'), 'utf8'), /^[A-Za-z0-9_-]{20,}$/);
  });

  test('refresh with basic rotates; replay revokes the grant', async () => {
    const first = fs.readFileSync(rt('demo'), 'utf8');
    const auth = basic('tokenshm-demo', 'demo-secret');
    const r1 = await token(base, { grant_type: 'refresh_token', refresh_token: first }, { auth });
    assert.equal(r1.status, 200, r1.text);
    assert.equal(r1.json.token_type, 'Bearer');
    assert.equal(r1.json.expires_in, 4);
    assert.equal(typeof r1.json.access_token, 'string');
    assert.notEqual(r1.json.refresh_token, first);

    const r2 = await token(base, { grant_type: 'refresh_token', refresh_token: r1.json.refresh_token }, { auth });
    assert.equal(r2.status, 200, r2.text);

    const replay = await token(base, { grant_type: 'refresh_token', refresh_token: first }, { auth });
    assert.equal(replay.status, 400);
    assert.equal(replay.json.error, 'invalid_grant');

    const after = await token(base, { grant_type: 'refresh_token', refresh_token: r2.json.refresh_token }, { auth });
    assert.equal(after.status, 400);
    assert.equal(after.json.error, 'invalid_grant');

    const lines = fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const revoked = lines.find((l) => l.grant_revoked);
    assert.ok(revoked, 'log shows the revocation');
    assert.equal(revoked.outcome, 'invalid_grant');
    assert.equal(revoked.detail, 'refresh token already used');
    assert.ok(lines.some((l) => l.outcome === 'ok' && l.rotated === true));
  });

  test('the log never holds token values or secrets', () => {
    const text = fs.readFileSync(log, 'utf8');
    for (const n of ['demo', 'post', 'odd']) assert.ok(!text.includes(fs.readFileSync(rt(n), 'utf8')));
    assert.ok(!text.includes('demo-secret'));
  });

  test('the registered auth method is enforced', async () => {
    const demo = fs.readFileSync(rt('demo2'), 'utf8');
    const wrong = await token(base, {
      grant_type: 'refresh_token', refresh_token: demo, client_id: 'tokenshm-demo', client_secret: 'demo-secret',
    });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.json.error, 'invalid_client');

    const post = fs.readFileSync(rt('post'), 'utf8');
    const wrong2 = await token(base, { grant_type: 'refresh_token', refresh_token: post }, {
      auth: basic('tokenshm-post', 'post-secret'),
    });
    assert.equal(wrong2.status, 401);
    assert.equal(wrong2.json.error, 'invalid_client');

    // the rejected attempts consumed nothing
    const ok = await token(base, {
      grant_type: 'refresh_token', refresh_token: post, client_id: 'tokenshm-post', client_secret: 'post-secret',
    });
    assert.equal(ok.status, 200, ok.text);
    assert.ok(ok.json.refresh_token);
    const ok2 = await token(base, { grant_type: 'refresh_token', refresh_token: demo }, {
      auth: basic('tokenshm-demo', 'demo-secret'),
    });
    assert.equal(ok2.status, 200, ok2.text);
  });

  test('wrong secret and unknown client are invalid_client', async () => {
    const r = await token(base, { grant_type: 'client_credentials' }, { auth: basic('tokenshm-demo', 'nope') });
    assert.equal(r.status, 401);
    assert.equal(r.json.error, 'invalid_client');
    const r2 = await token(base, { grant_type: 'client_credentials' }, { auth: basic('nobody', 'x') });
    assert.equal(r2.status, 401);
    assert.equal(r2.json.error, 'invalid_client');
  });

  test('client_credentials, plain and with a resource indicator', async () => {
    const creds = { client_id: 'tokenshm-post', client_secret: 'post-secret' };
    const r = await token(base, { grant_type: 'client_credentials', ...creds });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.token_type, 'Bearer');
    assert.equal(r.json.expires_in, 4);
    assert.equal(r.json.refresh_token, undefined);
    const r2 = await token(base, {
      grant_type: 'client_credentials', scope: 'files.write', resource: 'https://storage.example.com', ...creds,
    });
    assert.equal(r2.status, 200, r2.text);
    assert.equal(r2.json.scope, 'files.write');
  });

  test('--issued-log records every token handed out and every client secret, mode 0600', async () => {
    const r = await token(base, {
      grant_type: 'client_credentials', client_id: 'tokenshm-post', client_secret: 'post-secret',
    });
    assert.equal(r.status, 200, r.text);
    assert.equal(fs.statSync(issued).mode & 0o777, 0o600);
    const items = fs.readFileSync(issued, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const has = (kind, value) => items.some((i) => i.kind === kind && i.value === value);
    assert.ok(has('access_token', r.json.access_token), 'the access token just issued');
    for (const n of ['demo', 'demo2', 'post', 'odd']) {
      assert.ok(has('refresh_token', fs.readFileSync(rt(n), 'utf8')), `minted refresh token ${n}`);
    }
    for (const s of ['demo-secret', 'post-secret', 'secret:with+odd%chars y']) {
      assert.ok(has('client_secret', s), 'a client secret');
    }
    assert.ok(has('client_id', 'tokenshm-demo'), 'client ids, as public values');
  });

  test('odd-character client: form-encoded Basic works, raw does not', async () => {
    const odd = fs.readFileSync(rt('odd'), 'utf8');
    const r = await token(base, { grant_type: 'refresh_token', refresh_token: odd }, {
      auth: basic('id:with+odd%chars x', 'secret:with+odd%chars y'),
    });
    assert.equal(r.status, 200, r.text);
    const raw = `Basic ${Buffer.from('id:with+odd%chars x:secret:with+odd%chars y').toString('base64')}`;
    const r2 = await token(base, { grant_type: 'refresh_token', refresh_token: r.json.refresh_token }, { auth: raw });
    assert.notEqual(r2.status, 200);
  });

  test('a grant type the client may not use is unauthorized_client', async () => {
    const clients = path.join(tmp, 'clients.json');
    fs.writeFileSync(clients, JSON.stringify([{
      client_id: 'rt-only', client_secret: 's', token_endpoint_auth_method: 'client_secret_basic', grant_types: ['refresh_token'],
    }]));
    const s = await start('oidc_server.mjs', ['--clients', clients]);
    try {
      const r = await token(s.issuer, { grant_type: 'client_credentials' }, { auth: basic('rt-only', 's') });
      assert.equal(r.status, 400);
      assert.equal(r.json.error, 'unauthorized_client');
    } finally {
      await stop(s.child);
    }
  });
});

describe('oidc_server --test-control', () => {
  let srv;
  let base;
  const issued = path.join(tmp, 'control-issued.jsonl');
  const log = path.join(tmp, 'control.log');
  before(async () => {
    srv = await start('oidc_server.mjs', ['--test-control', '--access-ttl', '3', '--issued-log', issued, '--log', log]);
    base = srv.issuer;
  });
  after(async () => {
    assert.equal(await stop(srv.child), 0);
  });
  const stats = async () => (await request(`${base}/_test/stats`)).json;
  const mint = () => request(`${base}/_test/mint`, { method: 'POST', body: JSON.stringify({ client_id: 'tokenshm-demo' }) });

  test('mint gives a working grant; stats count refreshes, replays and revocations', async () => {
    const s0 = await stats();
    assert.deepEqual([s0.refresh_ok, s0.replays, s0.minted, s0.token_requests_in_flight], [0, 0, 0, 0]);
    const m = await mint();
    assert.equal(m.status, 200, m.text);
    const first = m.json.refresh_token;
    const auth = basic('tokenshm-demo', 'demo-secret');
    const r1 = await token(base, { grant_type: 'refresh_token', refresh_token: first }, { auth });
    assert.equal(r1.status, 200, r1.text);
    const replay = await token(base, { grant_type: 'refresh_token', refresh_token: first }, { auth });
    assert.equal(replay.json.error, 'invalid_grant');
    const s1 = await stats();
    assert.deepEqual([s1.refresh_ok, s1.replays, s1.grants_revoked, s1.minted, s1.token_requests],
      [1, 1, 1, 1, 2]);
    const lines = fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(lines.filter((l) => l.replay === true).length, 1);
    const items = fs.readFileSync(issued, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.ok(items.some((i) => i.kind === 'refresh_token' && i.value === first), 'the minted token is in the issued log');
    const at = items.find((i) => i.value === r1.json.access_token);
    assert.equal(at.kind, 'access_token');
    // exp_ms: the server's own expiry, whole seconds, ttl after issue
    assert.equal(at.exp_ms % 1000, 0);
    assert.ok(Math.abs(at.exp_ms - (Date.now() + 3000)) < 2000, `exp_ms ${at.exp_ms}`);
  });

  test('an unknown client or path is refused; without the flag there is no /_test', async () => {
    const bad = await request(`${base}/_test/mint`, { method: 'POST', body: '{"client_id":"nobody"}' });
    assert.equal(bad.status, 400);
    assert.equal((await request(`${base}/_test/other`)).status, 404);
    const plain = await start('oidc_server.mjs', []);
    try {
      const r = await request(`${plain.issuer}/_test/stats`);
      assert.notEqual(r.status, 200);
    } finally {
      await stop(plain.child);
    }
  });
});

describe('oidc_server over HTTPS', () => {
  test('verifies with the right CA only', async (t) => {
    try {
      execFileSync('openssl', ['version'], { stdio: 'ignore' });
    } catch {
      // A skip is no pass in CI (.ci/run sets TOKENSHM_CI=1).
      assert.notEqual(process.env.TOKENSHM_CI, '1', 'openssl not installed (TOKENSHM_CI=1: no skipping)');
      t.skip('openssl not installed');
      return;
    }
    const pki = path.join(tmp, 'pki');
    execFileSync(path.join(here, 'make_certs.sh'), [pki]);
    const rtFile = path.join(tmp, 'rt-tls');
    const s = await start('oidc_server.mjs', [
      '--tls-cert', path.join(pki, 'server.pem'), '--tls-key', path.join(pki, 'server.key'),
      '--access-ttl', '30', '--access-token-format', 'jwt',
      '--mint-refresh-token', 'tokenshm-demo', '--refresh-token-out', rtFile,
      '--mint-scope', 'offline_access files.write', '--mint-resource', 'https://storage.example.com',
    ]);
    try {
      assert.equal(s.issuer, `https://127.0.0.1:${s.port}`);
      const ca = fs.readFileSync(path.join(pki, 'ca.pem'));
      const r = await request(`${s.issuer}/.well-known/openid-configuration`, { ca });
      assert.equal(r.status, 200);
      assert.equal(r.json.token_endpoint, `${s.issuer}/token`);
      const bad = await request(`${s.issuer}/.well-known/openid-configuration`, {
        ca: fs.readFileSync(path.join(pki, 'other_ca.pem')),
      });
      assert.ok(bad.error, 'an unrelated CA must not verify');
      const tr = await token(s.issuer, { grant_type: 'refresh_token', refresh_token: fs.readFileSync(rtFile, 'utf8') }, {
        auth: basic('tokenshm-demo', 'demo-secret'), ca,
      });
      assert.equal(tr.status, 200, tr.text);
      assert.equal(tr.json.expires_in, 30);
      assert.equal(tr.json.scope, 'files.write');
      const claims = JSON.parse(Buffer.from(tr.json.access_token.split('.')[1], 'base64url'));
      assert.equal(claims.aud, 'https://storage.example.com');
    } finally {
      await stop(s.child);
    }
  });
});

describe('fault_server', () => {
  let srv;
  let base;
  const issued = path.join(tmp, 'fault-issued.jsonl');
  before(async () => {
    srv = await start('fault_server.mjs', ['--issued-log', issued]);
    base = srv.issuer;
  });
  after(async () => {
    assert.equal(await stop(srv.child), 0);
  });

  const script = (steps) => request(`${base}/control`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ script: steps, reset_log: true }),
  });
  const call = () => token(base, { grant_type: 'refresh_token', refresh_token: 'R0' }, { auth: basic('a', 'b') });

  test('discovery', async () => {
    const r = await request(`${base}/.well-known/openid-configuration`);
    assert.deepEqual(r.json, { issuer: base, token_endpoint: `${base}/token` });
  });

  test('every step, in order, then the last repeats', async () => {
    const set = await script([
      { ok: { expires_in: 5, token_type: 'Bearer', refresh_token: true, scope: 'a b' } },
      { status: 500 },
      { status: 429, retry_after: '3' },
      { status: 503, retry_after: 'Wed, 21 Oct 2015 07:28:00 GMT' },
      { slow_ms: 300, then: { ok: { refresh_token: false } } },
      { garbage: true },
      { html: true },
      { huge_bytes: 100000 },
      { drop: true },
      { status: 400, empty: true },
      { status: 403, empty: true },
      { error: 'invalid_grant', status: 400 },
      { truncated: true },
    ]);
    assert.equal(set.status, 200, set.text);

    let r = await call();
    assert.equal(r.status, 200);
    assert.equal(r.json.expires_in, 5);
    assert.equal(r.json.scope, 'a b');
    assert.ok(r.json.access_token && r.json.refresh_token);
    const items = fs.readFileSync(issued, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(items.filter((i) => i.value === r.json.access_token || i.value === r.json.refresh_token)
      .map((i) => i.kind).sort(), ['access_token', 'refresh_token'], '--issued-log has both tokens');
    r = await call();
    assert.equal(r.status, 500);
    r = await call();
    assert.equal(r.status, 429);
    assert.equal(r.headers['retry-after'], '3');
    r = await call();
    assert.equal(r.status, 503);
    assert.equal(r.headers['retry-after'], 'Wed, 21 Oct 2015 07:28:00 GMT');
    const t0 = Date.now();
    r = await call();
    assert.ok(Date.now() - t0 >= 280);
    assert.equal(r.status, 200);
    assert.equal(r.json.refresh_token, undefined);
    assert.equal(r.json.expires_in, undefined);
    r = await call();
    assert.equal(r.status, 200);
    assert.equal(r.json, undefined);
    r = await call();
    assert.match(r.headers['content-type'], /text\/html/);
    r = await call();
    assert.equal(r.text.length, 100000);
    assert.equal(r.json.access_token.length, 100000 - 59);
    r = await call();
    assert.ok(r.error, 'drop: no answer');
    r = await call();
    assert.equal(r.status, 400);
    assert.equal(r.text, '');
    r = await call();
    assert.equal(r.status, 403);
    assert.equal(r.text, '');
    r = await call();
    assert.equal(r.status, 400);
    assert.deepEqual(r.json, { error: 'invalid_grant' });
    r = await call();
    assert.ok(r.error, 'truncated: body shorter than Content-Length');
    r = await call();
    assert.ok(r.error, 'the last step repeats');

    const c = await request(`${base}/control`);
    assert.equal(c.json.requests, 14);
    const e = c.json.log[0];
    assert.equal(e.method, 'POST');
    assert.equal(e.authorization, true);
    assert.deepEqual(e.form_keys, ['grant_type', 'refresh_token']);
    assert.equal(e.step, 0);
    assert.ok(!JSON.stringify(c.json.log).includes('R0'));
    assert.deepEqual(c.json.log.map((l) => l.step), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 12]);
  });

  test('stall_body: headers and a piece of the body, then nothing until the client closes', async () => {
    await script([{ stall_body: true }]);
    const got = await new Promise((resolve) => {
      const req = http.request(`${base}/token`, { method: 'POST', headers: FORM, agent: false }, (res) => {
        let text = '';
        res.on('data', (d) => { text += d; });
        setTimeout(() => { resolve({ status: res.statusCode, text }); req.destroy(); }, 500);
      });
      req.on('error', () => {});
      req.end(form({ grant_type: 'refresh_token', refresh_token: 'R0' }));
    });
    assert.equal(got.status, 200);
    assert.equal(got.text, '{"access_token":"stall');
    for (let i = 0; i < 20; i += 1) {
      // eslint-disable-next-line no-await-in-loop
      const c = await request(`${base}/control`);
      if (c.json.log[0].held_ms !== undefined) {
        assert.ok(c.json.log[0].held_ms >= 400, `held ${c.json.log[0].held_ms} ms`);
        return;
      }
      // eslint-disable-next-line no-await-in-loop
      await new Promise((r) => { setTimeout(r, 100); });
    }
    assert.fail('the stalled request never ended after the client closed');
  });

  test('a bad script is refused and changes nothing', async () => {
    await script([{ status: 502 }]);
    const bad = await script([{ nonsense: true }]);
    assert.equal(bad.status, 400);
    const r = await call();
    assert.equal(r.status, 502);
  });
});

// Running and not a zombie (an exited child waits a moment to be reaped by init).
function isAlive(pid) {
  try {
    const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    return !/^State:\s+Z/m.test(st);
  } catch {
    return false;
  }
}

describe('lifetime', () => {
  for (const script of ['oidc_server.mjs', 'fault_server.mjs']) {
    test(`${script} exits when its parent dies`, async () => {
      // a shell parent that starts the server, prints its pid, then is killed
      const sh = spawn('sh', ['-c', `"${process.execPath}" "${path.join(here, script)}" >/dev/null 2>&1 & echo $!; exec sleep 60`], {
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      children.add(sh);
      const pid = Number(await new Promise((resolve) => { sh.stdout.once('data', (d) => resolve(String(d).trim())); }));
      await new Promise((r) => { setTimeout(r, 1500); });
      assert.ok(isAlive(pid), 'alive while the parent is');
      sh.kill('SIGKILL');
      let alive = true;
      for (let i = 0; i < 40 && alive; i += 1) {
        // eslint-disable-next-line no-await-in-loop
        await new Promise((r) => { setTimeout(r, 100); });
        alive = isAlive(pid);
      }
      if (alive) process.kill(pid, 'SIGKILL');
      assert.equal(alive, false, 'server outlived its parent');
    });
  }
});
