#!/usr/bin/env bash
# Stops the dev Ceph cluster that ceph-up.sh started and removes its data.
#   ceph-down.sh          stop daemons (by recorded PID; SIGKILL after 10 s), unmount
#                         anything mounted under the state dir (rbd-fuse, loop-backed
#                         filesystems), detach loop devices backed by files under it,
#                         then delete the state dir
#   KEEP=1 ceph-down.sh   stop daemons only; the next ceph-up.sh restarts them
# Settings: CEPH_LAB_DIR (default /var/lib/strake/ceph-dev).
set -euo pipefail

DIR="${CEPH_LAB_DIR:-/var/lib/strake/ceph-dev}"
log() { echo "ceph-down: $*" >&2; }

[ "$(id -u)" -eq 0 ] || { echo "ceph-down: run as root" >&2; exit 1; }
[ -d "$DIR" ] || { log "nothing to do ($DIR does not exist)"; exit 0; }

stop_pidfile() {
  local f="$1" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$(basename "$f" .pid) (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

# OSD first so it does not complain about a vanished mon; mgr; mon last.
for f in "$DIR"/run/osd.*.pid "$DIR"/run/mgr.*.pid "$DIR"/run/mon.*.pid; do
  [ -e "$f" ] && stop_pidfile "$f"
done

if [ -n "${KEEP:-}" ]; then
  log "daemons stopped; state kept in $DIR"
  exit 0
fi

# Anything mounted below the dir (deepest first): filesystems on loop devices,
# then rbd-fuse mounts. Teardown order matters: fs umount, losetup -d, fuse umount.
mapfile -t mounts < <(findmnt -rn -o TARGET | awk -v d="$DIR/" 'index($0, d) == 1' | sort -r)
for m in "${mounts[@]}"; do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
done
# Loop devices whose backing file lives under the dir.
losetup -n -O NAME,BACK-FILE 2>/dev/null | while read -r dev back; do
  case "$back" in "$DIR"/*) losetup -d "$dev" 2>/dev/null || log "could not detach $dev ($back)";; esac
done
mapfile -t mounts < <(findmnt -rn -o TARGET | awk -v d="$DIR/" 'index($0, d) == 1' | sort -r)
for m in "${mounts[@]}"; do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
done

rm -rf "$DIR"
# The parent (/var/lib/strake by default) was created by ceph-up.sh; drop it if empty.
rmdir "$(dirname "$DIR")" 2>/dev/null || true
log "stopped and removed $DIR"
