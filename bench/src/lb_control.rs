//! Control plane: how long it takes to install 1k, 10k and 50k Services of 10
//! backends each, and to change one backend of one Service at each scale,
//! for strake (desired state written as YAML → a one-node lab's agent has
//! the data plane programmed) against `iptables-restore` and `nft -f` of
//! the rules kube-proxy would write for the same Services.
//!
//! strake's figures come two ways: end to end (files written until `strake
//! wait` would return: YAML parsing included, which kube-proxy never pays,
//! since it gets objects from the API server), and the agent's own load
//! balancer reconcile (model, plan, map writes), from its log. Backends are
//! drawn from a pool of 20,000 addresses, 10 distinct per Service; health
//! checks are off (kube-proxy has none).

use crate::kube_rules::{self, Svc};
use crate::lb::run_with_stdin;
use crate::report::Report;
use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use strake_lab::Lab;

const NODE: &str = "cpn";
const POOL: usize = 20_000;
const SCRATCH_NS: &str = "strake-bench-cp";

pub struct Opts {
    pub scales: Vec<usize>,
    pub backends: usize,
    pub rounds: usize,
    /// A baseline's restore running longer is stopped and reported as this.
    pub limit_secs: u64,
}

const LAB_YAML: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: cpn}
spec: {podCIDR: 10.252.1.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.9.1}]}
"#;

fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i as u32 + 1)
}

fn pool_ip(j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + j as u32 + 1)
}

fn backends_of(i: usize, k: usize) -> Vec<Ipv4Addr> {
    (0..k).map(|b| pool_ip((i * 7 + b * 2003) % POOL)).collect()
}

fn service_yaml(i: usize, backends: &[Ipv4Addr]) -> String {
    let eps: Vec<String> = backends
        .iter()
        .map(|b| format!("{{addresses: [\"{b}\"]}}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{namespace: cp, name: s{i}, annotations: {{lb.strake.dev/health-check: none}}}}\nspec: {{clusterIP: {}, ports: [{{name: http, port: 80, targetPort: 9000}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{namespace: cp, name: s{i}-x, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nendpoints: [{}]\nports: [{{name: http, port: 9000, protocol: TCP}}]\n---\n",
        cluster_ip(i),
        eps.join(", ")
    )
}

/// Writes a file whole or not at all (the agent never sees half of it).
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The agent's last load-balancer pass ("phase applied", phase "lb"), from
/// its log.
fn last_reconcile_ms(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| l.contains("phase applied") && l.contains("phase=\"lb\""))
        .and_then(|l| l.split("elapsed_ms=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn kube_svcs(n: usize, k: usize) -> Vec<Svc> {
    (0..n)
        .map(|i| Svc {
            cluster_ip: cluster_ip(i),
            lb_ip: None,
            port: 80,
            protos: vec!["tcp"],
            backends: backends_of(i, k).into_iter().map(|b| (b, 9000)).collect(),
        })
        .collect()
}

/// A fresh, empty namespace for a baseline's rules.
fn scratch(which: &str) -> Result<PathBuf> {
    let name = format!("{SCRATCH_NS}-{which}");
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &name])
        .stderr(std::process::Stdio::null())
        .status();
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .context("ip netns add")?
        .success();
    if !ok {
        bail!("cannot create namespace {name}");
    }
    Ok(PathBuf::from(format!("/run/netns/{name}")))
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Runs a baseline's restore under `timeout`: past `limit_secs` it is
/// stopped and reported as the limit (a lower bound).
fn baseline(ns: &Path, program: &str, args: &[&str], input: &str, limit_secs: u64) -> Result<f64> {
    let limit = limit_secs.to_string();
    let mut a = vec!["--signal=KILL", limit.as_str(), program];
    a.extend_from_slice(args);
    let t = Instant::now();
    match run_with_stdin(ns, "timeout", &a, input) {
        Ok(()) => Ok(t.elapsed().as_secs_f64() * 1000.0),
        Err(_) if t.elapsed() >= Duration::from_secs(limit_secs) => {
            eprintln!("{program}: stopped at the {limit_secs} s limit");
            Ok(limit_secs as f64 * 1000.0)
        }
        Err(e) => Err(e),
    }
}

pub fn run(opts: &Opts, out: &Path) -> Result<()> {
    let max = opts.scales.iter().copied().max().unwrap_or(0);
    let slots = ((max * opts.backends).next_power_of_two() as u32).max(262_144);
    // SAFETY: no other thread runs yet; the agents the lab starts inherit it.
    unsafe { std::env::set_var("STRAKE_LB_MAX_SLOTS", slots.to_string()) };
    let dir = tempfile::tempdir()?;
    let labdir = dir.path().join("bench-cp");
    std::fs::create_dir_all(&labdir)?;
    std::fs::write(labdir.join("lab.yaml"), LAB_YAML)?;
    let lab = Lab::load(&labdir)?;
    let _ = lab.down();
    lab.up()?;
    let result = measure(&lab, &labdir, opts);
    let down = lab.down();
    for which in ["ipt", "nft"] {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &format!("{SCRATCH_NS}-{which}")])
            .status();
    }
    let mut report = result?;
    down?;
    report.compute_ratios("strake (agent reconcile)", "iptables-restore", |_| false);
    report.compute_ratios("strake (agent reconcile)", "nft -f", |_| false);
    report.compute_ratios(
        "strake (end to end, YAML parse included)",
        "iptables-restore",
        |_| false,
    );
    report.compute_ratios("strake (end to end, YAML parse included)", "nft -f", |_| {
        false
    });
    print!("{}", report.markdown());
    report.write(out, "lb-control-plane")
}

fn measure(lab: &Lab, labdir: &Path, opts: &Opts) -> Result<Report> {
    let log = lab.agent_log(NODE);
    let mut report = Report {
        name: format!("Control plane: installing Services of {} backends, and changing one", opts.backends),
        command: format!(
            "sudo target/release/strake-bench lb-control --scales {} --rounds {} --limit-secs {}",
            opts.scales.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
            opts.rounds,
            opts.limit_secs
        ),
        date: crate::report::now(),
        machine: crate::report::machine(),
        notes: vec![
            "strake (agent reconcile): the agent's model + plan + BPF map writes, from its log".into(),
            "strake (end to end): YAML files renamed into the lab's directory until the agent reports that revision applied; includes reading and parsing the YAML".into(),
            "iptables-restore (Debian 12: nf_tables backend) and nft -f of kube-proxy's rules, into an empty namespace; change: what kube-proxy 1.28+ restores for one changed endpoint".into(),
            format!("backends: {} per Service, distinct, from a pool of {POOL} addresses; health checks off", opts.backends),
            format!("a baseline still running after {} s is stopped and shown as {} s (a lower bound); its change is then not measured", opts.limit_secs, opts.limit_secs),
            format!("nft: {}", nft_version()),
        ],
        samples: vec![],
        ratios: vec![],
    };
    let mut data: std::collections::BTreeMap<(String, String, String), Vec<f64>> =
        Default::default();
    let mut push = |case: String, variant: &str, ms: f64| {
        eprintln!("{case:>36} {variant:>44}: {ms:>10.1} ms");
        data.entry((case, variant.to_string(), "time".to_string()))
            .or_default()
            .push(ms);
    };
    let svc_file = labdir.join("services.yaml");
    let changed_file = labdir.join("changed.yaml");
    for &n in &opts.scales {
        let case = format!("install {n} Services");
        let mut body = String::with_capacity(n * 900);
        for i in 1..n {
            body += &service_yaml(i, &backends_of(i, opts.backends));
        }
        let first = service_yaml(0, &backends_of(0, opts.backends));
        let svcs = kube_svcs(n, opts.backends);
        let ipt = kube_rules::iptables(&svcs);
        let nft = kube_rules::nft(&svcs);
        for round in 0..opts.rounds {
            // strake: from nothing to n Services.
            let _ = std::fs::remove_file(&svc_file);
            let _ = std::fs::remove_file(&changed_file);
            lab.wait_synced(Duration::from_secs(600))?;
            let t = Instant::now();
            write_atomic(&svc_file, &body)?;
            write_atomic(&changed_file, &first)?;
            lab.wait_synced(Duration::from_secs(1200))?;
            let e2e = t.elapsed().as_secs_f64() * 1000.0;
            let st: strake_api::LbStatus = lab.agent(NODE, strake_api::Request::LbList)?;
            if st.services.len() != n {
                bail!(
                    "the agent holds {} services, not {n}: {:?}",
                    st.services.len(),
                    st.problems.first()
                );
            }
            push(
                case.clone(),
                "strake (end to end, YAML parse included)",
                e2e,
            );
            push(
                case.clone(),
                "strake (agent reconcile)",
                last_reconcile_ms(&log).context("no reconcile time in the agent log")?,
            );

            let ipt_ns = scratch("ipt")?;
            let ipt_ms = baseline(&ipt_ns, "iptables-restore", &["-w"], &ipt, opts.limit_secs)?;
            push(case.clone(), "iptables-restore", ipt_ms);
            let nft_ns = scratch("nft")?;
            let nft_ms = baseline(&nft_ns, "nft", &["-f", "-"], &nft, opts.limit_secs)?;
            push(case.clone(), "nft -f", nft_ms);
            let limit_ms = opts.limit_secs as f64 * 1000.0;

            // One endpoint of one Service changes.
            let case = format!("change 1 backend of 1 Service among {n}");
            let mut new_backends = backends_of(0, opts.backends);
            new_backends[0] = Ipv4Addr::new(10, 250, 0, 1 + round as u8);
            let t = Instant::now();
            write_atomic(&changed_file, &service_yaml(0, &new_backends))?;
            lab.wait_synced(Duration::from_secs(600))?;
            push(
                case.clone(),
                "strake (end to end, YAML parse included)",
                t.elapsed().as_secs_f64() * 1000.0,
            );
            push(
                case.clone(),
                "strake (agent reconcile)",
                last_reconcile_ms(&log).context("no reconcile time")?,
            );
            let mut new_svcs = svcs.clone();
            new_svcs[0].backends = new_backends.iter().map(|b| (*b, 9000)).collect();
            // Changes go onto the rules just installed (when they went
            // in within the limit).
            if ipt_ms < limit_ms {
                let change = kube_rules::iptables_change_one(&new_svcs, 0, &svcs[0]);
                push(
                    case.clone(),
                    "iptables-restore",
                    timed(|| {
                        run_with_stdin(&ipt_ns, "iptables-restore", &["-w", "--noflush"], &change)
                    })?,
                );
            }
            if nft_ms < limit_ms {
                let change = kube_rules::nft_change_one(0, &svcs[0], &new_svcs[0]);
                push(
                    case.clone(),
                    "nft -f",
                    timed(|| run_with_stdin(&nft_ns, "nft", &["-f", "-"], &change))?,
                );
            }
        }
    }
    for ((case, variant, metric), v) in data {
        report.add(&case, &variant, &metric, "ms", v);
    }
    Ok(report)
}

/// `nft --version`, for the report (nft's speed on big rule sets depends on it).
pub fn nft_version() -> String {
    std::process::Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
