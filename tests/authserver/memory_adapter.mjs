// In-memory storage adapter for oidc-provider (the documented adapter
// interface: upsert, find, findByUid, findByUserCode, consume, destroy,
// revokeByGrantId).
//
// Why not the provider's built-in MemoryAdapter: it sits on an LRU that keeps
// only ~1000-2000 entries and silently drops the least recently used ones, so
// in a long test an idle grant or a consumed refresh token (needed for replay
// detection) could vanish. This one keeps every entry until it expires.

const storage = new Map(); // one store per server process
const store = () => storage;

const grantable = new Set([
  'AccessToken',
  'AuthorizationCode',
  'RefreshToken',
  'DeviceCode',
  'BackchannelAuthenticationRequest',
  'PreAuthorizedCode',
]);

function get(key) {
  const s = store();
  const e = s.get(key);
  if (!e) return undefined;
  if (e.expiresAt !== undefined && e.expiresAt <= Date.now()) {
    s.delete(key);
    return undefined;
  }
  return e.value;
}

function set(key, value, expiresIn) {
  const expiresAt = typeof expiresIn === 'number' && Number.isFinite(expiresIn)
    ? Date.now() + expiresIn * 1000
    : undefined;
  store().set(key, { value, expiresAt });
}

// Drop expired entries now and then so a long run does not grow forever.
let lastSweep = Date.now();
function sweep() {
  const now = Date.now();
  if (now - lastSweep < 10_000) return;
  lastSweep = now;
  for (const [k, e] of store()) {
    if (e.expiresAt !== undefined && e.expiresAt <= now) store().delete(k);
  }
}

// Called with (model, id, payload) after each upsert: the server reads the
// expiry it enforces for an access token from here.
export const upsertListener = { call: null };

export default class MemoryAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    sweep();
    const key = this.key(id);
    set(key, payload, expiresIn);
    if (grantable.has(this.model) && payload.grantId) {
      const gk = `grant:${payload.grantId}`;
      const members = get(gk) ?? new Set();
      members.add(key);
      set(gk, members); // lives until the grant is revoked or the process ends
    }
    if (this.model === 'Session' && payload.uid) set(`sessionUid:${payload.uid}`, id, expiresIn);
    if (payload.userCode) set(`userCode:${payload.userCode}`, id, expiresIn);
    upsertListener.call?.(this.model, id, payload);
  }

  async find(id) {
    return get(this.key(id));
  }

  async findByUid(uid) {
    const id = get(`sessionUid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = get(`userCode:${userCode}`);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = get(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store().delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    const gk = `grant:${grantId}`;
    const members = get(gk);
    if (members) {
      for (const key of members) store().delete(key);
    }
    store().delete(gk);
  }
}
