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

cargo build --workspace --bins
# Here every test must run: one that lacks root or Ceph fails instead of
# skipping (userspace/test-support).
export STRAKE_TESTS_REQUIRE=all
cargo test --workspace --no-fail-fast -- --test-threads="${STRAKE_TEST_THREADS:-2}"
# The same pod-network, load-balancer and policy suites with the agents on
# --source kube against the lab's stand-in API server (README: The lab).
STRAKE_LAB_SOURCE=kube cargo test -p strake-lab --test pod_network --test load_balancer \
  --test network_policy -- --test-threads="${STRAKE_TEST_THREADS:-2}"
