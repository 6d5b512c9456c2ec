#!/usr/bin/env bash
# deploy/check.sh: deploy/haproxy/haproxy.cfg in front of three real
# tandem-relay processes (embedded store, plain HTTP, loopback ports), checked
# with curl. Exits non-zero if any check fails; stops every process it started.
#
#   deploy/check.sh            # builds tandem-relay (debug) if needed
#   TANDEM_RELAY_BIN=/path/to/tandem-relay deploy/check.sh
#
# Needs haproxy (2.4 or newer), curl, openssl (a throwaway certificate) and
# python3 (only to pick free ports).
# What it checks, in order:
#   1. haproxy sees all three nodes UP (its checks: GET /readyz with a PROXY v2
#      header, which the relays take from a trusted proxy)
#   2. /readyz and /healthz answer 200 through haproxy; a relay closes a
#      connection from its trusted proxy that has no PROXY header
#   3. a WebSocket upgrade to /v1/connect through haproxy gets 101 (plain and
#      over haproxy's TLS listener), and one for a Host the relays do not
#      answer to gets 421 (Host passed intact)
#   4. three WebSockets from 127.0.0.2 land on three different nodes
#      (leastconn), and each relay saw 127.0.0.2, not haproxy (PROXY v2)
#   5. kill -9 of a node: every request in the next 2 s still answers 200
#      (retries and redispatch), and haproxy marks the node DOWN within 2 s
#   6. SIGTERM of another node: it drains and exits, requests keep answering
#   7. the last node killed: haproxy answers 503 (no node left)
#   8. a node restarted on its port: haproxy routes to it again within 5 s
#   9. (as root) a node alive but not ready (its store on a full tmpfs): kept
#      DOWN, traffic goes elsewhere, UP again once it is ready
# ok/fail always return 0, so "A && ok || fail" is an if-then-else here.
# shellcheck disable=SC2015
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cfg="$here/haproxy/haproxy.cfg"

for tool in haproxy curl python3 openssl; do
    command -v "$tool" >/dev/null || { echo "check.sh: $tool is not installed" >&2; exit 2; }
done

bin=${TANDEM_RELAY_BIN:-}
if [ -z "$bin" ]; then
    target=${CARGO_TARGET_DIR:-$repo/target}
    bin="$target/debug/tandem-relay"
    if [ ! -x "$bin" ]; then
        echo "check.sh: building tandem-relay"
        (cd "$repo" && cargo build -q -p tandem-relay) || { echo "check.sh: build failed" >&2; exit 2; }
    fi
fi
[ -x "$bin" ] || { echo "check.sh: no tandem-relay at $bin" >&2; exit 2; }

work=$(mktemp -d /tmp/tandem-deploy-check.XXXXXX)
pids=()
mounted=
cleanup() {
    for pid in "${pids[@]}"; do
        kill -9 "$pid" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    [ -n "$mounted" ] && umount -l "$mounted"
    if [ "${failed:-0}" -gt 0 ] || [ -n "${KEEP:-}" ]; then
        echo "check.sh: logs kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_node N [ADDR]: a relay on ADDR (default a free port); sets addr[N], pid[N].
declare -a addr pid
start_node() {
    local n=$1 listen=${2:-127.0.0.1:0} out="$work/n$1.out"
    : >"$out"
    TANDEM_RELAY_LOG=debug "$bin" --listen "$listen" --tls off --data-dir "$work/n$n" \
        --names 127.0.0.1,localhost \
        --trusted-proxies 127.0.0.1/32 --trusted-proxy-header proxy-protocol \
        --handshake-timeout-secs 2 --drain-timeout-secs 2 --restart-hint-ms 500 \
        >"$out" 2>>"$work/n$n.log" &
    pid[n]=$!
    pids+=("$!")
    for _ in $(seq 100); do
        local line
        line=$(grep -m1 '^tandem-relay listening on ' "$out")
        if [ -n "$line" ]; then
            addr[n]=${line#tandem-relay listening on ws://}
            addr[n]=${addr[$n]%/v1/connect}
            return 0
        fi
        kill -0 "${pid[$n]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "check.sh: relay $n did not start; its log:" >&2
    tail -20 "$work/n$n.log" >&2
    exit 1
}

for n in 1 2 3; do start_node "$n"; done
lb_port=$(free_port)
stats_port=$(free_port)
tls_port=$(free_port)
lb="127.0.0.1:$lb_port"
stats="127.0.0.1:$stats_port"
tls="127.0.0.1:$tls_port"
# A throwaway certificate for the TLS listener (as compose.yaml has).
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/key.pem" -out "$work/cert.pem" \
    -days 1 -subj /CN=localhost 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/lb.pem"
TANDEM_LB_BIND="$lb" TANDEM_LB_STATS_BIND="$stats" \
    TANDEM_LB_TLS_BIND="$tls" TANDEM_LB_TLS_CERT="$work/lb.pem" \
    TANDEM_NODE1="${addr[1]}" TANDEM_NODE2="${addr[2]}" TANDEM_NODE3="${addr[3]}" \
    haproxy -db -f "$cfg" >"$work/haproxy.log" 2>&1 &
pids+=("$!")
echo "relays: ${addr[*]}; haproxy: $lb, TLS $tls (stats $stats); logs: $work"

# status NODE: haproxy's view of node NODE (UP, DOWN, "UP 1/2", ...).
status() {
    curl -s --max-time 1 "http://$stats/stats;csv" |
        awk -F, -v s="n$1" '$1 == "relays" && $2 == s { print $18 }'
}
# code URL [curl args]: the HTTP status (000 when nothing answered).
code() {
    local url=$1
    shift
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url"
}
# upgrade HOST [curl args]: the status line of a WebSocket upgrade through
# haproxy to /v1/connect (the connection is held until curl's --max-time).
upgrade() {
    local host=$1
    shift
    curl -s -i -N --http1.1 --max-time "${HOLD:-1}" "$@" \
        -H "Host: $host" -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
        -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
        "${LB_URL:-http://$lb}/v1/connect" | head -1 | tr -d '\r'
}
now_ms() { date +%s%3N; }
# secs MS: milliseconds as seconds, e.g. 1.25.
secs() { printf '%d.%02d' $(($1 / 1000)) $(($1 % 1000 / 10)); }
# wait_for SECONDS COMMAND...: until COMMAND succeeds; prints the seconds it took.
wait_for() {
    local limit=$(($1 * 1000)) start
    shift
    start=$(now_ms)
    while ! "$@"; do
        if [ $(($(now_ms) - start)) -gt "$limit" ]; then
            return 1
        fi
        sleep 0.05
    done
    secs $(($(now_ms) - start))
}
all_up() { [ "$(status 1)" = UP ] && [ "$(status 2)" = UP ] && [ "$(status 3)" = UP ]; }
is_down() { [ "$(status "$1")" = DOWN ]; }
lb_ready() { [ "$(code "http://$lb/readyz")" = 200 ]; }

# 1. Every node UP through haproxy's PROXY v2 health checks.
if t=$(wait_for 10 all_up); then
    ok "all three nodes UP in haproxy after ${t}s (GET /readyz with PROXY v2)"
else
    fail "nodes not all UP: n1=$(status 1) n2=$(status 2) n3=$(status 3)"
fi

# 2. Readiness and liveness through haproxy.
body=$(curl -s --max-time 2 "http://$lb/readyz")
[ "$(code "http://$lb/readyz")" = 200 ] && [ "$body" = ready ] &&
    ok "/readyz through haproxy: 200 ready" || fail "/readyz through haproxy: $body"
[ "$(code "http://$lb/healthz")" = 200 ] && ok "/healthz through haproxy: 200" ||
    fail "/healthz through haproxy"
# From the trusted proxy's address (127.0.0.1) without a PROXY header: closed;
# with a v1 header, or from another address without one: served.
c1=$(code "http://${addr[2]}/healthz")
c2=$(code "http://${addr[2]}/healthz" --haproxy-protocol)
c3=$(code "http://${addr[2]}/healthz" --interface 127.0.0.2)
[ "$c1" = 000 ] && [ "$c2" = 200 ] && [ "$c3" = 200 ] &&
    ok "a relay closes its trusted proxy's connection without a PROXY header" ||
    fail "PROXY header rules: without $c1, with $c2, untrusted $c3"

# 3. WebSocket upgrades pass, over plain HTTP and over haproxy's TLS; the
# Host header reaches the relay intact.
line=$(upgrade "$lb")
case $line in *" 101"*) ok "WebSocket upgrade through haproxy: $line" ;;
    *) fail "WebSocket upgrade through haproxy: '$line'" ;; esac
body=$(curl -sk --max-time 2 "https://localhost:$tls_port/readyz")
line=$(LB_URL="https://localhost:$tls_port" upgrade localhost -k)
[ "$body" = ready ] && case $line in *" 101"*) true ;; *) false ;; esac &&
    ok "TLS terminated by haproxy: /readyz '$body', WebSocket upgrade $line" ||
    fail "TLS through haproxy: /readyz '$body', upgrade '$line'"
line=$(upgrade relay.invalid)
case $line in *" 421"*) ok "unknown Host through haproxy: $line" ;;
    *) fail "unknown Host through haproxy: '$line'" ;; esac

# 4. Three held WebSockets from 127.0.0.2: one per node (leastconn), and each
# relay names 127.0.0.2 as the peer when its handshake times out (2 s).
held=()
for _ in 1 2 3; do
    HOLD=4 upgrade "$lb" --interface 127.0.0.2 >/dev/null &
    held+=("$!")
    sleep 0.3
done
wait_seen() { grep -q 'peer=127.0.0.2:' "$work/n1.log" && grep -q 'peer=127.0.0.2:' "$work/n2.log" &&
    grep -q 'peer=127.0.0.2:' "$work/n3.log"; }
if t=$(wait_for 6 wait_seen); then
    ok "three WebSockets spread over the three nodes, each saw client 127.0.0.2 (PROXY v2)"
else
    fail "client address or spread: $(grep -c 'peer=127.0.0.2:' "$work"/n?.log | tr '\n' ' ')"
fi
wait "${held[@]}"

# kill9 N: kill -9 node N and reap it (quietly).
kill9() { { kill -9 "${pid[$1]}" && wait "${pid[$1]}"; } 2>/dev/null; }

# 5. kill -9 of node 1: nothing fails, and it is out of rotation within 2 s.
kill9 1
killed=$(now_ms)
errors=0
requests=0
down_after=
while [ $(($(now_ms) - killed)) -lt 2000 ]; do
    c=$(code "http://$lb/readyz")
    requests=$((requests + 1))
    [ "$c" = 200 ] || errors=$((errors + 1))
    [ -z "$down_after" ] && is_down 1 && down_after=$(secs $(($(now_ms) - killed)))
    sleep 0.05
done
[ "$errors" = 0 ] && ok "after kill -9 of n1: $requests requests in 2 s, all 200" ||
    fail "after kill -9 of n1: $errors of $requests requests failed"
[ -n "$down_after" ] && ok "n1 marked DOWN ${down_after}s after kill -9" ||
    fail "n1 is '$(status 1)' 2 s after kill -9"

# 6. SIGTERM of node 2: it drains and exits; traffic goes to node 3.
kill -TERM "${pid[2]}"
exited() { ! kill -0 "${pid[2]}" 2>/dev/null; }
if t=$(wait_for 6 exited); then ok "n2 drained and exited ${t}s after SIGTERM"; else fail "n2 still running 6 s after SIGTERM"; fi
t=$(wait_for 3 is_down 2) && ok "n2 marked DOWN ${t}s after its exit" || fail "n2 is '$(status 2)'"
lb_ready && ok "/readyz through haproxy still 200 (n3)" || fail "/readyz through haproxy with n3 left"

# 7. No node left: haproxy answers 503.
kill9 3
t=$(wait_for 3 is_down 3) || true
c=$(code "http://$lb/readyz")
[ "$c" = 503 ] && ok "all nodes gone: haproxy answers 503" || fail "all nodes gone: haproxy answered $c"
[ "$(code "http://$stats/lb-health")" = 503 ] && ok "/lb-health 503 with no node up" ||
    fail "/lb-health with no node up"

# 8. Node 1 back on its port: routed to again.
start_node 1 "${addr[1]}"
if t=$(wait_for 5 lb_ready); then ok "n1 restarted: /readyz through haproxy 200 after ${t}s"; else fail "n1 restarted: haproxy still $(code "http://$lb/readyz")"; fi

# 9. A node that lives but is not ready (its store cannot write: its data
# directory on a full tmpfs) gets no traffic, and gets it again once ready.
# Needs root to mount; skipped otherwise.
full="$work/n3"
rm -rf "$full"
mkdir -p "$full"
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=1m,mode=0700 tmpfs "$full" 2>/dev/null; then
    mounted="$full"
    dd if=/dev/zero of="$full/filler" bs=64k 2>/dev/null
    start_node 3 "${addr[3]}"
    sleep 2
    direct() { code "http://${addr[3]}$1" --interface 127.0.0.2; }
    [ "$(direct /healthz)" = 200 ] && [ "$(direct /readyz)" = 503 ] &&
        ok "n3 on a full disk: alive (/healthz 200), not ready (/readyz 503)" ||
        fail "n3 on a full disk: /healthz $(direct /healthz), /readyz $(direct /readyz)"
    [ "$(status 3)" = DOWN ] && ok "n3 not ready: haproxy keeps it DOWN" || fail "n3 not ready but '$(status 3)'"
    errors=0
    for _ in $(seq 20); do [ "$(code "http://$lb/readyz")" = 200 ] || errors=$((errors + 1)); done
    [ "$errors" = 0 ] && ok "20 requests through haproxy meanwhile: all 200 (n1)" || fail "$errors of 20 requests failed"
    rm -f "$full/filler"
    up3() { [ "$(status 3)" = UP ]; }
    t=$(wait_for 10 up3) && ok "n3 ready again once space was freed: UP after ${t}s" || fail "n3 still '$(status 3)'"
else
    echo "skip 9: not root or no tmpfs (a node alive but not ready)"
fi

echo "check.sh: $passed passed, $failed failed"
[ "$failed" = 0 ]
