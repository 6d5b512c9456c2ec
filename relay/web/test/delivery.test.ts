// Delivery halves (src/proto/delivery.ts), mirroring the unit tests of proto/src/delivery.rs.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { u64be } from '../src/proto/bytes.ts';
import { DeliveryError, Inbound, Outbound, StoredFormatError, defaultOutboxLimits } from '../src/proto/delivery.ts';
import { hash } from '../src/proto/kdf.ts';

const b = (s: string): Uint8Array => new TextEncoder().encode(s);
const json = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;

function deliveryError(kind: string, fields: Record<string, bigint> = {}) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof DeliveryError, String(e));
    assert.deepEqual(e.detail, { kind, ...fields });
    return true;
  };
}

test('delivery: in order, duplicate, gap (one Nack per gap) and resync', () => {
  const out = new Outbound();
  const inb = new Inbound();
  const a = out.push(b('a'));
  const bb = out.push(b('b'));
  assert.deepEqual([a, bb], [1n, 2n]);
  assert.deepEqual(inb.onData(1n, out.oldest()).action, { type: 'Deliver' });
  assert.deepEqual(inb.onData(1n, 1n).action, { type: 'Duplicate' });
  const c = out.push(b('c'));
  assert.deepEqual(inb.onData(c, 1n).action, { type: 'Gap', expected: 2n, nack: true });
  // The same gap again: no second Nack.
  assert.deepEqual(inb.onData(c, 1n).action, { type: 'Gap', expected: 2n, nack: false });
  // Until the caller allows it again.
  inb.forgetNack();
  assert.deepEqual(inb.onData(c, 1n).action, { type: 'Gap', expected: 2n, nack: true });
  assert.equal(out.onAck(inb.ack()), 1);
  assert.deepEqual(out.unackedFrom(2n).map((p) => p.seq), [2n, 3n]);
  assert.deepEqual(out.unackedFrom(3n).map((p) => p.seq), [3n]);
  assert.throws(() => out.onAck(9n), deliveryError('AckBeyondSent', { ack: 9n, last: 3n }));
  assert.equal(out.len(), 2);
  // The sender lost 2..=4; the receiver is told, then gets 5.
  const r = inb.onData(5n, 5n);
  assert.deepEqual(r.resync, { from: 2n, to: 4n });
  assert.deepEqual(r.action, { type: 'Deliver' });
  assert.equal(inb.ack(), 5n);
});

test('delivery: a resync that still leaves a gap', () => {
  const inb = new Inbound();
  const r = inb.onData(7n, 4n);
  assert.deepEqual(r.resync, { from: 1n, to: 3n });
  assert.deepEqual(r.action, { type: 'Gap', expected: 4n, nack: true });
  assert.equal(inb.ack(), 3n);
});

test('delivery: overflow drops the oldest and says so (by count and by bytes)', () => {
  const out = new Outbound({ maxMessages: 2, maxBytes: 1 << 20 });
  for (const m of ['1', '2', '3']) out.push(b(m));
  assert.equal(out.oldest(), 2n);
  assert.equal(out.dropped(), 1n);
  assert.equal(out.len(), 2);

  const byBytes = new Outbound({ maxMessages: 100, maxBytes: 10 });
  byBytes.push(new Uint8Array(4));
  byBytes.push(new Uint8Array(4));
  assert.equal(byBytes.dropped(), 0n);
  byBytes.push(new Uint8Array(4)); // 12 > 10: the first goes
  assert.equal(byBytes.dropped(), 1n);
  assert.equal(byBytes.bytes(), 8);
  // A message over the limit on its own is never dropped by its own push.
  byBytes.push(new Uint8Array(50));
  assert.deepEqual(byBytes.unackedFrom(0n).map((p) => p.seq), [4n]);
  assert.equal(byBytes.oldest(), 4n);
  assert.equal(byBytes.bytes(), 50);
  assert.equal(byBytes.dropped(), 3n);
});

test('delivery: impossible numbers change nothing', () => {
  const inb = new Inbound();
  const before = JSON.stringify(inb.toStored());
  assert.throws(() => inb.onData(0n, 0n), deliveryError('ZeroSeq'));
  assert.throws(() => inb.onData(3n, 4n), deliveryError('OldestAboveSeq', { seq: 3n, oldest: 4n }));
  assert.equal(JSON.stringify(inb.toStored()), before);
  const out = new Outbound();
  out.push(b('x'));
  const o = JSON.stringify(out.toStored());
  assert.throws(() => out.onAck(2n), deliveryError('AckBeyondSent', { ack: 2n, last: 1n }));
  assert.equal(JSON.stringify(out.toStored()), o);
  // An ack below what was acknowledged is a no-op.
  assert.equal(out.onAck(1n), 1);
  assert.equal(out.onAck(0n), 0);
  assert.equal(out.acked(), 1n);
  assert.ok(out.isEmpty());
  assert.equal(out.oldest(), 2n);
});

test('delivery: defaults match OutboxLimits::default()', () => {
  assert.deepEqual(defaultOutboxLimits(), { maxMessages: 100_000, maxBytes: 268_435_456 });
  assert.deepEqual(new Outbound().limits, defaultOutboxLimits());
});

test('delivery: stored form round-trips through JSON, and bad forms are refused', () => {
  const out = new Outbound({ maxMessages: 3, maxBytes: 1000 });
  for (let i = 0; i < 5; i++) out.push(Uint8Array.of(i, 0xff, 0xfe));
  out.onAck(3n);
  const s = json(out.toStored());
  assert.deepEqual(s, {
    next_seq: '6',
    acked: '3',
    unacked: [
      { seq: '4', message: 'A__-' },
      { seq: '5', message: 'BP_-' },
    ],
    bytes: 6,
    limits: { max_messages: 3, max_bytes: 1000 },
    dropped: '2',
  });
  const back = Outbound.fromStored(s);
  assert.deepEqual(back.toStored(), out.toStored());
  assert.deepEqual(back.get(5n), Uint8Array.of(4, 0xff, 0xfe));
  assert.equal(back.get(3n), undefined);
  assert.equal(back.get(6n), undefined);

  const inb = new Inbound();
  inb.onData(2n, 1n);
  assert.deepEqual(json(inb.toStored()), { delivered: '0', nacked: '1' });
  assert.deepEqual(Inbound.fromStored({ delivered: '7' }).toStored(), { delivered: '7', nacked: '0' }); // serde(default)

  const bad: unknown[] = [
    null,
    { ...s, next_seq: 6 },
    { ...s, next_seq: '06' },
    { ...s, acked: '-1' },
    { ...s, dropped: '18446744073709551616' },
    { ...s, unacked: [{ seq: '5', message: 'A__-' }, { seq: '4', message: 'A__-' }] },
    { ...s, unacked: [{ seq: '4', message: 'not base64!' }] },
    { ...s, bytes: 7 },
    { ...s, limits: { max_messages: -1, max_bytes: 1 } },
  ];
  for (const x of bad) assert.throws(() => Outbound.fromStored(x), StoredFormatError, JSON.stringify(x));
  assert.throws(() => Inbound.fromStored({ delivered: 1 }), StoredFormatError);
});

/** A deterministic byte stream: block k is hash("delivery test", [u64be(case), u64be(k)]). */
function stream(c: number): () => number {
  let i = 0;
  let block: Uint8Array = new Uint8Array(0);
  return () => {
    if (i % 32 === 0) block = hash('delivery test', [u64be(BigInt(c)), u64be(BigInt(i / 32))]);
    return block[i++ % 32]!;
  };
}

test('delivery: any mix of loss, duplication, reconnect-resend and restarts delivers exactly once, in order', () => {
  for (let c = 0; c < 150; c++) {
    const rnd = stream(c);
    const n = 1 + (rnd() % 59);
    const steps = (rnd() << 1) | (rnd() & 1); // 0..511 scheduled faults, then none
    let out = new Outbound();
    let inb = new Inbound();
    for (let i = 0; i < n; i++) out.push(u64be(BigInt(i)));
    const delivered: Uint8Array[] = [];
    const wire: { seq: bigint; m: Uint8Array }[] = out.unackedFrom(0n).map((p) => ({ seq: p.seq, m: p.message }));
    let step = 0;
    let rounds = 0;
    while (delivered.length < n) {
      rounds++;
      assert.ok(rounds < 10_000, `case ${c}: no progress`);
      const next = wire.shift();
      if (next) {
        const r = step++ < steps ? rnd() : 0;
        if (r & 1) wire.push(next); // duplicated
        if (r & 2) wire.splice(Math.min(wire.length, r >> 4), 0, next); // reordered copy
        if (r & 4) {
          // both halves restart from their persisted form
          out = Outbound.fromStored(json(out.toStored()));
          inb = Inbound.fromStored(json(inb.toStored()));
        }
        if (r & 8) continue; // lost
        const seq = next.seq;
        const oldest = out.oldest() < seq ? out.oldest() : seq;
        const receipt = inb.onData(seq, oldest);
        assert.equal(receipt.resync, null);
        if (receipt.action.type === 'Deliver') delivered.push(next.m);
        out.onAck(inb.ack());
      } else {
        // Reconnect: resend everything unacknowledged.
        wire.push(...out.unackedFrom(0n).map((p) => ({ seq: p.seq, m: p.message })));
      }
    }
    assert.deepEqual(delivered, Array.from({ length: n }, (_, i) => u64be(BigInt(i))), `case ${c}`);
    assert.ok(out.isEmpty());
  }
});
