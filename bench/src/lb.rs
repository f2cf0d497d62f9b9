//! Service traffic through a virtual IP: strake (XDP on the uplink for
//! traffic from outside, tc on the pod veth for pods) against kube-proxy's
//! iptables rules and its nftables verdict maps on the plain kernel path, on
//! the same one-node lab, with 10 and with 5,000 Services installed. The
//! measured Service is the last one kube-proxy's iptables chain matches.
//!
//! For the baselines the agent is stopped and its programs detached (as
//! kube-proxy users run a CNI without a fast path); routes, addresses and
//! pods stay. Rounds interleave the variants so the machine's drift hits
//! them alike.

use crate::kube_rules::{self, Svc};
use crate::net::{attach_programs, detach_programs, pin};
use crate::report::Report;
use crate::rr;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;
use strake_lab::{procs, Lab};
use strake_netlink::netns;

const PORT: u16 = 80;
const BACKEND_PORT: u16 = 9000;
const NODE: &str = "lbn";
const EXT: &str = "lbc";

pub struct Opts {
    pub rounds: usize,
    pub secs: u64,
    pub scales: Vec<usize>,
    /// Pin clients and backend servers to this CPU: one CPU's work, no
    /// cross-CPU wakeups (whose latency swings widely on shared VMs).
    pub cpu: Option<usize>,
}

const LAB_YAML: &str = r#"
apiVersion: lab.strake.dev/v1
kind: Lab
metadata: {name: bench-lb}
spec: {xdp: true}
---
apiVersion: v1
kind: Node
metadata: {name: lbn}
spec: {podCIDR: 10.251.1.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.9.1}]}
---
apiVersion: lab.strake.dev/v1
kind: ExternalHost
metadata: {name: lbc}
spec: {address: 10.0.9.100}
---
apiVersion: v1
kind: Pod
metadata: {namespace: bench, name: b1, labels: {app: lbb}}
spec: {nodeName: lbn, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: bench, name: b2, labels: {app: lbb}}
spec: {nodeName: lbn, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: bench, name: client}
spec: {nodeName: lbn, containers: [{name: c}]}
"#;

/// The three variants' addresses: (ClusterIP, LoadBalancer IP), and the
/// /16 their filler Services take ClusterIPs from.
fn addrs(variant: &str) -> (Ipv4Addr, Ipv4Addr, [u8; 2]) {
    match variant {
        "strake" => (
            "10.96.0.10".parse().unwrap(),
            "203.0.113.10".parse().unwrap(),
            [10, 97],
        ),
        "iptables" => (
            "10.96.0.20".parse().unwrap(),
            "203.0.113.20".parse().unwrap(),
            [10, 98],
        ),
        _ => (
            "10.96.0.30".parse().unwrap(),
            "203.0.113.30".parse().unwrap(),
            [10, 99],
        ),
    }
}

fn filler_ip(prefix: [u8; 2], i: usize) -> Ipv4Addr {
    Ipv4Addr::new(prefix[0], prefix[1], (i / 250) as u8, (i % 250 + 1) as u8)
}

/// strake's Services: `n - 1` fillers and the measured one, all backed by
/// the two backend pods (selected, as the endpoints controller would).
fn strake_services(n: usize) -> String {
    let (cip, lb, prefix) = addrs("strake");
    let mut y = String::new();
    for i in 0..n.saturating_sub(1) {
        y += &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{namespace: bench, name: f{i}}}\nspec: {{clusterIP: {}, selector: {{app: lbb}}, ports: [{{name: tcp, port: {PORT}, targetPort: {BACKEND_PORT}}}]}}\n---\n",
            filler_ip(prefix, i)
        );
    }
    y += &format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{namespace: bench, name: vip}}\nspec:\n  type: LoadBalancer\n  clusterIP: {cip}\n  selector: {{app: lbb}}\n  ports:\n  - {{name: tcp, port: {PORT}, targetPort: {BACKEND_PORT}, protocol: TCP}}\n  - {{name: udp, port: {PORT}, targetPort: {BACKEND_PORT}, protocol: UDP}}\nstatus: {{loadBalancer: {{ingress: [{{ip: {lb}}}]}}}}\n"
    );
    y
}

/// kube-proxy's view of the same: fillers first, the measured one last.
fn kube_services(variant: &str, n: usize, backends: &[(Ipv4Addr, u16)]) -> Vec<Svc> {
    let (cip, lb, prefix) = addrs(variant);
    let mut v: Vec<Svc> = (0..n.saturating_sub(1))
        .map(|i| Svc {
            cluster_ip: filler_ip(prefix, i),
            lb_ip: None,
            port: PORT,
            protos: vec!["tcp"],
            backends: backends.to_vec(),
        })
        .collect();
    v.push(Svc {
        cluster_ip: cip,
        lb_ip: Some(lb),
        port: PORT,
        protos: vec!["tcp", "udp"],
        backends: backends.to_vec(),
    });
    v
}

/// Runs a command in a namespace, feeding it `stdin`; fails on non-zero exit.
pub fn run_with_stdin(ns: &Path, program: &str, args: &[&str], stdin: &str) -> Result<()> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let (program, args, stdin) = (
        program.to_string(),
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        stdin.to_string(),
    );
    netns::run_in(ns, move || {
        let mut c = Command::new(&program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {program}"))?;
        c.stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        let out = c.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        Ok(())
    })
}

pub(crate) fn flush_baselines(ns: &Path) {
    for c in kube_rules::flush_commands() {
        let _ = procs::run_in_netns(ns, c[0], &c[1..]);
    }
}

pub(crate) struct Clients {
    pub ext: std::path::PathBuf,
    pub pod: std::path::PathBuf,
    pub node: std::path::PathBuf,
    pub backends: Vec<Ipv4Addr>,
}

pub(crate) fn udp_delivered(
    c: &Clients,
    from: &Path,
    to: SocketAddrV4,
    secs: u64,
    cpu: Option<usize>,
) -> Result<f64> {
    let sinks: Vec<SocketAddrV4> = c
        .backends
        .iter()
        .map(|b| SocketAddrV4::new(*b, BACKEND_PORT))
        .collect();
    let count = |sinks: Vec<SocketAddrV4>| -> Result<u64> {
        netns::run_in(&c.node, move || {
            let mut t = 0;
            for s in &sinks {
                t += rr::udp_count(*s)?;
            }
            Ok(t)
        })
    };
    let before = count(sinks.clone())?;
    netns::run_in(from, move || {
        pin(cpu);
        rr::udp_blast(to, Duration::from_secs(secs))
    })?;
    std::thread::sleep(Duration::from_millis(200));
    let after = count(sinks)?;
    Ok((after - before) as f64 / secs as f64)
}

pub fn run(opts: &Opts, out: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let labdir = dir.path().join("bench-lb");
    std::fs::create_dir_all(&labdir)?;
    std::fs::write(labdir.join("lab.yaml"), LAB_YAML)?;
    std::fs::write(
        labdir.join("services.yaml"),
        strake_services(opts.scales[0]),
    )?;
    let lab = Lab::load(&labdir)?;
    let _ = lab.down();
    lab.up()?;
    let result = measure(&lab, &labdir, opts);
    flush_baselines(&lab.node_netns(NODE));
    let down = lab.down();
    let mut report = result?;
    down?;
    report.compute_ratios("strake", "iptables", |m| !m.contains("latency"));
    report.compute_ratios("strake", "nftables", |m| !m.contains("latency"));
    print!("{}", report.markdown());
    report.write(out, "lb-vip")
}

fn measure(lab: &Lab, labdir: &Path, opts: &Opts) -> Result<Report> {
    let me = procs::bin("strake-bench")?;
    let mut backends = Vec::new();
    for pod in ["b1", "b2"] {
        let ns = lab.pod_netns("bench", pod);
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
                std::path::PathBuf::from("/usr/bin/taskset")
            }
            None => me.clone(),
        };
        procs::spawn_in_netns(
            &ns,
            &program,
            &args,
            &lab.root.join(format!("bench-{pod}.log")),
        )?;
        backends.push(lab.pod_ip("bench", pod)?);
    }
    let c = Clients {
        ext: lab.ext_netns(EXT),
        pod: lab.pod_netns("bench", "client"),
        node: lab.node_netns(NODE),
        backends: backends.clone(),
    };
    // Every variant's LoadBalancer addresses route to the node; clients
    // reuse TIME_WAIT ports (connection-rate runs open tens of thousands).
    procs::run_in_netns(
        &c.ext,
        "ip",
        &["route", "replace", "203.0.113.0/24", "via", "10.0.9.1"],
    )?;
    for ns in [&c.ext, &c.pod] {
        netns::run_in(ns, rr::prepare_crr_client)?;
    }
    let kube_backends: Vec<(Ipv4Addr, u16)> = backends.iter().map(|b| (*b, BACKEND_PORT)).collect();
    std::thread::sleep(Duration::from_millis(300));

    let mut report = Report {
        name: "Service traffic through a VIP: strake vs kube-proxy's iptables and nftables rules".into(),
        command: format!(
            "sudo target/release/strake-bench lb --rounds {} --secs {} --scales {}{}",
            opts.rounds,
            opts.secs,
            opts.scales.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
            opts.cpu.map(|c| format!(" --cpu {c}")).unwrap_or_default()
        ),
        date: crate::report::now(),
        machine: crate::report::machine(),
        notes: vec![
            "one node; two backend pods; client outside (ext netns on the fabric, to the LoadBalancer IP: strake's XDP path) and in a pod (to the ClusterIP: strake's tc path)".into(),
            "baselines: agent stopped, programs detached, kube-proxy-style rules in the node's netns (iptables = Debian 12's iptables-nft); external traffic masqueraded as kube-proxy does".into(),
            "crr: connect + 64-byte exchange + close; rr: 64-byte exchanges on one connection; udp: 64-byte datagrams from one socket, counted at the backends".into(),
            format!("clients and backend servers pinned to CPU {:?}", opts.cpu),
        ],
        samples: vec![],
        ratios: vec![],
    };
    let mut data: BTreeMap<(String, String, String, String), Vec<f64>> = BTreeMap::new();
    for &n in &opts.scales {
        std::fs::write(labdir.join("services.yaml"), strake_services(n))?;
        for round in 0..opts.rounds {
            for variant in ["strake", "iptables", "nftables"] {
                let (cip, lb, _) = addrs(variant);
                if variant == "strake" {
                    flush_baselines(&c.node);
                    attach_programs(lab)?;
                    lab.wait_synced(Duration::from_secs(300))?;
                    lab.wait_lb(
                        "the measured Service has both backends",
                        Duration::from_secs(60),
                        |st| {
                            st.services.iter().any(|s| {
                                s.service == "bench/vip:tcp"
                                    && s.backends.iter().filter(|b| b.active).count() == 2
                            })
                        },
                    )?;
                } else {
                    detach_programs(lab)?;
                    flush_baselines(&c.node);
                    let svcs = kube_services(variant, n, &kube_backends);
                    if variant == "iptables" {
                        run_with_stdin(
                            &c.node,
                            "iptables-restore",
                            &["-w"],
                            &kube_rules::iptables(&svcs),
                        )?;
                    } else {
                        run_with_stdin(&c.node, "nft", &["-f", "-"], &kube_rules::nft(&svcs))?;
                    }
                    // Connection-rate runs leave many TIME_WAIT entries.
                    let _ = netns::run_in(&c.node, || {
                        netns::sysctl("net/netfilter/nf_conntrack_tcp_timeout_time_wait", "1")
                    });
                }
                for (case, from, vip) in [
                    ("external -> LoadBalancer IP", &c.ext, lb),
                    ("pod -> ClusterIP", &c.pod, cip),
                ] {
                    let to = SocketAddrV4::new(vip, PORT);
                    let secs = Duration::from_secs(opts.secs);
                    let cpu = opts.cpu;
                    let crr = netns::run_in(from, move || {
                        pin(cpu);
                        rr::crr_client(to, secs)
                    })?;
                    let r = netns::run_in(from, move || {
                        pin(cpu);
                        rr::client(to, secs)
                    })?;
                    let udp = udp_delivered(&c, from, to, opts.secs, cpu)?;
                    eprintln!(
                        "{n:>5} services, round {round}, {variant:>8}, {case}: {:.0} conn/s ({} failed), {:.0} rr/s (p50 {:.1} us), {:.0} udp pkt/s",
                        crr.per_sec, crr.failed, r.per_sec, r.p50_us, udp
                    );
                    let case = format!("{n} services, {case}");
                    for (m, u, v) in [
                        ("tcp_crr", "conn/s", crr.per_sec),
                        ("tcp_rr", "trans/s", r.per_sec),
                        ("rr latency p50", "us", r.p50_us),
                        ("udp", "pkt/s", udp),
                    ] {
                        data.entry((
                            case.clone(),
                            variant.to_string(),
                            m.to_string(),
                            u.to_string(),
                        ))
                        .or_default()
                        .push(v);
                    }
                }
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
