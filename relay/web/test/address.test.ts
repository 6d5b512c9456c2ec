// What the app keeps of the address it was opened with (src/app/main.ts, ui/app.ts, pairing.ts):
// a pairing link's nonce (`/p?n=…#…`) is dropped from the address bar, only the app's own query
// parameters stay, and a pasted link with a nonce pairs like one without.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { withoutQuery } from '../src/app/pairing.ts';
import { appQuery } from '../src/app/ui/app.ts';

test('address: only the app\'s own query parameters stay in the address bar', () => {
  assert.equal(appQuery('?n=Q2FmZQ'), '');
  assert.equal(appQuery(''), '');
  assert.equal(appQuery('?relay=https%3A%2F%2Frelay.example.com&n=x'), '?relay=https%3A%2F%2Frelay.example.com');
  assert.equal(appQuery('?desktop=abc&task=t1'), '?desktop=abc&task=t1');
  assert.equal(appQuery('?pair=&utm=1&n=2'), '?pair=');
});

test('address: a pairing link loses its query, keeps its fragment', () => {
  assert.equal(withoutQuery('http://192.168.1.5:7878/p?n=abc#AAAA'), 'http://192.168.1.5:7878/p#AAAA');
  assert.equal(withoutQuery('http://192.168.1.5:7878/p#AAAA'), 'http://192.168.1.5:7878/p#AAAA');
  assert.equal(withoutQuery('http://192.168.1.5:7878/p#AA?AA'), 'http://192.168.1.5:7878/p#AA?AA', 'a ? inside the fragment is the fragment\'s');
  assert.equal(withoutQuery('https://relay.example.com/p?n=1'), 'https://relay.example.com/p');
});
