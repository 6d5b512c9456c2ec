#!/usr/bin/env bash
# Rebuild the committed corpus, seeds/<target>/: the generated seeds
# (examples/gen_seeds.rs) grown by N seconds of fuzzing per target (default
# 30, inputs up to 512 bytes), then minimised (`cargo fuzz cmin`: the fewest
# inputs that keep the coverage). Commit seeds/ afterwards; smoke.sh runs on it.
#
#   ./refresh-seeds.sh [seconds] [target ...]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"
[ $# -gt 0 ] && shift
export RUSTC_BOOTSTRAP=1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
work=$(mktemp -d "${TMPDIR:-/tmp}/tandem-seeds.XXXXXX")
trap 'rm -rf "$work"' EXIT
cargo run --quiet --example gen_seeds "$work/gen" >/dev/null
for t in "${targets[@]}"; do
    mkdir -p "$work/grow/$t" seeds/"$t"
    cp "$work/gen/$t"/* seeds/"$t"/* "$work/grow/$t"/ 2>/dev/null || true
    cargo fuzz run "$t" "$work/grow/$t" -- \
        -max_total_time="$secs" -max_len=512 >"$work/$t.log" 2>&1 || { cat "$work/$t.log"; exit 1; }
    rm -rf seeds/"$t"
    mkdir -p seeds/"$t"
    cargo fuzz cmin "$t" "$work/grow/$t" >/dev/null 2>&1
    cp "$work/grow/$t"/* seeds/"$t"/
    echo "$t: $(ls seeds/"$t" | wc -l) inputs, $(du -sb seeds/"$t" | cut -f1) bytes"
done
