#!/usr/bin/env bash
# The whole test suite: what CI runs (.ci/run calls this), and the README's
# second command. It installs what it needs that is missing, then runs every
# suite. Safe to run again; reuses ./target.
#
#   ./scripts/test.sh            everything
#   ./scripts/test.sh --quick    skip the slow dependency-policy step
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
# Every cargo command below builds with the crash tests' failpoints (the
# `fail` crate; off in release builds), so nothing is built twice.
export TANDEM_TEST_FEATURES="tandem-agent/failpoints,tandem-phone/failpoints"
feat=(--features "$TANDEM_TEST_FEATURES")
# The binaries the later steps run (relay, agent, load generator, the mobile
# library, uniffi-bindgen): built for the whole workspace with its tests, as
# `cargo nextest run --workspace` builds them, so nothing is compiled again.
# Building a subset (`-p tandem-relay -p tandem-bench`) would resolve the
# dependencies' features for that subset alone and rebuild most of them
# (about 9 min of CPU per subset, three subsets before this was fixed).
build_bins() { cargo build --workspace --lib --bins --tests --locked -q "${feat[@]}"; }
[[ "${1:-}" == "--quick" ]] && quick=1

# Each step's wall-clock and CPU time (its processes' user + system, which
# does not depend on what else the machine runs) is printed when the next
# one starts, and all of them at the end: the command must stay under 30
# minutes on 2 cores (README), and this shows where the time goes.
timing=$(mktemp); trap 'rm -f "$timing"' EXIT
# Sets `cpu` to the seconds of CPU used so far (`times` must run in this
# shell, not in a command substitution's).
cpu=0
cpu_now() {
  times >"$timing"
  cpu=$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); t += p[1] * 60 + p[2] } printf "%d", t }' "$timing")
}
step_name="" step_wall=$SECONDS step_cpu=0 summary=""
end_step() {
  [[ -n "$step_name" ]] || return 0
  cpu_now
  local line
  line=$(printf '%5ds wall %5ds cpu  %s' "$((SECONDS - step_wall))" "$((cpu - step_cpu))" "$step_name")
  printf '    (%s)\n' "$line"
  summary+="$line"$'\n'
  step_wall=$SECONDS step_cpu=$cpu
}
step() { end_step; step_name="$*"; printf '\n==> %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

step "tools"
if ! have cargo; then
  echo "cargo is missing: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
# System tools the suites drive: zbarimg decodes the QR codes the agent draws;
# python3 drives the mobile SDK through its generated Python bindings;
# chromium runs the web client's end-to-end tests (headless).
missing=()
have zbarimg || missing+=(zbar-tools)
# strace delivers a SIGKILL at an exact system call (desktop-agent/tests/edges.rs).
have strace || missing+=(strace)
# redis-server: the relay's Redis store tests start their own (never the one on 6379).
have redis-server || missing+=(redis-server)
# haproxy: the multi-node tests (relay/tests/cluster.rs) put the deployment's own
# haproxy configuration (deploy/haproxy/haproxy.cfg) in front of three relay nodes.
have haproxy || missing+=(haproxy)
# ip and nft: the fault suite (tests/tests/faults.rs) puts a relay in a network
# namespace and drops, duplicates and resets its packets with nftables.
have ip || missing+=(iproute2)
have nft || missing+=(nftables)
# faketime: its libfaketime moves the agent's and the phone's wall clocks (faults.rs).
have faketime || missing+=(faketime)
# cc: the fault suite builds its power-loss shim (tests/tests/support/powerloss.c).
have cc || missing+=(gcc)
# deploy/validate.sh and deploy/check.sh: systemd-analyze verifies the unit,
# redis-cli reads the Redis settings back, curl and openssl (a throwaway
# certificate for haproxy's TLS listener) drive the relays behind haproxy.
have systemd-analyze || missing+=(systemd)
have redis-cli || missing+=(redis-tools)
have curl || missing+=(curl)
have openssl || missing+=(openssl)
have python3 || missing+=(python3)
have npm || missing+=(nodejs npm)
have chromium || missing+=(chromium)
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "installing ${missing[*]}"
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
fi
cargo --version
cargo nextest --version | head -1

step "format (cargo fmt --check)"
cargo fmt --all -- --check

step "build everything with clippy's lints, warnings denied (clippy-driver as the workspace's compiler)"
# `cargo clippy` is a check build: every dependency analysed once for it and
# compiled again for the tests (503 s of 2,200 in a cold run on 2 cores).
# Instead the workspace's own crates are compiled by clippy-driver, which is
# rustc plus clippy's lints: one build, linted as `cargo clippy
# --all-targets -- -D warnings` lints it, whose artifacts the doc tests,
# nextest and the later steps reuse. Exported for every cargo command below
# that builds the workspace (a build without it would compile the
# workspace's crates again); not for the fuzz crate (nightly, its own build).
export RUSTC_WORKSPACE_WRAPPER
RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
cargo build --workspace --all-targets --locked "${feat[@]}"

if [[ $quick -eq 0 ]]; then
  step "dependency policy: one crypto stack, no OpenSSL"
  ./scripts/check-deps.sh
fi

step "doc tests"
cargo test --workspace --doc --locked "${feat[@]}"

step "the real Claude Code CLI for the agent's tests (pinned in desktop-agent/tests/claude-code)"
# desktop-agent/tests/claude_code.rs runs it offline against a local Messages
# API; installed again only when the pinned version is not the one there.
claude_pkg=desktop-agent/tests/claude-code
claude_want=$(node -p "require('./$claude_pkg/package.json').dependencies['@anthropic-ai/claude-code']")
if [[ "$("$claude_pkg/node_modules/.bin/claude" --version 2>/dev/null || true)" != "$claude_want "* ]]; then
  (cd "$claude_pkg" && npm ci --no-audit --no-fund --loglevel=error)
fi
"$claude_pkg/node_modules/.bin/claude" --version

step "a real ACP agent for the agent's tests (pinned in desktop-agent/tests/acp-agent)"
# desktop-agent/tests/acp.rs runs @zed-industries/claude-code-acp offline
# against the same local Messages API; installed again only when the pinned
# version is not the one there.
acp_pkg=desktop-agent/tests/acp-agent
acp_name=@zed-industries/claude-code-acp
acp_want=$(node -p "require('./$acp_pkg/package.json').dependencies['$acp_name']")
acp_have=$(node -p "require('./$acp_pkg/node_modules/$acp_name/package.json').version" 2>/dev/null || true)
if [[ "$acp_have" != "$acp_want" || ! -x "$acp_pkg/node_modules/.bin/claude-code-acp" ]]; then
  (cd "$acp_pkg" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "$acp_name $(node -p "require('./$acp_pkg/node_modules/$acp_name/package.json').version")"

step "tests (cargo nextest)"
# tests/tests/abuse.rs runs tests/abuse/abuse.py (a raw WebSocket client we did
# not write) with `websockets` from this venv, found beside the build;
# relay/tests/push.rs runs its local Web Push service (push_service/) with
# `http_ece` and `cryptography` from the same venv.
abuse_venv="${CARGO_TARGET_DIR:-target}/abuse-venv"
if ! "$abuse_venv/bin/python" -c 'import websockets.asyncio.client, http_ece, cryptography' 2>/dev/null; then
  python3 -m venv "$abuse_venv"
  "$abuse_venv/bin/python" -m pip install -q 'websockets>=14,<18' 'http_ece>=1.2,<2'
fi
cargo nextest run --workspace --locked --profile ci "${feat[@]}"

step "deployment files (deploy/validate.sh: haproxy -c, compose and Kubernetes schemas, systemd-analyze, Redis settings; deploy/check.sh: haproxy in front of three real relays)"
deploy_venv="${CARGO_TARGET_DIR:-target}/deploy-venv"
if [[ ! -x "$deploy_venv/bin/check-jsonschema" || ! -x "$deploy_venv/bin/kubernetes-validate" ]]; then
  python3 -m venv "$deploy_venv"
  "$deploy_venv/bin/pip" install -q check-jsonschema kubernetes-validate pyyaml
fi
relay_bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/tandem-relay"
PATH="$(cd "$deploy_venv" && pwd)/bin:$PATH" TANDEM_RELAY_BIN="$relay_bin" ./deploy/validate.sh
TANDEM_RELAY_BIN="$relay_bin" ./deploy/check.sh

step "load generator, every scenario small (tandem-bench all --quick: correctness only; the Redis targets and the storm over three nodes with redis-server and haproxy)"
build_bins
"${CARGO_TARGET_DIR:-target}/debug/tandem-bench" all --quick

step "mobile SDK (Python bindings against a real relay and agent)"
./mobile-ffi/tests/run.sh

step "fuzzing (fuzz/smoke.sh: every cargo-fuzz target built with ASan, fuzz/regressions replayed, each target 3 s on its committed corpus fuzz/seeds)"
# The fuzz crate is outside the workspace (its own Cargo.lock, libFuzzer, ASan)
# and builds into a directory of its own. The long runs: fuzz/nightly.sh.
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
fuzz_target="${CARGO_TARGET_DIR:-$PWD/fuzz/target}"
[[ -n "${CARGO_TARGET_DIR:-}" ]] && fuzz_target="$CARGO_TARGET_DIR/fuzz"
mkdir -p "$fuzz_target"
CARGO_TARGET_DIR="$(cd "$fuzz_target" && pwd)" env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS ./fuzz/smoke.sh 3

step "web client (TypeScript against proto/vectors, fast-check properties of its decoders; the relay's embedded bundle is not stale)"
(cd relay/web && npm ci --no-audit --no-fund --loglevel=error && npm test --silent && npm run check-dist --silent)

step "web client end to end (headless chromium against a real relay and agent)"
build_bins
# Screenshots of every screen go beside the build (npm run e2e on its own
# refreshes the ones in docs/screenshots).
shots="${E2E_SCREENSHOTS:-$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/web-screenshots}"
(cd relay/web && E2E_SCREENSHOTS="$shots" npm run e2e --silent)
echo "screenshots: $shots"


end_step
printf '\n==> all suites passed in %d s (%d s of CPU)\n%s' "$SECONDS" "$cpu" "$summary"
