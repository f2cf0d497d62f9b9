//! NetworkPolicy costs. Data plane: pod-to-pod TCP request/response and
//! connection rate with 0, 1,000 and 10,000 policy rules selecting both pods
//! (each pod isolated both ways by one policy letting the pods talk, the
//! rules naming other peers), against no policy at all, interleaved in one
//! run. Control plane: time from writing 1 and 1,000 policies to every
//! node enforcing them, checked with real traffic.

use crate::report::Report;
use crate::rr;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};
use strake_lab::{procs, Lab};
use strake_netlink::netns;

const PORT: u16 = 9000;

pub struct Opts {
    pub rounds: usize,
    pub secs: u64,
    pub rules: Vec<usize>,
}

const LAB_YAML: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: pba}
spec: {podCIDR: 10.253.1.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.9.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: pbb}
spec: {podCIDR: 10.253.2.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.9.2}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: pb, name: server, labels: {role: bench}}
spec: {nodeName: pba, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: pb, name: client, labels: {role: bench}}
spec: {nodeName: pba, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: pb, name: far, labels: {role: far}}
spec: {nodeName: pbb, containers: [{name: c}]}
"#;

/// The policy that isolates both bench pods and lets them talk, and `n`
/// rules over `n / 10` more policies selecting them, each rule an ingress
/// and an egress peer (a /32 elsewhere) on its own port.
fn rules_yaml(n: usize) -> String {
    let mut y = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: pb, name: bench-talk}\nspec:\n  podSelector: {matchLabels: {role: bench}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{from: [{podSelector: {matchLabels: {role: bench}}}]}]\n  egress: [{to: [{podSelector: {matchLabels: {role: bench}}}]}]\n---\n",
    );
    let per = 10;
    for p in 0..n.div_ceil(per) {
        y += &format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: pb, name: bulk-{p}}}\nspec:\n  podSelector: {{matchLabels: {{role: bench}}}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n"
        );
        let rules: Vec<usize> = (p * per..((p + 1) * per).min(n)).collect();
        for r in &rules {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 20, 0, 0)) + *r as u32);
            y += &format!(
                "  - from: [{{ipBlock: {{cidr: {ip}/32}}}}]\n    ports: [{{port: {}}}]\n",
                1000 + r % 50000
            );
        }
        y += "  egress:\n";
        for r in &rules {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 20, 0, 0)) + *r as u32);
            y += &format!(
                "  - to: [{{ipBlock: {{cidr: {ip}/32}}}}]\n    ports: [{{port: {}}}]\n",
                1000 + r % 50000
            );
        }
        y += "---\n";
    }
    y
}

/// Whether a pod's namespace can open a TCP connection to `to`.
fn reach(ns: &Path, to: SocketAddrV4) -> bool {
    netns::run_in(ns, move || {
        Ok(std::net::TcpStream::connect_timeout(&to.into(), Duration::from_millis(300)).is_ok())
    })
    .unwrap_or(false)
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub fn run(opts: &Opts, out: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let labdir = dir.path().join("bench-policy");
    std::fs::create_dir_all(&labdir)?;
    std::fs::write(labdir.join("lab.yaml"), LAB_YAML)?;
    let lab = Lab::load(&labdir)?;
    let _ = lab.down();
    lab.up()?;
    let result = measure(&lab, &labdir, opts);
    let down = lab.down();
    let mut report = result?;
    down?;
    for n in &opts.rules {
        report.compute_ratios(&format!("{n} rules"), "no policy", |m| {
            !m.contains("latency")
        });
    }
    print!("{}", report.markdown());
    report.write(out, "policy")
}

fn measure(lab: &Lab, labdir: &Path, opts: &Opts) -> Result<Report> {
    let me = procs::bin("strake-bench")?;
    let server_ns = lab.pod_netns("pb", "server");
    procs::spawn_in_netns(
        &server_ns,
        &me,
        &["rr-server".into(), "--port".into(), PORT.to_string()],
        &lab.root.join("bench-server.log"),
    )?;
    let client = lab.pod_netns("pb", "client");
    netns::run_in(&client, rr::prepare_crr_client)?;
    let to = SocketAddrV4::new(lab.pod_ip("pb", "server")?, PORT);
    std::thread::sleep(Duration::from_millis(300));
    let file = labdir.join("policies.yaml");

    let mut report = Report {
        name: "NetworkPolicy: pod-to-pod rates with policy rules selecting the pods, and time to enforce".into(),
        command: format!(
            "sudo target/release/strake-bench policy --rounds {} --secs {} --rules {}",
            opts.rounds,
            opts.secs,
            opts.rules.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")
        ),
        date: crate::report::now(),
        machine: crate::report::machine(),
        notes: vec![
            "client and server pods on one node; no policy: nothing selects them; N rules: both pods isolated for ingress and egress by one policy letting the two talk, plus N rules (ingress from and egress to a /32 each, on a port each, 10 per policy) selecting them".into(),
            "rr: 64-byte exchanges on one connection; crr: connect + exchange + close (every connection judged anew)".into(),
            "enforcement: policies written (renamed into the lab's directory) until both nodes report that revision applied, then a connection from another node's pod is checked to be dropped".into(),
        ],
        samples: vec![],
        ratios: vec![],
    };
    let mut data: BTreeMap<(String, String, String, String), Vec<f64>> = BTreeMap::new();
    for round in 0..opts.rounds {
        // None: no policy selects the pods (the baseline).
        let variants = std::iter::once(None).chain(opts.rules.iter().copied().map(Some));
        for n in variants {
            write_atomic(&file, &n.map(rules_yaml).unwrap_or_default())?;
            lab.wait_synced(Duration::from_secs(300))?;
            let variant = match n {
                None => "no policy".to_string(),
                Some(n) => format!("{n} rules"),
            };
            let secs = Duration::from_secs(opts.secs);
            let r = netns::run_in(&client, move || rr::client(to, secs))?;
            let c = netns::run_in(&client, move || rr::crr_client(to, secs))?;
            eprintln!(
                "round {round} {variant:>12}: {:.0} rr/s (p50 {:.1} us), {:.0} conn/s ({} failed)",
                r.per_sec, r.p50_us, c.per_sec, c.failed
            );
            for (m, u, v) in [
                ("tcp_rr", "trans/s", r.per_sec),
                ("rr latency p50", "us", r.p50_us),
                ("tcp_crr", "conn/s", c.per_sec),
            ] {
                data.entry((
                    "pod to pod, same node".into(),
                    variant.clone(),
                    m.into(),
                    u.into(),
                ))
                .or_default()
                .push(v);
            }
        }
    }

    // Time to enforce: a policy that shuts the far pod out, alone or among
    // 999 others.
    let far = lab.pod_netns("pb", "far");
    for &count in &[1usize, 1000] {
        for round in 0..opts.rounds {
            write_atomic(&file, "")?;
            lab.wait_synced(Duration::from_secs(60))?;
            if !reach(&far, to) {
                bail!("the far pod cannot reach the server before any policy");
            }
            let mut y = String::from("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: pb, name: only-bench}\nspec:\n  podSelector: {matchLabels: {role: bench}}\n  ingress: [{from: [{podSelector: {matchLabels: {role: bench}}}]}]\n---\n",
            );
            for i in 1..count {
                y += &format!(
                    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: pb, name: other-{i}}}\nspec:\n  podSelector: {{matchLabels: {{role: other-{i}}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{role: bench}}}}}}], ports: [{{port: {}}}]}}]\n---\n",
                    1000 + i
                );
            }
            let t = Instant::now();
            write_atomic(&file, &y)?;
            lab.wait_synced(Duration::from_secs(120))?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if reach(&far, to) {
                bail!("the far pod still reaches the server once every node reports the policy applied");
            }
            eprintln!("round {round}: {count} policies enforced on every node in {ms:.1} ms");
            data.entry((
                format!("write {count} policies -> enforced on every node"),
                "strake".into(),
                "time".into(),
                "ms".into(),
            ))
            .or_default()
            .push(ms);
        }
    }
    write_atomic(&file, "")?;
    for ((case, variant, metric, unit), v) in data {
        report.add(&case, &variant, &metric, &unit, v);
    }
    Ok(report)
}
