// imgate.js: a browser (and Node) client of an imgate gate over WebSocket.
//
// One ES module, no build step and no dependency. It speaks PROTOCOL.md version 1: every frame
// is one binary WebSocket message: a 22-byte big-endian header (magic "IMGW", version 1, cmd,
// msg_type, log_id, seq, length) and a proto3 body encoded by the small codec below.
//
// 64-bit fields (uids, msg_ids, conv_ids, times) are BigInt in everything this module returns;
// where it takes one it accepts a BigInt, a safe integer Number or a decimal string, so no id
// ever loses precision.
//
//   import { ImgateClient, ConvType } from '/imgate.js';
//   const client = new ImgateClient('ws://127.0.0.1:7000/ws');
//   await client.connect();
//   await client.login({ uid: 1001n, token: 'dev' });
//   client.addEventListener('push', (e) => console.log(e.detail.from, textOf(e.detail)));
//   await client.sendText(ConvType.SINGLE, 1002n, 'hello');
//
// Requests are matched to responses by seq (they may be pipelined and answered in any order)
// and return promises that reject with an ImgateError after `requestTimeoutMs`, on an ERROR
// frame, or when a response carries a non-zero code. The client sends PING when it has sent
// nothing for `heartbeat_secs`, answers the gate's PINGs, and acknowledges every PUSH
// (duplicates included; batched: at most `ackDelayMs` or `ackBatchMax` ids). Events (each a
// CustomEvent whose `detail` is the decoded message): `push` (a new PushMsg; duplicates are
// dropped by msg_id), `notify` (Notify), `receipt` (ReadReceipt), `bizpush` (BizPush), `kick`
// (Kick), `error` (an ERROR notify or an undecodable frame: {code, message}) and `close`
// ({code, reason}).

export const MAGIC = 0x494d4757;
export const VERSION = 1;
export const HEADER_LEN = 22;
export const DEFAULT_MAX_FRAME = 65536;

export const Cmd = Object.freeze({
  LOGIN: 0x01, LOGOUT: 0x02, PING: 0x03, KICK: 0x04,
  SEND: 0x10, PUSH: 0x11, ACK: 0x12, NOTIFY: 0x13, PULL: 0x14, READ: 0x15,
  READ_RECEIPT: 0x16, SYNC: 0x17, BIZ: 0x20, BIZ_PUSH: 0x21, ERROR: 0x7f,
});

export const MsgType = Object.freeze({ REQUEST: 0, RESPONSE: 1, NOTIFY: 2 });
export const ConvType = Object.freeze({ SINGLE: 1, GROUP: 2 });
export const Platform = Object.freeze({ ANDROID: 1, IOS: 2, WEB: 3, DESKTOP: 4, OTHER: 5 });
export const ContentType = Object.freeze({ TEXT: 1 });

export const Code = Object.freeze({
  OK: 0, BAD_REQUEST: 1, UNAUTHENTICATED: 2, FORBIDDEN: 3, RATE_LIMITED: 4,
  BACKEND_UNAVAILABLE: 5, TOO_LARGE: 6, UNSUPPORTED_VERSION: 7, NOT_LOGGED_IN: 8, INTERNAL: 9,
  CONTENT_REJECTED: 10, NOT_FOUND: 11,
});

export const KickReason = Object.freeze({
  1: 'duplicate login', 2: 'draining', 3: 'auth expired', 4: 'slow consumer',
  5: 'protocol error', 6: 'idle timeout', 7: 'admin',
});

/** A refused request, a failed transport or an undecodable frame. `code` is a wire Code when
 * the gate sent one, else -1; `response` is the decoded answer when there was one. */
export class ImgateError extends Error {
  constructor(code, message, response) {
    super(message);
    this.name = 'ImgateError';
    this.code = code;
    this.response = response;
  }
}

// ---------------------------------------------------------------------------------------------
// 64-bit ids

const U64_MAX = (1n << 64n) - 1n;

/** A u64 from a BigInt, a safe non-negative integer Number or a string of decimal digits. */
export function toU64(value) {
  let v;
  if (typeof value === 'bigint') v = value;
  else if (typeof value === 'number' && Number.isSafeInteger(value)) v = BigInt(value);
  else if (typeof value === 'string' && /^[0-9]{1,20}$/.test(value)) v = BigInt(value);
  else throw new TypeError(`not a u64: ${String(value)}`);
  if (v < 0n || v > U64_MAX) throw new RangeError(`out of u64 range: ${v}`);
  return v;
}

/** 64 random bits, never 0: a SendReq.client_msg_id. */
export function randomU64() {
  const words = new Uint32Array(2);
  for (;;) {
    globalThis.crypto.getRandomValues(words);
    const v = (BigInt(words[0]) << 32n) | BigInt(words[1]);
    if (v !== 0n) return v;
  }
}

// ---------------------------------------------------------------------------------------------
// proto3 codec
//
// A schema maps field numbers to [name, kind, repeated]; kind is 'u32', 'u64', 'bool',
// 'string', 'bytes' or another schema (an embedded message). Encoding follows proto3's
// canonical form (fields in number order, defaults left out, repeated scalars packed), so it
// is byte-exact with protoc; decoding takes packed or unpacked repeated scalars and skips
// unknown fields.

const ConvUpdate = { 1: ['convType', 'u32'], 2: ['convId', 'u64'], 3: ['latestMsgId', 'u64'], 4: ['unread', 'u32'] };
const PushMsg = {
  1: ['msgId', 'u64'], 2: ['convType', 'u32'], 3: ['convId', 'u64'], 4: ['from', 'u64'],
  5: ['to', 'u64'], 6: ['contentType', 'u32'], 7: ['body', 'bytes'], 8: ['serverTimeMs', 'u64'],
  9: ['clientMsgId', 'u64'],
};

export const Schemas = Object.freeze({
  LoginReq: { 1: ['uid', 'u64'], 2: ['token', 'string'], 3: ['deviceId', 'string'], 4: ['platform', 'u32'], 5: ['clientVersion', 'string'] },
  LoginResp: {
    1: ['code', 'u32'], 2: ['message', 'string'], 3: ['heartbeatSecs', 'u32'], 4: ['serverTimeMs', 'u64'],
    5: ['sessionId', 'u64'], 6: ['gateId', 'string'], 7: ['maxFrame', 'u32'],
  },
  Kick: { 1: ['reason', 'u32'], 2: ['message', 'string'], 3: ['reconnectTo', 'string', true], 4: ['retryAfterMs', 'u32'] },
  SendReq: { 1: ['clientMsgId', 'u64'], 2: ['convType', 'u32'], 3: ['to', 'u64'], 4: ['contentType', 'u32'], 5: ['body', 'bytes'] },
  SendResp: { 1: ['code', 'u32'], 2: ['msgId', 'u64'], 3: ['serverTimeMs', 'u64'], 4: ['message', 'string'] },
  PushMsg,
  Ack: { 1: ['msgIds', 'u64', true] },
  ConvUpdate,
  Notify: { 1: ['updates', ConvUpdate, true] },
  PullReq: { 1: ['convType', 'u32'], 2: ['convId', 'u64'], 3: ['afterMsgId', 'u64'], 4: ['limit', 'u32'], 5: ['beforeMsgId', 'u64'] },
  PullResp: { 1: ['code', 'u32'], 2: ['msgs', PushMsg, true], 3: ['hasMore', 'bool'] },
  ReadReq: { 1: ['convType', 'u32'], 2: ['convId', 'u64'], 3: ['readUpTo', 'u64'] },
  ReadReceipt: { 1: ['convType', 'u32'], 2: ['convId', 'u64'], 3: ['reader', 'u64'], 4: ['readUpTo', 'u64'] },
  SyncResp: { 1: ['code', 'u32'], 2: ['convs', ConvUpdate, true], 3: ['totalUnread', 'u32'], 4: ['hasMore', 'bool'] },
  BizReq: { 1: ['service', 'string'], 2: ['method', 'string'], 3: ['payload', 'bytes'] },
  BizResp: { 1: ['code', 'u32'], 2: ['payload', 'bytes'], 3: ['message', 'string'] },
  BizPush: { 1: ['topic', 'string'], 2: ['payload', 'bytes'] },
  Error: { 1: ['code', 'u32'], 2: ['message', 'string'] },
  Result: { 1: ['code', 'u32'], 2: ['message', 'string'] },
  Empty: {},
});

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: false });

function defaultOf(kind, repeated) {
  if (repeated) return [];
  switch (kind) {
    case 'u32': return 0;
    case 'u64': return 0n;
    case 'bool': return false;
    case 'string': return '';
    case 'bytes': return new Uint8Array(0);
    default: return null;
  }
}

class Writer {
  constructor() { this.buf = new Uint8Array(64); this.len = 0; }
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
  byte(b) { this.reserve(1); this.buf[this.len++] = b; }
  varint(v) { // v: BigInt >= 0
    this.reserve(10);
    while (v >= 0x80n) { this.buf[this.len++] = Number(v & 0x7fn) | 0x80; v >>= 7n; }
    this.buf[this.len++] = Number(v);
  }
  raw(bytes) { this.reserve(bytes.length); this.buf.set(bytes, this.len); this.len += bytes.length; }
  tag(field, wire) { this.varint(BigInt(field * 8 + wire)); }
  finish() { return this.buf.slice(0, this.len); }
}

function scalarVarint(kind, value) {
  switch (kind) {
    case 'u32': {
      if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new TypeError(`not a u32: ${value}`);
      return BigInt(value);
    }
    case 'u64': return toU64(value);
    case 'bool': return value ? 1n : 0n;
    default: throw new TypeError(`not a varint kind: ${kind}`);
  }
}

function bytesOf(kind, value) {
  if (kind === 'string') return utf8Encoder.encode(String(value));
  if (value instanceof Uint8Array) return value;
  if (typeof value === 'string') return utf8Encoder.encode(value);
  throw new TypeError('bytes must be a Uint8Array or a string');
}

function isDefault(kind, value) {
  switch (kind) {
    case 'u32': return value === 0;
    case 'u64': return toU64(value) === 0n;
    case 'bool': return !value;
    case 'string': return value === '';
    case 'bytes': return value.length === 0;
    default: return false;
  }
}

/** `obj` (keys as in the schema; missing keys are defaults) as proto3 bytes. */
export function encodeMessage(schema, obj = {}) {
  const w = new Writer();
  const fields = Object.keys(schema).map(Number).sort((a, b) => a - b);
  for (const field of fields) {
    const [name, kind, repeated] = schema[field];
    const value = obj[name];
    if (value === undefined || value === null) continue;
    if (repeated) {
      if (!Array.isArray(value) || value.length === 0) continue;
      if (kind === 'u32' || kind === 'u64' || kind === 'bool') {
        const inner = new Writer();
        for (const v of value) inner.varint(scalarVarint(kind, v));
        w.tag(field, 2); w.varint(BigInt(inner.len)); w.raw(inner.buf.subarray(0, inner.len));
      } else {
        for (const v of value) {
          const bytes = typeof kind === 'object' ? encodeMessage(kind, v) : bytesOf(kind, v);
          w.tag(field, 2); w.varint(BigInt(bytes.length)); w.raw(bytes);
        }
      }
      continue;
    }
    if (typeof kind === 'object') {
      const bytes = encodeMessage(kind, value);
      w.tag(field, 2); w.varint(BigInt(bytes.length)); w.raw(bytes);
    } else if (kind === 'string' || kind === 'bytes') {
      const bytes = bytesOf(kind, value);
      if (bytes.length === 0) continue;
      w.tag(field, 2); w.varint(BigInt(bytes.length)); w.raw(bytes);
    } else {
      if (isDefault(kind, value)) continue;
      w.tag(field, 0); w.varint(scalarVarint(kind, value));
    }
  }
  return w.finish();
}

class Reader {
  constructor(bytes) { this.bytes = bytes; this.pos = 0; }
  done() { return this.pos >= this.bytes.length; }
  varint() {
    let v = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (this.pos >= this.bytes.length) throw new ImgateError(-1, 'truncated varint');
      const b = this.bytes[this.pos++];
      v |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return v & U64_MAX;
    }
    throw new ImgateError(-1, 'varint longer than 10 bytes');
  }
  take(n) {
    if (n > BigInt(this.bytes.length - this.pos)) throw new ImgateError(-1, 'truncated field');
    const out = this.bytes.subarray(this.pos, this.pos + Number(n));
    this.pos += Number(n);
    return out;
  }
  skip(wire) {
    switch (wire) {
      case 0: this.varint(); break;
      case 1: this.take(8n); break;
      case 2: this.take(this.varint()); break;
      case 5: this.take(4n); break;
      default: throw new ImgateError(-1, `unsupported wire type ${wire}`);
    }
  }
}

function fromVarint(kind, v) {
  switch (kind) {
    case 'u32': return Number(v & 0xffffffffn);
    case 'u64': return v;
    case 'bool': return v !== 0n;
    default: throw new ImgateError(-1, `varint for a ${kind} field`);
  }
}

/** proto3 bytes as an object with every field of the schema (defaults where absent). Throws
 * ImgateError on malformed input. */
export function decodeMessage(schema, bytes) {
  const out = {};
  for (const [name, kind, repeated] of Object.values(schema)) out[name] = defaultOf(kind, repeated);
  const r = new Reader(bytes);
  while (!r.done()) {
    const key = r.varint();
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    const spec = schema[field];
    if (!spec) { r.skip(wire); continue; }
    const [name, kind, repeated] = spec;
    const varintKind = kind === 'u32' || kind === 'u64' || kind === 'bool';
    if (varintKind && wire === 0) {
      const v = fromVarint(kind, r.varint());
      if (repeated) out[name].push(v); else out[name] = v;
    } else if (varintKind && repeated && wire === 2) {
      const packed = new Reader(r.take(r.varint()));
      while (!packed.done()) out[name].push(fromVarint(kind, packed.varint()));
    } else if (!varintKind && wire === 2) {
      const bytes = r.take(r.varint());
      let v;
      if (typeof kind === 'object') v = decodeMessage(kind, bytes);
      else if (kind === 'string') v = utf8Decoder.decode(bytes);
      else v = bytes.slice();
      if (repeated) out[name].push(v); else out[name] = v;
    } else {
      throw new ImgateError(-1, `field ${field} (${name}) has wire type ${wire}`);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// frames

/** One frame: the 22-byte header followed by `body`. */
export function encodeFrame({ cmd, msgType, logId = 0, seq = 0, body = new Uint8Array(0) }) {
  const out = new Uint8Array(HEADER_LEN + body.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, MAGIC);
  view.setUint32(4, VERSION);
  view.setUint8(8, cmd);
  view.setUint8(9, msgType);
  view.setUint32(10, logId >>> 0);
  view.setUint32(14, seq >>> 0);
  view.setUint32(18, body.length);
  out.set(body, HEADER_LEN);
  return out;
}

/** The frame in `bytes`, which must be exactly one (as every WebSocket message is). */
export function decodeFrame(bytes, maxFrame = DEFAULT_MAX_FRAME) {
  if (bytes.length < HEADER_LEN) throw new ImgateError(-1, `frame shorter than its header (${bytes.length} bytes)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(0) !== MAGIC) throw new ImgateError(-1, 'bad magic');
  const version = view.getUint32(4);
  if (version !== VERSION) throw new ImgateError(Code.UNSUPPORTED_VERSION, `unsupported version ${version}`);
  const length = view.getUint32(18);
  if (length > maxFrame) throw new ImgateError(Code.TOO_LARGE, `frame body of ${length} bytes`);
  if (length !== bytes.length - HEADER_LEN) throw new ImgateError(-1, 'message is not exactly one frame');
  return {
    cmd: view.getUint8(8),
    msgType: view.getUint8(9),
    logId: view.getUint32(10),
    seq: view.getUint32(14),
    body: bytes.subarray(HEADER_LEN),
  };
}

/** A PushMsg's body as text (content_type 1). */
export function textOf(msg) {
  return utf8Decoder.decode(msg.body);
}

// ---------------------------------------------------------------------------------------------
// reference backend BIZ payloads: JSON whose ids are numbers that may pass 2^53

function jsonIds(ids) {
  return `[${ids.map((id) => toU64(id).toString()).join(',')}]`;
}

function jsonIdField(text, key) {
  const m = new RegExp(`"${key}"\\s*:\\s*([0-9]+)`).exec(text);
  if (!m) throw new ImgateError(-1, `no ${key} in ${text}`);
  return BigInt(m[1]);
}

function jsonIdList(text, key) {
  const m = new RegExp(`"${key}"\\s*:\\s*\\[([0-9,\\s]*)\\]`).exec(text);
  if (!m) throw new ImgateError(-1, `no ${key} in ${text}`);
  return m[1].split(',').map((s) => s.trim()).filter((s) => s !== '').map((s) => BigInt(s));
}

// ---------------------------------------------------------------------------------------------
// the client

/** The gate's WebSocket URL when the page was served by it. */
export function defaultUrl(loc = globalThis.location) {
  const scheme = loc.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${loc.host}/ws`;
}

const SEEN_CAP = 4096;

export class ImgateClient extends EventTarget {
  /**
   * @param {string} url  ws://host:port/ws
   * @param {object} [options] requestTimeoutMs (10000), ackDelayMs (50), ackBatchMax (64),
   *   WebSocket (the implementation; globalThis.WebSocket by default)
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10000;
    this.ackDelayMs = options.ackDelayMs ?? 50;
    this.ackBatchMax = options.ackBatchMax ?? 64;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.uid = null;
    this.session = null;
    this.ws = null;
    this.nextSeq = 1;
    this.pending = new Map();
    this.acks = [];
    this.ackTimer = null;
    this.heartbeatTimer = null;
    this.heartbeatMs = 30000;
    this.maxFrame = DEFAULT_MAX_FRAME;
    this.seen = new Set();
    this.seenOrder = [];
    this.closed = false;
  }

  /** Opens the WebSocket; resolves when it is open. */
  connect({ timeoutMs = this.requestTimeoutMs } = {}) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new this.WebSocket(this.url);
      } catch (e) {
        reject(new ImgateError(-1, `cannot open ${this.url}: ${e.message}`));
        return;
      }
      ws.binaryType = 'arraybuffer';
      this.ws = ws;
      const timer = setTimeout(() => {
        reject(new ImgateError(-1, `no connection to ${this.url} within ${timeoutMs} ms`));
        ws.close();
      }, timeoutMs);
      ws.onopen = () => { clearTimeout(timer); resolve(); };
      ws.onerror = () => { clearTimeout(timer); reject(new ImgateError(-1, `cannot connect to ${this.url}`)); };
      ws.onclose = (e) => { clearTimeout(timer); this.onClose(e.code, e.reason); };
      ws.onmessage = (e) => this.onMessage(e.data);
    });
  }

  get connected() { return this.ws !== null && this.ws.readyState === 1 && !this.closed; }

  /** LOGIN; resolves with the LoginResp; rejects with ImgateError when refused. */
  async login({ uid, token = 'dev', deviceId = 'web', platform = Platform.WEB, clientVersion = 'imgate.js/1' }) {
    const resp = await this.request(Cmd.LOGIN, Schemas.LoginReq,
      { uid: toU64(uid), token, deviceId, platform, clientVersion }, Schemas.LoginResp);
    this.uid = toU64(uid);
    this.session = resp;
    this.heartbeatMs = (resp.heartbeatSecs || 30) * 1000;
    if (resp.maxFrame) this.maxFrame = resp.maxFrame;
    this.armHeartbeat();
    return resp;
  }

  /** SEND; resolves with the SendResp and the client_msg_id used (pass it again to resend). */
  async send({ convType, to, body, contentType = ContentType.TEXT, clientMsgId = randomU64() }) {
    const resp = await this.request(Cmd.SEND, Schemas.SendReq,
      { clientMsgId, convType, to: toU64(to), contentType, body }, Schemas.SendResp);
    return { ...resp, clientMsgId: toU64(clientMsgId) };
  }

  sendText(convType, to, text) {
    return this.send({ convType, to, body: utf8Encoder.encode(text) });
  }

  /** PULL: {msgs, hasMore}. `beforeMsgId` non-zero pages backwards (newest first). */
  pull({ convType, convId, afterMsgId = 0n, limit = 50, beforeMsgId = 0n }) {
    return this.request(Cmd.PULL, Schemas.PullReq,
      { convType, convId: toU64(convId), afterMsgId, limit, beforeMsgId }, Schemas.PullResp);
  }

  /** The newest `limit` messages of a conversation, oldest first. */
  async latest(convType, convId, limit = 50) {
    const resp = await this.pull({ convType, convId, beforeMsgId: U64_MAX, limit });
    return resp.msgs.reverse();
  }

  read({ convType, convId, readUpTo }) {
    return this.request(Cmd.READ, Schemas.ReadReq,
      { convType, convId: toU64(convId), readUpTo: toU64(readUpTo) }, Schemas.Result);
  }

  sync() {
    return this.request(Cmd.SYNC, Schemas.Empty, {}, Schemas.SyncResp);
  }

  /** BIZ; resolves with the answer payload as text. */
  async biz(service, method, payload) {
    const resp = await this.request(Cmd.BIZ, Schemas.BizReq,
      { service, method, payload: utf8Encoder.encode(payload) }, Schemas.BizResp);
    return utf8Decoder.decode(resp.payload);
  }

  /** group.create: the new group's id (BigInt). The caller is a member. */
  async createGroup(name, members = []) {
    const text = await this.biz('group', 'create', `{"name":${JSON.stringify(name)},"members":${jsonIds(members)}}`);
    return jsonIdField(text, 'group_id');
  }

  async joinGroup(groupId) {
    await this.biz('group', 'join', `{"group_id":${toU64(groupId)}}`);
  }

  async leaveGroup(groupId) {
    await this.biz('group', 'leave', `{"group_id":${toU64(groupId)}}`);
  }

  /** group.members: the members' uids (BigInt). */
  async groupMembers(groupId) {
    return jsonIdList(await this.biz('group', 'members', `{"group_id":${toU64(groupId)}}`), 'members');
  }

  async ping() {
    await this.request(Cmd.PING, Schemas.Empty, {}, Schemas.Empty);
  }

  /** LOGOUT (after flushing ACKs); the gate answers and closes. */
  async logout() {
    this.flushAcks();
    try {
      await this.request(Cmd.LOGOUT, Schemas.Empty, {}, Schemas.Empty);
    } finally {
      this.close();
    }
  }

  close() {
    if (this.ws && this.ws.readyState <= 1) this.ws.close(1000);
    this.onClose(1000, 'closed by the client');
  }

  /** One request: resolves with the decoded response, rejects with ImgateError. */
  request(cmd, reqSchema, obj, respSchema) {
    return new Promise((resolve, reject) => {
      if (!this.connected) {
        reject(new ImgateError(-1, 'not connected'));
        return;
      }
      const seq = this.takeSeq();
      const logId = (Math.random() * 0x100000000) >>> 0;
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        reject(new ImgateError(-1, `no answer to cmd 0x${cmd.toString(16)} within ${this.requestTimeoutMs} ms`));
      }, this.requestTimeoutMs);
      this.pending.set(seq, { cmd, respSchema, resolve, reject, timer });
      try {
        this.write({ cmd, msgType: MsgType.REQUEST, logId, seq, body: encodeMessage(reqSchema, obj) });
      } catch (e) {
        clearTimeout(timer);
        this.pending.delete(seq);
        reject(e instanceof ImgateError ? e : new ImgateError(-1, e.message));
      }
    });
  }

  // -- internals ------------------------------------------------------------------------------

  takeSeq() {
    let seq = this.nextSeq;
    while (seq === 0 || this.pending.has(seq)) seq = (seq + 1) >>> 0;
    this.nextSeq = (seq + 1) >>> 0;
    return seq;
  }

  write(frame) {
    this.ws.send(encodeFrame(frame));
    if (this.uid !== null) this.armHeartbeat();
  }

  armHeartbeat() {
    clearTimeout(this.heartbeatTimer);
    if (this.closed) return;
    this.heartbeatTimer = setTimeout(() => {
      this.ping().catch(() => {});
    }, this.heartbeatMs);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  onMessage(data) {
    if (typeof data === 'string') {
      this.emit('error', { code: -1, message: 'text message from the gate' });
      return;
    }
    let frame;
    try {
      frame = decodeFrame(new Uint8Array(data), this.maxFrame);
    } catch (e) {
      this.emit('error', { code: e.code ?? -1, message: e.message });
      return;
    }
    try {
      this.handleFrame(frame);
    } catch (e) {
      this.emit('error', { code: e.code ?? -1, message: `cmd 0x${frame.cmd.toString(16)}: ${e.message}` });
    }
  }

  handleFrame(frame) {
    if (frame.msgType === MsgType.RESPONSE) {
      const p = this.pending.get(frame.seq);
      if (!p) return; // late (timed out) or unknown: nothing waits for it
      this.pending.delete(frame.seq);
      clearTimeout(p.timer);
      if (frame.cmd === Cmd.ERROR) {
        const err = decodeMessage(Schemas.Error, frame.body);
        p.reject(new ImgateError(err.code, err.message || `error ${err.code}`, err));
        return;
      }
      if (frame.cmd !== p.cmd) {
        p.reject(new ImgateError(-1, `answer with cmd 0x${frame.cmd.toString(16)} to 0x${p.cmd.toString(16)}`));
        return;
      }
      let resp;
      try {
        resp = decodeMessage(p.respSchema, frame.body);
      } catch (e) {
        p.reject(e);
        return;
      }
      if (typeof resp.code === 'number' && resp.code !== Code.OK) {
        p.reject(new ImgateError(resp.code, resp.message || `code ${resp.code}`, resp));
      } else {
        p.resolve(resp);
      }
      return;
    }
    if (frame.msgType === MsgType.REQUEST) {
      if (frame.cmd === Cmd.PING) {
        this.write({ cmd: Cmd.PING, msgType: MsgType.RESPONSE, logId: frame.logId, seq: frame.seq });
      }
      return;
    }
    switch (frame.cmd) {
      case Cmd.PUSH: {
        const msg = decodeMessage(Schemas.PushMsg, frame.body);
        this.queueAck(msg.msgId);
        if (this.seen.has(msg.msgId)) return;
        this.seen.add(msg.msgId);
        this.seenOrder.push(msg.msgId);
        if (this.seenOrder.length > SEEN_CAP) this.seen.delete(this.seenOrder.shift());
        this.emit('push', msg);
        return;
      }
      case Cmd.NOTIFY: this.emit('notify', decodeMessage(Schemas.Notify, frame.body)); return;
      case Cmd.READ_RECEIPT: this.emit('receipt', decodeMessage(Schemas.ReadReceipt, frame.body)); return;
      case Cmd.BIZ_PUSH: this.emit('bizpush', decodeMessage(Schemas.BizPush, frame.body)); return;
      case Cmd.KICK: this.emit('kick', decodeMessage(Schemas.Kick, frame.body)); return;
      case Cmd.ERROR: this.emit('error', decodeMessage(Schemas.Error, frame.body)); return;
      default: // unknown notifies are ignored (PROTOCOL.md: that is how it is extended)
    }
  }

  queueAck(msgId) {
    this.acks.push(msgId);
    if (this.acks.length >= this.ackBatchMax) {
      this.flushAcks();
    } else if (this.ackTimer === null) {
      this.ackTimer = setTimeout(() => this.flushAcks(), this.ackDelayMs);
    }
  }

  flushAcks() {
    clearTimeout(this.ackTimer);
    this.ackTimer = null;
    if (this.acks.length === 0 || !this.connected) return;
    const msgIds = this.acks.splice(0, this.acks.length);
    this.write({ cmd: Cmd.ACK, msgType: MsgType.NOTIFY, body: encodeMessage(Schemas.Ack, { msgIds }) });
  }

  onClose(code, reason) {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.heartbeatTimer);
    clearTimeout(this.ackTimer);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new ImgateError(-1, `connection closed (${code})`));
    }
    this.pending.clear();
    this.emit('close', { code, reason });
  }
}
