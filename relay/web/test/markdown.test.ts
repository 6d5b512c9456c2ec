// The agent's text as Markdown (src/app/markdown.ts), sans DOM: the subset
// parses, HTML stays text, only web links are links.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { inline, parse, safeHref } from '../src/app/markdown.ts';

test('markdown: blocks (code, headings, lists, paragraphs) and inline markup', () => {
  const md = '# Fixed\n\nThe **bug** was in `add`:\nit *subtracted*.\n\n- one\n- two\n\n3. three\n4. four\n\n```\nfn add() {}\n```';
  assert.deepEqual(parse(md), [
    { t: 'h', level: 1, children: [{ t: 'text', text: 'Fixed' }] },
    {
      t: 'p',
      children: [
        { t: 'text', text: 'The ' },
        { t: 'strong', children: [{ t: 'text', text: 'bug' }] },
        { t: 'text', text: ' was in ' },
        { t: 'code', text: 'add' },
        { t: 'text', text: ':' },
        { t: 'br' },
        { t: 'text', text: 'it ' },
        { t: 'em', children: [{ t: 'text', text: 'subtracted' }] },
        { t: 'text', text: '.' },
      ],
    },
    { t: 'ul', items: [[{ t: 'text', text: 'one' }], [{ t: 'text', text: 'two' }]] },
    { t: 'ol', items: [[{ t: 'text', text: 'three' }], [{ t: 'text', text: 'four' }]], start: 3 },
    { t: 'pre', text: 'fn add() {}' },
  ]);
});

test('markdown: HTML stays text; only http(s) links become links', () => {
  assert.deepEqual(inline('<script>alert(1)</script> <img src=x onerror=y>'), [
    { t: 'text', text: '<script>alert(1)</script> <img src=x onerror=y>' },
  ]);
  assert.deepEqual(inline('[docs](https://docs.rs/x)'), [
    { t: 'link', children: [{ t: 'text', text: 'docs' }], href: 'https://docs.rs/x' },
  ]);
  for (const bad of ['[x](javascript:alert(1))', '[x](data:text/html,hi)', '[x](file:///etc/passwd)']) {
    assert.ok(inline(bad).every((n) => n.t !== 'link'), bad);
  }
  assert.equal(safeHref('javascript:alert(1)'), null);
  // snake_case words are not italics.
  assert.deepEqual(inline('a_b_c and x_y'), [{ t: 'text', text: 'a_b_c and x_y' }]);
});

test('markdown: an agent plan is a checklist (done, in progress, to do)', () => {
  assert.deepEqual(parse('Plan:\n[x] read the test\n[~] fix `add`\n- [ ] run it\n\nafter'), [
    { t: 'p', children: [{ t: 'text', text: 'Plan:' }] },
    {
      t: 'check',
      items: [
        { state: 'done', children: [{ t: 'text', text: 'read the test' }] },
        { state: 'doing', children: [{ t: 'text', text: 'fix ' }, { t: 'code', text: 'add' }] },
        { state: 'todo', children: [{ t: 'text', text: 'run it' }] },
      ],
    },
    { t: 'p', children: [{ t: 'text', text: 'after' }] },
  ]);
  // Not a checklist: no space after the brackets, another mark.
  assert.equal(parse('[x]y\n[?] z')[0]?.t, 'p');
});
