"""The parts of Tandem's relay protocol a client we did not write needs
(docs/PROTOCOL.md §2, §4, §6.2), written from the document alone: frame
encoding, X25519 (RFC 7748, pure Python), the device id and the relay-auth
proof. `selftest()` checks them against proto/vectors/identity.json.
"""

import hashlib
import json
import os
import struct

VERSION = 1
LEVEL = 2
MAX_FRAME_LEN = 65536
MAX_PAYLOAD_LEN = 65502

# Frame types (§4.2).
HELLO, CHALLENGE, AUTH, AUTH_OK = 0x01, 0x02, 0x03, 0x04
SEND, DELIVER, ACK, OK, PRESENCE, OKS = 0x10, 0x11, 0x12, 0x13, 0x14, 0x15
PING, PONG = 0x20, 0x21
PAIR_OPEN, PAIR_CLAIM, PAIR_MESSAGE, PAIR_CLOSE = 0x30, 0x31, 0x32, 0x33
AUTHORIZE, REVOKE = 0x40, 0x41
ERROR, RESTARTING = 0x50, 0x51

DESKTOP, PHONE = 1, 2

# Error codes (§5.1) by name; close code = 4000 + code (§5.2).
CODES = {
    "unsupported_version": 1,
    "unknown_frame_type": 2,
    "malformed_frame": 3,
    "frame_too_large": 4,
    "auth_failed": 5,
    "not_authenticated": 6,
    "unexpected_frame": 7,
    "not_authorized": 8,
    "revoked": 9,
    "queue_full": 10,
    "rate_limited": 11,
    "pairing_not_found": 12,
    "pairing_claimed": 13,
    "pairing_expired": 14,
    "idle_timeout": 15,
    "replaced": 16,
    "overloaded": 17,
    "handshake_timeout": 18,
    "shutting_down": 19,
    "ping_timeout": 20,
    "internal": 21,
    "store_unavailable": 22,
}
NAMES = {v: k for k, v in CODES.items()}


def close_code(name):
    """The WebSocket close code of error code `name`."""
    return 4000 + CODES[name]


# --- X25519 (RFC 7748 §5) -------------------------------------------------

_P = 2**255 - 19
_A24 = 121665


def _decode_scalar(k):
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return int.from_bytes(b, "little")


def x25519(k, u):
    """X25519(k, u): 32-byte scalar and u-coordinate, 32-byte result."""
    scalar = _decode_scalar(k)
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (scalar >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


BASE = (9).to_bytes(32, "little")


# --- Identity and relay authentication (§2.2, §3, §6.2) -------------------


def hash_(label, data):
    return hashlib.blake2s(label.encode() + b"\x00" + data).digest()


def mac(key, label, data):
    return hashlib.blake2s(label.encode() + b"\x00" + data, key=key).digest()


class Key:
    """A device key pair."""

    def __init__(self, secret=None):
        self.secret = secret if secret is not None else os.urandom(32)
        self.public = x25519(self.secret, BASE)
        self.device_id = hash_("tandem device id v1", self.public)[:16]


def normalize(name):
    n = name.strip()
    n = "".join(c.lower() if c.isascii() else c for c in n)
    return n[:-1] if n.endswith(".") else n


def proof(key, role, dialed, challenge):
    """The `Auth` proof for `challenge` (a decoded Challenge dict)."""
    shared = x25519(key.secret, challenge["ephemeral"])
    k = mac(shared, "tandem relay auth key v1", b"")
    name = normalize(dialed).encode()
    data = (
        bytes([VERSION, role])
        + challenge["nonce"]
        + challenge["ephemeral"]
        + key.public
        + struct.pack(">H", len(name))
        + name
    )
    return mac(k, "tandem relay auth v1", data)


# --- Frames (§4) -----------------------------------------------------------


def frame(t, body=b""):
    return bytes([VERSION, t]) + body


def hello(role, lo=1, hi=LEVEL):
    return frame(HELLO, bytes([lo, hi, role]))


def auth(public, proof_):
    return frame(AUTH, public + proof_)


def send(send_id, to, payload):
    return frame(SEND, struct.pack(">Q", send_id) + to + payload)


def ack(up_to):
    return frame(ACK, struct.pack(">Q", up_to))


def ping(nonce):
    return frame(PING, struct.pack(">Q", nonce))


def authorize(request_id, peer):
    return frame(AUTHORIZE, struct.pack(">Q", request_id) + peer)


def revoke(request_id, peer):
    return frame(REVOKE, struct.pack(">Q", request_id) + peer)


def pair_open(request_id, pairing_id, ttl):
    return frame(PAIR_OPEN, struct.pack(">Q", request_id) + pairing_id + struct.pack(">H", ttl))


def pair_claim(request_id, pairing_id, payload):
    return frame(PAIR_CLAIM, struct.pack(">Q", request_id) + pairing_id + payload)


def pair_message(pairing_id, peer, payload):
    return frame(PAIR_MESSAGE, pairing_id + peer + payload)


def decode(b):
    """Decode the relay → device frames this suite reads (a dict with `type`)."""
    if len(b) < 2 or b[0] != VERSION:
        raise ValueError(f"bad frame {b[:8].hex()}")
    t, body = b[1], b[2:]
    if t == CHALLENGE:
        (n,) = struct.unpack(">H", body[64:66])
        return {"type": "challenge", "ephemeral": body[:32], "nonce": body[32:64],
                "relay_name": body[66:66 + n].decode()}
    if t == AUTH_OK:
        dev, queued, ping_ms, epoch = struct.unpack(">16sIIQ", body)
        return {"type": "auth_ok", "device_id": dev, "queued": queued, "epoch": epoch}
    if t == OK:
        return {"type": "ok", "ref_id": struct.unpack(">Q", body)[0]}
    if t == OKS:
        (runs,) = struct.unpack(">H", body[:2])
        ids = []
        for i in range(runs):
            first, count = struct.unpack(">QI", body[2 + 12 * i:14 + 12 * i])
            ids.extend(range(first, first + count))
        return {"type": "oks", "ids": ids}
    if t == ERROR:
        code, ref, n = struct.unpack(">HQH", body[:12])
        return {"type": "error", "code": code, "name": NAMES.get(code, "other"), "ref_id": ref,
                "message": body[12:12 + n].decode(errors="replace")}
    if t == DELIVER:
        did, frm = struct.unpack(">Q16s", body[:24])
        return {"type": "deliver", "delivery_id": did, "from": frm, "payload": body[24:]}
    if t == PRESENCE:
        return {"type": "presence", "peer": body[:16], "online": body[16] == 1}
    if t == PING:
        return {"type": "ping", "nonce": struct.unpack(">Q", body)[0]}
    if t == PONG:
        return {"type": "pong", "nonce": struct.unpack(">Q", body)[0]}
    if t == PAIR_MESSAGE:
        return {"type": "pair_message", "pairing_id": body[:16], "peer": body[16:32],
                "payload": body[32:]}
    if t == RESTARTING:
        return {"type": "restarting"}
    return {"type": f"0x{t:02x}"}


def selftest(vectors):
    """Check X25519, the device id and the proof against identity.json."""
    with open(vectors) as f:
        v = json.load(f)
    key = Key(bytes.fromhex(v["device_secret"]))
    assert key.public.hex() == v["device_public"], "x25519 base point"
    assert key.device_id.hex() == v["device_id"], "device id"
    assert x25519(key.secret, bytes.fromhex(v["other_public"])).hex() == v["x25519_with_other"]
    ra = v["relay_auth"]
    ch = decode(bytes.fromhex(ra["challenge_frame"]))
    role = DESKTOP if ra["role"] == "desktop" else PHONE
    p = proof(key, role, ra["relay_name"], ch)
    assert auth(key.public, p).hex() == ra["auth_frame"], "relay-auth proof"
