//! Across racks: pod-to-pod TCP request/response and throughput between the
//! same two pods, on two subnets behind two BIRD routers, three ways in one
//! run: routed by BGP (the fabric carries the pod blocks), through the VXLAN
//! fallback (the routers stop peering, so only the tunnel reaches the other
//! rack), and by plain kernel routing (BGP's routes, strake's programs
//! detached). Rounds interleave the variants. Then convergence: a Node
//! appearing until its pods are reachable from the other rack (and until
//! its block is a BGP route there), and a Service endpoint appearing until
//! its LoadBalancer address is in the other rack's router.

use crate::net::{attach_programs, detach_programs, iperf, rr, start_servers};
use crate::report::Report;
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};
use strake_lab::{probe, procs, Lab};

const LB_LOCAL: &str = "203.0.113.20";

pub struct Opts {
    pub rounds: usize,
    pub secs: u64,
    pub cpu: Option<usize>,
}

const NETWORK: &str = r#"
apiVersion: lab.strake.dev/v1
kind: Fabric
metadata: {name: core}
spec: {subnet: 10.0.0.0/24}
---
apiVersion: lab.strake.dev/v1
kind: Fabric
metadata: {name: rack-a}
spec: {subnet: 10.0.1.0/24}
---
apiVersion: lab.strake.dev/v1
kind: Fabric
metadata: {name: rack-b}
spec: {subnet: 10.0.2.0/24}
---
apiVersion: lab.strake.dev/v1
kind: Router
metadata: {name: bb-ta}
spec:
  asNumber: 65001
  interfaces: [{fabric: rack-a, address: 10.0.1.1}, {fabric: core, address: 10.0.0.1}]
  nodes: [rack-a]
  peers: [bb-tb]
---
apiVersion: lab.strake.dev/v1
kind: Router
metadata: {name: bb-tb}
spec:
  asNumber: 65002
  interfaces: [{fabric: rack-b, address: 10.0.2.1}, {fabric: core, address: 10.0.0.2}]
  nodes: [rack-b]
  peers: [bb-ta]
---
apiVersion: bgp.strake.dev/v1
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMesh: false, serviceLoadBalancerIPs: [{cidr: 203.0.113.0/24}]}
---
apiVersion: bgp.strake.dev/v1
kind: BGPPeer
metadata: {name: tor-a}
spec: {peerIP: 10.0.1.1, asNumber: 65001, nodeSelector: {matchLabels: {rack: a}}}
---
apiVersion: bgp.strake.dev/v1
kind: BGPPeer
metadata: {name: tor-b}
spec: {peerIP: 10.0.2.1, asNumber: 65002, nodeSelector: {matchLabels: {rack: b}}}
---
apiVersion: v1
kind: Service
metadata: {namespace: bench, name: solo}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: solo}
  ports: [{name: http, port: 80, targetPort: 80, protocol: TCP}]
status: {loadBalancer: {ingress: [{ip: 203.0.113.20}]}}
"#;

fn nodes(with_b2: bool) -> String {
    let mut y = String::new();
    for (n, rack, cidr, ip, asn) in [
        ("bb-a1", "a", "10.250.1.0/24", "10.0.1.11", 65001),
        ("bb-b1", "b", "10.250.3.0/24", "10.0.2.11", 65002),
        ("bb-b2", "b", "10.250.4.0/24", "10.0.2.12", 65002),
    ] {
        if n == "bb-b2" && !with_b2 {
            continue;
        }
        y += &format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {n}\n  labels: {{rack: {rack}}}\n  annotations: {{bgp.strake.dev/as-number: \"{asn}\"}}\n\
spec: {{podCIDR: {cidr}}}\nstatus: {{addresses: [{{type: InternalIP, address: {ip}}}]}}\n---\n"
        );
    }
    y
}

fn pods(solo_app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench}}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {{namespace: bench, name: client}}\nspec: {{nodeName: bb-a1, containers: [{{name: c}}]}}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {{namespace: bench, name: remote}}\nspec: {{nodeName: bb-b1, containers: [{{name: c}}]}}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {{namespace: bench, name: late, labels: {{app: {solo_app}}}}}\n\
spec: {{nodeName: bb-b2, containers: [{{name: c, ports: [{{containerPort: 80, protocol: TCP}}]}}]}}\n"
    )
}

pub fn run(opts: &Opts, out: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let labdir = dir.path().join("bench-bgp");
    std::fs::create_dir_all(&labdir)?;
    std::fs::write(labdir.join("network.yaml"), NETWORK)?;
    std::fs::write(labdir.join("nodes.yaml"), nodes(true))?;
    std::fs::write(labdir.join("pods.yaml"), pods("other"))?;
    let lab = Lab::load(&labdir)?;
    let _ = lab.down();
    lab.up()?;
    let result = measure(&lab, opts);
    let down = lab.down();
    let mut report = result?;
    down?;
    report.compute_ratios("bgp", "vxlan", |m| !m.contains("latency"));
    report.compute_ratios("bgp", "kernel", |m| !m.contains("latency"));
    print!("{}", report.markdown());
    report.write(out, "bgp")
}

/// The route node bb-a1 uses toward `ip`: its device.
fn route_dev(lab: &Lab, ip: Ipv4Addr) -> Result<String> {
    let out = procs::run_in_netns(
        &lab.node_netns("bb-a1"),
        "ip",
        &["-j", "route", "get", &ip.to_string()],
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j route get")?;
    Ok(v[0]["dev"].as_str().unwrap_or_default().to_string())
}

fn wait_dev(lab: &Lab, ip: Ipv4Addr, dev: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = route_dev(lab, ip)?;
        if now == dev {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("bb-a1 routes {ip} by {now:?}, not {dev:?}, after 60s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The routers' peering on or off (BIRD's own `enable`/`disable`).
fn peering(lab: &Lab, on: bool) -> Result<()> {
    let verb = if on { "enable" } else { "disable" };
    for (r, other) in [("bb-ta", "bb_tb"), ("bb-tb", "bb_ta")] {
        lab.router_control(r)
            .run(&format!("{verb} router_{other}"))?;
    }
    Ok(())
}

/// Whether router `r`'s kernel has a route for exactly `prefix`.
fn router_has(lab: &Lab, r: &str, prefix: &str) -> Result<bool> {
    let out = procs::run_in_netns(
        &lab.router_netns(r),
        "ip",
        &["route", "show", "exact", prefix],
    )?;
    Ok(!out.stdout.is_empty())
}

fn a1_has_bgp_route(lab: &Lab, prefix: &str) -> Result<bool> {
    let out = procs::run_in_netns(
        &lab.node_netns("bb-a1"),
        "ip",
        &["route", "show", "exact", prefix, "proto", "bird"],
    )?;
    Ok(!out.stdout.is_empty())
}

/// Milliseconds from `start` until `ok`.
fn elapsed_since(
    start: Instant,
    timeout: Duration,
    mut ok: impl FnMut() -> Result<bool>,
) -> Result<f64> {
    loop {
        if ok()? {
            return Ok(start.elapsed().as_secs_f64() * 1e3);
        }
        if start.elapsed() > timeout {
            bail!("not converged after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn measure(lab: &Lab, opts: &Opts) -> Result<Report> {
    start_servers(lab, "remote", opts.cpu)?;
    std::thread::sleep(Duration::from_millis(300));
    let remote = lab.pod_ip("bench", "remote")?;
    let mut report = Report {
        name: "Across racks: pod to pod routed by BGP vs the VXLAN fallback vs plain kernel routing (same lab, same pods); convergence".into(),
        command: format!(
            "sudo target/release/strake-bench bgp --rounds {} --secs {}{}",
            opts.rounds,
            opts.secs,
            opts.cpu.map(|c| format!(" --cpu {c}")).unwrap_or_default()
        ),
        date: crate::report::now(),
        machine: crate::report::machine(),
        notes: vec![
            "two subnets behind two BIRD routers; client on rack a, server on rack b".into(),
            "bgp: the routers carry the pod blocks; vxlan: the routers stop peering (birdc disable), the node routes through strake.vxlan; kernel: BGP's routes with strake's programs detached".into(),
            "throughput: iperf3, one TCP stream; rr: 64-byte TCP request/response on one connection".into(),
            "convergence: a Node written to the directory until a pod of the other rack reaches its pod (any path) and until its block is a BGP route there; a pod turning into a Local Service's endpoint until the other rack's router routes the Service's address".into(),
        ],
        samples: vec![],
        ratios: vec![],
    };
    let mut data: std::collections::BTreeMap<(String, String, String, String), Vec<f64>> =
        Default::default();
    let mut push = |case: &str, variant: &str, metric: &str, unit: &str, v: f64| {
        data.entry((case.into(), variant.into(), metric.into(), unit.into()))
            .or_default()
            .push(v);
    };
    for round in 0..opts.rounds {
        for variant in ["bgp", "vxlan", "kernel"] {
            match variant {
                "bgp" => {
                    attach_programs(lab)?;
                    peering(lab, true)?;
                    wait_dev(lab, remote, "eth0")?;
                }
                "vxlan" => {
                    peering(lab, false)?;
                    wait_dev(lab, remote, "strake.vxlan")?;
                }
                _ => {
                    peering(lab, true)?;
                    wait_dev(lab, remote, "eth0")?;
                    detach_programs(lab)?;
                }
            }
            let bw = iperf(lab, remote, opts.secs, opts.cpu)?;
            let r = rr(lab, remote, opts.secs, opts.cpu)?;
            eprintln!(
                "round {round} {variant:>6}: {bw:.2} Gbit/s, {:.0} rr/s, p50 {:.1} us, p99 {:.1} us",
                r.per_sec, r.p50_us, r.p99_us
            );
            for (m, u, v) in [
                ("throughput", "Gbit/s", bw),
                ("tcp_rr", "trans/s", r.per_sec),
                ("rr latency p50", "us", r.p50_us),
                ("rr latency p99", "us", r.p99_us),
            ] {
                push("across racks", variant, m, u, v);
            }
        }
    }
    attach_programs(lab)?;
    peering(lab, true)?;
    wait_dev(lab, remote, "eth0")?;

    // Convergence. A Node appears: bb-b2 (its namespace and agent are up;
    // only its Node object comes and goes).
    let late = lab.pod_ip("bench", "late")?;
    let client = lab.pod_netns("bench", "client");
    for round in 0..opts.rounds {
        std::fs::write(lab.dir.join("nodes.yaml"), nodes(false))?;
        elapsed_since(Instant::now(), Duration::from_secs(30), || {
            Ok(!router_has(lab, "bb-ta", "10.250.4.0/24")?)
        })?;
        std::thread::sleep(Duration::from_millis(500));
        let start = Instant::now();
        std::fs::write(lab.dir.join("nodes.yaml"), nodes(true))?;
        let reach_ms = elapsed_since(start, Duration::from_secs(60), || {
            Ok(probe::tcp(
                &client,
                SocketAddrV4::new(late, 80),
                Duration::from_millis(200),
            )
            .is_ok())
        })?;
        let bgp_ms = elapsed_since(start, Duration::from_secs(60), || {
            a1_has_bgp_route(lab, "10.250.4.0/24")
        })?;
        eprintln!("round {round}: new Node reachable from the other rack after {reach_ms:.0} ms, its block a BGP route there after {bgp_ms:.0} ms");
        push("new Node", "bgp", "to reachable", "ms", reach_ms);
        push("new Node", "bgp", "to BGP route", "ms", bgp_ms);
    }
    // A Service endpoint appears: pod `late` takes the Local Service's label.
    let prefix = format!("{LB_LOCAL}/32");
    for round in 0..opts.rounds {
        std::fs::write(lab.dir.join("pods.yaml"), pods("other"))?;
        elapsed_since(Instant::now(), Duration::from_secs(30), || {
            Ok(!router_has(lab, "bb-ta", &prefix)?)
        })?;
        std::thread::sleep(Duration::from_millis(500));
        let start = Instant::now();
        std::fs::write(lab.dir.join("pods.yaml"), pods("solo"))?;
        let ms = elapsed_since(start, Duration::from_secs(60), || {
            router_has(lab, "bb-ta", &prefix)
        })?;
        eprintln!(
            "round {round}: endpoint to address announced in the other rack's router: {ms:.0} ms"
        );
        push("Service endpoint", "bgp", "to announced", "ms", ms);
    }
    for ((case, variant, metric, unit), v) in data {
        report.add(&case, &variant, &metric, &unit, v);
    }
    Ok(report)
}
