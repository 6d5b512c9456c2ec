#!/usr/bin/env bash
# The fuzzing step of scripts/test.sh: build every target (cargo fuzz),
# replay every input in regressions/<target>/, then run each target N
# seconds (default 3) on its committed corpus, seeds/<target>/ (new inputs go
# to a scratch directory; seeds/ is not changed). Exits non-zero on any
# crash, leak, timeout or failed check; the crashing input is in
# artifacts/<target>/.
#
#   ./smoke.sh [seconds per target]
#
# Built without a sanitizer (`-s none`; FUZZ_SANITIZER=address puts ASan
# back): the fuzzed code, tandem-proto, forbids unsafe code, so what ASan
# would add here is its check of the dependencies' unsafe code, which the
# long runs (nightly.sh, with ASan) keep; building with it costs the test
# command about 1.2 min of CPU. Debug assertions and overflow checks stay on.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-3}"
export RUSTC_BOOTSTRAP=1   # cargo-fuzz needs nightly flags; this allows them on stable

san=(-s "${FUZZ_SANITIZER:-none}")
cargo fuzz build "${san[@]}"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/tandem-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
status=0
for d in regressions/*/; do
    t=$(basename "$d")
    if ! cargo fuzz run "${san[@]}" "$t" "$d"* >"$scratch/regress-$t.log" 2>&1; then
        echo "regression input of $t fails:"; tail -n 30 "$scratch/regress-$t.log"; status=1
    fi
done
printf '%-22s %7s %12s  %s\n' target seconds executions result
for t in $(cargo fuzz list); do
    mkdir -p "$scratch/$t"
    log="$scratch/$t.log"
    if cargo fuzz run "${san[@]}" "$t" "$scratch/$t" "seeds/$t" -- -max_total_time="$secs" -timeout=20 >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        status=1
    fi
    execs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -n1 || true)
    printf '%-22s %7s %12s  %s\n' "$t" "$secs" "${execs:-?}" "$result"
    [ "$result" = ok ] || tail -n 40 "$log"
done
exit $status
