"""A local Web Push service for relay/tests/push.rs: a stand-in for a
browser vendor's push service (RFC 8030), written independently of the
relay with the Python standard library, `cryptography` and `http_ece`.

It makes one subscription key pair (P-256, RFC 8291) and auth secret, prints
them with its port as one JSON line on stdout, and then, for every POST to
/push/<name>:

* checks the request: `TTL` (an integer), `Urgency` (RFC 8030 values),
  `Topic` (at most 32 base64url characters), `Content-Encoding: aes128gcm`,
  and `Authorization: vapid t=<JWT>, k=<key>` (RFC 8292: an ES256 JWT,
  verified with `k`, whose `aud` is this service's origin, `exp` in the
  next 24 hours and `sub` a mailto: or https: URI);
* decrypts the body with `http_ece` (aes128gcm) with the subscription's
  private key and auth secret;
* records what it saw (GET /records: a JSON array) and answers 201, or 410
  for /push/gone/..., 500 for /push/fail/...
"""

import base64
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

PRIVATE = ec.generate_private_key(ec.SECP256R1())
P256DH = PRIVATE.public_key().public_bytes(
    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
)
AUTH = __import__("os").urandom(16)
RECORDS = []
LOCK = threading.Lock()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def check_vapid(header, origin, problems):
    """RFC 8292 §3: `vapid t=<jwt>, k=<public key>`; returns `k` (base64url)."""
    m = re.fullmatch(r"vapid t=([^,\s]+),\s*k=([A-Za-z0-9_-]+)", header or "")
    if not m:
        problems.append("authorization is not 'vapid t=..., k=...'")
        return None
    token, k = m.group(1), m.group(2)
    try:
        head_b64, claims_b64, sig_b64 = token.split(".")
        head = json.loads(b64url_decode(head_b64))
        claims = json.loads(b64url_decode(claims_b64))
        sig = b64url_decode(sig_b64)
    except Exception as e:  # noqa: BLE001 - any parse failure is a finding
        problems.append(f"JWT does not parse: {e}")
        return k
    if head.get("alg") != "ES256":
        problems.append(f"JWT alg {head.get('alg')!r}, not ES256")
    key_bytes = b64url_decode(k)
    if len(key_bytes) != 65 or key_bytes[0] != 4:
        problems.append("k is not an uncompressed P-256 point")
        return k
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key_bytes)
    if len(sig) != 64:
        problems.append("JWT signature is not 64 bytes (r || s)")
        return k
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        public.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except Exception:  # noqa: BLE001
        problems.append("JWT signature does not verify with k")
    if claims.get("aud") != origin:
        problems.append(f"aud {claims.get('aud')!r} is not {origin!r}")
    now = time.time()
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or not (now < exp <= now + 24 * 3600 + 60):
        problems.append(f"exp {exp!r} is not within the next 24 hours")
    sub = claims.get("sub", "")
    if not (sub.startswith("mailto:") or sub.startswith("https:")):
        problems.append(f"sub {sub!r} is not a mailto: or https: URI")
    return k


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        if self.path != "/records":
            self.send_error(404)
            return
        with LOCK:
            body = json.dumps(RECORDS).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        problems = []
        ttl = self.headers.get("TTL")
        if ttl is None or not ttl.isdigit():
            problems.append(f"TTL {ttl!r} is not an integer")
        urgency = self.headers.get("Urgency")
        if urgency not in (None, "very-low", "low", "normal", "high"):
            problems.append(f"Urgency {urgency!r}")
        topic = self.headers.get("Topic")
        if topic is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", topic):
            problems.append(f"Topic {topic!r} is not at most 32 base64url characters")
        if self.headers.get("Content-Encoding") != "aes128gcm":
            problems.append(f"Content-Encoding {self.headers.get('Content-Encoding')!r}")
        k = check_vapid(self.headers.get("Authorization"), origin, problems)
        plain = None
        try:
            plain = http_ece.decrypt(
                raw, private_key=PRIVATE, auth_secret=AUTH, version="aes128gcm"
            )
        except Exception as e:  # noqa: BLE001
            problems.append(f"http_ece cannot decrypt the body: {e}")
        if self.path.startswith("/push/gone/"):
            status = 410
        elif self.path.startswith("/push/fail/"):
            status = 500
        elif self.path.startswith("/push/"):
            status = 201
        else:
            status = 404
        with LOCK:
            RECORDS.append(
                {
                    "path": self.path,
                    "status": status,
                    "problems": problems,
                    "ttl": ttl,
                    "urgency": urgency,
                    "topic": topic,
                    "vapid_k": k,
                    "body_hex": raw.hex(),
                    "plain_hex": plain.hex() if plain is not None else None,
                    "at": time.time(),
                }
            )
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    line = {
        "port": server.server_address[1],
        "p256dh": P256DH.hex(),
        "auth": AUTH.hex(),
    }
    print(json.dumps(line), flush=True)
    # Stop when the test (our parent) closes our stdin.
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
