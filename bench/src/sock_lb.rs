//! Socket-level load balancing: a pod reaching a ClusterIP through the
//! cgroup connect/sendmsg hooks (translated once per socket, no packet
//! rewritten) against the same pod reaching a backend's address directly,
//! against strake's per-packet path (the same client outside the node's
//! cgroup, as an opted-out pod), and against kube-proxy's nftables rules
//! (agent stopped, programs detached); and from the node's own network
//! namespace (a hostNetwork process) connection rates through the socket
//! hooks against the nftables rules' output hook. One lab, one run; rounds
//! interleave the variants so the machine's drift hits them alike.
//!
//! A client is put in the node's cgroup (where the hooks sit) by moving
//! this process there for the measurement and back afterwards: sockets
//! belong to the cgroup of the process that creates them.

use crate::kube_rules::{self, Svc};
use crate::lb::{flush_baselines, run_with_stdin, udp_delivered, Clients};
use crate::net::{attach_programs, detach_programs, pin};
use crate::report::Report;
use crate::rr;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;
use strake_lab::{procs, Lab};
use strake_netlink::netns;

const PORT: u16 = 80;
const BACKEND_PORT: u16 = 9000;
const NODE: &str = "sln";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NFT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

pub struct Opts {
    pub rounds: usize,
    pub secs: u64,
    pub cpu: Option<usize>,
}

const LAB_YAML: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: sln}
spec: {podCIDR: 10.252.1.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.9.1}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: bench, name: b1, labels: {app: slb}}
spec: {nodeName: sln, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: bench, name: b2, labels: {app: slb}}
spec: {nodeName: sln, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: bench, name: client}
spec: {nodeName: sln, containers: [{name: c}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: bench, name: vip, annotations: {lb.strake.dev/health-check: none}}
spec:
  clusterIP: 10.96.0.10
  selector: {app: slb}
  ports:
  - {name: tcp, port: 80, targetPort: 9000, protocol: TCP}
  - {name: udp, port: 80, targetPort: 9000, protocol: UDP}
"#;

/// Runs `f` with this process in cgroup `cg`, then puts it back where it
/// was (the cgroup v2 path of `/proc/self/cgroup`'s `0::` line).
fn in_cgroup<T>(cg: Option<&Path>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let Some(cg) = cg else { return f() };
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup v2 line in /proc/self/cgroup")?;
    let back: PathBuf = strake_datapath::sock::cgroup2_mount()?.join(rel.trim_start_matches('/'));
    let me = std::process::id().to_string();
    std::fs::write(cg.join("cgroup.procs"), &me)
        .with_context(|| format!("joining {}", cg.display()))?;
    let r = f();
    std::fs::write(back.join("cgroup.procs"), &me)
        .with_context(|| format!("returning to {}", back.display()))?;
    r
}

pub fn run(opts: &Opts, out: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let labdir = dir.path().join("bench-sock-lb");
    std::fs::create_dir_all(&labdir)?;
    std::fs::write(labdir.join("lab.yaml"), LAB_YAML)?;
    let lab = Lab::load(&labdir)?;
    let _ = lab.down();
    lab.up()?;
    let result = measure(&lab, opts);
    flush_baselines(&lab.node_netns(NODE));
    let down = lab.down();
    let mut report = result?;
    down?;
    for base in ["direct", "packet", "nftables"] {
        report.compute_ratios("socket", base, |m| !m.contains("latency"));
    }
    print!("{}", report.markdown());
    report.write(out, "sock-lb")
}

fn measure(lab: &Lab, opts: &Opts) -> Result<Report> {
    let me = procs::bin("strake-bench")?;
    let mut backends = Vec::new();
    for pod in ["b1", "b2"] {
        let mut args = vec![
            "rr-server".to_string(),
            "--port".into(),
            BACKEND_PORT.to_string(),
        ];
        let program = match opts.cpu {
            Some(c) => {
                args.splice(
                    0..0,
                    ["-c".to_string(), c.to_string(), me.display().to_string()],
                );
                PathBuf::from("/usr/bin/taskset")
            }
            None => me.clone(),
        };
        procs::spawn_in_netns(
            &lab.pod_netns("bench", pod),
            &program,
            &args,
            &lab.root.join(format!("bench-{pod}.log")),
        )?;
        backends.push(lab.pod_ip("bench", pod)?);
    }
    let c = Clients {
        ext: lab.node_netns(NODE), // unused: no external client here
        pod: lab.pod_netns("bench", "client"),
        node: lab.node_netns(NODE),
        backends: backends.clone(),
    };
    let cg = lab.node_cgroup(NODE)?;
    for ns in [&c.pod, &c.node] {
        netns::run_in(ns, rr::prepare_crr_client)?;
    }
    // A node has a route for the Service range (a default one, usually):
    // without it a host-network connect() to a ClusterIP fails before
    // nftables' output hook could DNAT it. The socket hooks need none.
    procs::run_in_netns(
        &c.node,
        "ip",
        &["route", "replace", "10.96.0.0/16", "dev", "eth0"],
    )?;
    let nft = kube_rules::nft(&[Svc {
        cluster_ip: NFT_VIP,
        lb_ip: None,
        port: PORT,
        protos: vec!["tcp", "udp"],
        backends: backends.iter().map(|b| (*b, BACKEND_PORT)).collect(),
    }]);
    let mut report = Report {
        name: "Socket-level load balancing: pod and host network -> ClusterIP".into(),
        command: format!(
            "sudo target/release/strake-bench sock-lb --rounds {} --secs {}{}",
            opts.rounds,
            opts.secs,
            opts.cpu.map(|c| format!(" --cpu {c}")).unwrap_or_default()
        ),
        date: crate::report::now(),
        machine: crate::report::machine(),
        notes: vec![
            "one node, two backend pods, a client pod; strake attached for direct, socket and packet".into(),
            "direct: the client pod to backend b1's address (no Service); socket: the client in the node's cgroup (connect/sendmsg hooks); packet: the same client outside the cgroup (per-packet translation on the veth, as an opted-out pod); nftables: agent stopped, programs detached, kube-proxy's nftables rules".into(),
            "host network: the client in the node's own namespace (and for socket, its cgroup); nftables: the rules' output hook".into(),
            "crr: connect + 64-byte exchange + close; rr: 64-byte exchanges on one connection; udp: 64-byte datagrams from one connected socket, counted at the backends".into(),
            format!("clients and backend servers pinned to CPU {:?}", opts.cpu),
        ],
        samples: vec![],
        ratios: vec![],
    };
    let secs = Duration::from_secs(opts.secs);
    let cpu = opts.cpu;
    let mut data: BTreeMap<(String, String, String, String), Vec<f64>> = BTreeMap::new();
    let mut put = |case: &str, variant: &str, metric: &str, unit: &str, v: f64| {
        data.entry((case.into(), variant.into(), metric.into(), unit.into()))
            .or_default()
            .push(v);
    };
    for round in 0..opts.rounds {
        for variant in ["direct", "socket", "packet", "nftables"] {
            if variant == "nftables" {
                detach_programs(lab)?;
                flush_baselines(&c.node);
                run_with_stdin(&c.node, "nft", &["-f", "-"], &nft)?;
                let _ = netns::run_in(&c.node, || {
                    netns::sysctl("net/netfilter/nf_conntrack_tcp_timeout_time_wait", "1")
                });
            } else {
                flush_baselines(&c.node);
                attach_programs(lab)?;
                lab.wait_lb("both backends", Duration::from_secs(60), |st| {
                    st.services.iter().any(|s| {
                        s.service == "bench/vip:tcp"
                            && s.backends.iter().filter(|b| b.active).count() == 2
                    })
                })?;
            }
            let to = SocketAddrV4::new(
                match variant {
                    "direct" => backends[0],
                    "nftables" => NFT_VIP,
                    _ => VIP,
                },
                if variant == "direct" {
                    BACKEND_PORT
                } else {
                    PORT
                },
            );
            let cgroup = (variant == "socket").then_some(cg.as_path());
            let pod = c.pod.clone();
            let (crr, r, udp) = in_cgroup(cgroup, || {
                let p = pod.clone();
                // Warm up (neighbours, conntrack, the freshly attached
                // programs); not counted.
                let _ = netns::run_in(&p, move || rr::crr_client(to, Duration::from_millis(300)));
                let crr = netns::run_in(&p, move || {
                    pin(cpu);
                    rr::crr_client(to, secs)
                })?;
                let r = netns::run_in(&p, move || {
                    pin(cpu);
                    rr::client(to, secs)
                })?;
                let udp = udp_delivered(&c, &p, to, opts.secs, cpu)?;
                Ok((crr, r, udp))
            })?;
            eprintln!(
                "round {round}, {variant:>8}, pod -> ClusterIP: {:.0} conn/s ({} failed), {:.0} rr/s (p50 {:.1} us), {:.0} udp pkt/s",
                crr.per_sec, crr.failed, r.per_sec, r.p50_us, udp
            );
            let case = "pod -> ClusterIP";
            put(case, variant, "tcp_crr", "conn/s", crr.per_sec);
            put(case, variant, "tcp_rr", "trans/s", r.per_sec);
            put(case, variant, "rr latency p50", "us", r.p50_us);
            put(case, variant, "udp", "pkt/s", udp);
            if variant == "socket" || variant == "nftables" {
                let node = c.node.clone();
                let crr = in_cgroup(cgroup, || {
                    netns::run_in(&node, move || {
                        pin(cpu);
                        rr::crr_client(to, secs)
                    })
                })?;
                eprintln!(
                    "round {round}, {variant:>8}, host network -> ClusterIP: {:.0} conn/s ({} failed)",
                    crr.per_sec, crr.failed
                );
                put(
                    "host network -> ClusterIP",
                    variant,
                    "tcp_crr",
                    "conn/s",
                    crr.per_sec,
                );
            }
        }
    }
    flush_baselines(&c.node);
    attach_programs(lab)?;
    for ((case, variant, metric, unit), v) in data {
        report.add(&case, &variant, &metric, &unit, v);
    }
    Ok(report)
}
