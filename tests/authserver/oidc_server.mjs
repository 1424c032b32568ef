#!/usr/bin/env node
// A real OAuth 2.0 / OpenID Connect authorization server for the tokenshm
// integration tests, built on oidc-provider 9.x. State is in memory.
// See README.md in this directory for the CLI and the verified behaviour.

import { AsyncLocalStorage } from 'node:async_hooks';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

import {
  consoleToStderr, hostForUrl, openIssuedLog, printReady, serve,
} from './common.mjs';
import MemoryAdapter, { upsertListener } from './memory_adapter.mjs';

consoleToStderr();

const USAGE = `usage: oidc_server.mjs [--port N] [--host ADDR] [--tls-cert FILE --tls-key FILE]
  [--access-ttl S] [--refresh-ttl S] [--issuer-url URL] [--clients FILE]
  [--mint-refresh-token CLIENT_ID --refresh-token-out FILE]... [--mint-scope SCOPE]
  [--mint-resource URI]
  [--access-token-format opaque|jwt] [--log FILE] [--issued-log FILE] [--test-control]`;

function die(msg) {
  process.stderr.write(`oidc_server: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      host: { type: 'string', default: '127.0.0.1' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'access-ttl': { type: 'string', default: '4' },
      'refresh-ttl': { type: 'string', default: '3600' },
      'issuer-url': { type: 'string' },
      clients: { type: 'string' },
      'mint-refresh-token': { type: 'string', multiple: true, default: [] },
      'refresh-token-out': { type: 'string', multiple: true, default: [] },
      'mint-scope': { type: 'string', default: 'openid offline_access' },
      'mint-resource': { type: 'string' },
      'access-token-format': { type: 'string', default: 'opaque' },
      log: { type: 'string' },
      'issued-log': { type: 'string' },
      'test-control': { type: 'boolean', default: false },
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

function posInt(name, min = 1) {
  const v = Number(args[name]);
  if (!Number.isInteger(v) || v < min) die(`--${name} must be an integer >= ${min}`);
  return v;
}
const port = posInt('port', 0);
const accessTtl = posInt('access-ttl');
const refreshTtl = posInt('refresh-ttl');
if (port > 65535) die('--port must be <= 65535');
if (!!args['tls-cert'] !== !!args['tls-key']) die('--tls-cert and --tls-key go together');
if (args['mint-refresh-token'].length !== args['refresh-token-out'].length) {
  die('each --mint-refresh-token needs its own --refresh-token-out');
}
if (!['opaque', 'jwt'].includes(args['access-token-format'])) die('--access-token-format is opaque or jwt');
const tls = !!args['tls-cert'];

// ---------------------------------------------------------------- clients
const DEFAULT_CLIENTS = [
  {
    client_id: 'tokenshm-demo',
    client_secret: 'demo-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  },
  {
    client_id: 'tokenshm-post',
    client_secret: 'post-secret',
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  },
  {
    client_id: 'id:with+odd%chars x',
    client_secret: 'secret:with+odd%chars y',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  },
];

function loadClients() {
  if (!args.clients) return DEFAULT_CLIENTS;
  let list;
  try {
    list = JSON.parse(fs.readFileSync(args.clients, 'utf8'));
  } catch (e) {
    die(`--clients ${args.clients}: ${e.message}`);
  }
  if (!Array.isArray(list) || list.length === 0) die('--clients: expected a non-empty JSON array');
  list.forEach((c, i) => {
    if (typeof c?.client_id !== 'string' || !c.client_id) die(`--clients [${i}].client_id missing`);
    if (typeof c.client_secret !== 'string' || !c.client_secret) die(`--clients [${i}].client_secret missing`);
    const m = c.token_endpoint_auth_method ?? 'client_secret_basic';
    if (!['client_secret_basic', 'client_secret_post'].includes(m)) {
      die(`--clients [${i}].token_endpoint_auth_method must be client_secret_basic or client_secret_post`);
    }
  });
  return list;
}

// Turn the short client description into oidc-provider client metadata; any
// other oidc-provider metadata in the file is passed through unchanged.
function toMetadata(c) {
  const grantTypes = c.grant_types ?? ['authorization_code', 'refresh_token'];
  const md = {
    token_endpoint_auth_method: 'client_secret_basic',
    ...c,
    grant_types: grantTypes,
  };
  if (grantTypes.includes('authorization_code')) {
    // a loopback redirect for `tokenshm login` (native apps may use any port)
    md.redirect_uris ??= ['http://127.0.0.1/callback'];
    md.application_type ??= 'native';
    md.response_types ??= ['code'];
  } else {
    md.redirect_uris ??= [];
    md.response_types ??= [];
  }
  return md;
}

const clientList = loadClients();
const recordIssued = openIssuedLog('oidc_server', args['issued-log']);
for (const c of clientList) {
  recordIssued('client_id', c.client_id);
  recordIssued('client_secret', c.client_secret);
}
const clients = clientList.map(toMetadata);
const registeredMethod = new Map(clients.map((c) => [c.client_id, c.token_endpoint_auth_method]));
for (const id of args['mint-refresh-token']) {
  if (!registeredMethod.has(id)) die(`--mint-refresh-token: unknown client ${JSON.stringify(id)}`);
}

// ---------------------------------------------------------------- log
const logFile = args.log;
function logLine(obj) {
  if (!logFile) return;
  try {
    fs.appendFileSync(logFile, `${JSON.stringify({ time: new Date().toISOString(), ...obj })}\n`);
  } catch (e) {
    console.error(`oidc_server: cannot write log ${logFile}: ${e.message}`);
  }
}

// ---------------------------------------------------------------- counters
// What a chaos test needs to know without reading the log: how many refresh
// tokens were presented again after they were spent (oidc-provider then
// revokes the whole grant), and whether a token request is still being
// answered (a client killed mid-request may still cause a rotation).
const stats = {
  token_requests: 0,
  token_requests_in_flight: 0,
  refresh_ok: 0,
  replays: 0,
  grants_revoked: 0,
  rejected: 0,
  minted: 0,
  last_refresh_ok_ms: null,
  last_replay_ms: null,
};

// ---------------------------------------------------------------- server
let server;
if (tls) {
  let cert;
  let key;
  try {
    cert = fs.readFileSync(args['tls-cert']);
    key = fs.readFileSync(args['tls-key']);
  } catch (e) {
    die(e.message);
  }
  server = https.createServer({ cert, key });
} else {
  server = http.createServer();
}
const actualPort = await serve(server, 'oidc_server', port, args.host);

// --issuer-url may contain {port}, replaced by the port actually bound.
const issuer = (args['issuer-url'] ?? `${tls ? 'https' : 'http'}://${hostForUrl(args.host)}:{port}`)
  .replaceAll('{port}', String(actualPort))
  .replace(/\/$/, '');
let issuerPath;
try {
  issuerPath = new URL(issuer).pathname.replace(/\/$/, '');
} catch {
  die(`--issuer-url ${issuer} is not a URL`);
}

// ---------------------------------------------------------------- provider
// An EC key (instant to make, unlike RSA) signs ID tokens and JWT access tokens.
const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'tokenshm-test', use: 'sig', alg: 'ES256' };

// AsyncLocalStorage so the strict client-auth check can see which mechanism
// the request used (carried from the outer middleware into the auth step).
const reqInfo = new AsyncLocalStorage();

const RESOURCE_SCOPES = 'files.read files.write';

const provider = new Provider(issuer, {
  adapter: MemoryAdapter,
  clients,
  jwks: { keys: [signingKey] },
  clientDefaults: {
    grant_types: ['authorization_code'],
    id_token_signed_response_alg: 'ES256',
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  enabledJWA: { idTokenSigningAlgValues: ['ES256'] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', ...RESOURCE_SCOPES.split(' ')],
  async findAccount(ctx, sub) {
    return { accountId: sub, async claims() { return { sub }; } };
  },
  clientBasedCORS: () => false,
  // Rotate every refresh token, for every client (the default rotates only
  // for public clients or after 70% of the token's life).
  rotateRefreshToken: true,
  issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token')
    && code.scopes.has('offline_access'),
  ttl: {
    AccessToken: accessTtl,
    ClientCredentials: accessTtl,
    RefreshToken: refreshTtl,
    // the grant bounds the life of the whole refresh-token chain
    Grant: Math.max(refreshTtl, 14 * 24 * 3600),
    IdToken: 3600,
    AuthorizationCode: 60,
    Interaction: 3600,
    Session: 24 * 3600,
  },
  features: {
    devInteractions: { enabled: true }, // login/consent pages for `tokenshm login` tests
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true, allowedPolicy: async () => true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf ?? undefined,
      useGrantedResource: async () => true,
      // Any absolute URI is accepted as a resource (audience).
      getResourceServerInfo: async (ctx, resource) => ({
        scope: RESOURCE_SCOPES,
        audience: resource,
        accessTokenTTL: accessTtl,
        accessTokenFormat: args['access-token-format'],
        ...(args['access-token-format'] === 'jwt' ? { jwt: { sign: { alg: 'ES256' } } } : {}),
      }),
    },
  },
});

// Strict client authentication: the stock provider accepts Basic and post
// credentials interchangeably for client_secret_basic/_post clients. Reject a
// request whose mechanism differs from the registered one, with 401
// invalid_client, before the secret is compared (so before any grant runs).
const origCompare = provider.Client.prototype.compareClientSecret;
provider.Client.prototype.compareClientSecret = function strictCompare(actual) {
  const info = reqInfo.getStore();
  if (info) {
    const registered = this.clientAuthMethod;
    if ((registered === 'client_secret_basic' || registered === 'client_secret_post')
        && info.authMethod !== registered) {
      throw new errors.InvalidClientAuth(
        `client authentication method ${info.authMethod} does not match the registered ${registered}`,
      );
    }
  }
  return origCompare.call(this, actual);
};

// The expiry the server itself enforces (whole seconds), for the issued log:
// a reader that is served a token after it can tell.
const accessTokenExpiry = new Map();
upsertListener.call = (model, id, payload) => {
  if (model === 'AccessToken' && Number.isInteger(payload?.exp)) accessTokenExpiry.set(id, payload.exp * 1000);
};

provider.on('grant.revoked', (ctx, grantId) => {
  stats.grants_revoked += 1;
  const info = reqInfo.getStore();
  if (info) info.grantRevoked = true;
  else logLine({ event: 'grant.revoked', client_id: ctx?.oidc?.client?.clientId ?? null });
});
// The token endpoint answers with generic error descriptions; the precise
// reason (e.g. "refresh token already used") is in err.error_detail.
provider.on('grant.error', (ctx, err) => {
  const info = reqInfo.getStore();
  if (info && err?.error_detail) info.detail = String(err.error_detail);
});
provider.on('server_error', (ctx, err) => {
  console.error(`oidc_server: server_error on ${ctx?.method} ${ctx?.path}: ${err?.stack ?? err}`);
  logLine({ event: 'server_error', path: ctx?.path, message: String(err?.message ?? err) });
});

// An authorization code leaves in the Location of the redirect to the client.
function recordAuthorizationCode(ctx) {
  const location = ctx.response.get('location');
  if (!location) return;
  try {
    recordIssued('authorization_code', new URL(location, issuer).searchParams.get('code') ?? '');
  } catch {
    // not a URL: no code in it
  }
}

provider.use(async (ctx, next) => {
  const isToken = ctx.method === 'POST' && ctx.path === '/token';
  const authz = ctx.headers.authorization;
  const info = {
    authMethod: authz !== undefined ? 'client_secret_basic' : 'client_secret_post',
    grantRevoked: false,
  };
  if (isToken) stats.token_requests_in_flight += 1;
  try {
    await reqInfo.run(info, next);
  } finally {
    if (isToken) stats.token_requests_in_flight -= 1;
  }
  recordAuthorizationCode(ctx);
  if (!isToken) return;
  let oidc;
  try {
    oidc = ctx.oidc;
  } catch {
    oidc = undefined;
  }
  const body = ctx.body && typeof ctx.body === 'object' && !Buffer.isBuffer(ctx.body) ? ctx.body : {};
  // RFC 6749 §5.2: a client not allowed to use this grant type gets
  // unauthorized_client; oidc-provider says invalid_request. Be RFC-exact.
  if (ctx.status === 400 && body.error === 'invalid_request'
      && body.error_description === 'requested grant type is not allowed for this client') {
    body.error = 'unauthorized_client';
  }
  if (ctx.status === 200) {
    const expMs = accessTokenExpiry.get(body.access_token);
    accessTokenExpiry.delete(body.access_token);
    recordIssued('access_token', body.access_token, expMs ? { exp_ms: expMs } : {});
    for (const kind of ['refresh_token', 'id_token']) recordIssued(kind, body[kind]);
  }
  const entities = oidc?.entities ?? {};
  const replay = info.detail === 'refresh token already used';
  countTokenRequest(ctx.status, oidc?.params?.grant_type, replay);
  logLine({
    client_id: oidc?.client?.clientId ?? null,
    grant_type: oidc?.params?.grant_type ?? null,
    auth: authz !== undefined ? 'basic' : (oidc?.params?.client_secret ? 'post' : 'none'),
    status: ctx.status,
    outcome: ctx.status === 200 ? 'ok' : (body.error ?? `http_${ctx.status}`),
    ...(ctx.status !== 200 && body.error_description ? { error_description: body.error_description } : {}),
    ...(ctx.status !== 200 && info.detail ? { detail: info.detail } : {}),
    rotated: ctx.status === 200 && !!entities.RotatedRefreshToken,
    refresh_token_issued: ctx.status === 200 && typeof body.refresh_token === 'string',
    grant_revoked: info.grantRevoked,
    replay,
  });
});

function countTokenRequest(status, grantType, replay) {
  stats.token_requests += 1;
  if (status === 200 && grantType === 'refresh_token') {
    stats.refresh_ok += 1;
    stats.last_refresh_ok_ms = Date.now();
  } else if (status !== 200) {
    stats.rejected += 1;
  }
  if (replay) {
    stats.replays += 1;
    stats.last_replay_ms = Date.now();
  }
}

// Serve under the issuer's path when --issuer-url has one (mount emulation:
// oidc-provider derives the mount path from req.originalUrl).
const handler = provider.callback();
server.on('request', (req, res) => {
  if (args['test-control'] && req.url.startsWith('/_test/')) {
    testControl(req, res).catch((e) => {
      console.error(`oidc_server: /_test: ${e.stack ?? e}`);
      req.socket.destroy();
    });
    return;
  }
  if (issuerPath) {
    if (!req.url.startsWith(`${issuerPath}/`) && req.url !== issuerPath) {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"error":"not_found"}');
      return;
    }
    req.originalUrl = req.url;
    req.url = req.url.slice(issuerPath.length) || '/';
  }
  handler(req, res);
});

// ---------------------------------------------------------------- minting
// A refresh token without a person: create the Grant a consent would have
// created, then a RefreshToken bound to it, exactly as the authorization_code
// grant does (gty 'authorization_code', rotations 0).
async function mintRefreshToken(clientId, scope, resource) {
  const client = await provider.Client.find(clientId);
  const accountId = 'tokenshm-test-user';
  const grant = new provider.Grant({ accountId, clientId });
  if (resource) {
    // OIDC scopes on the grant itself, the rest granted for the resource
    const words = scope.split(' ').filter(Boolean);
    const oidc = words.filter((w) => w === 'openid' || w === 'offline_access');
    const api = words.filter((w) => w !== 'openid' && w !== 'offline_access');
    if (oidc.length) grant.addOIDCScope(oidc.join(' '));
    if (api.length) grant.addResourceScope(resource, api.join(' '));
  } else {
    grant.addOIDCScope(scope);
  }
  const grantId = await grant.save();
  const rt = new provider.RefreshToken({
    accountId,
    client,
    grantId,
    gty: 'authorization_code',
    scope,
    ...(resource ? { resource } : {}),
    authTime: Math.floor(Date.now() / 1000),
    rotations: 0,
  });
  return rt.save();
}

// --test-control: GET /_test/stats (the counters above) and POST
// /_test/mint {"client_id"} → {"refresh_token"} (a new grant, recorded in
// the issued log first), for tests that must hand the refresher a fresh grant
// after one was lost, as a person would. Loopback only, like the server.
function sendJson(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(body);
}

async function readSmallBody(req) {
  let raw = '';
  for await (const chunk of req) {
    raw += chunk;
    if (raw.length > 4096) throw new Error('body too large');
  }
  return raw;
}

async function testControl(req, res) {
  if (req.method === 'GET' && req.url === '/_test/stats') {
    sendJson(res, 200, stats);
    return;
  }
  if (req.method === 'POST' && req.url === '/_test/mint') {
    let clientId;
    try {
      clientId = JSON.parse(await readSmallBody(req)).client_id;
    } catch (e) {
      sendJson(res, 400, { error: `mint body: ${e.message}` });
      return;
    }
    if (!registeredMethod.has(clientId)) {
      sendJson(res, 400, { error: 'unknown client_id' });
      return;
    }
    const value = await mintRefreshToken(clientId, args['mint-scope'], args['mint-resource']);
    recordIssued('refresh_token', value);
    stats.minted += 1;
    logLine({ event: 'minted_refresh_token', client_id: clientId });
    sendJson(res, 200, { refresh_token: value });
    return;
  }
  sendJson(res, 404, { error: 'not_found' });
}

for (let i = 0; i < args['mint-refresh-token'].length; i += 1) {
  const clientId = args['mint-refresh-token'][i];
  const out = args['refresh-token-out'][i];
  const value = await mintRefreshToken(clientId, args['mint-scope'], args['mint-resource']);
  recordIssued('refresh_token', value);
  try {
    fs.rmSync(out, { force: true });
    const fd = fs.openSync(out, 'wx', 0o600);
    fs.fchmodSync(fd, 0o600);
    fs.writeSync(fd, value);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  } catch (e) {
    process.stderr.write(`oidc_server: cannot write ${out}: ${e.message}\n`);
    process.exit(1);
  }
  logLine({ event: 'minted_refresh_token', client_id: clientId });
}

printReady({ port: actualPort, issuer, pid: process.pid });
