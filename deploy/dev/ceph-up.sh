#!/usr/bin/env bash
# Starts a throwaway single-node Ceph cluster on loopback for strake's CSI tests,
# benchmarks and demo: 1 mon, 1 mgr, 1 bluestore OSD on a sparse file, and an
# initialised `rbd` pool. Takes ~6 s from nothing on a 2-core machine.
#
# Idempotent:
#   - cluster already healthy            -> does nothing
#   - state on disk but daemons stopped  -> restarts them (KEEP=1 ceph-down.sh)
#   - half-finished bootstrap             -> wipes it and starts over
# Every wait is bounded and fails with a message that says what did not come up.
#
# Settings (environment):
#   CEPH_LAB_DIR   state directory              (default /var/lib/strake/ceph-dev)
#   MON_V2_PORT    msgr2 port                   (default 3300)
#   MON_V1_PORT    legacy msgr port             (default 6789)
#   OSD_SIZE_GB    sparse OSD file size         (default 10)
#   WAIT_SECS      bound for each wait          (default 120)
#
# Afterwards: export CEPH_CONF=$CEPH_LAB_DIR/ceph.conf; ceph -s; rbd ls
# Stop and remove everything with deploy/dev/ceph-down.sh.
set -euo pipefail

DIR="${CEPH_LAB_DIR:-/var/lib/strake/ceph-dev}"
MON_V2_PORT="${MON_V2_PORT:-3300}"
MON_V1_PORT="${MON_V1_PORT:-6789}"
OSD_SIZE_GB="${OSD_SIZE_GB:-10}"
WAIT_SECS="${WAIT_SECS:-120}"
CONF="$DIR/ceph.conf"
export CEPH_CONF="$CONF"

log() { echo "ceph-up: $*" >&2; }
die() { echo "ceph-up: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it starts daemons and writes $DIR)"
for bin in ceph ceph-mon ceph-mgr ceph-osd ceph-authtool monmaptool rbd python3; do
  command -v "$bin" >/dev/null || die "$bin not found: run scripts/install-deps.sh (Debian packages ceph-mon ceph-mgr ceph-osd ceph-common)"
done

# wait_for DESCRIPTION COMMAND...: polls COMMAND every 0.2 s, at most WAIT_SECS.
wait_for() {
  local what="$1"; shift
  local deadline=$((SECONDS + WAIT_SECS))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      die "timed out after ${WAIT_SECS}s waiting for $what; logs are in $DIR/log (try: tail $DIR/log/*.log)"
    fi
    sleep 0.2
  done
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

cluster_healthy() {
  timeout 5 ceph --connect-timeout 3 health 2>/dev/null | grep -q HEALTH_OK &&
    timeout 5 rbd --pool rbd ls >/dev/null 2>&1
}

# ceph(8) with a short connect timeout so a dead mon fails fast instead of hanging.
c() { timeout 30 ceph --connect-timeout 10 "$@"; }

# Daemons fork into the background; their start-up chatter goes to the log dir.
start_mon() { ceph-mon -i a --pid-file "$DIR/run/mon.a.pid" 2>>"$DIR/log/start.log"; }
start_mgr() { ceph-mgr -i x --pid-file "$DIR/run/mgr.x.pid" 2>>"$DIR/log/start.log"; }
start_osd() { ceph-osd -i 0 --pid-file "$DIR/run/osd.0.pid" 2>>"$DIR/log/start.log"; }

pgs_clean() {
  # all PGs active+clean (and at least one PG exists)
  c pg stat --format json | python3 -c '
import json, sys
d = json.load(sys.stdin)
d = d.get("pg_summary", d)
states = d.get("num_pg_by_state", [])
total = d.get("num_pgs", 0)
clean = sum(s["num"] for s in states if s["name"] == "active+clean")
sys.exit(0 if total > 0 and clean == total else 1)'
}

mgr_available() { c mgr stat --format json | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin).get("available") else 1)'; }

health_ok() { c health | grep -q HEALTH_OK; }

rbd_probe() {
  local img="probe-$$"
  timeout 30 rbd --pool rbd create --size 4M "$img" && timeout 30 rbd --pool rbd rm --no-progress "$img"
}

wait_usable() {
  wait_for "the monitor to answer" c mon stat
  wait_for "the manager to become available (ceph mgr stat)" mgr_available
  wait_for "osd.0 to be up (ceph osd stat)" sh -c "timeout 10 ceph --connect-timeout 5 osd dump --format json | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d[\"osds\"] and all(o[\"up\"] for o in d[\"osds\"]) else 1)'"
  wait_for "all placement groups to be active+clean (ceph pg stat)" pgs_clean
  wait_for "HEALTH_OK (ceph health detail)" health_ok
  wait_for "an rbd create/rm probe in pool rbd" rbd_probe
}

# --- 1. already running? -----------------------------------------------------
if [ -f "$DIR/.bootstrapped" ]; then
  if pid_alive "$DIR/run/mon.a.pid" && pid_alive "$DIR/run/mgr.x.pid" && pid_alive "$DIR/run/osd.0.pid" && cluster_healthy; then
    log "cluster already up and healthy (CEPH_CONF=$CONF)"
    exit 0
  fi
  # --- 2. state exists, restart what is down ----------------------------------
  log "restarting stopped daemons from existing state in $DIR"
  mkdir -p "$DIR/run" "$DIR/log"
  pid_alive "$DIR/run/mon.a.pid" || start_mon
  pid_alive "$DIR/run/mgr.x.pid" || start_mgr
  pid_alive "$DIR/run/osd.0.pid" || start_osd
  wait_usable
  log "cluster up (CEPH_CONF=$CONF)"
  exit 0
fi

# --- 3. fresh bootstrap (wipes any half-finished one) --------------------------
if [ -e "$DIR" ]; then
  log "found an unfinished bootstrap in $DIR: wiping it"
  KEEP= "$(dirname "$0")/ceph-down.sh"
fi

for port in "$MON_V2_PORT" "$MON_V1_PORT"; do
  if ss -Hltn "sport = :$port" | grep -q .; then
    die "port $port is already in use (another Ceph monitor?); stop it or set MON_V2_PORT/MON_V1_PORT and CEPH_LAB_DIR"
  fi
done

start=$SECONDS
mkdir -p "$DIR"/{run,log,mon.a,mgr.x,osd.0}
FSID="$(python3 -c 'import uuid; print(uuid.uuid4())')"

cat >"$CONF" <<EOF
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:$MON_V2_PORT,v1:127.0.0.1:$MON_V1_PORT]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
run dir = $DIR/run
log file = $DIR/log/\$name.log
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
paxos propose interval = 0.1
mgr stats period = 1
client mount timeout = 15

[mon]
mon data = $DIR/mon.\$id
keyring = $DIR/mon.\$id/keyring

[mgr]
mgr data = $DIR/mgr.\$id
keyring = $DIR/mgr.\$id/keyring

[osd]
osd data = $DIR/osd.\$id
keyring = $DIR/osd.\$id/keyring
osd objectstore = bluestore
osd memory target = 939524096
bluestore fsck on mkfs = false
osd op num shards = 1
# A client that dies holding an image's exclusive lock (a SIGKILLed rbd-fuse, a
# crash test) blocks the next locker until its watch times out: 10 s, not 30.
osd client watch timeout = 10

[client]
keyring = $DIR/ceph.client.admin.keyring
EOF

log "keys and monmap"
ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$DIR/ceph.client.admin.keyring" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/ceph.client.admin.keyring" >/dev/null
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_V2_PORT,v1:127.0.0.1:$MON_V1_PORT]" "$DIR/monmap" >/dev/null

log "mon"
ceph-mon --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring" 2>>"$DIR/log/start.log" ||
  die "ceph-mon --mkfs failed; see $DIR/log/start.log"
cp "$DIR/mon.keyring" "$DIR/mon.a/keyring"
start_mon
wait_for "the monitor to answer" c mon stat
# clone v2 (no snapshot protection, parents may be removed while clones exist)
# needs clients of at least mimic; strake-csi's snapshots and clones rely on it.
c osd set-require-min-compat-client mimic >/dev/null 2>&1 || die "could not set require-min-compat-client mimic"

log "mgr"
c auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' >"$DIR/mgr.x/keyring"
start_mgr

log "osd"
OSD_UUID="$(python3 -c 'import uuid; print(uuid.uuid4())')"
OSD_KEY="$(ceph-authtool --gen-print-key)"
echo "{\"cephx_secret\": \"$OSD_KEY\"}" | c osd new "$OSD_UUID" -i - >/dev/null
# ceph-osd --mkfs --key does not write the keyring; without it the OSD cannot fetch its config.
printf '[osd.0]\n\tkey = %s\n' "$OSD_KEY" >"$DIR/osd.0/keyring"
truncate -s "${OSD_SIZE_GB}G" "$DIR/osd.0.img"
ln -sf "$DIR/osd.0.img" "$DIR/osd.0/block"
ceph-osd -i 0 --mkfs --key "$OSD_KEY" --osd-uuid "$OSD_UUID" >"$DIR/log/osd.0.mkfs.log" 2>&1 ||
  die "ceph-osd --mkfs failed; see $DIR/log/osd.0.mkfs.log"
start_osd

log "pool rbd"
wait_for "osd.0 to be up" sh -c "timeout 10 ceph --connect-timeout 5 osd stat | grep -q '1 up'"
c osd pool create rbd 32 32 replicated >/dev/null 2>&1
timeout 60 rbd pool init rbd
wait_usable
touch "$DIR/.bootstrapped"
log "cluster up in $((SECONDS - start)) s (CEPH_CONF=$CONF)"
