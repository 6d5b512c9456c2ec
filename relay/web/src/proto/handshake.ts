// From a finished Noise handshake to a record-layer Session (PROTOCOL.md §8.5).
import { label, hash } from './kdf.ts';
import type { HandshakeState } from './noise.ts';
import { Session } from './record.ts';

/** session_id = hash("tandem session id v1", [hh])[0..8]; initiator tx = k1, responder tx = k2. */
export function intoSession(hs: HandshakeState): Session {
  const [k1, k2] = hs.split();
  const id = hash(label.SESSION_ID, [hs.handshakeHash()]).slice(0, 8);
  return hs.initiator ? new Session(id, k1, k2) : new Session(id, k2, k1);
}
