// The in-memory store (src/app/store.ts): what the web client uses on an origin that is not a
// secure context. It behaves as the IndexedDB store does (copies in and out, one save per
// desktop with its tasks and events, prune, forget) and keeps nothing beyond the object itself.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type DesktopRow, type EventRow, MemoryStore, type TaskRow, lastingOrigin, openStore } from '../src/app/store.ts';

const desk = (id: string, link: unknown = { v: 1 }): DesktopRow => ({ id, name: id, platform: 'linux', relayUrl: 'http://192.168.1.5:7878', pairedAt: 1, link });
const task = (desktopId: string, taskId: string, updatedMs: number): TaskRow => ({
  desktopId,
  taskId,
  title: taskId,
  executor: 'x',
  state: 'running',
  updatedMs,
  next: 0,
  lo: 0,
  earliest: 0,
  known: 0,
});
const event = (desktopId: string, taskId: string, offset: number): EventRow => ({ desktopId, taskId, offset, atMs: offset, event: { type: 'progress', text: `${offset}` } });

test('store: a page that is not a secure context gets the memory store', async () => {
  const s = await openStore(false);
  assert.ok(s instanceof MemoryStore);
  assert.equal(s.persistent, false);
});

test('store: keys are kept only on a secure origin no other network can hold', () => {
  // Not a secure context: never.
  assert.equal(lastingOrigin(false, 'relay.example.com'), false);
  assert.equal(lastingOrigin(false, '192.168.1.5:7878'), false);
  // https on a public name: kept.
  assert.equal(lastingOrigin(true, 'relay.example.com'), true);
  assert.equal(lastingOrigin(true, 'relay.example.com:8443'), true);
  // https on a local-network address or name (a self-signed LAN relay): a
  // host elsewhere with its own certificate is the same origin once the
  // warning is clicked through.
  for (const h of ['192.168.1.5:8443', '10.0.0.2', '[fd00::2]:8443', 'nas.local', 'box.home.arpa:443', '[fe80::1]']) {
    assert.equal(lastingOrigin(true, h), false, h);
  }
  // Loopback is the phone itself.
  for (const h of ['localhost:7878', '127.0.0.1:41000', '[::1]:7878']) {
    assert.equal(lastingOrigin(true, h), true, h);
  }
});

test('store: memory rows are copies: changing an object after saving it changes nothing stored', async () => {
  const s = new MemoryStore();
  await s.claim();
  const key = await s.getOrPut('device-key', () => 'aa');
  assert.equal(await s.getOrPut('device-key', () => 'bb'), key, 'getOrPut keeps the first value');
  const row = desk('d1', { counter: 1 });
  await s.save(row, [task('d1', 't1', 5)], [event('d1', 't1', 1), event('d1', 't1', 0)]);
  (row.link as { counter: number }).counter = 99;
  row.name = 'changed';
  const [back] = await s.desktops();
  assert.deepEqual(back, desk('d1', { counter: 1 }));
  back!.name = 'changed again';
  assert.equal((await s.desktops())[0]!.name, 'd1', 'what was read is a copy too');
  assert.deepEqual((await s.events('d1', 't1')).map((e) => e.offset), [0, 1], 'events in offset order');
  assert.deepEqual(await s.events('d1', 'nope'), []);
  await s.put('x', { a: [1] });
  assert.deepEqual(await s.get('x'), { a: [1] });
  assert.equal(await s.get('missing'), undefined);
});

test('store: a save that cannot be copied changes nothing', async () => {
  const s = new MemoryStore();
  await s.save(desk('d1'));
  await assert.rejects(s.save(desk('d1', { f: () => 1 }), [task('d1', 't', 1)]));
  assert.deepEqual(await s.desktops(), [desk('d1')]);
  assert.deepEqual(await s.tasks('d1'), []);
});

test('store: prune keeps the newest tasks with their events; forget removes a desktop and all of its data', async () => {
  const s = new MemoryStore();
  await s.save(desk('d1'), [task('d1', 'old', 1), task('d1', 'mid', 2), task('d1', 'new', 3)], [event('d1', 'old', 0), event('d1', 'new', 0)]);
  await s.save(desk('d2'), [task('d2', 'other', 1)], [event('d2', 'other', 0)]);
  await s.prune('d1', 2);
  assert.deepEqual((await s.tasks('d1')).map((t) => t.taskId), ['mid', 'new']);
  assert.deepEqual(await s.events('d1', 'old'), []);
  assert.equal((await s.events('d1', 'new')).length, 1);
  await s.forget('d1');
  assert.deepEqual((await s.desktops()).map((d) => d.id), ['d2']);
  assert.deepEqual(await s.tasks('d1'), []);
  assert.deepEqual(await s.events('d1', 'new'), []);
  assert.equal((await s.tasks('d2')).length, 1, 'the other desktop is untouched');
});
