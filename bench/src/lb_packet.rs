//! What the load balancer's programs cost per packet, as the kernel times
//! them in BPF_PROG_TEST_RUN: connection-table hits with `repeat` (the same
//! packet many times), new flows as single runs with a fresh source port each
//! (a table miss, a Maglev lookup and an insert every time). Runs in a
//! private namespace with the bpf-tests topology.

use crate::report::Report;
use anyhow::Result;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use strake_bpf_tests::pkt::tcp;
use strake_bpf_tests::*;
use strake_datapath::shared::STRAKE_SVC_F_EXTERNAL;

const ANY_MAC: [u8; 6] = [0xee; 6];

pub struct Opts {
    pub rounds: usize,
    pub repeat: u32,
    pub new_flows: u32,
}

type Rows = Arc<Mutex<Vec<(String, f64)>>>;

fn measure(opts: &Opts, rows: Rows) -> Result<()> {
    let (repeat, new_flows) = (opts.repeat, opts.new_flows);
    with_testnet(move |net| {
        net.add_local_pods()?;
        net.lb_node()?;
        let up0 = net.topo.up0.clone();
        let lxc1 = net.topo.lxc1.index;
        let add = |k: &str, ns: f64| rows.lock().unwrap().push((k.to_string(), ns));

        // A ClusterIP with a local backend, and a LoadBalancer IP with a
        // local and a remote one (SNAT).
        net.add_service(&TestService::tcp(VIP, 80, vec![(POD2, 8080, true)]))?;
        let mut local = TestService::tcp(LB_IP, 80, vec![(POD2, 8080, true)]);
        local.flags = STRAKE_SVC_F_EXTERNAL;
        local.frontend_id = 2;
        local.set_id = 2;
        net.add_service(&local)?;
        let remote_vip = Ipv4Addr::new(203, 0, 113, 11);
        let mut remote = TestService::tcp(remote_vip, 80, vec![(REMOTE_POD, 8080, false)]);
        remote.flags = STRAKE_SVC_F_EXTERNAL;
        remote.frontend_id = 3;
        remote.set_id = 3;
        net.add_service(&remote)?;

        let xdp = |p: &[u8], r: u32| -> Result<f64> {
            net.run_xdp(up0.index, p)?; // the first run makes the table entry
            Ok(net
                .dp
                .test_run_xdp(p, Some(&xdp_ctx(up0.index, p.len())), r)?
                .duration_ns as f64)
        };
        // Not a service: the lookup misses, the packet passes.
        let other = tcp(PEER_NODE_MAC, up0.mac, PEER_NODE, NODE_IP, 50000, 22, 64);
        add(
            "xdp: to this node's address, not a service (pass)",
            xdp(&other, repeat)?,
        );
        let through = tcp(PEER_NODE_MAC, up0.mac, PEER_NODE, POD2, 50000, 8080, 64);
        add(
            "xdp: to a pod of this node, not a service (pass)",
            xdp(&through, repeat)?,
        );
        let hit = tcp(PEER_NODE_MAC, up0.mac, PEER_NODE, LB_IP, 50000, 80, 64);
        add(
            "xdp: LoadBalancer IP, local backend, table hit",
            xdp(&hit, repeat)?,
        );
        // The same hit as single runs: what a single run's timing adds.
        let mut single = 0.0;
        for _ in 0..new_flows {
            single += net
                .dp
                .test_run_xdp(&hit, Some(&xdp_ctx(up0.index, hit.len())), 1)?
                .duration_ns as f64;
        }
        add(
            "xdp: LoadBalancer IP, local backend, table hit, as single runs (calibration)",
            single / new_flows as f64,
        );
        let hit = tcp(PEER_NODE_MAC, up0.mac, PEER_NODE, remote_vip, 50000, 80, 64);
        add(
            "xdp: LoadBalancer IP, remote backend (SNAT, XDP_TX), table hit",
            xdp(&hit, repeat)?,
        );
        let new_flow = |vip: Ipv4Addr, base: u16| -> Result<f64> {
            let mut total = 0.0;
            for i in 0..new_flows {
                let p = tcp(
                    PEER_NODE_MAC,
                    up0.mac,
                    PEER_NODE,
                    vip,
                    base.wrapping_add(i as u16),
                    80,
                    64,
                );
                total += net
                    .dp
                    .test_run_xdp(&p, Some(&xdp_ctx(up0.index, p.len())), 1)?
                    .duration_ns as f64;
            }
            Ok(total / new_flows as f64)
        };
        add(
            "xdp: LoadBalancer IP, local backend, new flow",
            new_flow(LB_IP, 1000)?,
        );
        add(
            "xdp: LoadBalancer IP, remote backend (SNAT), new flow",
            new_flow(remote_vip, 1000)?,
        );

        let tc = |p: &[u8], r: u32| -> Result<f64> {
            net.run("from_pod", lxc1, p)?;
            Ok(net
                .dp
                .test_run("from_pod", p, Some(&skb_ctx(lxc1)), r)?
                .duration_ns as f64)
        };
        let pod = tcp(POD1_MAC, ANY_MAC, POD1, POD2, 40000, 8080, 64);
        add(
            "tc from_pod: pod to pod, no service (routing only)",
            tc(&pod, repeat)?,
        );
        let svc = tcp(POD1_MAC, ANY_MAC, POD1, VIP, 40000, 80, 64);
        add("tc from_pod: ClusterIP, table hit", tc(&svc, repeat)?);
        let mut total = 0.0;
        for i in 0..new_flows {
            let p = tcp(POD1_MAC, ANY_MAC, POD1, VIP, 1000 + i as u16, 80, 64);
            total += net
                .dp
                .test_run("from_pod", &p, Some(&skb_ctx(lxc1)), 1)?
                .duration_ns as f64;
        }
        add("tc from_pod: ClusterIP, new flow", total / new_flows as f64);
        Ok(())
    })
}

pub fn run(opts: &Opts, out: &Path) -> Result<()> {
    let rows: Rows = Default::default();
    for _ in 0..opts.rounds {
        measure(opts, rows.clone())?;
    }
    let mut report = Report {
        name: "Load balancer programs: nanoseconds per packet (BPF_PROG_TEST_RUN)".into(),
        command: format!(
            "sudo target/release/strake-bench lb-packet --rounds {} --repeat {} --new-flows {}",
            opts.rounds, opts.repeat, opts.new_flows
        ),
        date: crate::report::now(),
        machine: crate::report::machine(),
        notes: vec![
            format!("table hits: one packet run {} times, the kernel's average", opts.repeat),
            format!("new flows: {} single runs with fresh source ports (each a table miss, a Maglev lookup and inserts), the kernel's per-run time averaged; single runs carry the test harness's timer overhead (tens of ns)", opts.new_flows),
        ],
        samples: vec![],
        ratios: vec![],
    };
    let rows = rows.lock().unwrap().clone();
    let mut keys: Vec<String> = rows.iter().map(|(k, _)| k.clone()).collect();
    keys.dedup();
    let mut seen = std::collections::BTreeSet::new();
    for k in keys {
        if !seen.insert(k.clone()) {
            continue;
        }
        let v: Vec<f64> = rows
            .iter()
            .filter(|(a, _)| *a == k)
            .map(|(_, v)| *v)
            .collect();
        report.add(&k, "strake", "per packet", "ns", v);
    }
    print!("{}", report.markdown());
    report.write(out, "lb-packet")
}
