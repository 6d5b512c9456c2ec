import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bytesToHex, hexToBytes } from '../src/proto/bytes.ts';
import { decodeContent, encodeContent } from '../src/proto/content.ts';
import { decodeEnvelope, encodeEnvelope } from '../src/proto/envelope.ts';
import { RecordError, REKEY_INTERVAL, Session, rekey } from '../src/proto/record.ts';
import { loadVector } from './vectors.ts';

const v = loadVector('records');
const id = hexToBytes(v.session_id);
const txKey = hexToBytes(v.tx_key);

test('records.json: REKEY(2b…2b)', () => {
  assert.equal(bytesToHex(rekey(txKey)), v.rekeyed_key);
});

test('records.json: seal at counters 0, 1, then rekey_now and 2^20', () => {
  const s = new Session(id, txKey, new Uint8Array(32));
  const [r0, r1, r2] = v.records;
  assert.equal(bytesToHex(s.seal(hexToBytes(r0.plaintext))), r0.envelope);
  assert.ok(s.mustPersist());
  s.markPersisted();
  assert.equal(bytesToHex(s.seal(hexToBytes(r1.plaintext))), r1.envelope);
  s.rekeyNow();
  assert.equal(s.nextCounter(), BigInt(r2.counter));
  assert.equal(bytesToHex(s.seal(hexToBytes(r2.plaintext))), r2.envelope);
  s.rekeyNow();
  s.rekeyNow(); // idle after the first: a no-op
  assert.equal(s.nextCounter(), 2n * REKEY_INTERVAL);
});

test('records.json: open every record with the peer session; replays and tampering refused', () => {
  const rx = new Session(id, new Uint8Array(32), txKey);
  for (const r of v.records) {
    const env = hexToBytes(r.envelope);
    const e = decodeEnvelope(env);
    assert.equal(e.kind === 'Record' && e.counter, BigInt(r.counter));
    assert.equal(bytesToHex(encodeEnvelope(e)), r.envelope);
    assert.equal(bytesToHex(rx.open(env)), r.plaintext);
    assert.throws(() => rx.open(env), (err: unknown) => err instanceof RecordError && err.kind === 'Duplicate');
  }
  // tampered header (counter) or body: Decrypt, no state change
  const rx2 = new Session(id, new Uint8Array(32), txKey);
  const bad = hexToBytes(v.records[0].envelope);
  bad[bad.length - 1]! ^= 1;
  assert.throws(() => rx2.open(bad), (err: unknown) => err instanceof RecordError && err.kind === 'Decrypt');
  assert.equal(bytesToHex(rx2.open(hexToBytes(v.records[0].envelope))), v.records[0].plaintext);
  const other = new Session(hexToBytes('0d0d0d0d0d0d0d0d'), new Uint8Array(32), txKey);
  assert.throws(() => other.open(hexToBytes(v.records[1].envelope)), (err: unknown) => err instanceof RecordError && err.kind === 'WrongSession');
});

test('records.json: one encoded example per content type', () => {
  for (const c of v.contents) {
    const decoded = decodeContent(hexToBytes(c.hex));
    assert.equal(decoded.type.replace(/([a-z])([A-Z])/g, '$1_$2').toLowerCase(), c.name);
    assert.equal(bytesToHex(encodeContent(decoded)), c.hex);
  }
});

test('replay window: 1024 counters, reordering and epochs', () => {
  const a = new Session(id, txKey, rekey(txKey));
  const b = new Session(id, rekey(txKey), txKey);
  const recs: Uint8Array[] = [];
  for (let i = 0; i < 1100; i++) recs.push(a.seal(Uint8Array.of(i & 0xff)));
  b.open(recs[1099]!);
  assert.throws(() => b.open(recs[50]!), (e: unknown) => e instanceof RecordError && e.kind === 'TooOld');
  assert.equal(b.open(recs[76]!)[0], 76); // 1099 - 76 = 1023 < 1024: inside the window
  assert.throws(() => b.open(recs[75]!), (e: unknown) => e instanceof RecordError && e.kind === 'TooOld');
  // next epoch: the receiver ratchets lazily and keeps the previous key for reordered records
  a.rekeyNow();
  const late = a.seal(Uint8Array.of(1));
  const late2 = a.seal(Uint8Array.of(2));
  b.open(late2);
  b.open(late);
  // the window spans epochs (counters are global): 1098 is now far below it
  assert.throws(() => b.open(recs[1098]!), (e: unknown) => e instanceof RecordError && e.kind === 'TooOld');
});

test('stored session resumes past its reservation', () => {
  const a = new Session(id, txKey, txKey);
  a.seal(new Uint8Array(1));
  const stored = JSON.parse(JSON.stringify(a.toStored()));
  const b = Session.fromStored(stored);
  assert.equal(b.nextCounter(), 4096n);
  assert.throws(() => Session.fromStored({ ...stored, rx: { ...stored.rx, window: { next: '0', bits: [] } } }));
});
