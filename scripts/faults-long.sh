#!/usr/bin/env bash
# The fault suite's long runs (issue 17; docs/RELIABILITY.md quotes their
# figures). The test command runs each scenario briefly; this runs them long:
#
#   ./scripts/faults-long.sh              100 kill -9 and power-loss cycles, 2-minute stops,
#                                         60-second network faults and full disks,
#                                         20 node kills and Redis restarts, 5 failovers
#   TANDEM_FAULT_SEED=1234 ./scripts/faults-long.sh kill9_cycles   replay one
#
# Needs root (network namespaces, tmpfs mounts), iproute2, nftables, python3,
# cc (the power-loss shim), redis-server and haproxy (several nodes).
# Each scenario prints its seed first and a `RELIABILITY …` line with its
# figures last; they are collected in target/faults-long.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

export TANDEM_FAULT_CYCLES="${TANDEM_FAULT_CYCLES:-100}"
export TANDEM_FAULT_PAIRING_CYCLES="${TANDEM_FAULT_PAIRING_CYCLES:-10}"
export TANDEM_FAULT_STOP_SECS="${TANDEM_FAULT_STOP_SECS:-120}"
export TANDEM_FAULT_NET_SECS="${TANDEM_FAULT_NET_SECS:-60}"
export TANDEM_FAULT_FULL_SECS="${TANDEM_FAULT_FULL_SECS:-60}"
export TANDEM_FAULT_NODE_CYCLES="${TANDEM_FAULT_NODE_CYCLES:-20}"
export TANDEM_FAULT_FAILOVERS="${TANDEM_FAULT_FAILOVERS:-5}"
features="tandem-agent/failpoints,tandem-phone/failpoints"
filter="${1:-}"
out="${CARGO_TARGET_DIR:-target}/faults-long.txt"

cargo build -p tandem-agent -p tandem-e2e --bins --tests --features "$features"
# The test binary, run directly: no harness timeout, output as it comes.
bin=$(cargo test -p tandem-agent -p tandem-e2e --features "$features" --test faults --no-run 2>&1 \
  | sed -n 's/.*(\(.*faults-[0-9a-f]*\))$/\1/p' | tail -1)
"$bin" ${filter:+"$filter"} --test-threads=1 --nocapture 2>&1 | tee /dev/stderr \
  | grep -E '^(scenario|RELIABILITY)' >"$out"
echo "figures: $out"
