#!/usr/bin/env bash
# The long run (not in scripts/test.sh): each target until it has executed
# N inputs (default 10 million, issue 17's bar) or spent its time cap
# (default 6 h), starting from the committed corpus. Prints a Markdown row
# per target for docs/RELIABILITY.md: executions, seconds, exec/s, coverage,
# corpus, crashes. Logs and the grown corpus stay in nightly/<target>/
# (git-ignored); a crash leaves its input in artifacts/<target>/ and the
# script goes on with the next target, exiting non-zero at the end.
#
#   ./nightly.sh [runs] [max seconds per target] [target ...]
#   ./nightly.sh 10000000 21600                  # every target
#   ./nightly.sh 10000000 600 frame_decode       # one, at most 10 minutes
set -uo pipefail
cd "$(dirname "$0")"
runs="${1:-10000000}"
cap="${2:-21600}"
shift $(( $# < 2 ? $# : 2 ))
export RUSTC_BOOTSTRAP=1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
cargo fuzz build || exit 1
status=0
echo "| target | executions | seconds | exec/s | coverage (edges) | corpus | crashes |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for t in "${targets[@]}"; do
    dir="nightly/$t"
    mkdir -p "$dir/corpus"
    cp -n "seeds/$t"/* "$dir/corpus/" 2>/dev/null || true
    start=$(date +%s)
    crashes=0
    cargo fuzz run "$t" "$dir/corpus" -- -runs="$runs" -max_total_time="$cap" -timeout=20 \
        >"$dir/log" 2>&1 || { crashes=1; status=1; }
    secs=$(( $(date +%s) - start ))
    execs=$(grep -oE '^Done [0-9]+ runs' "$dir/log" | grep -oE '[0-9]+' | tail -n1)
    [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$dir/log" | tr -d '#' | tail -n1)
    cov=$(grep -oE 'cov: [0-9]+' "$dir/log" | tail -n1 | grep -oE '[0-9]+')
    corp=$(ls "$dir/corpus" | wc -l)
    printf '| `%s` | %s | %s | %s | %s | %s | %s |\n' "$t" "${execs:-?}" "$secs" \
        "$(( ${execs:-0} / (secs > 0 ? secs : 1) ))" "${cov:-?}" "$corp" "$crashes"
done
exit $status
