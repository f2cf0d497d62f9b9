#!/usr/bin/env bash
# The strake demo: a simulated two-node cluster in network namespaces, built
# from ordinary Kubernetes YAML (examples/two-nodes; then two racks routed by
# BGP, examples/two-racks) and run by strake's real
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
RACKS=examples/two-racks

step() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

strake lab down "$LAB" >/dev/null 2>&1 || true
strake lab down "$RACKS" >/dev/null 2>&1 || true
[ "$KEEP" = 1 ] || trap 'step "tearing down"; strake lab down "$LAB"; strake lab down "$RACKS" >/dev/null 2>&1 || true' EXIT

step "bringing up the lab: 2 nodes, 6 pods (netns node-*, pod-*, one strake-agent per node)"
run strake lab up "$LAB"

ip_of() { strake endpoints --lab "$LAB" -o json | python3 -c "import json,sys; print(next(e['ip'] for es in json.load(sys.stdin).values() for e in es if e['pod'] and e['pod']['namespace']+'/'+e['pod']['name']=='$1'))"; }
WEB2=$(ip_of web/web-2); WEB3=$(ip_of web/web-3); DB=$(ip_of shop/db)

step "pod to pod on the same node (bpf_redirect_peer) and across nodes (bpf_fib_lookup + redirect)"
run strake lab probe web/web-1 "$WEB2:80"
run strake lab probe web/web-1 "$WEB3:80"
run strake lab probe web/web-1 "$WEB3:53" --proto udp
run strake lab exec web/web-1 ping -c 2 -q "$WEB3"

step "node to pod, pod to node"
run strake lab exec node/a ping -c 1 -q "$WEB3"
run strake lab exec shop/db ping -c 1 -q 10.0.0.1

step "what each node's agent sees"
run strake status --lab "$LAB"
run strake endpoints --lab "$LAB"

step "routes the agents programmed (pure L3, no tunnel)"
run strake lab exec node/a ip route show proto 201
run strake lab exec node/a ip route show proto 202

step "Services: a ClusterIP from a pod (tc, on the pod's veth), a LoadBalancer IP from outside (XDP on the uplink)"
run strake lb list --lab "$LAB" --node a
for _ in 1 2 3; do run strake lab probe web/web-1 10.96.0.10:80; done
run strake lab probe web/web-1 10.96.0.10:53 --proto udp
for _ in 1 2 3; do run strake lab probe ext/client 203.0.113.10:80; done
run strake lab probe ext/client 10.0.0.2:30080

step "Services from the node itself (socket LB: connect() picks the backend in a cgroup hook, no packet is rewritten, the app sees the VIP as its peer)"
# `strake lab exec` runs the client in node a's cgroup subtree, where a's agent
# attached its hooks; NodePorts answer on every node address and on 127.0.0.1.
run strake lab exec node/a strake-lab client 10.96.0.10:80 --count 3
run strake lab exec node/a strake-lab client 10.96.0.10:53 --mode udp-sendto --count 2
run strake lab exec node/a strake-lab client 10.0.0.2:30080 --count 1
run strake lab exec node/a strake-lab client 127.0.0.1:30080 --count 1
run strake lb list --lab "$LAB" --node a

step "NetworkPolicy shop/db-from-cart: only the cart reaches the database, on TCP 80"
run strake lab probe shop/cart "$DB:80"
printf '$ strake lab probe web/web-1 %s:80   (expected to fail)\n' "$DB"
if strake lab probe web/web-1 "$DB:80" --timeout-secs 1; then echo "UNEXPECTED: web-1 reached the database"; exit 1; fi
run strake policy trace --lab "$LAB" shop/cart shop/db 80/tcp
run strake policy trace --lab "$LAB" web/web-1 shop/db 80/tcp || echo "(exit status $?: denied)"

step "trust: an exemption cannot be forged (docs/threat-model.md)"
# Health checks pass the policies only as the agents' own, marked and wrapped
# probes: the same source port from any process of another node is nothing.
printf '$ strake lab exec node/a nc -z -w 1 -p 61001 %s 80   (expected to fail: a health-check port identifies nothing)\n' "$DB"
if strake lab exec node/a nc -z -w 1 -p 61001 "$DB" 80; then echo "UNEXPECTED: a health-check port opened the database"; exit 1; fi
echo "...while the agents' real checks of the web pods on the other node pass (wrapped by one uplink, unwrapped by the other):"
run strake lb list --lab "$LAB" --node a
strake status --lab "$LAB" | grep -E '^(node|==)|hc_encap|hc_decap|drop_spoofed|drop_not_ipv4|drop_untrusted_encap' || true

step "the agent is fail-static: kill -9 it and traffic still flows"
PID=$(cat /var/lib/strake-lab/two-nodes/nodes/a/agent.pid)
run kill -9 "$PID"
run strake lab probe web/web-1 "$WEB3:80"
step "a new agent adopts the pinned maps and links without a gap"
run strake lab restart "$LAB" a
run strake status --lab "$LAB" --node a

# ---- racks: BGP with BIRD ---------------------------------------------------
step "two racks (two subnets), two nodes each, a BIRD router per rack (examples/two-racks)"
run strake lab up "$RACKS"
step "every node runs BIRD (configured by its agent) and peers with its rack's router"
run strake bgp peers --lab "$RACKS" --node a1
run strake status --lab "$RACKS" --node a1
step "the fabric routes pod blocks: no tunnel (proto bird), the LoadBalancer address by ECMP over rack a"
run strake lab exec router/tor-a ip route
run strake lab exec node/a1 ip route show proto bird
run strake lab probe web/web-a1 10.244.3.1:80
for _ in 1 2 3; do run strake lab probe ext/rack-client 203.0.113.10:80; done
run strake lab down "$RACKS"

# ---- storage: a Ceph RBD volume through strake-csi ------------------------
step "a real single-node Ceph cluster (deploy/dev/ceph-up.sh: mon, mgr, OSD, pool rbd)"
CEPH_STARTED=0
if ! CEPH_CONF=/var/lib/strake/ceph-dev/ceph.conf timeout 5 ceph -s >/dev/null 2>&1; then
  ./deploy/dev/ceph-up.sh
  CEPH_STARTED=1
fi
export CEPH_CONF=/var/lib/strake/ceph-dev/ceph.conf
CSI_DIR=/run/strake-demo-csi
VOLS=/var/lib/strake-lab/two-nodes/volumes
mkdir -p "$CSI_DIR" "$VOLS"
ceph auth get-key client.admin > "$CSI_DIR/key"
chmod 600 "$CSI_DIR/key"
export CSI_ENDPOINT="unix://$CSI_DIR/csi.sock"
CSI_METRICS=127.0.0.1:9689
strake-csi --mode all --endpoint "$CSI_ENDPOINT" --node-id a --state-dir "$CSI_DIR/state" \
  --metrics-addr "$CSI_METRICS" >"$CSI_DIR/csi.log" 2>&1 &
CSI_PID=$!
for _ in $(seq 50); do [ -S "$CSI_DIR/csi.sock" ] && break; sleep 0.1; done
call() { printf '$ strake-csi call %s\n' "$*" >&2; strake-csi call --secret userID=admin --secret "userKey=@$CSI_DIR/key" "$@"; }
csi_cleanup() {
  set +e
  for v in clone data; do
    strake-csi call unpublish "${ID[$v]:-x}" --target "$VOLS/$v" >/dev/null 2>&1
    strake-csi call unstage "${ID[$v]:-x}" --staging "$CSI_DIR/stage-$v" >/dev/null 2>&1
    strake-csi call --secret userID=admin --secret "userKey=@$CSI_DIR/key" controller-unpublish "${ID[$v]:-x}" --node a >/dev/null 2>&1
  done
  [ -n "${ID[gsnap]:-}" ] && call delete-group-snapshot "${ID[gsnap]}"
  [ -n "${ID[clone]:-}" ] && call delete-volume "${ID[clone]}"
  [ -n "${ID[snap]:-}" ] && call delete-snapshot "${ID[snap]}"
  [ -n "${ID[data]:-}" ] && call delete-volume "${ID[data]}"
  kill "$CSI_PID" 2>/dev/null; wait "$CSI_PID" 2>/dev/null
  rm -rf "$CSI_DIR" "$VOLS"
  set -e
}
ceph_stop() { if [ "$CEPH_STARTED" = 1 ]; then ./deploy/dev/ceph-down.sh >/dev/null 2>&1 || true; fi; }
declare -A ID
if [ "$KEEP" = 1 ]; then trap 'true' EXIT; else trap 'csi_cleanup; ceph_stop; step "tearing down"; strake lab down "$LAB"' EXIT; fi

step "a 1 GiB XFS volume for shop/db: CreateVolume, ControllerPublish to node a, NodeStage (attach + mkfs + mount), NodePublish"
ID[data]=$(call create-volume --name shop-db-data --size 1Gi --param pool=rbd --fs xfs)
echo "volume ${ID[data]}"
call controller-publish "${ID[data]}" --node a --fs xfs
call stage "${ID[data]}" --staging "$CSI_DIR/stage-data" --fs xfs
call publish "${ID[data]}" --staging "$CSI_DIR/stage-data" --target "$VOLS/data" --fs xfs
run strake lab exec shop/db sh -c "seq 1 100000 > $VOLS/data/orders && sync && sha256sum $VOLS/data/orders"
call stats "${ID[data]}" --path "$VOLS/data"
run rbd ls -l rbd 2>/dev/null

step "one writer node at a time: publishing the volume to node b as well is refused, naming the holder"
call controller-publish "${ID[data]}" --node b --fs xfs || echo "(refused, as it must be: node a holds it)"

step "snapshot it, restore the snapshot as a new volume, read the data back"
ID[snap]=$(call create-snapshot --name shop-db-nightly --source "${ID[data]}")
echo "snapshot ${ID[snap]}"
ID[clone]=$(call create-volume --name shop-db-restore --size 1Gi --param pool=rbd --fs xfs --from-snapshot "${ID[snap]}")
call controller-publish "${ID[clone]}" --node a --fs xfs
call stage "${ID[clone]}" --staging "$CSI_DIR/stage-clone" --fs xfs
call publish "${ID[clone]}" --staging "$CSI_DIR/stage-clone" --target "$VOLS/clone" --fs xfs
run sha256sum "$VOLS/clone/orders"

step "one crash-consistent point in time across both volumes: a volume group snapshot (each member an ordinary snapshot)"
mapfile -t GS < <(call group-snapshot --name shop-db-group "${ID[data]}" "${ID[clone]}")
ID[gsnap]=${GS[0]}
echo "group snapshot ${GS[0]}; members: ${GS[*]:1}"
run rbd ls -l rbd 2>/dev/null

step "VolumeAttributesClass: cap the live volume at 500 IOPS and 50 MiB/s, no remount"
call modify-volume "${ID[data]}" --param rbd_qos_iops_limit=500 --param rbd_qos_bps_limit=52428800
run sh -c "rbd config image list rbd/csi-strake-vol-${ID[data]##*:} 2>/dev/null | grep -E '^rbd_qos_(iops|bps)_limit '"

step "grow the original to 2 GiB while mounted (XFS grows online)"
call expand-volume "${ID[data]}" --size 2Gi --fs xfs
call node-expand "${ID[data]}" --path "$VOLS/data" --size 2Gi
run df -h "$VOLS/data"

step "no rbd/nbd driver in this kernel: strake-rbd-fuse serves the volume (librbd async IO, FUSE-over-io_uring); discard reaches Ceph"
grep -o 'FUSE helper serving.*' "$CSI_DIR/csi.log" | head -1 | sed 's/\x1b\[[0-9;]*m//g'
IMG="csi-strake-vol-${ID[data]##*:}"
run strake lab exec shop/db sh -c "dd if=/dev/urandom of=$VOLS/data/blob bs=1M count=64 conv=fsync status=none"
run rbd du "rbd/$IMG" 2>/dev/null
run strake lab exec shop/db sh -c "rm $VOLS/data/blob && sync"
run fstrim -v "$VOLS/data"
run rbd du "rbd/$IMG" 2>/dev/null
printf '$ GET http://%s/metrics  # the FUSE server'"'"'s per-volume counters\n' "$CSI_METRICS"
exec 3<>"/dev/tcp/${CSI_METRICS%:*}/${CSI_METRICS#*:}"
printf 'GET /metrics HTTP/1.0\r\nHost: demo\r\n\r\n' >&3
grep -E '^strake_csi_fuse_(bytes_total|requests_in_flight|request_errors_total)' <&3 | grep -v ' 0$' || true
exec 3<&-

if [ "$KEEP" = 1 ]; then
  step "everything stays up; explore with strake status --lab $LAB, strake lab exec <ns/pod> <cmd>, rbd ls -l rbd"
  echo "remove it with: strake lab down $LAB; and stop the driver (pid $CSI_PID) and deploy/dev/ceph-down.sh"
else
  step "unpublish, unstage and delete everything: the pool is left empty"
  csi_cleanup
  trap 'ceph_stop; step "tearing down"; strake lab down "$LAB"' EXIT
  printf '$ rbd ls -l rbd\n'; rbd ls -l rbd; echo "(no images left)"
fi
