#!/usr/bin/env bash
# The mobile SDK driven from Python against a real relay and agent
# (scripts/test.sh runs it; the Rust tests of the wrappers run with the
# workspace's `cargo nextest`).
#
#   mobile-ffi/tests/run.sh [CHECK ...]    CHECKs filter test_sdk.py by name
#
# Builds tandem-relay, tandem (the agent), the SDK library, uniffi-bindgen and
# tandem-e2e (a recording tap and a stolen-link probe) (dev profile),
# generates Swift, Kotlin and Python bindings with
# mobile-ffi/scripts/bindings.sh into a temporary directory, and runs
# mobile-ffi/tests/test_sdk.py. Needs python3 and zbarimg (zbar-tools).
set -euo pipefail
cd "$(dirname "$0")/../.."

echo "==> mobile SDK: build the relay, the agent, the library, the generator and the test tools"
# The whole workspace with its tests, as scripts/test.sh's other steps build
# it: a subset (-p ...) would resolve the dependencies' features differently
# and rebuild most of them.
cargo build --locked -q --workspace --lib --bins --tests \
  --features "${TANDEM_TEST_FEATURES:-tandem-agent/failpoints,tandem-phone/failpoints}"
target_dir=$(cargo metadata --format-version 1 --no-deps --locked \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
case "$(uname -s)" in Darwin) ext=dylib ;; *) ext=so ;; esac

out=$(mktemp -d "${TMPDIR:-/tmp}/tandem-mobile-bindings.XXXXXX")
trap 'rm -rf "$out"' EXIT
echo "==> mobile SDK: generate bindings (Swift, Kotlin, Python)"
TANDEM_BINDGEN_BUILT=1 mobile-ffi/scripts/bindings.sh "$out" --lib "$target_dir/debug/libtandem_mobile.$ext"

echo "==> mobile SDK: Python against a real relay and agent"
PYTHONDONTWRITEBYTECODE=1 python3 -u mobile-ffi/tests/test_sdk.py --bin-dir "$target_dir/debug" --bindings "$out" "$@"
