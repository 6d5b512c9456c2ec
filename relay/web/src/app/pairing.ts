// Pairing from a QR link, as tandem-phone does it (PROTOCOL §9): the
// mailbox claim with the IKpsk2 hello, the desktop's welcome, the 6-digit
// code, the desktop's result, Authorize, and the new link handed to the
// engine. A page that keeps its keys in memory (store.ts) pairs as an
// ephemeral device (`DeviceInfo.ephemeral`, §15.4).
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
const APP_VERSION = '0.1.0';

/** Why pairing failed, as the pairing screen shows it. */
export type PairFailure = 'expired' | 'already_used' | 'refused' | 'unreachable' | 'invalid' | 'wrong_relay' | 'timeout';

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
  onPairMessages(pid: string, f: (peer: DeviceId, payload: Uint8Array) => void): () => void;
  adopt(row: DesktopRow, link: Link, relay: RelayClient): Promise<Desktop>;
}

function now(): number {
  return Math.floor(Date.now() / 1000);
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
  const inbox: Uint8Array[] = [];
  let wake: (() => void) | null = null;
  const cleanup = host.onPairMessages(bytesToHex(pid), (peer, payload) => {
    if (!peer.equals(desktop)) return;
    inbox.push(payload);
    wake?.();
  });
  const next = (ms: number): Promise<Uint8Array> =>
    new Promise((resolve, reject) => {
      const take = (): boolean => {
        const m = inbox.shift();
        if (m) resolve(m);
        return m !== undefined;
      };
      if (take()) return;
      const t = setTimeout(() => reject(new PairError('timeout', 'The desktop did not answer in time.')), ms);
      wake = () => {
        if (take()) clearTimeout(t);
      };
    });
  const relay = host.relay(origin);
  try {
    const info = { name: deviceName(), platform: 'web', app_version: APP_VERSION, ...(host.ephemeral ? { ephemeral: true } : {}) };
    const { state, hello } = PhonePairing.start(host.key, parsed.payload, info, osEntropy);
    try {
      await relay.pairClaim(pid, hello);
    } catch (e) {
      // The relay drops a pairing once it succeeded (or the desktop
      // stopped showing it): before its expiry, that means used.
      if (e instanceof RelayError && e.code === 'pairing_not_found' && now() < parsed.payload.expiresAt) {
        throw new PairError('already_used', 'This pairing code was already used, or the desktop stopped showing it. Show a new one on the desktop and scan it again.');
      }
      throw pairFailure(e, origin);
    }
    const welcome = await next(WELCOME_WAIT_MS);
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
          const result = await next(CONFIRM_WAIT_MS);
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
