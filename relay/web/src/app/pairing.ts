// Pairing from a QR link, as tandem-phone does it (PROTOCOL §9): the
// mailbox claim with the IKpsk2 hello, the desktop's welcome, the 6-digit
// code, the desktop's result, Authorize, and the new link handed to the
// engine. A page that keeps its keys in memory (store.ts) pairs as an
// ephemeral device (`DeviceInfo.ephemeral`, §15.4). A relay restart on the
// way is survived as tandem-phone does (§9.4 "Interruptions"): a failed
// claim is made again (at most 8 times within 30 s, 6 s for a first claim
// refused outright, and the code's life), and
// after a reconnection the mailbox is claimed again, with a fresh hello
// until the welcome came, with the same confirmation once it was sent; when
// that fails: "Pairing interrupted: scan again".
import {
  type DeviceId,
  type DeviceKey,
  Link,
  PairingError,
  PhonePairing,
  type PhoneAwaitingResult,
  QrError,
  bytesToHex,
  osEntropy,
  pairingId,
  parsePairingLink,
  relayOrigin,
  validateRelay,
} from '../proto/index.ts';
import type { Desktop } from './engine.ts';
import { type RelayClient, RelayError } from './relay.ts';
import type { DesktopRow } from './store.ts';

const WELCOME_WAIT_MS = 30_000;
const CONFIRM_WAIT_MS = 300_000;
/** Claims one pairing step may make, the first included. */
const CLAIM_ATTEMPTS = 8;
/** How long a failing claim is retried after its first attempt. */
const CLAIM_RETRY_WINDOW_MS = 30_000;
/** As CLAIM_RETRY_WINDOW_MS for a first claim refused outright (a used code is reported within seconds). */
const FIRST_CLAIM_WINDOW_MS = 6_000;
const CLAIM_PAUSE_MS = 500;
const CLAIM_PAUSE_MAX_MS = 4_000;
/**
 * Claim failures worth another try: the connection dropped with the claim in
 * flight (`offline`, `timeout`), or the desktop has not opened its mailbox
 * again yet (`pairing_not_found`). A relay that cannot be reached at all
 * (`unreachable`, after 10 s) is reported at once.
 */
const RETRYABLE = new Set(['pairing_not_found', 'offline', 'timeout']);
const APP_VERSION = '0.1.0';

/** Why pairing failed, as the pairing screen shows it. */
export type PairFailure = 'expired' | 'already_used' | 'refused' | 'unreachable' | 'invalid' | 'wrong_relay' | 'timeout' | 'interrupted';

export class PairError extends Error {
  constructor(
    readonly code: PairFailure,
    message: string,
  ) {
    super(message);
  }
}

/** A pairing whose code is shown, waiting for the desktop's confirmation. */
export interface PairingFlow {
  sas: string;
  desktopName: string;
  wait(): Promise<Desktop>;
}

/** What pairing needs from the engine. */
export interface PairingHost {
  readonly key: DeviceKey;
  /** The keys live in this page's memory only. */
  readonly ephemeral: boolean;
  relay(origin: string): RelayClient;
  /** Call `f` each time the connection to `origin` comes back (not its first time) until the returned function is called. */
  onReconnect(origin: string, f: () => void): () => void;
  onPairMessages(pid: string, f: (peer: DeviceId, payload: Uint8Array) => void): () => void;
  adopt(row: DesktopRow, link: Link, relay: RelayClient): Promise<Desktop>;
}

function now(): number {
  return Math.floor(Date.now() / 1000);
}

function interrupted(): PairError {
  return new PairError('interrupted', "Pairing interrupted: scan again. The connection to the relay was lost before the desktop's answer arrived; show a new code on the desktop and scan it.");
}

/**
 * Claim mailbox `pid` with what `make` gives, retrying as the header says.
 * `again`: an earlier claim of this pairing may hold the mailbox. Returns the
 * state of the claim the relay took, or 'held' when the relay answered
 * `pairing_claimed` to a repeated claim (the earlier claim holds it).
 */
async function claim<S>(relay: RelayClient, pid: Uint8Array, expiresAt: number | undefined, again: boolean, make: () => { state: S; payload: Uint8Array }): Promise<{ state: S } | 'held'> {
  const started = Date.now();
  let pause = CLAIM_PAUSE_MS;
  let unanswered: { state: S } | undefined;
  for (let attempt = 1; ; attempt++) {
    const { state, payload } = make();
    try {
      await relay.pairClaim(pid, payload);
      return { state };
    } catch (e) {
      if (!(e instanceof RelayError)) throw e;
      if (e.code === 'pairing_claimed' && again) return unanswered ?? 'held';
      if (!RETRYABLE.has(e.code)) throw e;
      if (e.code === 'offline' || e.code === 'timeout') {
        again = true;
        unanswered = { state };
      }
      const late = expiresAt !== undefined && now() + pause / 1000 + 1 >= expiresAt;
      const window = again ? CLAIM_RETRY_WINDOW_MS : FIRST_CLAIM_WINDOW_MS;
      if (attempt >= CLAIM_ATTEMPTS || Date.now() + pause > started + window || late) throw e;
      await new Promise((r) => setTimeout(r, pause));
      pause = Math.min(pause * 2, CLAIM_PAUSE_MAX_MS);
    }
  }
}

function deviceName(): string {
  const ua = navigator.userAgent;
  const os = /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iPhone' : /Mac OS X/.test(ua) ? 'Mac' : /Windows/.test(ua) ? 'Windows' : /Linux/.test(ua) ? 'Linux' : 'browser';
  const browser = /Edg\//.test(ua) ? 'Edge' : /Firefox\//.test(ua) ? 'Firefox' : /Chrom/.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : 'Web';
  return `${browser} on ${os}`;
}

/**
 * The link without its query: a pairing link on plain http carries a nonce
 * there (`/p?n=…#…`) that only keeps caches from answering for it.
 */
export function withoutQuery(link: string): string {
  const hash = link.indexOf('#');
  const q = link.indexOf('?');
  if (q < 0 || (hash >= 0 && q > hash)) return link;
  return link.slice(0, q) + (hash >= 0 ? link.slice(hash) : '');
}

/**
 * Pair from a link (the page's URL with its #fragment, or a pasted one).
 * `fallbackRelay` is the `?relay=` a redirecting relay added.
 */
export async function startPairing(host: PairingHost, link: string, fallbackRelay?: string): Promise<PairingFlow> {
  let parsed;
  try {
    parsed = parsePairingLink(withoutQuery(link), now());
  } catch (e) {
    if (e instanceof QrError && e.detail.kind === 'Expired') throw new PairError('expired', 'This pairing code has expired. Show a new one on the desktop (`tandem pair`) and scan it again.');
    throw new PairError('invalid', `This is not a valid Tandem pairing link (${e instanceof Error ? e.message : String(e)}).`);
  }
  // `?relay=` only counts for a link to this very page (a relay redirected here).
  let fallback: string | undefined;
  if (fallbackRelay !== undefined && parsed.origin === location.origin) {
    try {
      validateRelay(fallbackRelay);
      fallback = fallbackRelay;
    } catch {
      throw new PairError('invalid', `The page was opened with a bad relay address (${fallbackRelay}).`);
    }
  }
  const origin = parsed.payload.relay ?? fallback ?? relayOrigin(parsed);
  // Pairing again with a desktop replaces the old link (e.g. after the desktop forgot this phone).
  const desktop = parsed.payload.desktop.deviceId();
  const pid = pairingId(parsed.payload.secret);
  type Input = { kind: 'message'; payload: Uint8Array } | { kind: 'reconnected' };
  const inbox: Input[] = [];
  let wake: (() => void) | null = null;
  const unwatchMessages = host.onPairMessages(bytesToHex(pid), (peer, payload) => {
    if (!peer.equals(desktop)) return;
    inbox.push({ kind: 'message', payload });
    wake?.();
  });
  const unwatchRelay = host.onReconnect(origin, () => {
    inbox.push({ kind: 'reconnected' });
    wake?.();
  });
  const cleanup = (): void => {
    unwatchMessages();
    unwatchRelay();
  };
  const next = (ms: number): Promise<Input> =>
    new Promise((resolve, reject) => {
      const take = (): boolean => {
        const m = inbox.shift();
        if (m) resolve(m);
        return m !== undefined;
      };
      if (take()) return;
      const t = setTimeout(() => reject(new PairError('timeout', 'The desktop did not answer in time.')), Math.max(ms, 0));
      wake = () => {
        if (take()) clearTimeout(t);
      };
    });
  const relay = host.relay(origin);
  try {
    const info = { name: deviceName(), platform: 'web', app_version: APP_VERSION, ...(host.ephemeral ? { ephemeral: true } : {}) };
    const hello = (): { state: PhonePairing; payload: Uint8Array } => {
      const { state, hello } = PhonePairing.start(host.key, parsed.payload, info, osEntropy);
      return { state, payload: hello };
    };
    const expiresAt = parsed.payload.expiresAt;
    let state: PhonePairing;
    try {
      const first = await claim(relay, pid, expiresAt, false, hello);
      if (first === 'held') throw new RelayError('pairing_claimed', 'pairing refused');
      state = first.state;
    } catch (e) {
      // The relay drops a pairing once it succeeded (or the desktop
      // stopped showing it): before its expiry, that means used.
      if (e instanceof RelayError && e.code === 'pairing_not_found' && now() < parsed.payload.expiresAt) {
        throw new PairError('already_used', 'This pairing code was already used, or the desktop stopped showing it. Show a new one on the desktop and scan it again.');
      }
      throw pairFailure(e, origin);
    }
    let until = Date.now() + WELCOME_WAIT_MS;
    let welcome: Uint8Array;
    for (;;) {
      const input = await next(until - Date.now());
      if (input.kind === 'message') {
        welcome = input.payload;
        break;
      }
      // A fresh hello: the desktop starts over from it.
      const again = await claim(relay, pid, expiresAt, true, hello).catch((e: unknown) => {
        throw pairFailure(e, origin);
      });
      if (again !== 'held') {
        state = again.state;
        until = Date.now() + WELCOME_WAIT_MS;
      }
    }
    let waiting: PhoneAwaitingResult;
    let confirm: Uint8Array;
    try {
      ({ state: waiting, confirm } = state.onWelcome(welcome));
    } catch (e) {
      throw new PairError('invalid', `The desktop's answer did not check out (${String(e)}). Was the code copied correctly?`);
    }
    relay.pairMessage(pid, desktop, confirm);
    return {
      sas: waiting.sas.toString(),
      desktopName: waiting.desktopInfo.name,
      wait: async () => {
        try {
          // After a reconnection: the same confirmation claims the mailbox
          // again, and the desktop sends its result (again).
          const until = Date.now() + CONFIRM_WAIT_MS;
          let cut = false;
          let result: Uint8Array;
          for (;;) {
            let input: Input;
            try {
              input = await next(until - Date.now());
            } catch (e) {
              throw cut ? interrupted() : e;
            }
            if (input.kind === 'message') {
              result = input.payload;
              break;
            }
            cut = true;
            try {
              await claim(relay, pid, undefined, true, () => ({ state: null, payload: confirm }));
            } catch {
              throw interrupted();
            }
          }
          let paired;
          try {
            paired = waiting.onResult(result);
          } catch (e) {
            if (e instanceof PairingError && e.kind === 'Refused') throw new PairError('refused', 'The desktop refused this pairing.');
            throw new PairError('invalid', `The desktop's answer did not check out (${String(e)}).`);
          }
          try {
            await relay.authorize(desktop);
          } catch (e) {
            throw pairFailure(e, origin);
          }
          const row: DesktopRow = {
            id: desktop.toString(),
            name: waiting.desktopInfo.name,
            platform: waiting.desktopInfo.platform,
            relayUrl: origin,
            pairedAt: now(),
            link: null,
          };
          return await host.adopt(row, Link.fromPaired(paired), relay);
        } finally {
          cleanup();
        }
      },
    };
  } catch (e) {
    cleanup();
    throw e;
  }
}

function pairFailure(e: unknown, origin: string): PairError {
  if (e instanceof PairError) return e;
  if (e instanceof RelayError) {
    switch (e.code) {
      case 'pairing_claimed':
        return new PairError('already_used', 'This pairing code was already used. Show a new one on the desktop and scan it again.');
      case 'pairing_expired':
      case 'pairing_not_found':
        return new PairError('expired', 'The relay no longer knows this pairing code; it has expired or the desktop stopped showing it. Show a new one on the desktop.');
      case 'wrong_relay':
        return new PairError('wrong_relay', e.message);
      default:
        return new PairError('unreachable', `Cannot reach the relay at ${origin}: ${e.message}.`);
    }
  }
  return new PairError('unreachable', `Cannot reach the relay at ${origin}: ${String(e)}.`);
}
