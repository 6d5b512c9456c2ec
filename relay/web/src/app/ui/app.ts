// The shell: header with back button and connection banner, the current
// screen, navigation through the query string (/p?desktop=…&task=…).
import type { Change, Engine } from '../engine.ts';
import type { PushControl } from '../push.ts';
import type { ConnState } from '../relay.ts';
import { detachedBanner } from './desktop.ts';
import { h } from './dom.ts';
import { noticesList } from './notices.ts';

/** A mounted screen. */
export interface Screen {
  el: HTMLElement;
  title: string;
  /** Where the back button goes; none on the top screen. */
  back?: Route;
  update(c: Change): void;
  destroy?(): void;
}

/** Where the app is. */
export interface Route {
  screen: 'pair' | 'desktops' | 'desktop' | 'task';
  desktop?: string;
  task?: string;
}

export type ScreenFactory = (app: App, route: Route) => Screen;

/** The query parameters the app itself reads; every other one is dropped from the address bar at startup. */
const APP_PARAMS = ['relay', 'pair', 'desktop', 'task'];

/** `search` (`?a=…`) with only the app's own parameters, in their order (`''` when none is left). */
export function appQuery(search: string): string {
  const q = new URLSearchParams(search);
  const kept = new URLSearchParams();
  for (const [k, v] of q) if (APP_PARAMS.includes(k)) kept.append(k, v);
  const s = kept.toString();
  return s ? `?${s}` : '';
}

export function routeFromUrl(): Route {
  const q = new URLSearchParams(location.search);
  const desktop = q.get('desktop') ?? undefined;
  const task = q.get('task') ?? undefined;
  if (q.get('pair') !== null) return { screen: 'pair' };
  if (desktop && task) return { screen: 'task', desktop, task };
  if (desktop) return { screen: 'desktop', desktop };
  return { screen: 'desktops' };
}

function routeUrl(r: Route): string {
  const q = new URLSearchParams();
  const relay = new URLSearchParams(location.search).get('relay');
  if (relay) q.set('relay', relay);
  if (r.screen === 'pair') q.set('pair', '');
  if (r.desktop) q.set('desktop', r.desktop);
  if (r.task) q.set('task', r.task);
  const s = q.toString();
  return `${location.pathname}${s ? `?${s}` : ''}`;
}

export class App {
  readonly root: HTMLElement;
  private readonly header: HTMLElement;
  private readonly backButton: HTMLButtonElement;
  private readonly titleEl: HTMLElement;
  private readonly banner: HTMLElement;
  private readonly notice: HTMLElement;
  private readonly flashEl: HTMLElement;
  /** Notifications (set by main.ts; null where the page does not offer them). */
  push: PushControl | null = null;
  private readonly main: HTMLElement;
  private screen: Screen | null = null;
  private tick: ReturnType<typeof setInterval> | null = null;
  private noticeTick: ReturnType<typeof setTimeout> | null = null;
  private noticeKey = '';

  constructor(
    readonly engine: Engine,
    private readonly screens: Record<Route['screen'], ScreenFactory>,
    root: HTMLElement,
  ) {
    this.root = root;
    this.backButton = h('button', { class: 'back', testid: 'back', 'aria-label': 'Back', onclick: () => this.goBack() }, '‹');
    this.titleEl = h('h1', {});
    this.banner = h('div', { class: 'conn', testid: 'conn', role: 'status', 'aria-live': 'polite' });
    this.notice = h('div', {});
    this.flashEl = h('p', { class: 'flash', testid: 'flash', role: 'status', 'aria-live': 'polite', hidden: true });
    this.header = h('header', {}, this.backButton, this.titleEl);
    this.main = h('main', {});
    // The header and banners stay in view on a long thread.
    root.replaceChildren(h('div', { class: 'top' }, this.header, this.banner, this.notice, this.flashEl), ephemeralNote(engine), this.main);
    engine.subscribe((c) => {
      if (c.connection) this.renderBanner();
      if (!c.desktopId || c.desktopId === this.route.desktop || this.route.screen === 'desktops') this.renderNotice();
      this.screen?.update(c);
    });
    addEventListener('popstate', () => this.show(routeFromUrl(), false));
    addEventListener('online', () => this.renderBanner());
    addEventListener('offline', () => this.renderBanner());
  }

  /** Show a screen; `push` adds a history entry. */
  show(route: Route, push = true): void {
    if (route.desktop && !this.engine.desktops.has(route.desktop)) route = { screen: 'desktops' };
    if (route.screen === 'desktops' && this.engine.desktops.size === 0) route = { screen: 'pair' };
    this.flashEl.hidden = true;
    if (push) history.pushState(null, '', routeUrl(route));
    else history.replaceState(null, '', routeUrl(route));
    this.route = route;
    this.screen?.destroy?.();
    const s = this.screens[route.screen](this, route);
    this.screen = s;
    this.root.dataset.screen = route.screen;
    this.titleEl.textContent = s.title;
    this.backButton.hidden = !s.back;
    this.main.replaceChildren(s.el);
    this.renderBanner();
    this.renderNotice();
    window.scrollTo(0, 0);
  }

  route: Route = { screen: 'desktops' };

  /** A short message above the screen (what a notification's Allow / Deny did), until the next screen change or dismissal. */
  flash(text: string, kind: 'ok' | 'warn' | 'bad'): void {
    this.flashEl.dataset.kind = kind;
    this.flashEl.replaceChildren(h('span', {}, text), h('button', { class: 'link', testid: 'flash-dismiss', onclick: () => (this.flashEl.hidden = true) }, 'OK'));
    this.flashEl.hidden = false;
  }

  goBack(): void {
    const b = this.screen?.back;
    if (b) this.show(b, false);
  }

  setTitle(t: string): void {
    this.titleEl.textContent = t;
  }

  /**
   * The idle-detach notice of the desktop on screen, and what is missing or
   * waiting: for that desktop, or for every desktop on the desktops list.
   */
  private renderNotice(): void {
    const id = this.route.desktop;
    const one = id && (this.route.screen === 'desktop' || this.route.screen === 'task');
    // Redrawn only when what it says changed: a button is not swapped
    // under the user's finger while deliveries arrive.
    const key = JSON.stringify([this.route, one && this.engine.desktops.get(id)?.detached, this.route.screen === 'pair' ? [] : this.engine.notices(one ? id : undefined)]);
    if (key === this.noticeKey) return;
    this.noticeKey = key;
    const notices = this.route.screen === 'pair' ? '' : noticesList(this, one ? id : undefined);
    this.notice.replaceChildren(one ? detachedBanner(this, id) : '', notices);
    // A retry countdown stays current.
    if (this.noticeTick) clearTimeout(this.noticeTick);
    this.noticeTick = notices && notices.querySelector('[data-kind=refused]') ? setTimeout(() => this.renderNotice(), 1000) : null;
  }

  /** The connection banner, for the relay of the desktop on screen. */
  renderBanner(): void {
    if (this.engine.desktops.size === 0) {
      this.banner.hidden = true;
      return;
    }
    this.banner.hidden = false;
    const s = this.engine.connection(this.route.desktop);
    // Another tab owns the state: nothing here can be used until "Use here".
    this.main.inert = this.engine.inert;
    const { state, text, action } = describe(s, this);
    this.banner.dataset.state = state;
    this.banner.replaceChildren(h('span', { class: 'dot' }), h('span', { class: 'text' }, text));
    if (action) this.banner.append(action);
    if (this.tick) clearInterval(this.tick);
    this.tick = s?.kind === 'waiting' ? setInterval(() => this.renderBanner(), 1000) : null;
  }
}

function describe(s: ConnState | undefined, app: App): { state: string; text: string; action?: HTMLElement } {
  if (app.engine.inert || (s?.kind === 'stopped' && s.code === 'replaced')) {
    // Reloading makes this tab the owner again (the other one steps aside).
    const here = h('button', { class: 'link', testid: 'use-here', onclick: () => location.reload() }, 'Use here');
    return { state: 'offline', text: 'Tandem is open in another tab or window.', action: here };
  }
  if (!s) return { state: 'connecting', text: 'Connecting…' };
  switch (s.kind) {
    case 'online':
      return { state: 'online', text: 'Connected' };
    case 'connecting':
      return { state: 'connecting', text: s.attempt > 1 ? `Reconnecting (attempt ${s.attempt})…` : 'Connecting…' };
    case 'waiting': {
      const secs = Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000));
      const offline = s.offline || navigator.onLine === false;
      const retry = h('button', { class: 'link', testid: 'retry', onclick: () => app.engine.relays.forEach((r) => r.retryNow()) }, 'Retry now');
      return {
        state: offline ? 'offline' : 'connecting',
        text: offline ? `You are offline. Retrying in ${secs} s.` : `Relay unreachable. Retrying in ${secs} s.`,
        action: retry,
      };
    }
    case 'stopped': {
      if (s.code === 'revoked') return { state: 'offline', text: 'This device was revoked on the desktop. Pair again to use it.' };
      return { state: 'offline', text: `Disconnected: ${s.reason}` };
    }
  }
}

/**
 * On an origin that is not a secure context the keys live in this page's
 * memory only (store.ts): say what that means, on every screen.
 */
function ephemeralNote(engine: Engine): HTMLElement | string {
  if (!engine.ephemeral) return '';
  return h(
    'p',
    { class: 'ephemeral', testid: 'ephemeral', role: 'note' },
    h('strong', {}, 'Paired for as long as this page is open. '),
    'This page came over plain http on your network, so Tandem keeps its keys in this page’s memory only, where no other page can read them. ',
    'After a reload or closing the page, pair again: show a new code on the computer and scan it. ',
    'For a lasting pairing use the app or a relay with HTTPS.',
  );
}
