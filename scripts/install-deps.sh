#!/usr/bin/env bash
# Installs everything strake's build, tests, demo and benchmarks need on Debian 12.
# Idempotent: a second run only checks. Run as root.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (it installs apt packages and mounts bpffs)" >&2
  exit 1
fi

# Toolchain for the kernel-side programs (C, see docs/design.md), bindgen's libclang,
# network lab tools, BIRD (BGP for nodes and lab routers), reference CNI plugins,
# libcni (Go) for the runtime test,
# kube-proxy-style baselines, Ceph.
PKGS=(
  clang-19 llvm-19 libclang-19-dev libbpf-dev linux-libc-dev bpftool pkg-config
  iproute2 ethtool iptables nftables iputils-ping tcpdump netcat-openbsd socat psmisc procps
  bird2 iperf3 sockperf containernetworking-plugins
  golang-go golang-github-appc-cni-dev
  protobuf-compiler
  ceph-mon ceph-mgr ceph-osd ceph-common rbd-fuse librbd-dev librados-dev fio xfsprogs e2fsprogs cryptsetup-bin
  python3 python3-matplotlib
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${#missing[@]} packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "install-deps: no Rust toolchain found; install rustup (https://rustup.rs) and re-run" >&2
    exit 1
  fi
fi

# bpffs: the agent pins its maps and links here.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
fi
echo "install-deps: ok"
