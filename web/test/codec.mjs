// The JavaScript codec of web/imgate.js against PROTOCOL.md's byte-exact vectors
// (gate/tests/data/protocol-vectors.json, checked against protoc): every message encodes to
// the vector's bytes and decodes back to its fields, every frame header likewise, and bad input
// is an ImgateError, never a crash. Run by gate/tests/browser.rs (needs only node).
//
//   node web/test/codec.mjs [path/to/protocol-vectors.json]

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import {
  Schemas, encodeMessage, decodeMessage, encodeFrame, decodeFrame, ImgateError, toU64,
} from '../imgate.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const path = process.argv[2] ?? `${here}../../gate/tests/data/protocol-vectors.json`;
// Ids above 2^53 must not pass through a JS number: quote every long integer first.
const text = readFileSync(path, 'utf8').replace(/([:\[,]\s*)([0-9]{16,})(?=\s*[,\]}])/g, '$1"$2"');
const vectors = JSON.parse(text);

const hex = (bytes) => Buffer.from(bytes).toString('hex');
const unhex = (s) => new Uint8Array(Buffer.from(s, 'hex'));
const camel = (s) => s.replace(/_([a-z])/g, (_, c) => c.toUpperCase());

/** The vector's fields in the codec's shape: camelCase keys, u64 as BigInt, bytes as bytes. */
function shape(schema, fields) {
  const out = {};
  for (const [name, kind, repeated] of Object.values(schema)) {
    const key = Object.keys(fields).find((k) => camel(k) === name);
    if (key === undefined) continue;
    const conv = (v) => {
      if (typeof kind === 'object') return shape(kind, v);
      if (kind === 'u64') return toU64(v);
      if (kind === 'bytes') return new TextEncoder().encode(v);
      return v;
    };
    out[name] = repeated ? fields[key].map(conv) : conv(fields[key]);
  }
  return out;
}

/** `decoded` holds every field of `expected` (and defaults elsewhere). */
function assertHolds(schema, decoded, expected, what) {
  for (const [name, kind, repeated] of Object.values(schema)) {
    if (!(name in expected)) continue;
    const want = expected[name];
    const got = decoded[name];
    if (typeof kind === 'object') {
      const list = repeated ? want : [want];
      const gotList = repeated ? got : [got];
      assert.equal(gotList.length, list.length, `${what}.${name}`);
      list.forEach((w, i) => assertHolds(kind, gotList[i], w, `${what}.${name}[${i}]`));
    } else if (kind === 'bytes') {
      assert.equal(hex(got), hex(want), `${what}.${name}`);
    } else {
      assert.deepEqual(got, want, `${what}.${name}`);
    }
  }
}

let checked = 0;
for (const v of vectors.messages) {
  const schema = Schemas[v.message];
  assert.ok(schema, `no schema for ${v.message}`);
  const obj = shape(schema, v.fields);
  assert.equal(hex(encodeMessage(schema, obj)), v.hex, `encode ${v.message}`);
  assertHolds(schema, decodeMessage(schema, unhex(v.hex)), obj, v.message);
  checked += 1;
}

for (const f of vectors.frames) {
  const bytes = unhex(f.hex);
  const frame = decodeFrame(bytes);
  assert.deepEqual([frame.cmd, frame.msgType, frame.logId, frame.seq], [f.cmd, f.msg_type, f.log_id, f.seq], f.what);
  assert.equal(hex(encodeFrame(frame)), f.hex, f.what);
  checked += 1;
}

// u64 precision: the largest id survives a round trip.
const max = (1n << 64n) - 1n;
const push = decodeMessage(Schemas.PushMsg, encodeMessage(Schemas.PushMsg, { msgId: max, from: '18446744073709551615' }));
assert.equal(push.msgId, max);
assert.equal(push.from, max);
assert.throws(() => toU64(2 ** 53), TypeError);
assert.throws(() => toU64('-1'), TypeError);

// Unknown fields are skipped; packed and unpacked repeated scalars both decode.
const unknown = unhex('08051a03616263' + '2807'); // code=5, field 3 bytes "abc", field 5 varint
assert.equal(decodeMessage(Schemas.Error, unknown).code, 5);
assert.deepEqual(decodeMessage(Schemas.Ack, unhex('0803080408ff01')).msgIds, [3n, 4n, 255n]);

// Bad input is an ImgateError, never another exception.
for (const bad of ['08', '0a05ab', '08ffffffffffffffffffff01', '0b']) {
  assert.throws(() => decodeMessage(Schemas.PushMsg, unhex(bad)), ImgateError, bad);
}
const ping = encodeFrame({ cmd: 3, msgType: 0, seq: 1 });
for (const bad of [ping.subarray(0, 21), Uint8Array.from([0, ...ping.subarray(1)]), new Uint8Array([...ping, 0])]) {
  assert.throws(() => decodeFrame(bad), ImgateError);
}
const v2 = ping.slice(); v2[7] = 2;
assert.throws(() => decodeFrame(v2), (e) => e instanceof ImgateError && e.code === 7);

console.log(`codec ok: ${checked} vectors and the edge cases`);
