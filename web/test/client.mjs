// ImgateClient's session behaviour against a scripted fake WebSocket (no gate, no browser):
// answers matched by seq whatever their order, ERROR responses and non-zero codes reject, the
// gate's PING is answered, PUSHes are acknowledged in batches and duplicates dropped, a PING
// goes out after heartbeat_secs of silence, and a close rejects what is in flight. Every wait is
// bounded. Run by gate/tests/browser.rs (needs only node).
//
//   node web/test/client.mjs

import assert from 'node:assert/strict';
import {
  ImgateClient, ImgateError, Cmd, MsgType, Schemas, ConvType, encodeFrame, decodeFrame,
  encodeMessage, decodeMessage,
} from '../imgate.js';

const WAIT_MS = 3000;

/** The gate's side of one connection: what the client wrote, and a way to answer. */
class FakeSocket {
  static last = null;
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.waiters = [];
    FakeSocket.last = this;
    setTimeout(() => { this.readyState = 1; this.onopen?.(); }, 0);
  }
  send(bytes) {
    const frame = decodeFrame(bytes);
    this.sent.push(frame);
    for (const w of this.waiters.splice(0)) w();
  }
  close(code = 1000) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason: '' }), 0);
  }
  /** A frame from the gate. */
  deliver(frame) {
    const bytes = encodeFrame(frame);
    this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }
  /** The next frame the client writes that satisfies `pred`, within WAIT_MS. */
  async next(pred, what) {
    const deadline = Date.now() + WAIT_MS;
    let from = 0;
    for (;;) {
      const i = this.sent.slice(from).findIndex(pred);
      if (i >= 0) return this.sent.splice(from + i, 1)[0];
      from = this.sent.length;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${what} within ${WAIT_MS} ms; sent ${JSON.stringify(this.sent.map((f) => f.cmd))}`);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
  }
}

function respond(sock, req, cmd, schema, obj) {
  sock.deliver({ cmd, msgType: MsgType.RESPONSE, logId: req.logId, seq: req.seq, body: encodeMessage(schema, obj) });
}

function event(client, type) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${type} event within ${WAIT_MS} ms`)), WAIT_MS);
    client.addEventListener(type, (e) => { clearTimeout(t); resolve(e.detail); }, { once: true });
  });
}

const client = new ImgateClient('ws://gate/ws', { WebSocket: FakeSocket, ackDelayMs: 20, requestTimeoutMs: 1000 });
await client.connect();
const sock = FakeSocket.last;

// LOGIN with a 1 s heartbeat.
const loggingIn = client.login({ uid: '18446744073709551615', deviceId: 'd' });
const loginReq = await sock.next((f) => f.cmd === Cmd.LOGIN, 'LOGIN');
const login = decodeMessage(Schemas.LoginReq, loginReq.body);
assert.equal(login.uid, (1n << 64n) - 1n);
assert.equal(login.platform, 3);
respond(sock, loginReq, Cmd.LOGIN, Schemas.LoginResp, { heartbeatSecs: 1, gateId: 'g', maxFrame: 65536 });
assert.equal((await loggingIn).gateId, 'g');

// Two pipelined SENDs answered in reverse order: each promise gets its own answer.
const first = client.sendText(ConvType.SINGLE, 2n, 'one');
const second = client.sendText(ConvType.SINGLE, 2n, 'two');
const s1 = await sock.next((f) => f.cmd === Cmd.SEND, 'SEND one');
const s2 = await sock.next((f) => f.cmd === Cmd.SEND, 'SEND two');
assert.notEqual(s1.seq, s2.seq);
assert.notEqual(decodeMessage(Schemas.SendReq, s1.body).clientMsgId, 0n);
respond(sock, s2, Cmd.SEND, Schemas.SendResp, { msgId: 22n });
respond(sock, s1, Cmd.SEND, Schemas.SendResp, { msgId: 11n });
assert.equal((await first).msgId, 11n);
assert.equal((await second).msgId, 22n);

// A refusal by code and an ERROR response both reject with the wire code.
const refused = client.read({ convType: ConvType.GROUP, convId: 9, readUpTo: 1 });
respond(sock, await sock.next((f) => f.cmd === Cmd.READ, 'READ'), Cmd.READ, Schemas.Result, { code: 3, message: 'not a member' });
await assert.rejects(refused, (e) => e instanceof ImgateError && e.code === 3 && e.message === 'not a member');
const errored = client.sync();
const syncReq = await sock.next((f) => f.cmd === Cmd.SYNC, 'SYNC');
sock.deliver({ cmd: Cmd.ERROR, msgType: MsgType.RESPONSE, seq: syncReq.seq, body: encodeMessage(Schemas.Error, { code: 9, message: 'x' }) });
await assert.rejects(errored, (e) => e instanceof ImgateError && e.code === 9);

// BIZ group.create with a u64 member; the answer's id is a BigInt.
const creating = client.createGroup('team "A"', [(1n << 60n) + 1n]);
const biz = await sock.next((f) => f.cmd === Cmd.BIZ, 'BIZ');
const bizReq = decodeMessage(Schemas.BizReq, biz.body);
assert.equal(new TextDecoder().decode(bizReq.payload), '{"name":"team \\"A\\"","members":[1152921504606846977]}');
respond(sock, biz, Cmd.BIZ, Schemas.BizResp, { payload: '{"group_id":9001}' });
assert.equal(await creating, 9001n);

// The gate's PING is answered with its seq.
sock.deliver({ cmd: Cmd.PING, msgType: MsgType.REQUEST, logId: 5, seq: 77 });
const pong = await sock.next((f) => f.cmd === Cmd.PING && f.msgType === MsgType.RESPONSE, 'PING answer');
assert.deepEqual([pong.seq, pong.logId], [77, 5]);

// Three PUSHes, one a duplicate: two push events, one ACK naming all three ids.
const pushes = [];
client.addEventListener('push', (e) => pushes.push(e.detail.msgId));
for (const id of [101n, 102n, 101n]) {
  sock.deliver({ cmd: Cmd.PUSH, msgType: MsgType.NOTIFY, body: encodeMessage(Schemas.PushMsg, { msgId: id, convType: 1, convId: 2n, from: 2n, body: 'hi' }) });
}
const ack = await sock.next((f) => f.cmd === Cmd.ACK, 'ACK');
assert.equal(ack.msgType, MsgType.NOTIFY);
assert.deepEqual(decodeMessage(Schemas.Ack, ack.body).msgIds, [101n, 102n, 101n]);
assert.deepEqual(pushes, [101n, 102n]);

// NOTIFY, READ_RECEIPT and KICK become events; an undecodable frame is an error event.
const notified = event(client, 'notify');
sock.deliver({ cmd: Cmd.NOTIFY, msgType: MsgType.NOTIFY, body: encodeMessage(Schemas.Notify, { updates: [{ convType: 2, convId: 9n, latestMsgId: 5n, unread: 3 }] }) });
assert.equal((await notified).updates[0].unread, 3);
const receipt = event(client, 'receipt');
sock.deliver({ cmd: Cmd.READ_RECEIPT, msgType: MsgType.NOTIFY, body: encodeMessage(Schemas.ReadReceipt, { convType: 1, convId: 2n, reader: 2n, readUpTo: 11n }) });
assert.equal((await receipt).readUpTo, 11n);
const broken = event(client, 'error');
sock.deliver({ cmd: Cmd.PUSH, msgType: MsgType.NOTIFY, body: Uint8Array.of(0x08, 0x80) });
assert.ok((await broken).message.includes('truncated'));

// Silence for heartbeat_secs: a PING request goes out; answer it.
const t0 = Date.now();
const ping = await sock.next((f) => f.cmd === Cmd.PING && f.msgType === MsgType.REQUEST, 'heartbeat PING');
assert.ok(Date.now() - t0 >= 900, `PING after ${Date.now() - t0} ms`);
respond(sock, ping, Cmd.PING, Schemas.Empty, {});

// A close rejects what is in flight and emits close.
const inFlight = client.sync();
await sock.next((f) => f.cmd === Cmd.SYNC, 'SYNC before close');
const closed = event(client, 'close');
sock.close(1001);
await closed;
await assert.rejects(inFlight, (e) => e instanceof ImgateError);
assert.equal(client.connected, false);

console.log('client ok: seq matching, refusals, PING, ACK batching, duplicates, events, heartbeat, close');
