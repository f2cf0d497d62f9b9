#!/usr/bin/env bash
# The strake demo: a simulated two-node cluster in network namespaces, built
# from ordinary Kubernetes YAML (examples/two-nodes) and run by strake's real
# binaries: one strake-agent per node, pods attached by strake-cni through the
# deploy conflist, eBPF programs on every pod veth and node uplink.
#
#   ./scripts/demo.sh          run it, show it working, tear it down
#   ./scripts/demo.sh --keep   leave the lab up to explore (strake lab down examples/two-nodes)
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "== building (release)"
cargo build --release --bins -q
BIN="$PWD/target/release"
export PATH="$BIN:$PATH"
LAB=examples/two-nodes

step() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

strake lab down "$LAB" >/dev/null 2>&1 || true
[ "$KEEP" = 1 ] || trap 'step "tearing down"; strake lab down "$LAB"' EXIT

step "bringing up the lab: 2 nodes, 6 pods (netns node-*, pod-*, one strake-agent per node)"
run strake lab up "$LAB"

ip_of() { strake endpoints --lab "$LAB" -o json | python3 -c "import json,sys; print(next(e['ip'] for es in json.load(sys.stdin).values() for e in es if e['pod'] and e['pod']['namespace']+'/'+e['pod']['name']=='$1'))"; }
WEB2=$(ip_of web/web-2); DB=$(ip_of shop/db)

step "pod to pod on the same node (bpf_redirect_peer) and across nodes (bpf_fib_lookup + redirect)"
run strake lab probe web/web-1 "$WEB2:80"
run strake lab probe web/web-1 "$DB:80"
run strake lab probe web/web-1 "$DB:53" --proto udp
run strake lab exec web/web-1 ping -c 2 -q "$DB"

step "node to pod, pod to node"
run strake lab exec node/a ping -c 1 -q "$DB"
run strake lab exec shop/db ping -c 1 -q 10.0.0.1

step "what each node's agent sees"
run strake status --lab "$LAB"
run strake endpoints --lab "$LAB"

step "routes the agents programmed (pure L3, no tunnel)"
run strake lab exec node/a ip route show proto 201
run strake lab exec node/a ip route show proto 202

step "the agent is fail-static: kill -9 it and traffic still flows"
PID=$(cat /var/lib/strake-lab/two-nodes/nodes/a/agent.pid)
run kill -9 "$PID"
run strake lab probe web/web-1 "$DB:80"
step "a new agent adopts the pinned maps and links without a gap"
run strake lab restart "$LAB" a
run strake status --lab "$LAB" --node a

if [ "$KEEP" = 1 ]; then
  step "the lab stays up; explore with strake status --lab $LAB, strake lab exec <ns/pod> <cmd>; remove it with: strake lab down $LAB"
fi
