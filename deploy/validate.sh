#!/usr/bin/env bash
# deploy/validate.sh: every check of deploy/ that needs no container engine
# and no cluster. Exits non-zero if any fails; a check whose tool is missing
# fails too (say SKIP_MISSING=1 to skip those instead).
#
#   deploy/validate.sh
#
# Tools: haproxy (2.4+), openssl, python3 with PyYAML, check-jsonschema and
# kubernetes-validate (pip install check-jsonschema kubernetes-validate),
# systemd-analyze, redis-server and redis-cli. TANDEM_RELAY_BIN: a built
# tandem-relay (systemd-analyze verify wants the unit's binary to exist).
# ok/fail always return 0, so "A && ok || fail" is an if-then-else here.
# shellcheck disable=SC2015,SC2181,SC2209
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
work=$(mktemp -d /tmp/tandem-deploy-validate.XXXXXX)
redis_pid=
cleanup() {
    if [ -n "$redis_pid" ]; then
        kill -9 "$redis_pid" 2>/dev/null
        wait "$redis_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
skipped=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
need() {
    for t in "$@"; do
        if ! command -v "$t" >/dev/null; then
            if [ -n "${SKIP_MISSING:-}" ]; then
                skipped=$((skipped + 1))
                echo "skip ($t missing)"
            else
                fail "$t is not installed"
            fi
            return 1
        fi
    done
}

# haproxy.cfg, in each way it is used: the tests' (plain, IP addresses) and
# compose's (TLS, stats, host names resolved at run time).
if need haproxy openssl; then
    cfg="$here/haproxy/haproxy.cfg"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/key.pem" -out "$work/cert.pem" \
        -days 1 -subj /CN=relay.example.com 2>/dev/null
    cat "$work/cert.pem" "$work/key.pem" >"$work/tandem.pem"
    out=$(TANDEM_LB_BIND=127.0.0.1:18080 TANDEM_NODE1=127.0.0.1:18101 TANDEM_NODE2=127.0.0.1:18102 \
        TANDEM_NODE3=127.0.0.1:18103 haproxy -c -f "$cfg" 2>&1)
    [ $? = 0 ] && ! grep -q WARNING <<<"$out" && ok "haproxy -c: the tests' way (plain, three IP:port nodes)" ||
        fail "haproxy -c (tests' way): $out"
    out=$(TANDEM_LB_BIND=:8080 TANDEM_LB_TLS_BIND=:8443 TANDEM_LB_TLS_CERT="$work/tandem.pem" \
        TANDEM_LB_STATS_BIND=:8404 TANDEM_LB_RESOLVE=1 TANDEM_NODE1=127.0.0.1:8443 \
        TANDEM_NODE2=127.0.0.2:8443 TANDEM_NODE3=127.0.0.3:8443 haproxy -c -f "$cfg" 2>&1)
    [ $? = 0 ] && ! grep -q WARNING <<<"$out" && ok "haproxy -c: compose's way (TLS, stats, resolvers)" ||
        fail "haproxy -c (compose's way): $out"
    out=$(TANDEM_LB_BIND=127.0.0.1:18080 haproxy -c -f "$cfg" 2>&1)
    [ $? != 0 ] && ok "haproxy -c: refused without TANDEM_NODE1" || fail "haproxy -c took a config without nodes"
fi

# compose.yaml against the compose-spec JSON schema (check-jsonschema's copy).
if need check-jsonschema; then
    out=$(check-jsonschema --builtin-schema vendor.compose-spec "$here/compose.yaml" 2>&1) &&
        ok "compose.yaml: compose-spec schema" || fail "compose.yaml schema: $out"
fi

# What no schema checks: the files agree with each other (validate.py).
if need python3; then
    out=$(python3 "$here/validate.py" 2>&1) && ok "validate.py: compose, k8s and redis.conf agree" ||
        fail "validate.py: $out"
fi

# Kubernetes manifests against the API schemas (kubernetes-validate bundles them).
if need kubernetes-validate; then
    k8s=("$here"/k8s/{namespace,config,redis,relay}.yaml)
    for v in 1.29.0 1.37.0; do
        out=$(kubernetes-validate --strict --quiet -k "$v" "${k8s[@]}" 2>&1) &&
            ok "kubernetes-validate --strict -k $v: ${#k8s[@]} files" || fail "kubernetes-validate $v: $out"
    done
fi

# The systemd unit. verify prints a line for each problem and still exits 0,
# so any output fails; it needs the ExecStart binary, so a copy of the unit
# points at a built one.
if need systemd-analyze; then
    bin=${TANDEM_RELAY_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/tandem-relay}
    if [ -x "$bin" ]; then
        mkdir -p "$work/unit"
        sed "s|^ExecStart=/usr/local/bin/tandem-relay|ExecStart=$bin|" \
            "$here/systemd/tandem-relay.service" >"$work/unit/tandem-relay.service"
        out=$(systemd-analyze verify "$work/unit/tandem-relay.service" 2>&1)
        [ $? = 0 ] && [ -z "$out" ] && ok "systemd-analyze verify: no findings" ||
            fail "systemd-analyze verify: $out"
        score=$(systemd-analyze security --offline=yes "$work/unit/tandem-relay.service" 2>&1 |
            sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
        [ -n "$score" ] && awk "BEGIN{exit !($score < 2.0)}" &&
            ok "systemd-analyze security: exposure $score (below 2.0)" ||
            fail "systemd-analyze security: exposure '$score'"
    else
        fail "no tandem-relay at $bin for systemd-analyze verify (set TANDEM_RELAY_BIN)"
    fi
fi

# redis.conf on a real redis-server: AOF on, fsync every second, no
# eviction, and a write acknowledged more than a second before a kill -9
# is there after the restart.
if need redis-server redis-cli; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p "$work/redis"
    start_redis() {
        redis-server "$here/redis/redis.conf" --dir "$work/redis" --port "$port" --bind 127.0.0.1 \
            --requirepass test --save "" >>"$work/redis.log" 2>&1 &
        redis_pid=$!
        for _ in $(seq 50); do
            [ "$(REDISCLI_AUTH=test redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return 0
            sleep 0.1
        done
        return 1
    }
    rc() { REDISCLI_AUTH=test redis-cli -p "$port" "$@"; }
    if start_redis; then
        got=$(rc config get appendonly | tail -1)/$(rc config get appendfsync | tail -1)/$(rc config get maxmemory-policy | tail -1)
        [ "$got" = yes/everysec/noeviction ] && ok "redis-server with redis.conf: $got" || fail "redis settings: $got"
        run1=$(rc info server | sed -n 's/^run_id:\(.*\)\r$/\1/p')
        rc set tandem:check kept >/dev/null
        sleep 1.5
        kill -9 "$redis_pid"
        wait "$redis_pid" 2>/dev/null
        if start_redis; then
            run2=$(rc info server | sed -n 's/^run_id:\(.*\)\r$/\1/p')
            [ "$(rc get tandem:check)" = kept ] && ok "AOF: a write 1.5 s before kill -9 survives the restart" ||
                fail "AOF: the write was lost"
            [ -n "$run1" ] && [ "$run1" != "$run2" ] && ok "Redis's run_id changes across the restart (what the relays watch)" ||
                fail "run_id: '$run1' then '$run2'"
        else
            fail "redis-server did not restart: $(tail -3 "$work/redis.log")"
        fi
    else
        fail "redis-server did not start with redis.conf: $(tail -3 "$work/redis.log")"
    fi
fi

echo "validate.sh: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
