#!/usr/bin/env bash
# The project's full check: format, lints, build, tests. Run by .ci/run (and by hand).
#
# Why: one script that CI and developers share, so "green here" means "green in CI". Tests that
# need namespaces and daemons run as root (CI is root); they fail loudly, never skip, if the
# test world is missing (install it with hack/install-deps.sh).
#
# Every step runs under a shared deadline (BERTH_CI_BUDGET_SECS, default 85 min, below CI's
# 90-minute limit) so a hang ends as a clear failure with output instead of a killed job.
set -euo pipefail
cd "$(dirname "$0")/.."

# CI runs with a minimal environment: make sure cargo and the sbin tools are found.
[[ -d $HOME/.cargo/bin ]] && PATH="$HOME/.cargo/bin:$PATH"
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export PATH
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
if [[ -n ${CI:-} ]]; then
  export CARGO_INCREMENTAL=0
fi

start=$(date +%s)
budget=${BERTH_CI_BUDGET_SECS:-5100}

step() {
  local name=$1
  shift
  local now left t0 rc
  now=$(date +%s)
  left=$((budget - (now - start)))
  if ((left <= 30)); then
    echo "test.sh: time budget exhausted before step '$name'" >&2
    exit 124
  fi
  echo "=== $name ($*) [budget left ${left}s]" >&2
  t0=$(date +%s)
  rc=0
  timeout --signal=TERM --kill-after=30 "$left" "$@" </dev/null || rc=$?
  echo "=== $name: exit $rc after $(($(date +%s) - t0))s" >&2
  if ((rc != 0)); then
    ((rc == 124)) && echo "test.sh: step '$name' hit the time budget" >&2
    exit "$rc"
  fi
}

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
step build cargo build --workspace --bins
step test cargo test --workspace
# The BGP decoders under libFuzzer for a bounded time (issue: no panics, no unbounded allocation).
step fuzz bash fuzz/run.sh "${BERTH_FUZZ_SECS:-30}"
echo "test.sh: all steps passed in $(($(date +%s) - start))s" >&2
