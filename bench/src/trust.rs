//! What the trust checks (docs/threat-model.md) cost per packet, as the
//! kernel times them in BPF_PROG_TEST_RUN, against the same program with the
//! check off in the same run: `from_wire` delivering a packet from another
//! node into a local pod with the uplink's reverse-path check strict or
//! loose (a FIB lookup) against off (the impossible-source lookups only),
//! and `to_wire` wrapping the agent's health-check probe against an
//! unmarked packet it leaves alone.

use crate::report::Report;
use anyhow::Result;
use std::path::Path;
use std::sync::{Arc, Mutex};
use strake_bpf_tests::pkt::tcp;
use strake_bpf_tests::*;
use strake_datapath::trust::Rpf;

const MARK: u32 = 0x5354_0000;

pub struct Opts {
    pub rounds: usize,
    /// Single runs per case and round.
    pub runs: u32,
}

/// (case, variant, ns per packet).
type Rows = Arc<Mutex<Vec<(String, String, f64)>>>;

fn measure(opts: &Opts, rows: Rows) -> Result<()> {
    let runs = opts.runs;
    with_testnet(move |net| {
        net.add_local_pods()?;
        net.lb_node()?;
        net.dp.policy.set_cluster_nodes(&[NODE_IP, PEER_NODE])?;
        net.dp.policy.set_health_check_ports(Some((61000, 61255)))?;
        let up0 = net.topo.up0.clone();
        let add = |c: &str, v: &str, ns: f64| {
            rows.lock()
                .unwrap()
                .push((c.to_string(), v.to_string(), ns))
        };
        // Single runs, averaged: both programs rewrite the packet (TTL,
        // MACs, encapsulation) and a repeated test run does not reset it
        // between repeats. The first run makes the flow entries (policy),
        // so every timed run takes the established path.
        // Every timed run must take the path it is named for (delivered,
        // wrapped, left alone), not a cheaper drop: `want` is its verdict
        // and the length of the packet it leaves.
        let timed = |net: &TestNet,
                     prog: &str,
                     mark: u32,
                     p: &[u8],
                     want: (u32, usize)|
         -> Result<f64> {
            let mut total = 0.0;
            for i in 0..=runs {
                let out = net.run_ctx(prog, up0.index, up0.index, mark, p)?;
                anyhow::ensure!(
                    (out.retval, out.data.len()) == want,
                    "{prog}: verdict {} and {} bytes, expected {want:?}: the case does not take its path",
                    out.retval,
                    out.data.len()
                );
                if i > 0 {
                    total += out.duration_ns as f64;
                }
            }
            Ok(total / runs as f64)
        };
        let from_node = tcp(PEER_NODE_MAC, up0.mac, REMOTE_POD, POD2, 40000, 80, 64);
        for (rpf, name) in [
            (Rpf::Off, "rpf off"),
            (Rpf::Loose, "rpf loose"),
            (Rpf::Strict, "rpf strict"),
        ] {
            net.dp.trust.set_config(MARK, rpf)?;
            add(
                "from_wire: another node's pod into a local pod",
                name,
                timed(
                    net,
                    "from_wire",
                    0,
                    &from_node,
                    (TC_ACT_REDIRECT, from_node.len()),
                )?,
            );
        }
        let probe = tcp(up0.mac, PEER_NODE_MAC, NODE_IP, REMOTE_POD, 61001, 80, 64);
        add(
            "to_wire: a packet leaving the uplink",
            "unmarked",
            timed(net, "to_wire", 0, &probe, (TC_ACT_OK, probe.len()))?,
        );
        add(
            "to_wire: a packet leaving the uplink",
            "health-check probe (wrapped)",
            timed(net, "to_wire", MARK, &probe, (TC_ACT_OK, probe.len() + 20))?,
        );
        Ok(())
    })
}

pub fn run(opts: &Opts, out: &Path) -> Result<()> {
    let rows: Rows = Default::default();
    for _ in 0..opts.rounds {
        measure(opts, rows.clone())?;
    }
    let mut report = Report {
        name: "Trust checks: nanoseconds per packet (BPF_PROG_TEST_RUN)".into(),
        command: format!(
            "sudo target/release/strake-bench trust --rounds {} --runs {}",
            opts.rounds, opts.runs
        ),
        date: crate::report::now(),
        machine: crate::report::machine(),
        notes: vec![
            format!("{} single runs per case and round, the kernel's per-run time averaged (single runs carry the harness's timer overhead, alike for both sides of a ratio)", opts.runs),
            "from_wire: the uplink's reverse-path check (--uplink-rpf) against off in the same run; off still drops impossible sources (this node's, hairpin, gateway, local pods)".into(),
            "to_wire: the health-check probe wrap (a FIB lookup for the next hop, IPIP encapsulation) against an unmarked packet".into(),
        ],
        samples: vec![],
        ratios: vec![],
    };
    let rows = rows.lock().unwrap().clone();
    let mut keys: Vec<(String, String)> = Vec::new();
    for (c, v, _) in &rows {
        if !keys.contains(&(c.clone(), v.clone())) {
            keys.push((c.clone(), v.clone()));
        }
    }
    for (c, v) in keys {
        let vals: Vec<f64> = rows
            .iter()
            .filter(|(a, b, _)| *a == c && *b == v)
            .map(|(_, _, x)| *x)
            .collect();
        report.add(&c, &v, "per packet", "ns", vals);
    }
    report.compute_ratios("rpf strict", "rpf off", |_| false);
    report.compute_ratios("rpf loose", "rpf off", |_| false);
    report.compute_ratios("health-check probe (wrapped)", "unmarked", |_| false);
    print!("{}", report.markdown());
    report.write(out, "trust")
}
