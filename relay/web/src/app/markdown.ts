// The agent's text as safe Markdown, sans DOM: a small subset parsed into a
// tree (`parse`) that the UI turns into elements with text nodes only
// (`ui/markdown.ts`). No HTML is ever interpreted: a `<script>` in the text
// stays those characters. Links are kept as their text and their address;
// the UI makes them inert until tapped (and asks first).
//
// The subset: fenced code blocks (```), headings (#, ##, ###), bullet (-, *)
// and numbered (1.) list items, checklist items (`[x]` done, `[~]` in
// progress, `[ ]` to do, with or without a bullet: an agent's plan, sent as
// `Plan:` and one such line per step), paragraphs (separated by a blank line;
// a single line break kept), and inline `code`, **bold**, *italic* /
// _italic_, [text](https://…). Anything else is text.

export type Inline =
  | { t: 'text'; text: string }
  | { t: 'code'; text: string }
  | { t: 'strong'; children: Inline[] }
  | { t: 'em'; children: Inline[] }
  | { t: 'link'; children: Inline[]; href: string }
  | { t: 'br' };

export type Block =
  | { t: 'p'; children: Inline[] }
  | { t: 'h'; level: 1 | 2 | 3; children: Inline[] }
  | { t: 'pre'; text: string }
  | { t: 'ul'; items: Inline[][] }
  | { t: 'ol'; items: Inline[][]; start: number }
  | { t: 'check'; items: { state: CheckState; children: Inline[] }[] };

/** A checklist item's state: `[x]`, `[~]`, `[ ]`. */
export type CheckState = 'done' | 'doing' | 'todo';

/** Longest text parsed as Markdown; a longer one is one plain paragraph. */
export const MAX_MARKDOWN = 64 * 1024;

/** Only web links may be followed. */
export function safeHref(href: string): string | null {
  try {
    const u = new URL(href);
    return u.protocol === 'https:' || u.protocol === 'http:' ? u.href : null;
  } catch {
    return null;
  }
}

export function parse(text: string): Block[] {
  if (text.length > MAX_MARKDOWN) return [{ t: 'p', children: [{ t: 'text', text }] }];
  const lines = text.replace(/\r\n?/g, '\n').split('\n');
  const out: Block[] = [];
  let para: string[] = [];
  const flush = (): void => {
    if (para.length) out.push({ t: 'p', children: inlineLines(para) });
    para = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? '';
    if (/^\s*```/.test(line)) {
      flush();
      const code: string[] = [];
      i++;
      while (i < lines.length && !/^\s*```/.test(lines[i] ?? '')) code.push(lines[i++] ?? '');
      out.push({ t: 'pre', text: code.join('\n') });
      continue;
    }
    const heading = /^(#{1,3})\s+(.*)$/.exec(line);
    if (heading) {
      flush();
      out.push({ t: 'h', level: heading[1]!.length as 1 | 2 | 3, children: inline(heading[2] ?? '') });
      continue;
    }
    const check = /^\s*(?:[-*]\s+)?\[( |x|X|~)\]\s+(.*)$/.exec(line);
    if (check) {
      flush();
      const state: CheckState = check[1] === ' ' ? 'todo' : check[1] === '~' ? 'doing' : 'done';
      const item = { state, children: inline(check[2] ?? '') };
      const last = out.at(-1);
      if (last?.t === 'check') last.items.push(item);
      else out.push({ t: 'check', items: [item] });
      continue;
    }
    const bullet = /^\s*[-*]\s+(.*)$/.exec(line);
    const numbered = /^\s*(\d{1,9})[.)]\s+(.*)$/.exec(line);
    if (bullet || numbered) {
      flush();
      const last = out.at(-1);
      if (bullet) {
        if (last?.t === 'ul') last.items.push(inline(bullet[1] ?? ''));
        else out.push({ t: 'ul', items: [inline(bullet[1] ?? '')] });
      } else if (numbered) {
        if (last?.t === 'ol') last.items.push(inline(numbered[2] ?? ''));
        else out.push({ t: 'ol', items: [inline(numbered[2] ?? '')], start: Number(numbered[1]) });
      }
      continue;
    }
    if (line.trim() === '') {
      flush();
      continue;
    }
    para.push(line);
  }
  flush();
  return out;
}

function inlineLines(lines: string[]): Inline[] {
  const out: Inline[] = [];
  lines.forEach((l, i) => {
    if (i > 0) out.push({ t: 'br' });
    out.push(...inline(l));
  });
  return out;
}

/** Inline markup of one line (no nesting of the same kind; code wins). */
export function inline(s: string): Inline[] {
  const out: Inline[] = [];
  let text = '';
  const push = (n: Inline): void => {
    if (text) out.push({ t: 'text', text });
    text = '';
    out.push(n);
  };
  let i = 0;
  while (i < s.length) {
    const rest = s.slice(i);
    let m: RegExpExecArray | null;
    if ((m = /^`([^`]+)`/.exec(rest))) {
      push({ t: 'code', text: m[1] ?? '' });
    } else if ((m = /^\*\*(?=\S)(.+?)\*\*/.exec(rest))) {
      push({ t: 'strong', children: inline(m[1] ?? '') });
    } else if ((m = /^[*_](?=\S)([^*_]+?)[*_]/.exec(rest)) && (i === 0 || !/\w/.test(s[i - 1] ?? ''))) {
      push({ t: 'em', children: inline(m[1] ?? '') });
    } else if ((m = /^\[([^\]]+)\]\(([^)\s]+)\)/.exec(rest))) {
      const href = safeHref(m[2] ?? '');
      if (href) push({ t: 'link', children: inline(m[1] ?? ''), href });
      else text += m[0];
    } else {
      text += s[i];
      i++;
      continue;
    }
    i += m[0].length;
  }
  if (text) out.push({ t: 'text', text });
  return out;
}
