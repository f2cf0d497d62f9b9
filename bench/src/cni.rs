//! CNI ADD and DEL latency as a runtime sees it: the strake-cni binary run
//! through the deploy conflist in a node's namespace (process start, agent
//! round trips, netlink in both namespaces, program attach), one by one and
//! 20 at a time.

use crate::report::{percentile, Report};
use anyhow::Result;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use strake_lab::cni_runtime::ConfList;
use strake_lab::Lab;

const LAB_YAML: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: bc-a}
spec: {podCIDR: 10.251.0.0/20}
status: {addresses: [{type: InternalIP, address: 10.0.8.1}]}
"#;

pub fn run(n: usize, parallel: usize, out: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let labdir = dir.path().join("bench-cni");
    std::fs::create_dir_all(&labdir)?;
    std::fs::write(labdir.join("lab.yaml"), LAB_YAML)?;
    let lab = Arc::new(Lab::load(&labdir)?);
    let _ = lab.down();
    lab.up()?;
    let r = measure(&lab, n, parallel);
    let down = lab.down();
    let report = r?;
    down?;
    print!("{}", report.markdown());
    report.write(out, "cni-latency")
}

/// The reference plugin closest to strake's shape: a veth per pod, /32
/// routes, host-local IPAM (files under a lock). Same runtime, same node.
fn ptp_conflist(dir: &Path) -> Result<ConfList> {
    ConfList::from_json(
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "ptp-baseline",
            "plugins": [{
                "type": "ptp",
                "ipam": {"type": "host-local", "subnet": "10.252.0.0/20", "dataDir": dir.join("host-local").display().to_string()}
            }]
        })
        .to_string()
        .as_bytes(),
    )
}

/// Times ADD for every name with `threads` workers, then DEL likewise.
fn timed(
    lab: &Arc<Lab>,
    list: &ConfList,
    names: &[String],
    threads: usize,
) -> Result<(Vec<f64>, Vec<f64>, f64, f64)> {
    let run = |del: bool| -> Result<(Vec<f64>, f64)> {
        let chunks: Vec<Vec<String>> = names
            .chunks(names.len().div_ceil(threads))
            .map(|c| c.to_vec())
            .collect();
        let t0 = Instant::now();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let lab = lab.clone();
                let list = list.clone();
                std::thread::spawn(move || -> Result<Vec<f64>> {
                    let rt = lab.runtime("bc-a");
                    let mut v = Vec::new();
                    for n in chunk {
                        let att = lab.attachment("bench", &n);
                        let t = Instant::now();
                        if del {
                            rt.del(&list, &att).map_err(|e| anyhow::anyhow!("{e}"))?;
                        } else {
                            rt.add(&list, &att).map_err(|e| anyhow::anyhow!("{e}"))?;
                        }
                        v.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    Ok(v)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().unwrap()?);
        }
        Ok((all, names.len() as f64 / t0.elapsed().as_secs_f64()))
    };
    let (adds, add_rate) = run(false)?;
    let (dels, del_rate) = run(true)?;
    Ok((adds, dels, add_rate, del_rate))
}

fn measure(lab: &Arc<Lab>, n: usize, parallel: usize) -> Result<Report> {
    let names: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
    for name in &names {
        lab.pod_sandbox("bench", name)?;
    }
    let mut report = Report {
        name: "CNI ADD/DEL latency (strake-cni through the deploy conflist, as a runtime runs it)".into(),
        command: format!("sudo target/release/strake-bench cni --pods {n} --parallel {parallel}"),
        date: crate::report::now(),
        machine: crate::report::machine(),
        notes: vec![
            "each call is a process: strake-cni started in the node's netns, config on stdin".into(),
            "ADD: allocate (agent), veth + routes + neighbour (netlink, two namespaces), attach (map entry + 2 TCX links)".into(),
            "baseline: Debian's reference ptp plugin with host-local IPAM, same runtime, same node, same run".into(),
            "the kernel waits for an RCU grace period, RTNL held, for each TCX link attached (ADD, two per pod) and each one dropped with the veth (DEL): docs/design.md, \"CNI ADD and DEL: where the time goes\"".into(),
        ],
        samples: vec![],
        ratios: vec![],
    };
    let ptp = ptp_conflist(&lab.root)?;
    for (label, threads) in [("sequential", 1), ("parallel", parallel)] {
        let case = if threads == 1 {
            label.to_string()
        } else {
            format!("{threads}-way parallel")
        };
        for (variant, list) in [("strake", &lab.conflist), ("ptp+host-local", &ptp)] {
            let (mut adds, mut dels, add_rate, del_rate) = timed(lab, list, &names, threads)?;
            for (op, v, rate) in [("ADD", &mut adds, add_rate), ("DEL", &mut dels, del_rate)] {
                let p50 = percentile(v, 50.0);
                let p99 = percentile(v, 99.0);
                eprintln!(
                    "{case:>16} {variant:>15} {op}: p50 {p50:.1} ms, p99 {p99:.1} ms, {rate:.0}/s"
                );
                report.add(&case, variant, &format!("{op} p50"), "ms", vec![p50]);
                report.add(&case, variant, &format!("{op} p99"), "ms", vec![p99]);
                report.add(
                    &case,
                    variant,
                    &format!("{op} throughput"),
                    "ops/s",
                    vec![rate],
                );
            }
        }
    }
    report.compute_ratios("strake", "ptp+host-local", |m| m.contains("throughput"));
    Ok(report)
}
