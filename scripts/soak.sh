#!/usr/bin/env bash
# The one-hour soak (issue 17; docs/RELIABILITY.md quotes its figures): the
# real relay (in a network namespace), agent and phone under a steady load
# (a task every second) for an hour, with a fault about every minute (a 3 s
# network cut, a 3 s SIGSTOP of one of the three, and every 10th fault a
# kill -9 of one and its restart), the resident memory and open file
# descriptors of each process sampled every 5 s. The test command runs the
# same test for two minutes (tests/tests/soak.rs).
#
#   ./scripts/soak.sh                      one hour (3600 s)
#   TANDEM_SOAK_SECS=600 ./scripts/soak.sh ten minutes
#   TANDEM_FAULT_SEED=1234 ./scripts/soak.sh   replay a seed's faults
#
# Every knob of tests/tests/soak.rs can be set (TANDEM_SOAK_LOAD_MS,
# TANDEM_SOAK_FAULT_SECS, TANDEM_SOAK_KILL_EVERY, …). Needs root (network
# namespaces), iproute2, nftables, python3. Debug builds with the test
# command's features. The binaries are copied aside first, so a build
# during the run does not change the processes the soak restarts.
# Output: target/soak/soak.log (everything), target/soak/figures.txt (the
# seed, the RELIABILITY and SOAK lines), target/soak/samples.csv (every
# sample: t_s,process,pid,rss_kib,fds).
set -euo pipefail
cd "$(dirname "$0")/.."

export TANDEM_SOAK_SECS="${TANDEM_SOAK_SECS:-3600}"
export TANDEM_SOAK_FAULT_SECS="${TANDEM_SOAK_FAULT_SECS:-60}"
export TANDEM_SOAK_KILL_EVERY="${TANDEM_SOAK_KILL_EVERY:-10}"
export TANDEM_SOAK_SAMPLE_SECS="${TANDEM_SOAK_SAMPLE_SECS:-5}"
export TANDEM_SOAK_WARMUP_SECS="${TANDEM_SOAK_WARMUP_SECS:-300}"
features="tandem-agent/failpoints,tandem-phone/failpoints"
target="${CARGO_TARGET_DIR:-target}"
out="$target/soak"
mkdir -p "$out"

# One build: the whole workspace with the test command's features, as
# scripts/test.sh builds it (a `-p` subset would resolve the dependencies'
# features apart and build most of them again), so after the test command
# nothing is built; the soak's test binary is found in cargo's output.
bin=$(cargo build --workspace --lib --bins --tests --locked --features "$features" \
  --message-format=json-render-diagnostics \
  | sed -n 's/.*"executable":"\([^"]*\/soak-[0-9a-f]*\)".*/\1/p' | tail -1)
[[ -x "$bin" ]] || { echo "soak: the test binary was not built" >&2; exit 1; }
cp "$bin" "$out/soak-bin"
cp "$target/debug/tandem" "$out/tandem"
export TANDEM_BIN="$out/tandem"
export TANDEM_SOAK_CSV="$out/samples.csv"
echo "soak: $TANDEM_SOAK_SECS s; log $out/soak.log"
# The test binary, run directly: no harness timeout, output as it comes.
status=0
"$out/soak-bin" soak --exact --test-threads=1 --nocapture >"$out/soak.log" 2>&1 || status=$?
grep -E '^(scenario|RELIABILITY|SOAK)' "$out/soak.log" >"$out/figures.txt" || true
cat "$out/figures.txt"
echo "figures: $out/figures.txt (exit status $status)"
exit "$status"
