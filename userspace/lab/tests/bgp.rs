//! BGP across racks in a real lab: two subnets, two nodes each, a BIRD
//! router per rack, every node running BIRD through its agent. What a user
//! of the fabric would see: pod traffic routed unencapsulated (captured on
//! the wire), the routers' tables, a crashed BIRD that costs no traffic,
//! the VXLAN fallback where the fabric does not carry pod routes, and
//! LoadBalancer addresses announced by exactly the nodes that may serve them.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use strake_api::{AgentStatus, BgpStatus, Request};
use strake_lab::{probe, procs, Lab};

const LB_CLUSTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const LB_LOCAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

/// (node suffix, rack, pod block, InternalIP)
const NODES: [(&str, &str, &str, &str); 4] = [
    ("a1", "a", "10.244.1.0/24", "10.0.1.11"),
    ("a2", "a", "10.244.2.0/24", "10.0.1.12"),
    ("b1", "b", "10.244.3.0/24", "10.0.2.11"),
    ("b2", "b", "10.244.4.0/24", "10.0.2.12"),
];

/// The lab's files: fabrics core, rack-a, rack-b; routers `{p}ta`, `{p}tb`
/// (peered over the core when `peered`); a client `{p}cl` on the core
/// behind `{p}ta`; a web pod per node (namespace `p`, pods `w-<node>`).
fn racks(p: &str, peered: bool) -> Vec<(&'static str, String)> {
    let (ta, tb) = (format!("{p}ta"), format!("{p}tb"));
    let peers = |other: &str| {
        if peered {
            format!("[{other}]")
        } else {
            "[]".into()
        }
    };
    let network = format!(
        "apiVersion: lab.strake.dev/v1\nkind: Fabric\nmetadata: {{name: core}}\nspec: {{subnet: 10.0.0.0/24}}\n---\n\
apiVersion: lab.strake.dev/v1\nkind: Fabric\nmetadata: {{name: rack-a}}\nspec: {{subnet: 10.0.1.0/24}}\n---\n\
apiVersion: lab.strake.dev/v1\nkind: Fabric\nmetadata: {{name: rack-b}}\nspec: {{subnet: 10.0.2.0/24}}\n---\n\
apiVersion: lab.strake.dev/v1\nkind: Router\nmetadata: {{name: {ta}}}\nspec:\n  asNumber: 65001\n  interfaces: [{{fabric: rack-a, address: 10.0.1.1}}, {{fabric: core, address: 10.0.0.1}}]\n  nodes: [rack-a]\n  peers: {pa}\n---\n\
apiVersion: lab.strake.dev/v1\nkind: Router\nmetadata: {{name: {tb}}}\nspec:\n  asNumber: 65002\n  interfaces: [{{fabric: rack-b, address: 10.0.2.1}}, {{fabric: core, address: 10.0.0.2}}]\n  nodes: [rack-b]\n  peers: {pb}\n---\n\
apiVersion: lab.strake.dev/v1\nkind: ExternalHost\nmetadata: {{name: {p}cl}}\nspec: {{address: 10.0.0.100}}\n",
        pa = peers(&tb),
        pb = peers(&ta),
    );
    let bgp = "apiVersion: bgp.strake.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\n\
spec: {nodeToNodeMesh: false, serviceLoadBalancerIPs: [{cidr: 203.0.113.0/24}]}\n---\n\
apiVersion: bgp.strake.dev/v1\nkind: BGPPeer\nmetadata: {name: tor-a}\nspec: {peerIP: 10.0.1.1, asNumber: 65001, nodeSelector: {matchLabels: {rack: a}}}\n---\n\
apiVersion: bgp.strake.dev/v1\nkind: BGPPeer\nmetadata: {name: tor-b}\nspec: {peerIP: 10.0.2.1, asNumber: 65002, nodeSelector: {matchLabels: {rack: b}}}\n"
        .to_string();
    let mut files = vec![
        ("network.yaml", network),
        ("bgp.yaml", bgp),
        ("nodes.yaml", nodes_yaml(p, &["a1", "a2", "b1", "b2"])),
    ];
    let mut pods = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {p}}}\n");
    for (n, ..) in NODES {
        pods += "---\n";
        pods += &pod_yaml(p, &format!("w-{n}"), &format!("{p}{n}"), "web", false);
    }
    files.push(("pods.yaml", pods));
    files
}

fn nodes_yaml(p: &str, which: &[&str]) -> String {
    let mut y = String::new();
    for (n, rack, cidr, ip) in NODES.iter().filter(|n| which.contains(&n.0)) {
        let asn = if *rack == "a" { 65001 } else { 65002 };
        y += &format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {p}{n}\n  labels: {{rack: {rack}}}\n  annotations: {{bgp.strake.dev/as-number: \"{asn}\"}}\n\
spec: {{podCIDR: {cidr}}}\nstatus: {{addresses: [{{type: InternalIP, address: {ip}}}]}}\n---\n"
        );
    }
    y
}

/// Pods as (namespace, name, IP).
fn pods(lab: &Lab, p: &str) -> Vec<(String, Ipv4Addr)> {
    NODES
        .iter()
        .map(|(n, ..)| {
            let name = format!("w-{n}");
            let ip = lab.pod_ip(p, &name).unwrap();
            (name, ip)
        })
        .collect()
}

/// The TCP/UDP/ICMP matrix between every pair of pods; the failures.
fn matrix(lab: &Lab, p: &str) -> Vec<String> {
    let all = pods(lab, p);
    let mut failures = Vec::new();
    for (src, _) in &all {
        let from = lab.pod_netns(p, src);
        for (dst, ip) in &all {
            if src == dst {
                continue;
            }
            let want = format!("{p}/{dst}");
            match probe::tcp(&from, addr(*ip, 80), T) {
                Ok(g) if g == want => {}
                r => failures.push(format!("{src} -> {dst} TCP: {r:?}")),
            }
            match probe::udp(&from, addr(*ip, 80), T) {
                Ok(g) if g == want => {}
                r => failures.push(format!("{src} -> {dst} UDP: {r:?}")),
            }
            if let Err(e) = probe::ping(&from, *ip) {
                failures.push(format!("{src} -> {dst} ICMP: {e:#}"));
            }
        }
    }
    failures
}

/// tcpdump on `iface` in the named namespace while `traffic` runs: the
/// packets matching `filter` (one line each).
fn capture(netns: &str, iface: &str, filter: &str, traffic: impl FnOnce()) -> Vec<String> {
    let mut child = Command::new("ip")
        // --immediate-mode: without it packets wait in a ring-buffer block
        // for up to a second and a capture stopped sooner loses them.
        .args([
            "netns",
            "exec",
            netns,
            "tcpdump",
            "-n",
            "-l",
            "--immediate-mode",
        ])
        .args(["-i", iface])
        .args(filter.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump (scripts/install-deps.sh installs it)");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "tcpdump on {netns}/{iface} ended before listening"
        );
        if line.contains("listening on") {
            break;
        }
    }
    traffic();
    std::thread::sleep(Duration::from_millis(300));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = child.wait();
    // A packet's line starts with its timestamp; a decoded inner packet
    // (VXLAN's) does not.
    out.lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .map(String::from)
        .collect()
}

/// The prefixes in a router's BIRD table learned over BGP (from a node or
/// another router, not its own interfaces).
fn bgp_prefixes(lab: &Lab, router: &str) -> Vec<String> {
    let routes = lab.router_control(router).routes().unwrap();
    let mut out: Vec<String> = routes
        .iter()
        .filter(|r| r.protocol.starts_with("node_") || r.protocol.starts_with("router_"))
        .map(|r| r.prefix.to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Next hops of a router's kernel route to `ip` (what it forwards with).
fn kernel_next_hops(lab: &Lab, router: &str, ip: Ipv4Addr) -> Vec<String> {
    let out = procs::run_in_netns(
        &lab.router_netns(router),
        "ip",
        &["-j", "route", "show", "exact", &format!("{ip}/32")],
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut hops = Vec::new();
    for r in v.as_array().into_iter().flatten() {
        if let Some(g) = r["gateway"].as_str() {
            hops.push(g.to_string());
        }
        for h in r["nexthops"].as_array().into_iter().flatten() {
            if let Some(g) = h["gateway"].as_str() {
                hops.push(g.to_string());
            }
        }
    }
    hops.sort();
    hops
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn established(lab: &Lab, node: &str) -> bool {
    lab.agent::<BgpStatus>(node, Request::Bgp)
        .is_ok_and(|s| !s.sessions.is_empty() && s.sessions.iter().all(|s| s.established))
}

fn all_blocks() -> Vec<String> {
    NODES.iter().map(|n| n.2.to_string()).collect()
}

fn mtu(ns: &Path, dev: &str) -> u32 {
    let out = procs::run_in_netns(ns, "ip", &["-o", "link", "show", dev]).unwrap();
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    let i = t.find(" mtu ").unwrap_or_else(|| panic!("no MTU in {t:?}"));
    t[i + 5..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn two_racks_route_pods_over_bgp_unencapsulated_keep_traffic_through_a_bird_crash_and_withdraw_a_deleted_node(
) {
    if !strake_test_support::root() {
        return;
    }
    let p = "bg";
    let lab = yaml_lab(p, &racks(p, true));
    let (ta, tb) = (format!("{p}ta"), format!("{p}tb"));
    // Until BIRD has learned a peer's block the agent's VXLAN fallback route
    // carries it (by design: pods must not lose reachability while sessions
    // come up), so wait for the learned routes to take over, then insist on it.
    for n in &lab.spec.nodes {
        let routed_by = || -> Vec<(String, String)> {
            let st: AgentStatus = lab.agent(&n.name, Request::Status).unwrap();
            assert_eq!(st.routing.mode, "bgp", "node {}: {:?}", n.name, st.routing);
            st.routing
                .nodes
                .iter()
                .filter(|r| r.via != "local" && r.via != "bgp")
                .map(|r| (r.node.clone(), r.via.clone()))
                .collect()
        };
        let start = Instant::now();
        loop {
            let wrong = routed_by();
            if wrong.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "node {}: blocks routed by something other than BGP after 30 s: {wrong:?}",
                n.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Each router's table holds every node's block, learned over BGP.
    for r in [&ta, &tb] {
        let got = bgp_prefixes(&lab, r);
        for b in all_blocks() {
            assert!(got.contains(&b), "router {r} lacks {b}: {got:?}");
        }
    }

    // The full matrix, captured on tor-a's core link (every cross-rack
    // packet from rack a crosses it): plain pod addresses, no VXLAN.
    let mut failures = Vec::new();
    let vxlan = capture(
        &Lab::router_netns_name(&ta),
        "core",
        "udp port 4789",
        || {
            let plain = capture(
                &Lab::router_netns_name(&ta),
                "core",
                "src net 10.244.0.0/16 and dst net 10.244.0.0/16",
                || failures = matrix(&lab, p),
            );
            for (from, to) in [("10.244.1.", "10.244.3."), ("10.244.3.", "10.244.1.")] {
                assert!(
                    plain
                        .iter()
                        .any(|l| l.contains(&format!(" {from}")) && l.contains(&format!("> {to}"))),
                    "no plain {from}x > {to}x packet on {ta}/core: {plain:?}"
                );
            }
        },
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        vxlan.is_empty(),
        "VXLAN on the core while BGP carries every block: {vxlan:?}"
    );

    // Graceful restart: b1's BIRD and agent die (SIGKILL: no goodbye to the
    // router). Its router keeps b1's block as stale and so does everyone,
    // so b1's pod stays reachable from its rack (b2 has no route to it but
    // BGP's) and from the other rack.
    let b1 = format!("{p}b1");
    let bird_pid: u32 = std::fs::read_to_string(lab.node_dir(&b1).join("bird.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let agent_pid = lab.agent_pid(&b1).unwrap();
    for pid in [agent_pid, bird_pid] {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let target = lab.pod_ip(p, "w-b1").unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        for src in ["w-b2", "w-a1"] {
            let got = probe::tcp(&lab.pod_netns(p, src), addr(target, 80), T);
            assert_eq!(
                got.as_deref().ok(),
                Some(format!("{p}/w-b1").as_str()),
                "{src} -> w-b1 {:?} after b1's BIRD died: {got:?}",
                started.elapsed()
            );
        }
        for r in [&ta, &tb] {
            assert!(
                bgp_prefixes(&lab, r).contains(&"10.244.3.0/24".to_string()),
                "router {r} dropped b1's block {:?} after its BIRD died",
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // The agent comes back, restarts BIRD, the session is re-established.
    lab.start_agent(&b1).unwrap();
    lab.wait_agent_ready(&b1, Duration::from_secs(30)).unwrap();
    wait_for("b1's BGP session back", Duration::from_secs(60), || {
        established(&lab, &b1)
    });
    assert!(matrix(&lab, p).is_empty());

    // Deleting Node b2 withdraws its block from every router within 15s.
    std::fs::write(
        lab.dir.join("nodes.yaml"),
        nodes_yaml(p, &["a1", "a2", "b1"]),
    )
    .unwrap();
    let took = wait_for(
        "b2's block withdrawn from both routers",
        Duration::from_secs(15),
        || {
            [&ta, &tb]
                .iter()
                .all(|r| !bgp_prefixes(&lab, r).contains(&"10.244.4.0/24".to_string()))
        },
    );
    eprintln!("b2's block withdrawn from both routers after {took:?}");
    for r in [&ta, &tb] {
        let got = bgp_prefixes(&lab, r);
        for b in &all_blocks()[..3] {
            assert!(got.contains(b), "router {r} lost {b} too: {got:?}");
        }
    }
}

#[test]
fn without_router_peering_cross_rack_pods_use_vxlan_same_rack_stays_plain_and_1_mib_does_not_stall()
{
    if !strake_test_support::root() {
        return;
    }
    let p = "bv";
    let lab = yaml_lab(p, &racks(p, false));
    let a1 = format!("{p}a1");
    let st: AgentStatus = lab.agent(&a1, Request::Status).unwrap();
    let via = |node: &str| {
        st.routing
            .nodes
            .iter()
            .find(|n| n.node == format!("{p}{node}"))
            .map(|n| n.via.clone())
    };
    assert_eq!(via("a2").as_deref(), Some("bgp"), "{:?}", st.routing);
    assert_eq!(via("b1").as_deref(), Some("vxlan"), "{:?}", st.routing);
    // Prometheus shows the session up and what it carries (the bgp phase
    // looks at BIRD every 5 s).
    let scrape = || {
        strake_netlink::netns::run_in(&lab.node_netns(&a1), || {
            let mut s = TcpStream::connect(("127.0.0.1", strake_lab::AGENT_METRICS_PORT))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: lab\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })
        .unwrap()
    };
    let mut metrics = scrape();
    let up =
        "strake_bgp_session_up{peer=\"10.0.1.1\",peer_as=\"65001\",origin=\"BGPPeer tor-a\"} 1";
    // The session can be up a sweep before its prefix count is: wait for both.
    let received_of = |m: &str| -> u64 {
        m.lines()
            .find(|l| {
                l.starts_with("strake_bgp_prefixes_received{") && l.contains("peer=\"10.0.1.1\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(metrics.lines().any(|l| l == up) && received_of(&metrics) >= 1)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
        metrics = scrape();
    }
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("peer=\"10.0.1.1\""))
            .unwrap_or_else(|| panic!("no {name} for 10.0.1.1 in\n{metrics}"))
            .to_string()
    };
    assert!(metrics.lines().any(|l| l == up), "no {up:?} in\n{metrics}");
    let received: u64 = line("strake_bgp_prefixes_received")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(received >= 1, "a2's block at least: {metrics}");
    assert!(
        metrics.lines().any(|l| l == "strake_bgp_enabled 1"),
        "{metrics}"
    );

    // Each router knows only its own rack's blocks.
    assert_eq!(
        bgp_prefixes(&lab, &format!("{p}ta")),
        vec!["10.244.1.0/24", "10.244.2.0/24"]
    );

    let failures = matrix(&lab, p);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let ns = Lab::node_netns_name(&a1);
    let a1_pod = lab.pod_netns(p, "w-a1");
    let (a2_ip, b1_ip) = (
        lab.pod_ip(p, "w-a2").unwrap(),
        lab.pod_ip(p, "w-b1").unwrap(),
    );
    // Same rack: plain on a1's uplink, no tunnel.
    let mut plain = Vec::new();
    let tunnel = capture(&ns, "eth0", "udp port 4789", || {
        plain = capture(&ns, "eth0", &format!("host {a2_ip}"), || {
            probe::ping(&a1_pod, a2_ip).unwrap();
            probe::tcp(&a1_pod, addr(a2_ip, 80), T).unwrap();
        });
    });
    assert!(
        !plain.is_empty(),
        "no plain packet to {a2_ip} on a1's uplink"
    );
    assert!(
        tunnel.is_empty(),
        "same-rack traffic went through VXLAN: {tunnel:?}"
    );
    // Cross rack: only inside VXLAN.
    let mut plain = Vec::new();
    let tunnel = capture(&ns, "eth0", "udp port 4789", || {
        plain = capture(&ns, "eth0", &format!("host {b1_ip}"), || {
            probe::ping(&a1_pod, b1_ip).unwrap();
            probe::tcp(&a1_pod, addr(b1_ip, 80), T).unwrap();
        });
    });
    assert!(
        plain.is_empty(),
        "cross-rack pod packets unencapsulated: {plain:?}"
    );
    assert!(
        tunnel.iter().any(|l| l.contains("10.0.2.11.4789")),
        "no VXLAN packet to b1 on a1's uplink: {tunnel:?}"
    );

    // The pod interface leaves room for VXLAN's 50 bytes.
    let uplink = mtu(&lab.node_netns(&a1), "eth0");
    assert_eq!(mtu(&a1_pod, "eth0"), uplink - 50);

    // 1 MiB each way across the tunnel, echoed, in full and quickly.
    let (s, greeting) = probe::tcp_stream(&a1_pod, addr(b1_ip, 80), T).unwrap();
    assert_eq!(greeting, format!("{p}/w-b1"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let started = Instant::now();
    let writer = {
        let (w, d) = (s.try_clone().unwrap(), data.clone());
        std::thread::spawn(move || probe::write_all(&w, &d))
    };
    let mut back = vec![0u8; data.len()];
    (&s).read_exact(&mut back)
        .unwrap_or_else(|e| panic!("the 1 MiB echo stalled after {:?}: {e}", started.elapsed()));
    writer.join().unwrap().unwrap();
    assert!(back == data, "the echo differs from what was sent");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A Service's ready pod only on b1, for `externalTrafficPolicy: Local`.
fn solo_pod(p: &str) -> String {
    pod_yaml(p, "solo", &format!("{p}b1"), "solo", false)
}

fn services() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: bl\n  name: front\n  annotations: {{lb.strake.dev/external-mode: dsr}}\n\
spec:\n  type: LoadBalancer\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: 80, protocol: TCP}}]\n\
status: {{loadBalancer: {{ingress: [{{ip: {LB_CLUSTER}}}]}}}}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {{namespace: bl, name: solo}}\n\
spec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector: {{app: solo}}\n  ports: [{{name: http, port: 80, targetPort: 80, protocol: TCP}}]\n\
status: {{loadBalancer: {{ingress: [{{ip: {LB_LOCAL}}}]}}}}\n"
    )
}

fn announcers(lab: &Lab, ip: Ipv4Addr) -> Vec<String> {
    let want = format!("{ip}/32");
    let mut out: Vec<String> = lab
        .spec
        .nodes
        .iter()
        .filter(|n| {
            lab.agent::<BgpStatus>(&n.name, Request::Bgp)
                .is_ok_and(|s| s.announced.iter().any(|a| a.prefix == want))
        })
        .map(|n| n.name.clone())
        .collect();
    out.sort();
    out
}

#[test]
fn load_balancer_addresses_are_announced_by_the_right_nodes_and_1000_connections_keep_their_backend_over_ecmp(
) {
    if !strake_test_support::root() {
        return;
    }
    let p = "bl";
    let mut files = racks(p, true);
    files.push(("solo.yaml", solo_pod(p)));
    files.push(("services.yaml", services()));
    let lab = yaml_lab(p, &files);
    let (ta, tb) = (format!("{p}ta"), format!("{p}tb"));
    let node = |n: &str| format!("{p}{n}");
    let rack_a = vec!["10.0.1.11".to_string(), "10.0.1.12".to_string()];

    // Cluster: every node announces; Local: only b1, which has the pod.
    wait_for("announcements", Duration::from_secs(30), || {
        announcers(&lab, LB_CLUSTER).len() == 4 && announcers(&lab, LB_LOCAL).len() == 1
    });
    assert_eq!(announcers(&lab, LB_LOCAL), vec![node("b1")]);
    wait_for("routers' tables", Duration::from_secs(30), || {
        kernel_next_hops(&lab, &ta, LB_CLUSTER) == rack_a
            && kernel_next_hops(&lab, &tb, LB_LOCAL) == vec!["10.0.2.11".to_string()]
            && kernel_next_hops(&lab, &ta, LB_LOCAL) == vec!["10.0.0.2".to_string()]
    });
    assert_eq!(
        kernel_next_hops(&lab, &tb, LB_CLUSTER),
        vec!["10.0.2.11".to_string(), "10.0.2.12".to_string()]
    );

    // Every node's Maglev has all four backends (health checks cross the
    // racks too) before traffic is judged by them.
    let all_active = |s: &strake_api::LbStatus| {
        s.services
            .iter()
            .filter(|x| x.service == "bl/front:http")
            .flat_map(|x| &x.backends)
            .filter(|b| b.active)
            .count()
            == 4
    };
    if let Err(e) = lab.wait_lb("four active backends", Duration::from_secs(30), all_active) {
        let st: strake_api::LbStatus = lab.agent(&node("a1"), Request::LbList).unwrap();
        panic!("{e:#}: on a1 {:#?}", st.services);
    }

    // The client behind tor-a: 1,000 connections, held open together. The
    // router spreads them over a1 and a2 by their ports; then it hashes by
    // addresses only, so every flow lands on one node and the ones that
    // lived on the other move mid-connection. Each must keep its backend:
    // a different one would reset it.
    let client = lab.ext_netns(&format!("{p}cl"));
    let rx_before: Vec<u64> = [node("a1"), node("a2")]
        .iter()
        .map(|n| xdp_packets(&lab, n))
        .collect();
    let mut conns: Vec<(TcpStream, String)> = Vec::new();
    for i in 0..1000 {
        match probe::tcp_stream(&client, addr(LB_CLUSTER, 80), T) {
            Ok(c) => conns.push(c),
            Err(e) => panic!("connection {i} to {LB_CLUSTER}: {e:#}"),
        }
    }
    let mut backends = std::collections::BTreeMap::new();
    for (_, g) in &conns {
        *backends.entry(g.clone()).or_insert(0) += 1;
    }
    assert_eq!(backends.len(), 4, "every web pod serves some: {backends:?}");
    let rx_after: Vec<u64> = [node("a1"), node("a2")]
        .iter()
        .map(|n| xdp_packets(&lab, n))
        .collect();
    for i in 0..2 {
        assert!(
            rx_after[i] > rx_before[i] + 100,
            "ECMP sent (almost) nothing to {}: {rx_before:?} -> {rx_after:?}",
            ["a1", "a2"][i]
        );
    }
    let out = procs::run_in_netns(
        &lab.router_netns(&ta),
        "sysctl",
        &["-w", "net.ipv4.fib_multipath_hash_policy=0"],
    )
    .unwrap();
    assert!(out.status.success());
    let mut failed = Vec::new();
    for (i, (s, g)) in conns.iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let msg = format!("conn {i}\n");
        let mut back = vec![0u8; msg.len()];
        let r = (|| {
            let mut w = s;
            w.write_all(msg.as_bytes())?;
            let mut r = s;
            r.read_exact(&mut back)
        })();
        if r.is_err() || back != msg.as_bytes() {
            failed.push(format!("connection {i} (backend {g}): {r:?}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 1000 lost their backend:\n{}",
        failed.len(),
        failed.join("\n")
    );
    drop(conns);

    // The Local Service's pod goes: b1 stops announcing, the routers forget.
    std::fs::remove_file(lab.dir.join("solo.yaml")).unwrap();
    let took = wait_for(
        "the Local address withdrawn",
        Duration::from_secs(15),
        || {
            kernel_next_hops(&lab, &ta, LB_LOCAL).is_empty()
                && kernel_next_hops(&lab, &tb, LB_LOCAL).is_empty()
        },
    );
    eprintln!("{LB_LOCAL} withdrawn from both routers after {took:?}");
    assert!(announcers(&lab, LB_LOCAL).is_empty());
    assert_eq!(announcers(&lab, LB_CLUSTER).len(), 4);
}

/// Packets the node's XDP load balancer took in from clients (not what
/// other nodes encapsulated to it).
fn xdp_packets(lab: &Lab, node: &str) -> u64 {
    let st: AgentStatus = lab.agent(node, Request::Status).unwrap();
    st.counters
        .iter()
        .filter(|c| ["lb_translated", "lb_encap", "lb_no_backend"].contains(&c.name.as_str()))
        .map(|c| c.packets)
        .sum()
}
