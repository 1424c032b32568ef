#!/usr/bin/env node
// A token endpoint that misbehaves on demand, for the refresher's fault tests.
// Plain HTTP on loopback. See README.md in this directory.
//
//   POST /control {"script":[step,...], "reset_log":bool}  replace the queue
//   GET  /control                         {"requests":N,"log":[...],"script":[...],"next":i}
//   POST /token                           answered by the next step (the last repeats)
//   GET  /.well-known/openid-configuration and /.well-known/oauth-authorization-server

import crypto from 'node:crypto';
import http from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';

import {
  consoleToStderr, hostForUrl, openIssuedLog, printReady, serve,
} from './common.mjs';

consoleToStderr();

const USAGE = 'usage: fault_server.mjs [--port N] [--host ADDR] [--script JSON] [--issued-log FILE]';

function die(msg) {
  process.stderr.write(`fault_server: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      host: { type: 'string', default: '127.0.0.1' },
      script: { type: 'string' },
      'issued-log': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (e) {
  die(e.message);
}
if (args.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) die('--port must be 0..65535');

const recordIssued = openIssuedLog('fault_server', args['issued-log']);

const MAX_BODY = 1024 * 1024;
const MAX_LOG = 100000;

// ------------------------------------------------------------------ steps
const DEFAULT_SCRIPT = [{ ok: { expires_in: 3600, refresh_token: true } }];

// Returns an error text, or null when the step is well-formed.
function checkStep(step, path) {
  if (step === null || typeof step !== 'object' || Array.isArray(step)) return `${path}: a step is an object`;
  const isInt = (v, min = 0) => Number.isInteger(v) && v >= min;
  if ('slow_ms' in step) {
    if (!isInt(step.slow_ms)) return `${path}.slow_ms: a non-negative integer`;
    if (!('then' in step)) return `${path}: slow_ms needs "then"`;
    return checkStep(step.then, `${path}.then`);
  }
  if ('ok' in step) {
    const ok = step.ok ?? {};
    if (typeof ok !== 'object' || Array.isArray(ok)) return `${path}.ok: an object`;
    if (ok.access_token_bytes !== undefined && !isInt(ok.access_token_bytes, 1)) {
      return `${path}.ok.access_token_bytes: a positive integer`;
    }
    if (ok.extra !== undefined && (typeof ok.extra !== 'object' || ok.extra === null || Array.isArray(ok.extra))) {
      return `${path}.ok.extra: an object`;
    }
    return null;
  }
  if (step.drop === true || step.garbage === true || step.html === true || step.truncated === true
      || step.stall_body === true) return null;
  if ('huge_bytes' in step) return isInt(step.huge_bytes, 1) ? null : `${path}.huge_bytes: a positive integer`;
  if ('error' in step) {
    if (typeof step.error !== 'string') return `${path}.error: a string`;
    if (step.status !== undefined && !isInt(step.status, 100)) return `${path}.status: an HTTP status`;
    return null;
  }
  if ('status' in step) {
    if (!isInt(step.status, 100) || step.status > 599) return `${path}.status: an HTTP status`;
    if (step.retry_after !== undefined && typeof step.retry_after !== 'string'
        && !Number.isInteger(step.retry_after)) {
      return `${path}.retry_after: a string (seconds or HTTP-date)`;
    }
    return null;
  }
  return `${path}: unknown step ${JSON.stringify(step)}`;
}

function kindOf(step) {
  if ('slow_ms' in step) return `slow_ms(${step.slow_ms})+${kindOf(step.then)}`;
  for (const k of ['ok', 'drop', 'garbage', 'html', 'truncated', 'stall_body', 'huge_bytes', 'error']) {
    if (k in step) return k;
  }
  if (step.empty) return `status(${step.status},empty)`;
  return `status(${step.status})`;
}

const randomToken = (bytes = 32) => crypto.randomBytes(bytes).toString('base64url');
const hash16 = (s) => crypto.createHash('sha256').update(s).digest('hex').slice(0, 16);

function sendJson(res, status, obj, headers = {}) {
  const body = Buffer.from(JSON.stringify(obj));
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': body.length,
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(body);
}

// Performs one step on res; returns facts for the log.
async function perform(step, req, res) {
  if ('slow_ms' in step) {
    await new Promise((r) => { setTimeout(r, step.slow_ms); });
    if (res.destroyed || req.socket.destroyed) return { client_gone: true };
    return perform(step.then, req, res);
  }
  if ('ok' in step) {
    const ok = step.ok ?? {};
    const out = {};
    if (typeof ok.access_token === 'string') out.access_token = ok.access_token;
    else if (ok.access_token !== null) {
      out.access_token = ok.access_token_bytes
        ? randomToken(ok.access_token_bytes).padEnd(ok.access_token_bytes, 'A').slice(0, ok.access_token_bytes)
        : randomToken();
    }
    if (ok.token_type !== null) out.token_type = ok.token_type ?? 'Bearer';
    if (ok.expires_in !== undefined && ok.expires_in !== null) out.expires_in = ok.expires_in;
    const facts = {};
    if (ok.refresh_token === true || typeof ok.refresh_token === 'string') {
      out.refresh_token = ok.refresh_token === true ? randomToken() : ok.refresh_token;
      facts.issued_refresh_token_sha256 = hash16(out.refresh_token);
    }
    if (ok.scope !== undefined) out.scope = ok.scope;
    Object.assign(out, ok.extra ?? {});
    recordIssued('access_token', out.access_token);
    recordIssued('refresh_token', out.refresh_token);
    sendJson(res, 200, out, ok.headers ?? {});
    return facts;
  }
  if (step.drop) {
    req.socket.destroy();
    return {};
  }
  if (step.garbage) {
    const body = 'this is not JSON {{{ \u0000\u00ff';
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
    return {};
  }
  if (step.html) {
    const body = '<!DOCTYPE html>\n<html><head><title>Sign in</title></head>'
      + '<body><h1>Please sign in</h1><form method="post"><input name="user"></form></body></html>\n';
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(body) });
    res.end(body);
    return {};
  }
  if ('huge_bytes' in step) {
    // A valid JSON token response of exactly N bytes (when N >= 59) whose
    // access_token takes the room; streamed, so N may be very large.
    const n = step.huge_bytes;
    const head = '{"token_type":"Bearer","expires_in":3600,"access_token":"';
    const tail = '"}';
    const fill = Math.max(0, n - head.length - tail.length);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': head.length + fill + tail.length });
    let sent = 0;
    function* chunks() {
      sent += head.length;
      yield Buffer.from(head);
      const chunk = Buffer.alloc(64 * 1024, 'A');
      let left = fill;
      while (left > 0) {
        const part = left >= chunk.length ? chunk : chunk.subarray(0, left);
        left -= part.length;
        sent += part.length;
        yield part;
      }
      sent += tail.length;
      yield Buffer.from(tail);
    }
    try {
      await pipeline(Readable.from(chunks()), res);
    } catch {
      // the client went away
    }
    return { sent_bytes: sent };
  }
  if (step.truncated) {
    const body = '{"access_token":"trunc';
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': 4096 });
    res.write(body);
    // give the bytes a moment to leave, then cut the connection
    setTimeout(() => req.socket.destroy(), 50);
    return {};
  }
  if (step.stall_body) {
    // Headers and the start of a body, then nothing: the connection stays
    // open until the client gives up (or 60 s pass).
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': 4096 });
    res.write('{"access_token":"stall');
    const started = Date.now();
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 60000);
      req.socket.once('close', () => { clearTimeout(timer); resolve(); });
    });
    req.socket.destroy();
    return { held_ms: Date.now() - started };
  }
  if ('error' in step) {
    const out = { error: step.error };
    if (step.error_description !== undefined) out.error_description = step.error_description;
    const headers = {};
    if (step.retry_after !== undefined) headers['retry-after'] = String(step.retry_after);
    if ((step.status ?? 400) === 401) headers['www-authenticate'] = 'Basic realm="fault_server"';
    sendJson(res, step.status ?? 400, out, headers);
    return {};
  }
  // plain status
  const headers = {};
  if (step.retry_after !== undefined) headers['retry-after'] = String(step.retry_after);
  if (step.empty) {
    res.writeHead(step.status, { ...headers, 'content-length': 0 });
    res.end();
  } else {
    const body = `${step.status} ${http.STATUS_CODES[step.status] ?? 'Status'}\n`;
    res.writeHead(step.status, { ...headers, 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }
  return {};
}

// ------------------------------------------------------------------ state
let script = DEFAULT_SCRIPT;
let next = 0;
let requests = 0;
let log = [];

if (args.script) {
  let s;
  try {
    s = JSON.parse(args.script);
  } catch (e) {
    die(`--script: ${e.message}`);
  }
  const steps = Array.isArray(s) ? s : s?.script;
  if (!Array.isArray(steps) || steps.length === 0) die('--script: a non-empty array of steps (or {"script":[...]})');
  steps.forEach((st, i) => { const err = checkStep(st, `script[${i}]`); if (err) die(err); });
  script = steps;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new Error('body too large'));
        req.destroy();
      } else {
        chunks.push(c);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

let base;

async function handle(req, res) {
  const url = new URL(req.url, 'http://x');
  const path = url.pathname;

  if (path === '/control') {
    if (req.method === 'GET') {
      sendJson(res, 200, {
        requests, log, script, next,
      });
      return;
    }
    if (req.method === 'POST') {
      let body;
      try {
        body = JSON.parse(await readBody(req));
      } catch (e) {
        sendJson(res, 400, { error: `control body: ${e.message}` });
        return;
      }
      if (body === null || typeof body !== 'object' || Array.isArray(body)) {
        sendJson(res, 400, { error: 'control body: an object {"script":[...]}' });
        return;
      }
      if (body.reset_log) {
        log = [];
        requests = 0;
      }
      if (body.script !== undefined) {
        if (!Array.isArray(body.script) || body.script.length === 0) {
          sendJson(res, 400, { error: 'script: a non-empty array of steps' });
          return;
        }
        for (let i = 0; i < body.script.length; i += 1) {
          const err = checkStep(body.script[i], `script[${i}]`);
          if (err) {
            sendJson(res, 400, { error: err });
            return;
          }
        }
        script = body.script;
        next = 0;
      }
      sendJson(res, 200, { ok: true, steps: script.length, requests });
      return;
    }
    sendJson(res, 405, { error: 'GET or POST' });
    return;
  }

  if (path === '/.well-known/openid-configuration' || path === '/.well-known/oauth-authorization-server') {
    sendJson(res, 200, { issuer: base, token_endpoint: `${base}/token` });
    return;
  }

  if (path === '/token') {
    const t = Date.now();
    let raw = '';
    try {
      raw = await readBody(req);
    } catch {
      return;
    }
    const form = new URLSearchParams(raw);
    const index = Math.min(next, script.length - 1);
    const step = script[index];
    if (next < script.length) next += 1;
    requests += 1;
    const authz = req.headers.authorization;
    const entry = {
      n: requests,
      time: t,
      method: req.method,
      content_type: req.headers['content-type'] ?? null,
      authorization: authz !== undefined,
      auth_scheme: authz !== undefined ? authz.split(' ')[0] : null,
      form_keys: [...new Set(form.keys())],
      grant_type: form.get('grant_type'),
      step: index,
      kind: kindOf(step),
    };
    // A short hash (never the value) lets a test check which refresh token
    // was presented against the ones this server issued.
    if (form.has('refresh_token')) entry.refresh_token_sha256 = hash16(form.get('refresh_token'));
    if (log.length < MAX_LOG) log.push(entry);
    try {
      Object.assign(entry, await perform(step, req, res));
    } catch (e) {
      entry.error = String(e.message);
      req.socket.destroy();
    }
    return;
  }

  sendJson(res, 404, { error: 'not_found' });
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((e) => {
    console.error(`fault_server: ${e.stack ?? e}`);
    req.socket.destroy();
  });
});
const actualPort = await serve(server, 'fault_server', port, args.host);
base = `http://${hostForUrl(args.host)}:${actualPort}`;
printReady({ port: actualPort, issuer: base, pid: process.pid });
