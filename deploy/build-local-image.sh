#!/usr/bin/env bash
# deploy/build-local-image.sh: build the tandem-relay image from a binary
# built here (deploy/Dockerfile.local, FROM scratch: nothing to pull), then,
# with --smoke, run it and check /healthz and /readyz from the host.
#
#   deploy/build-local-image.sh [--smoke] [--tag NAME]
#   deploy/build-local-image.sh --smoke-only --tag NAME   # smoke-test an image built otherwise
#
# Uses podman, or docker when podman is not installed (ENGINE=... to choose;
# ENGINE_ARGS=... goes before its subcommand, e.g. ENGINE_ARGS="--runtime runc"
# where crun refuses the machine's cgroups, as on the machine this was
# written on: "cgroups in hybrid mode not supported").
# TANDEM_RELAY_STATIC_BIN=/path/to/tandem-relay skips the cargo build (the
# binary must be statically linked: FROM scratch has no libc).
# echo returns 0, so "A && echo || ..." is an if-then-else here.
# shellcheck disable=SC2015
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
tag=tandem-relay:local
smoke=
build=yes
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) smoke=1 ;;
        --smoke-only) smoke=1; build=no ;;
        --tag) tag=$2; shift ;;
        *) echo "usage: $0 [--smoke | --smoke-only] [--tag NAME]" >&2; exit 2 ;;
    esac
    shift
done
engine_bin=${ENGINE:-$(command -v podman || command -v docker || true)}
[ -n "$engine_bin" ] || { echo "no container engine (podman or docker)" >&2; exit 2; }
# shellcheck disable=SC2086 # ENGINE_ARGS is a list of words
engine() { "$engine_bin" ${ENGINE_ARGS:-} "$@"; }

ctx=
cleanup() {
    if [ -n "$ctx" ]; then rm -rf "$ctx"; fi
    if [ -n "${cid:-}" ]; then
        engine rm -f "$cid" >/dev/null 2>&1 || true
        engine volume rm -f "$cid-data" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

if [ "$build" = yes ]; then
    bin=${TANDEM_RELAY_STATIC_BIN:-}
    if [ -z "$bin" ]; then
        triple=$(rustc -vV | sed -n 's/^host: //p')
        (cd "$repo" && RUSTFLAGS='-C target-feature=+crt-static' \
            cargo build --release --locked -p tandem-relay --target "$triple")
        bin="${CARGO_TARGET_DIR:-$repo/target}/$triple/release/tandem-relay"
    fi
    # A dynamically linked binary would start nowhere in a scratch image.
    if file "$bin" 2>/dev/null | grep -q 'dynamically linked'; then
        echo "$bin is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static'" >&2
        exit 1
    fi

    ctx=$(mktemp -d /tmp/tandem-relay-image.XXXXXX)
    cp "$bin" "$ctx/tandem-relay"
    mkdir -p "$ctx/data" "$ctx/etc"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$ctx/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/etc/group"
    # Host names (a Redis URL's "redis") resolve through /etc/hosts, then DNS.
    printf 'hosts: files dns\n' >"$ctx/etc/nsswitch.conf"
    engine build -f "$here/Dockerfile.local" -t "$tag" "$ctx"
    engine image inspect "$tag" --format 'built {{.Id}}: {{.Size}} bytes' 2>/dev/null ||
        engine images "$tag"
fi

[ -n "$smoke" ] || exit 0
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Plain HTTP (as behind haproxy), the host's loopback port mapped to 8443;
# as in compose.yaml: a read-only root, no capabilities, a named volume
# (initialised from the image: owned by 65532) for the data directory.
# Limits the container may set without CAP_SYS_RESOURCE: an engine's
# defaults (a million files, four million processes) may be above this
# machine's hard limits, and then the container does not start.
cid=tandem-relay-smoke-$$
engine run -d --name "$cid" --read-only --cap-drop ALL --security-opt no-new-privileges \
    -v "$cid-data:/var/lib/tandem-relay" --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096 \
    -p "127.0.0.1:$port:8443" -e TANDEM_RELAY_TLS=off "$tag" >/dev/null
echo "container $cid on 127.0.0.1:$port"
for _ in $(seq 100); do
    curl -sf --max-time 1 "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.2
done
fail=0
for path in /healthz /readyz; do
    out=$(curl -s --max-time 2 -w ' %{http_code}' "http://127.0.0.1:$port$path" || true)
    echo "GET $path: $out"
    case $out in *" 200") ;; *) fail=1 ;; esac
done
user=$(engine exec "$cid" /usr/local/bin/tandem-relay --version 2>/dev/null || true)
echo "in the container: $user; runs as $(engine inspect "$cid" --format '{{.Config.User}}')"
# SIGTERM drains and the container exits 0.
engine stop -t 30 "$cid" >/dev/null
status=$(engine inspect "$cid" --format '{{.State.ExitCode}}')
echo "exit code after stop (SIGTERM): $status"
[ "$status" = 0 ] || fail=1
engine logs "$cid" 2>&1 | tail -5
[ "$fail" = 0 ] && echo "smoke: ok" || { echo "smoke: FAILED" >&2; exit 1; }
