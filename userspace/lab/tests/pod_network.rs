//! Pod networking in a real lab: namespaces, veths, the agents and their eBPF
//! programs, real TCP/UDP/ICMP traffic.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strake_api::{AgentStatus, Request};
use strake_lab::{probe, procs};

fn two_nodes(prefix: &str) -> (Vec<String>, Vec<(String, String, String)>) {
    let nodes = vec![format!("{prefix}a"), format!("{prefix}b")];
    let pods = (0..6)
        .map(|i| {
            (
                format!("{prefix}ns{}", i % 2),
                format!("p{i}"),
                nodes[i / 3].clone(),
            )
        })
        .collect();
    (nodes, pods)
}

#[test]
fn every_pod_reaches_every_pod_and_node_over_tcp_udp_and_icmp() {
    if !strake_test_support::root() {
        return;
    }
    let (nodes, pods) = two_nodes("cx");
    let lab = lab(
        "cx",
        &[
            N {
                name: &nodes[0],
                cidr: "10.244.1.0/24",
                ip: "10.0.0.1",
            },
            N {
                name: &nodes[1],
                cidr: "10.244.2.0/24",
                ip: "10.0.0.2",
            },
        ],
        &pods
            .iter()
            .map(|(ns, n, node)| P { ns, name: n, node })
            .collect::<Vec<_>>(),
    );
    // A server on each node too, for pod -> node TCP.
    for n in &lab.spec.nodes {
        let log = lab.node_dir(&n.name).join("serve.log");
        procs::spawn_in_netns(
            &lab.node_netns(&n.name),
            &procs::bin("strake").unwrap(),
            &[
                "lab".into(),
                "serve".into(),
                "--name".into(),
                format!("node/{}", n.name),
                "--tcp".into(),
                "7777".into(),
            ],
            &log,
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));

    let mut failures = Vec::new();
    for (sns, sname, _) in &pods {
        let from = lab.pod_netns(sns, sname);
        for (dns, dname, _) in &pods {
            if (sns, sname) == (dns, dname) {
                continue;
            }
            let ip = lab.pod_ip(dns, dname).unwrap();
            let want = format!("{dns}/{dname}");
            match probe::tcp(&from, addr(ip, 80), T) {
                Ok(got) if got == want => {}
                r => failures.push(format!("{sns}/{sname} -> {want} TCP: {r:?}")),
            }
            match probe::udp(&from, addr(ip, 80), T) {
                Ok(got) if got == want => {}
                r => failures.push(format!("{sns}/{sname} -> {want} UDP: {r:?}")),
            }
            if let Err(e) = probe::ping(&from, ip) {
                failures.push(format!("{sns}/{sname} -> {want} ICMP: {e:#}"));
            }
        }
        for n in &lab.spec.nodes {
            if let Err(e) = probe::ping(&from, n.ip) {
                failures.push(format!("{sns}/{sname} -> node {} ICMP: {e:#}", n.name));
            }
            match probe::tcp(&from, addr(n.ip, 7777), T) {
                Ok(g) if g == format!("node/{}", n.name) => {}
                r => failures.push(format!("{sns}/{sname} -> node {} TCP: {r:?}", n.name)),
            }
        }
    }
    for n in &lab.spec.nodes {
        let from = lab.node_netns(&n.name);
        for (dns, dname, _) in &pods {
            let ip = lab.pod_ip(dns, dname).unwrap();
            if let Err(e) = probe::ping(&from, ip) {
                failures.push(format!("node {} -> {dns}/{dname} ICMP: {e:#}", n.name));
            }
            match probe::tcp(&from, addr(ip, 80), T) {
                Ok(g) if g == format!("{dns}/{dname}") => {}
                r => failures.push(format!("node {} -> {dns}/{dname} TCP: {r:?}", n.name)),
            }
            match probe::udp(&from, addr(ip, 80), T) {
                Ok(g) if g == format!("{dns}/{dname}") => {}
                r => failures.push(format!("node {} -> {dns}/{dname} UDP: {r:?}", n.name)),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The traffic took the eBPF fast path: local redirects and FIB routing.
    for n in &nodes {
        let st: AgentStatus = lab.agent(n, Request::Status).unwrap();
        let c = |name: &str| {
            st.counters
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.packets)
                .unwrap_or(0)
        };
        assert!(
            c("fwd_local") > 0,
            "node {n}: no packet was redirected into a local pod"
        );
        assert!(
            c("fwd_fib") + c("fwd_neigh") > 0,
            "node {n}: no packet was routed by the FIB fast path"
        );
        assert_eq!(
            c("drop_spoofed") + c("drop_malformed"),
            0,
            "node {n}: unexpected drops"
        );
        assert_eq!(st.endpoints, 3);
        assert_eq!(
            st.routes, 2,
            "one route to the other node, one blackhole for our block"
        );
    }
}

/// The agent is killed with SIGKILL and restarted while a TCP stream between
/// pods on different nodes runs: the stream never stops and is never reset.
#[test]
fn a_tcp_stream_survives_kill_9_and_restart_of_the_agents() {
    if !strake_test_support::root() {
        return;
    }
    let (nodes, pods) = two_nodes("rs");
    let lab = lab(
        "rs",
        &[
            N {
                name: &nodes[0],
                cidr: "10.244.1.0/24",
                ip: "10.0.0.1",
            },
            N {
                name: &nodes[1],
                cidr: "10.244.2.0/24",
                ip: "10.0.0.2",
            },
        ],
        &pods
            .iter()
            .map(|(ns, n, node)| P { ns, name: n, node })
            .collect::<Vec<_>>(),
    );
    let (cns, cname, _) = &pods[0]; // on node a
    let (sns, sname, _) = &pods[3]; // on node b
    let server = lab.pod_ip(sns, sname).unwrap();
    let (stream, greeting) =
        probe::tcp_stream(&lab.pod_netns(cns, cname), addr(server, 80), T).unwrap();
    assert_eq!(greeting, format!("{sns}/{sname}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    // Writer: a steady stream of bytes. Reader: counts the echo.
    let echoed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, stop) = (stream.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            let chunk = vec![0x5au8; 4096];
            while !stop.load(Ordering::Relaxed) {
                probe::write_all(&s, &chunk)?;
                std::thread::sleep(Duration::from_millis(2));
            }
            // A clean end: the echo server sees EOF and closes its side.
            s.shutdown(std::net::Shutdown::Write)
        })
    };
    let reader = {
        let (mut s, echoed, stop) = (stream.try_clone().unwrap(), echoed.clone(), stop.clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut buf = vec![0u8; 65536];
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return if stop.load(Ordering::Relaxed) {
                        Ok(())
                    } else {
                        Err(std::io::Error::other("connection closed while streaming"))
                    };
                }
                echoed.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    let wait_rise = |what: &str| {
        let before = echoed.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(3);
        while echoed.load(Ordering::Relaxed) < before + 256 * 1024 {
            assert!(
                Instant::now() < deadline,
                "bytes stopped flowing {what} (stuck at {before})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_rise("before the kill");

    for node in &nodes {
        let old = lab.agent_pid(node).unwrap();
        let entries_before: AgentStatus = lab.agent(node, Request::Status).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let t = Instant::now();
        while procs::alive(old) {
            assert!(t.elapsed() < Duration::from_secs(5), "agent did not die");
            std::thread::sleep(Duration::from_millis(5));
        }
        wait_rise(&format!("while the agent of {node} was dead"));
        let new = lab.start_agent(node).unwrap();
        assert_ne!(new, old);
        lab.wait_agent_ready(node, Duration::from_secs(20)).unwrap();
        wait_rise(&format!("after the agent of {node} restarted"));
        // Adopted, not rebuilt: the same endpoints with the same ids.
        let after: AgentStatus = lab.agent(node, Request::Status).unwrap();
        assert_eq!(after.endpoints, entries_before.endpoints);
        assert_eq!(after.maps[0].entries, entries_before.maps[0].entries);
        assert_eq!(
            after
                .programs
                .iter()
                .map(|p| p.attachments)
                .collect::<Vec<_>>(),
            entries_before
                .programs
                .iter()
                .map(|p| p.attachments)
                .collect::<Vec<_>>()
        );
    }
    wait_rise("at the end");
    stop.store(true, Ordering::Relaxed);
    writer
        .join()
        .unwrap()
        .expect("the writer saw no error (no reset)");
    reader
        .join()
        .unwrap()
        .expect("the reader saw no error (no reset)");
    let log = std::fs::read_to_string(lab.agent_log(&nodes[0])).unwrap();
    assert!(
        log.contains("endpoints restored"),
        "the new agent restored endpoints:\n{log}"
    );
}

#[test]
fn fifty_parallel_adds_then_dels_then_gc_leave_nothing_behind() {
    if !strake_test_support::root() {
        return;
    }
    let lab = lab(
        "par",
        &[N {
            name: "para",
            cidr: "10.244.8.0/24",
            ip: "10.0.0.1",
        }],
        &[],
    );
    let node = "para";
    let names: Vec<String> = (0..50).map(|i| format!("x{i}")).collect();
    for n in &names {
        lab.pod_sandbox("par", n).unwrap();
    }
    let lab = Arc::new(lab);
    let add = |names: &[String]| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| {
                let (lab, n) = (lab.clone(), n.clone());
                std::thread::spawn(move || {
                    lab.runtime(node)
                        .add(&lab.conflist, &lab.attachment("par", &n))
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    };
    let results = add(&names);
    let ips: BTreeSet<String> = results
        .iter()
        .map(|r| {
            r.as_ref().expect("ADD succeeded")["ips"][0]["address"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ips.len(), 50, "50 distinct addresses");
    // All reachable from the node.
    for ip in &ips {
        probe::ping(
            &lab.node_netns(node),
            ip.trim_end_matches("/32").parse().unwrap(),
        )
        .unwrap();
    }
    let st: AgentStatus = lab.agent(node, Request::Status).unwrap();
    assert_eq!((st.endpoints, st.maps[0].entries), (50, 50));

    // 50 parallel DELs.
    let handles: Vec<_> = names
        .iter()
        .map(|n| {
            let (lab, n) = (lab.clone(), n.clone());
            std::thread::spawn(move || {
                lab.runtime(node)
                    .del(&lab.conflist, &lab.attachment("par", &n))
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().expect("DEL succeeded");
    }
    assert_node_empty(&lab, node);

    // GC with a partial valid list removes exactly the rest.
    let some = &names[..10];
    for r in add(some) {
        r.expect("ADD succeeded");
    }
    let keep: Vec<(String, String)> = some[..4]
        .iter()
        .map(|n| (lab.container_id("par", n), "eth0".to_string()))
        .collect();
    lab.runtime(node).gc(&lab.conflist, &keep).unwrap();
    let eps: Vec<strake_api::EndpointView> = lab.agent(node, Request::Endpoints).unwrap();
    let left: BTreeSet<String> = eps.iter().map(|e| e.container_id.clone()).collect();
    assert_eq!(
        left,
        keep.iter().map(|(c, _)| c.clone()).collect::<BTreeSet<_>>(),
        "GC kept exactly the valid ones"
    );
    let veths = host_veths(&lab, node);
    assert_eq!(veths.len(), 4, "GC removed the other veths: {veths:?}");
    let st: AgentStatus = lab.agent(node, Request::Status).unwrap();
    assert_eq!(st.maps[0].entries, 4);
    // ...and the kept ones still work.
    for e in &eps {
        probe::ping(&lab.node_netns(node), e.ip).unwrap();
    }
    lab.runtime(node).gc(&lab.conflist, &[]).unwrap();
    assert_node_empty(&lab, node);
}

fn host_veths(lab: &strake_lab::Lab, node: &str) -> Vec<String> {
    lab.in_node(node, |nl| async move {
        Ok(nl
            .links()
            .await?
            .into_iter()
            .filter(|l| l.name.starts_with("strk"))
            .map(|l| l.name)
            .collect())
    })
    .unwrap()
}

/// No address, veth, route, map entry, pinned link or IPAM record is left.
fn assert_node_empty(lab: &strake_lab::Lab, node: &str) {
    let st: AgentStatus = lab.agent(node, Request::Status).unwrap();
    assert_eq!(st.endpoints, 0, "IPAM records left");
    assert_eq!(st.maps[0].entries, 0, "map entries left");
    assert!(
        st.programs
            .iter()
            .filter(|p| p.attach_point.starts_with("pod"))
            .all(|p| p.attachments == 0),
        "pinned links left"
    );
    assert!(
        host_veths(lab, node).is_empty(),
        "veths left: {:?}",
        host_veths(lab, node)
    );
    let routes = lab
        .in_node(node, |nl| async move {
            nl.routes(Some(strake_netlink::STRAKE_POD_ROUTE_PROTO))
                .await
        })
        .unwrap();
    assert!(routes.is_empty(), "pod routes left: {routes:?}");
    let saved = std::fs::read_to_string(lab.node_dir(node).join("state/endpoints.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(
        v["allocations"].as_array().unwrap().len(),
        0,
        "IPAM file still has records: {saved}"
    );
}
