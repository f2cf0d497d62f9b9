#!/usr/bin/env bash
# Runs every strake test on this machine, as root: unit tests, BPF_PROG_TEST_RUN
# packet tests, network-namespace lab tests and the Ceph-backed CSI tests.
# Installs what it needs first (scripts/install-deps.sh) and starts a throwaway
# single-node Ceph cluster (deploy/dev/ceph-up.sh), which it removes at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

cleanup() {
  if [ -x deploy/dev/ceph-down.sh ] && [ -z "${STRAKE_KEEP_CEPH:-}" ]; then
    ./deploy/dev/ceph-down.sh >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

if [ -x deploy/dev/ceph-up.sh ]; then
  ./deploy/dev/ceph-up.sh
fi

threads="${STRAKE_TEST_THREADS:-2}"
flaky_log="$(mktemp)"

# cargo_test ARGS...: runs `cargo test ARGS -- --test-threads=N`. A test that
# fails is run once more on its own; the run fails if it fails again. One that
# passes the second time is listed as FLAKY at the end of the output (and in
# $STRAKE_FLAKY_LOG if set), so it is seen and fixed, not hidden. Why: the lab
# tests run two at a time on a loaded 2-core machine; one lost connect out of
# thousands must not throw away a whole run, but it must not pass unnoticed
# either. A run with more than 5 failing tests is broken, not flaky: no retry.
cargo_test() {
  local log rc=0
  log="$(mktemp)"
  cargo test "$@" -- --test-threads="$threads" 2>&1 | tee "$log" || rc=$?
  if [ "$rc" = 0 ]; then rm -f "$log"; return 0; fi
  # One line per failed target: its cargo arguments, a tab, its failed tests
  # (none when the test binary itself crashed: then the whole target reruns).
  local targets
  targets="$(awk '
    /^     Running / { failed = "" }
    /^test .* \.\.\. FAILED$/ { failed = failed " " $2 }
    /^error: test failed, to rerun pass `/ {
      match($0, /`[^`]*`/); print substr($0, RSTART + 1, RLENGTH - 2) "\t" failed; failed = ""
    }' "$log")"
  rm -f "$log"
  local count
  count="$(printf '%s\n' "$targets" | awk -F'\t' 'NF { k = split($2, a, " "); n += k ? k : 1 } END { print n + 0 }')"
  if [ -z "$targets" ] || [ "$count" -gt 5 ]; then
    echo "test.sh: $count failing tests: not retried" >&2
    return "$rc"
  fi
  local args names
  while IFS=$'\t' read -r args names; do
    [ -n "$args" ] || continue
    echo "test.sh: retrying once: cargo test $args -- --exact$names" >&2
    # shellcheck disable=SC2086 # args and names are word lists on purpose
    if ! cargo test $args -- --exact $names --test-threads=1; then
      echo "test.sh: FAILED twice: cargo test $args -- --exact$names" >&2
      return 1
    fi
    echo "FLAKY (failed, then passed alone): $args:$names" >>"$flaky_log"
  done <<<"$targets"
}

report_flaky() {
  if [ -s "$flaky_log" ]; then
    echo "== FLAKY tests: failed once, passed on a rerun; fix them =="
    cat "$flaky_log"
    if [ -n "${STRAKE_FLAKY_LOG:-}" ]; then cat "$flaky_log" >>"$STRAKE_FLAKY_LOG"; fi
  fi
  rm -f "$flaky_log"
}

cargo build --workspace --bins
# Here every test must run: one that lacks root or Ceph fails instead of
# skipping (userspace/test-support).
export STRAKE_TESTS_REQUIRE=all
status=0
cargo_test --workspace --no-fail-fast || status=1
# The same pod-network, load-balancer and policy suites with the agents on
# --source kube against the lab's stand-in API server (README: The lab).
STRAKE_LAB_SOURCE=kube cargo_test -p strake-lab --test pod_network --test load_balancer \
  --test network_policy || status=1
report_flaky
exit "$status"
