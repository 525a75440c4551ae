#!/usr/bin/env bash
# Runs every cargo-fuzz target of berth-bgp for SECONDS seconds each.
# Usage: fuzz/run.sh [SECONDS]   (default 60)
set -euo pipefail
secs="${1:-60}"
cd "$(dirname "$0")"
if ! cargo fuzz --help >/dev/null 2>&1; then
    echo "installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz
fi
# cargo-fuzz needs nightly (-Z sanitizer flags). Use a nightly toolchain when
# rustup has one; otherwise let stable act as nightly.
toolchain=()
if cargo +nightly --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
unset CARGO_TARGET_DIR # fuzz/ is its own workspace with its own target dir
for t in $(cargo "${toolchain[@]}" fuzz list); do
    echo "== fuzzing $t for ${secs}s" >&2
    mkdir -p "corpus/$t"
    cargo "${toolchain[@]}" fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=4096 -rss_limit_mb=512 -malloc_limit_mb=64
done
echo "fuzzing finished without crashes" >&2
