// The agent's text on screen: the Markdown tree of `../markdown.ts` as
// elements built with text nodes only (no HTML is parsed). A link is inert
// until tapped, and then asks before opening its address in a new tab.
import { type Block, type Inline, parse } from '../markdown.ts';
import { h } from './dom.ts';

export function markdown(text: string): HTMLElement {
  const el = h('div', { class: 'md', testid: 'md' });
  for (const b of parse(text)) el.append(block(b));
  return el;
}

function block(b: Block): HTMLElement {
  switch (b.t) {
    case 'p':
      return h('p', {}, ...b.children.map(inline));
    case 'h':
      return h(`h${b.level + 2}` as 'h3' | 'h4' | 'h5', {}, ...b.children.map(inline));
    case 'pre':
      return h('pre', {}, h('code', {}, b.text));
    case 'ul':
      return h('ul', {}, ...b.items.map((it) => h('li', {}, ...it.map(inline))));
    case 'ol':
      return h('ol', { start: b.start }, ...b.items.map((it) => h('li', {}, ...it.map(inline))));
    case 'check': {
      const mark = { done: '☑', doing: '◐', todo: '☐' } as const;
      const said = { done: 'done', doing: 'in progress', todo: 'to do' } as const;
      return h(
        'ul',
        { class: 'checklist', testid: 'checklist' },
        ...b.items.map((it) =>
          h(
            'li',
            { class: `check ${it.state}`, 'aria-label': said[it.state] },
            h('span', { class: 'mark', 'aria-hidden': 'true' }, mark[it.state]),
            ' ',
            ...it.children.map(inline),
          ),
        ),
      );
    }
  }
}

function inline(n: Inline): Node {
  switch (n.t) {
    case 'text':
      return document.createTextNode(n.text);
    case 'code':
      return h('code', {}, n.text);
    case 'strong':
      return h('strong', {}, ...n.children.map(inline));
    case 'em':
      return h('em', {}, ...n.children.map(inline));
    case 'br':
      return h('br', {});
    case 'link': {
      // No href: nothing follows it by accident (a long-press, a preview).
      const a = h('a', { class: 'link', role: 'link', tabindex: 0, title: n.href, 'data-href': n.href }, ...n.children.map(inline));
      a.addEventListener('click', (e) => {
        e.preventDefault();
        if (confirm(`Open ${n.href}?`)) window.open(n.href, '_blank', 'noopener,noreferrer');
      });
      return a;
    }
  }
}
