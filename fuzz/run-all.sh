#!/usr/bin/env bash
# Run every fuzz target for N seconds each (default 60), one after another,
# after writing the seed corpus. Extra arguments go to libFuzzer.
#
#   ./run-all.sh            # 60 s per target
#   ./run-all.sh 120        # 120 s per target
#   ./run-all.sh 300 -rss_limit_mb=4096
#
# Logs: artifacts/logs/<target>.log; crashing inputs: artifacts/<target>/.
# Exits non-zero if any target crashed.
set -u
cd "$(dirname "$0")"
secs="${1:-60}"
[ $# -gt 0 ] && shift
export RUSTC_BOOTSTRAP=1   # cargo-fuzz needs nightly flags; this allows them on stable

cargo run --quiet --example gen_seeds >/dev/null || exit 1
mkdir -p artifacts/logs
status=0
printf '%-22s %7s %12s  %s\n' target seconds executions result
for t in $(cargo fuzz list); do
    log="artifacts/logs/$t.log"
    if cargo fuzz run "$t" -- -max_total_time="$secs" "$@" >"$log" 2>&1; then
        result=ok
    else
        result="CRASH, see $log"
        status=1
    fi
    execs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -n1)
    [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$log" | tr -d '#' | tail -n1)
    printf '%-22s %7s %12s  %s\n' "$t" "$secs" "${execs:-?}" "$result"
done
exit $status
