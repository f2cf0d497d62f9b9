//! Pod-to-pod throughput and request/response rate through strake's eBPF
//! fast path, against plain kernel routing on the very same topology: the
//! same lab with the programs detached (same veths, addresses, routes and
//! neighbours; only the eBPF redirects are gone). Rounds interleave the two
//! variants so drift in the machine's load hits both alike.

use crate::report::Report;
use crate::rr;
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;
use strake_lab::{procs, Lab};
use strake_netlink::netns;

const RR_PORT: u16 = 9000;
const IPERF_PORT: u16 = 5201;

pub struct Opts {
    pub rounds: usize,
    pub secs: u64,
    pub cpu: Option<usize>,
}

const LAB_YAML: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: bn-a}
spec: {podCIDR: 10.250.1.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.9.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: bn-b}
spec: {podCIDR: 10.250.2.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.9.2}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: bench, name: client}
spec: {nodeName: bn-a, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: bench, name: local}
spec: {nodeName: bn-a, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: bench, name: remote}
spec: {nodeName: bn-b, containers: [{name: c}]}
"#;

/// Stops the agents and removes every pinned link: the programs detach
/// (uplink and pod veths); routes, addresses and neighbours stay.
pub(crate) fn detach_programs(lab: &Lab) -> Result<()> {
    for n in &lab.spec.nodes {
        let pid = lab.agent_pid(&n.name).context("agent pid")?;
        procs::stop(&[pid], Duration::from_secs(5));
        let links = lab.bpffs_root(&n.name).join("links");
        for e in std::fs::read_dir(&links)?.flatten() {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Starts the agents again: they re-attach every endpoint from their records.
pub(crate) fn attach_programs(lab: &Lab) -> Result<()> {
    for n in &lab.spec.nodes {
        if lab.agent_pid(&n.name).is_some_and(procs::alive) {
            continue;
        }
        lab.start_agent(&n.name)?;
        lab.wait_agent_ready(&n.name, Duration::from_secs(20))?;
    }
    Ok(())
}

pub(crate) fn pin(cpu: Option<usize>) {
    if let Some(c) = cpu {
        let mut set = nix::sched::CpuSet::new();
        let _ = set.set(c);
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// iperf3 from pod bench/client to `to`: Gbit/s of one TCP stream.
pub(crate) fn iperf(lab: &Lab, to: Ipv4Addr, secs: u64, cpu: Option<usize>) -> Result<f64> {
    let ns = lab.pod_netns("bench", "client");
    let mut args = vec![
        "-c".to_string(),
        to.to_string(),
        "-p".into(),
        IPERF_PORT.to_string(),
        "-t".into(),
        secs.to_string(),
        "-J".into(),
    ];
    if let Some(c) = cpu {
        args.extend(["-A".into(), c.to_string()]);
    }
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let out = procs::run_in_netns(&ns, "iperf3", &a)?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    Ok(v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 result")?
        / 1e9)
}

/// 64-byte request/response from pod bench/client to `to`.
pub(crate) fn rr(lab: &Lab, to: Ipv4Addr, secs: u64, cpu: Option<usize>) -> Result<rr::RrResult> {
    let ns = lab.pod_netns("bench", "client");
    netns::run_in(&ns, move || {
        pin(cpu);
        rr::client(SocketAddrV4::new(to, RR_PORT), Duration::from_secs(secs))
    })
}

pub fn run(opts: &Opts, out: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let labdir = dir.path().join("bench-net");
    std::fs::create_dir_all(&labdir)?;
    std::fs::write(labdir.join("lab.yaml"), LAB_YAML)?;
    let lab = Lab::load(&labdir)?;
    let _ = lab.down();
    lab.up()?;
    let result = measure(&lab, opts);
    let down = lab.down();
    let mut report = result?;
    down?;
    report.compute_ratios("strake", "kernel", |m| !m.contains("latency"));
    print!("{}", report.markdown());
    report.write(out, "pod-network")
}

/// The request/response and iperf3 servers in pod bench/`pod`.
pub(crate) fn start_servers(lab: &Lab, pod: &str, cpu: Option<usize>) -> Result<()> {
    let me = procs::bin("strake-bench")?;
    let ns = lab.pod_netns("bench", pod);
    let log = lab.root.join(format!("bench-{pod}.log"));
    procs::spawn_in_netns(
        &ns,
        &me,
        &["rr-server".into(), "--port".into(), RR_PORT.to_string()],
        &log,
    )?;
    let mut iperf_args = vec!["-s".to_string(), "-p".into(), IPERF_PORT.to_string()];
    if let Some(c) = cpu {
        iperf_args.extend(["-A".into(), c.to_string()]);
    }
    procs::spawn_in_netns(&ns, Path::new("/usr/bin/iperf3"), &iperf_args, &log)?;
    Ok(())
}

fn measure(lab: &Lab, opts: &Opts) -> Result<Report> {
    for pod in ["local", "remote"] {
        start_servers(lab, pod, opts.cpu)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let local = lab.pod_ip("bench", "local")?;
    let remote = lab.pod_ip("bench", "remote")?;
    let cases = [("same node", local), ("across nodes", remote)];
    let mut report = Report {
        name: "Pod-to-pod: strake eBPF fast path vs plain kernel routing (same lab, programs detached)".into(),
        command: format!("sudo target/release/strake-bench net --rounds {} --secs {}{}", opts.rounds, opts.secs,
            opts.cpu.map(|c| format!(" --cpu {c}")).unwrap_or_default()),
        date: crate::report::now(),
        machine: crate::report::machine(),
        notes: vec![
            "throughput: iperf3, one TCP stream; rr: 64-byte TCP request/response on one connection".into(),
            format!("client and servers pinned to CPU {:?}; rounds interleave the variants", opts.cpu),
        ],
        samples: vec![],
        ratios: vec![],
    };
    let mut data: std::collections::BTreeMap<(String, String, String, String), Vec<f64>> =
        Default::default();
    for round in 0..opts.rounds {
        for variant in ["strake", "kernel"] {
            if variant == "strake" {
                attach_programs(lab)?;
            } else {
                detach_programs(lab)?;
            }
            for (case, ip) in cases {
                let bw = iperf(lab, ip, opts.secs, opts.cpu)?;
                let r = rr(lab, ip, opts.secs, opts.cpu)?;
                eprintln!("round {round} {variant:>6} {case:>12}: {bw:.2} Gbit/s, {:.0} rr/s, p50 {:.1} us, p99 {:.1} us", r.per_sec, r.p50_us, r.p99_us);
                for (m, u, v) in [
                    ("throughput", "Gbit/s", bw),
                    ("tcp_rr", "trans/s", r.per_sec),
                    ("rr latency p50", "us", r.p50_us),
                    ("rr latency p99", "us", r.p99_us),
                ] {
                    data.entry((
                        case.to_string(),
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
    attach_programs(lab)?;
    for ((case, variant, metric, unit), v) in data {
        report.add(&case, &variant, &metric, &unit, v);
    }
    Ok(report)
}
