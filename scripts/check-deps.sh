#!/usr/bin/env bash
# Dependency policy for the crates we ship (benchmark-only baselines are
# exempt): one copy of each crypto crate the protocol and TLS rely on
# (x25519-dalek, curve25519-dalek, chacha20poly1305, blake2, snow, rustls,
# ring), no OpenSSL and no second TLS provider (aws-lc-rs) anywhere. The
# WebSocket handshake's SHA-1 (through digest 0.10) is not part of either.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
# Every (name, version) in the shipped tree; a crypto crate listed at two
# versions is a second crypto stack.
dups=$(cargo tree --workspace --locked -e normal,build --prefix none --format '{p}' \
  | awk '{print $1, $2}' | sort -u \
  | awk '{n[$1]++; v[$1]=v[$1] " " $2} END {for (k in n) if (n[k] > 1) print k ":" v[k]}' \
  | grep -E '^(curve25519-dalek|x25519-dalek|chacha20poly1305|chacha20|poly1305|blake2|snow|rustls|ring):' \
  || true)
if [[ -n "$dups" ]]; then
  echo "duplicate crypto crates in the shipped tree:" >&2
  echo "$dups" >&2
  fail=1
fi
for banned in openssl openssl-sys native-tls aws-lc-rs aws-lc-sys; do
  if cargo tree --workspace --locked -e normal,build -i "$banned" >/dev/null 2>&1; then
    echo "banned dependency in the tree: $banned" >&2
    cargo tree --workspace --locked -e normal,build -i "$banned" >&2 || true
    fail=1
  fi
done
[[ $fail -eq 0 ]] && echo "ok: one crypto stack, no OpenSSL"
exit $fail
