//! Socket-level load balancing in a real lab: cgroup hooks in this kernel,
//! clients as real processes in a node's cgroup (`strake lab exec`), from a
//! node's own namespace (what the kubelet and every hostNetwork pod use) and
//! from pods.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;
use strake_api::{LbStatus, Request};
use strake_lab::probe::Attempt;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// Two nodes (`<p>a` 10.0.0.1, `<p>b` 10.0.0.2), a backend on each, a
/// client pod and an opted-out client pod on the first; a LoadBalancer
/// Service (ClusterIP 10.96.0.10, NodePort 30080 TCP / 30081 UDP, LB IP
/// 203.0.113.10) and a Service without endpoints (10.96.0.20).
fn files(p: &str) -> Vec<(&'static str, String)> {
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    vec![
        (
            "nodes.yaml",
            node_yaml(&a, "10.244.1.0/24", "10.0.0.1")
                + "---\n"
                + &node_yaml(&b, "10.244.2.0/24", "10.0.0.2"),
        ),
        ("w1.yaml", pod_yaml(p, "w1", &a, "web", false)),
        ("w2.yaml", pod_yaml(p, "w2", &b, "web", false)),
        ("client.yaml", pod_yaml(p, "client", &a, "client", false)),
        (
            "wire.yaml",
            pod_yaml(p, "wire", &a, "client", false).replace(
                "labels: {app: client}",
                "labels: {app: client}, annotations: {lb.strake.dev/socket-lb: \"false\"}",
            ),
        ),
        (
            "svc.yaml",
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{namespace: {p}, name: web}}\nspec:\n  type: LoadBalancer\n  clusterIP: {VIP}\n  selector: {{app: web}}\n  ports:\n  - {{name: http, port: 80, targetPort: http, protocol: TCP, nodePort: 30080}}\n  - {{name: dns, port: 80, targetPort: dns, protocol: UDP, nodePort: 30081}}\nstatus:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: {p}, name: empty}}\nspec:\n  clusterIP: {EMPTY_VIP}\n  selector: {{app: nothing}}\n  ports:\n  - {{name: http, port: 80, protocol: TCP}}\n  - {{name: dns, port: 80, protocol: UDP}}\n"
            ),
        ),
    ]
}

/// Answers by backend; panics on any failed attempt.
fn answers(what: &str, attempts: &[Attempt]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in attempts {
        let ans = a
            .answer
            .clone()
            .unwrap_or_else(|| panic!("{what}: an attempt failed: {a:?}"));
        *m.entry(ans).or_default() += 1;
    }
    m
}

/// (socket connects, socket datagrams, socket refused, packets) of a
/// frontend on a node.
fn fe_counters(
    lab: &strake_lab::Lab,
    node: &str,
    addr: Ipv4Addr,
    port: u16,
    proto: &str,
) -> (u64, u64, u64, u64) {
    let st: LbStatus = lab.agent(node, Request::LbList).unwrap();
    for s in &st.services {
        if !s.protocol.eq_ignore_ascii_case(proto) {
            continue;
        }
        for f in &s.frontends {
            if f.address == addr && f.port == port {
                return (
                    f.socket.connects,
                    f.socket.datagrams,
                    f.socket.refused,
                    f.counters.packets,
                );
            }
        }
    }
    panic!("node {node} has no frontend {addr}:{port}/{proto}: {st:?}");
}

#[test]
fn host_network_clients_reach_cluster_ip_node_ports_and_load_balancer_ips_seeing_the_vip() {
    if !strake_test_support::root() {
        return;
    }
    let lab = yaml_lab("sh", &files("sh"));
    let (a, b) = ("sha", "shb");
    let both: Vec<String> = vec!["sh/w1".into(), "sh/w2".into()];
    let before = fe_counters(&lab, a, VIP, 80, "TCP");
    let before_udp = fe_counters(&lab, a, VIP, 80, "UDP");
    // From each node's own namespace, in its cgroup: a host-network process.
    for node in [a, b] {
        let target = format!("node/{node}");
        let vip = addr(VIP, 80);
        let tcp = client(&lab, &target, vip, "tcp", 40);
        let spread = answers(&format!("{node} TCP ClusterIP"), &tcp);
        assert_eq!(
            spread.keys().cloned().collect::<Vec<_>>(),
            both,
            "{node}: {spread:?}"
        );
        for t in &tcp {
            assert_eq!(
                t.peer.as_deref(),
                Some("10.96.0.10:80"),
                "getpeername shows the VIP: {t:?}"
            );
        }
        for mode in ["udp", "udp-sendto"] {
            let udp = client(&lab, &target, vip, mode, 40);
            let spread = answers(&format!("{node} {mode} ClusterIP"), &udp);
            assert_eq!(
                spread.keys().cloned().collect::<Vec<_>>(),
                both,
                "{node} {mode}: {spread:?}"
            );
            for u in &udp {
                assert_eq!(
                    u.from.as_deref(),
                    Some("10.96.0.10:80"),
                    "the reply comes from the VIP: {u:?}"
                );
                if mode == "udp" {
                    assert_eq!(u.peer.as_deref(), Some("10.96.0.10:80"), "{u:?}");
                }
            }
        }
        // NodePort on the own address, the other node's and loopback;
        // the LoadBalancer IP.
        for (to, peer) in [
            (addr("10.0.0.1".parse().unwrap(), 30080), "10.0.0.1:30080"),
            (addr("10.0.0.2".parse().unwrap(), 30080), "10.0.0.2:30080"),
            (addr(Ipv4Addr::LOCALHOST, 30080), "127.0.0.1:30080"),
            (addr(LB_IP, 80), "203.0.113.10:80"),
        ] {
            let tcp = client(&lab, &target, to, "tcp", 30);
            let spread = answers(&format!("{node} TCP {to}"), &tcp);
            assert_eq!(
                spread.keys().cloned().collect::<Vec<_>>(),
                both,
                "{node} {to}: {spread:?}"
            );
            assert!(
                tcp.iter().all(|t| t.peer.as_deref() == Some(peer)),
                "{node} {to}: {tcp:?}"
            );
        }
        let udp = client(
            &lab,
            &target,
            addr(Ipv4Addr::LOCALHOST, 30081),
            "udp-sendto",
            30,
        );
        let spread = answers(&format!("{node} UDP NodePort on 127.0.0.1"), &udp);
        assert_eq!(
            spread.keys().cloned().collect::<Vec<_>>(),
            both,
            "{spread:?}"
        );
        assert!(
            udp.iter()
                .all(|u| u.from.as_deref() == Some("127.0.0.1:30081")),
            "{udp:?}"
        );
    }
    // Translated at the socket: the socket counters moved, no packet was
    // translated for the VIP on node a.
    let after = fe_counters(&lab, a, VIP, 80, "TCP");
    let after_udp = fe_counters(&lab, a, VIP, 80, "UDP");
    assert_eq!(
        after.0 - before.0,
        40,
        "TCP connects: {before:?} -> {after:?}"
    );
    assert_eq!(
        after.3, before.3,
        "no packet translated: {before:?} -> {after:?}"
    );
    assert_eq!(
        after_udp.0 - before_udp.0,
        40,
        "UDP connects: {before_udp:?} -> {after_udp:?}"
    );
    assert_eq!(
        after_udp.1 - before_udp.1,
        40,
        "UDP sendto: {before_udp:?} -> {after_udp:?}"
    );
}

#[test]
fn a_service_without_endpoints_refuses_at_once_and_a_process_outside_the_lab_is_not_translated() {
    if !strake_test_support::root() {
        return;
    }
    let lab = yaml_lab("sr", &files("sr"));
    let a = "sra";
    let before = fe_counters(&lab, a, EMPTY_VIP, 80, "TCP");
    let tcp = client(&lab, "node/sra", addr(EMPTY_VIP, 80), "tcp", 5);
    for t in &tcp {
        assert_eq!(t.errno, Some(libc::ECONNREFUSED), "{t:?}");
        assert!(t.micros < 100_000, "refused in under 100 ms: {t:?}");
    }
    let tcp = client(&lab, "sr/client", addr(EMPTY_VIP, 80), "tcp", 5);
    assert!(
        tcp.iter()
            .all(|t| t.errno == Some(libc::ECONNREFUSED) && t.micros < 100_000),
        "from a pod: {tcp:?}"
    );
    let udp = client(&lab, "node/sra", addr(EMPTY_VIP, 80), "udp-sendto", 3);
    assert!(
        udp.iter().all(|u| u.errno == Some(libc::ECONNREFUSED)),
        "{udp:?}"
    );
    let after = fe_counters(&lab, a, EMPTY_VIP, 80, "TCP");
    assert_eq!(
        after.2 - before.2,
        10,
        "refusals counted: {before:?} -> {after:?}"
    );

    // This test's own process is in no lab cgroup: from node a's namespace
    // a ClusterIP is not translated for it (nothing answers), while the
    // same connect from the node's cgroup is.
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    assert!(
        !own.contains("strake-lab-"),
        "the test runs outside the lab: {own}"
    );
    let before = fe_counters(&lab, a, VIP, 80, "TCP");
    let outside = strake_lab::probe::tcp(
        &lab.node_netns(a),
        addr(VIP, 80),
        Duration::from_millis(500),
    );
    assert!(
        outside.is_err(),
        "an outside process reached the VIP: {outside:?}"
    );
    let after = fe_counters(&lab, a, VIP, 80, "TCP");
    assert_eq!(
        after.0, before.0,
        "an outside connect was translated: {before:?} -> {after:?}"
    );
    answers("inside", &client(&lab, "node/sra", addr(VIP, 80), "tcp", 3));
    // And the hooks sit on the lab's node cgroups only, not on the
    // machine's root cgroup.
    let root = strake_datapath::sock::cgroup2_mount().unwrap();
    let show = std::process::Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(show.status.success());
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        !text.contains("sock_"),
        "programs on the root cgroup {}: {text}",
        root.display()
    );
    let node_cg = lab.node_cgroup(a).unwrap();
    let show = std::process::Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(&node_cg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    for hook in ["connect4", "sendmsg4", "recvmsg4", "getpeername4"] {
        assert!(
            text.contains(&format!("sock_{hook}")),
            "{hook} missing on {}: {text}",
            node_cg.display()
        );
    }
}

#[test]
fn pods_reach_services_by_socket_unless_opted_out_to_the_packet_path() {
    if !strake_test_support::root() {
        return;
    }
    let lab = yaml_lab("sp", &files("sp"));
    let a = "spa";
    let both: Vec<String> = vec!["sp/w1".into(), "sp/w2".into()];
    let before = fe_counters(&lab, a, VIP, 80, "TCP");
    let tcp = client(&lab, "sp/client", addr(VIP, 80), "tcp", 40);
    let spread = answers("pod TCP", &tcp);
    assert_eq!(
        spread.keys().cloned().collect::<Vec<_>>(),
        both,
        "{spread:?}"
    );
    assert!(
        tcp.iter()
            .all(|t| t.peer.as_deref() == Some("10.96.0.10:80")),
        "{tcp:?}"
    );
    let udp = client(&lab, "sp/client", addr(VIP, 80), "udp-sendto", 20);
    answers("pod UDP", &udp);
    assert!(
        udp.iter()
            .all(|u| u.from.as_deref() == Some("10.96.0.10:80")),
        "{udp:?}"
    );
    let mid = fe_counters(&lab, a, VIP, 80, "TCP");
    assert_eq!(
        mid.0 - before.0,
        40,
        "socket connects: {before:?} -> {mid:?}"
    );
    assert_eq!(
        mid.3, before.3,
        "the per-packet counter did not move: {before:?} -> {mid:?}"
    );

    // The opted-out pod: the VIP on the wire, translated on its veth.
    let tcp = client(&lab, "sp/wire", addr(VIP, 80), "tcp", 20);
    let spread = answers("opted-out pod TCP", &tcp);
    assert_eq!(
        spread.keys().cloned().collect::<Vec<_>>(),
        both,
        "{spread:?}"
    );
    assert!(
        tcp.iter()
            .all(|t| t.peer.as_deref() == Some("10.96.0.10:80")),
        "{tcp:?}"
    );
    let after = fe_counters(&lab, a, VIP, 80, "TCP");
    assert_eq!(
        after.0, mid.0,
        "no socket translation for the opted-out pod: {mid:?} -> {after:?}"
    );
    assert!(
        after.3 > mid.3,
        "the packet path carried it: {mid:?} -> {after:?}"
    );
}

#[test]
fn lab_down_removes_the_node_cgroups_also_after_a_crash() {
    if !strake_test_support::root() {
        return;
    }
    let lab = yaml_lab("sc", &files("sc"));
    let base = lab.cgroup_base().unwrap();
    assert!(lab.node_cgroup("sca").unwrap().is_dir());
    // A crash: agents killed, a stray process left in a node's cgroup.
    for n in ["sca", "scb"] {
        let pid = lab.agent_pid(n).unwrap();
        strake_lab::procs::stop(&[pid], Duration::ZERO);
    }
    let stray = strake_lab::procs::spawn_in(
        &lab.node_netns("sca"),
        Some(&lab.node_cgroup("sca").unwrap()),
        std::path::Path::new("/bin/sleep"),
        &["600".to_string()],
        &[],
        &std::env::temp_dir().join("strake-sc-stray.log"),
    )
    .unwrap();
    // A fresh process knows only the directory (and the lab's journal).
    let again = strake_lab::Lab::load(&lab.dir).unwrap();
    let _ = again.down();
    assert!(!base.exists(), "{} left behind", base.display());
    assert!(
        !strake_lab::procs::alive(stray),
        "the stray process survived"
    );
}
