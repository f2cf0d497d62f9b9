//! BPF masquerade in a real lab: a pod reaches hosts outside the cluster
//! that have no route to the pod ranges, over TCP, UDP and ping, and they
//! see the node's address; a host in --non-masquerade-cidrs sees the pod's
//! own; a pod whose egress a NetworkPolicy denies stays denied.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};

/// A TCP server in `ns` on `port`: each connection is told its peer
/// ("ADDR:PORT\n") and closed.
fn tcp_peer_server(ns: &std::path::Path, port: u16) {
    let l = strake_netlink::netns::run_in(ns, move || Ok(TcpListener::bind(("0.0.0.0", port))?))
        .unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let peer = s.peer_addr().unwrap();
            let _ = s.write_all(format!("{peer}\n").as_bytes());
        }
    });
}

/// A UDP server in `ns` on `port`: each datagram is answered with its
/// sender ("ADDR:PORT"); every sender is also sent on `seen`.
fn udp_peer_server(ns: &std::path::Path, port: u16) -> std::sync::mpsc::Receiver<SocketAddr> {
    let s =
        strake_netlink::netns::run_in(ns, move || Ok(UdpSocket::bind(("0.0.0.0", port))?)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(peer.to_string().as_bytes(), peer);
            if tx.send(peer).is_err() {
                return;
            }
        }
    });
    rx
}

fn tcp_ask(ns: &std::path::Path, to: (Ipv4Addr, u16)) -> std::io::Result<String> {
    strake_netlink::netns::run_in(ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&SocketAddr::from(to), T)?;
        s.set_read_timeout(Some(T))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.trim_end().to_string())
    })
    .map_err(|e| std::io::Error::other(format!("{e:#}")))
}

fn masq_port(peer: &str) -> u16 {
    peer.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn pods_reach_outside_hosts_with_the_nodes_address_except_non_masquerade_destinations() {
    if !strake_test_support::root() {
        return;
    }
    let files = vec![
        (
            "lab.yaml",
            "apiVersion: lab.strake.dev/v1\nkind: Lab\nmetadata: {name: mq}\nspec:\n  agentArgs: [\"--non-masquerade-cidrs\", \"10.0.0.101/32,192.0.2.0/24\"]\n".to_string(),
        ),
        (
            "nodes.yaml",
            node_yaml("mqa", "10.244.1.0/24", "10.0.0.1")
                + "---\n"
                + &node_yaml("mqb", "10.244.2.0/24", "10.0.0.2"),
        ),
        ("p1.yaml", pod_yaml("mq", "p1", "mqa", "client", false)),
        ("p2.yaml", pod_yaml("mq", "p2", "mqb", "client", false)),
        ("p3.yaml", pod_yaml("mq", "p3", "mqa", "denied", false)),
        (
            "deny.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: mq, name: no-egress}\nspec:\n  podSelector: {matchLabels: {app: denied}}\n  policyTypes: [Egress]\n".into(),
        ),
        (
            "ext.yaml",
            "apiVersion: lab.strake.dev/v1\nkind: ExternalHost\nmetadata: {name: mqx}\nspec: {address: 10.0.0.100}\n---\napiVersion: lab.strake.dev/v1\nkind: ExternalHost\nmetadata: {name: mqy}\nspec: {address: 10.0.0.101}\n---\napiVersion: lab.strake.dev/v1\nkind: ExternalHost\nmetadata: {name: mqz}\nspec: {address: 10.0.0.102, routes: [{to: 10.244.1.0/24, via: 10.0.0.1}]}\n".into(),
        ),
    ];
    let lab = yaml_lab("mq", &files);
    let (x, y) = (lab.ext_netns("mqx"), lab.ext_netns("mqy"));
    let xip: Ipv4Addr = "10.0.0.100".parse().unwrap();
    tcp_peer_server(&x, 7000);
    let x_seen = udp_peer_server(&x, 7001);
    let y_seen = udp_peer_server(&y, 7001);

    for (pod, node_ip) in [("p1", "10.0.0.1"), ("p2", "10.0.0.2")] {
        let ns = lab.pod_netns("mq", pod);
        // TCP: the host answers, and saw the pod's node, on a masquerade
        // port (the default range).
        let peer = tcp_ask(&ns, (xip, 7000)).unwrap_or_else(|e| panic!("{pod}: TCP {e}"));
        assert!(peer.starts_with(&format!("{node_ip}:")), "{pod}: {peer}");
        assert!(
            (61440..=65535).contains(&masq_port(&peer)),
            "{pod}: port of {peer}"
        );
        // Several connections in a row: each its own port, all answered.
        for _ in 0..5 {
            tcp_ask(&ns, (xip, 7000)).unwrap();
        }
        // UDP: the same.
        let got = strake_lab::probe::udp(&ns, SocketAddrV4::new(xip, 7001), T)
            .unwrap_or_else(|e| panic!("{pod}: UDP {e:#}"));
        assert!(got.starts_with(&format!("{node_ip}:")), "{pod}: {got}");
        assert_eq!(x_seen.recv_timeout(T).unwrap().ip().to_string(), node_ip);
        // Ping: answered, which a host without a route to the pods can
        // only do to the node.
        strake_lab::probe::ping(&ns, xip).unwrap_or_else(|e| panic!("{pod}: {e:#}"));
    }
    let p1 = lab.pod_ip("mq", "p1").unwrap();

    // A destination in --non-masquerade-cidrs sees the pod itself (and,
    // with no route back to it, cannot answer).
    let ns1 = lab.pod_netns("mq", "p1");
    assert!(strake_lab::probe::udp(&ns1, "10.0.0.101:7001".parse().unwrap(), T).is_err());
    assert_eq!(y_seen.recv_timeout(T).unwrap().ip(), p1);

    // The connection table shows the masqueraded flows, and metrics their
    // ports.
    let out = std::process::Command::new(strake_lab::procs::bin("strake").unwrap())
        .args(["ct", "list", "--addr", "10.0.0.100", "--proto", "udp"])
        .args(["--lab", &lab.dir.display().to_string(), "--node", "mqa"])
        .args(["-o", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = v[0]["entries"].as_array().unwrap().clone();
    assert!(
        entries.iter().any(|e| e["kind"] == "service"
            && e["src"] == p1.to_string()
            && e["flags"].as_array().unwrap().iter().any(|f| f == "masq")),
        "{v:#}"
    );

    // Egress policy still applies: the denied pod reaches nothing.
    let ns3 = lab.pod_netns("mq", "p3");
    assert!(tcp_ask(&ns3, (xip, 7000)).is_err(), "p3's egress is denied");
    assert!(strake_lab::probe::ping(&ns3, xip).is_err());

    // A host that routes to the pods itself opens a connection to p1: the
    // pod's answers are answers, and leave with the pod's address (were
    // they masqueraded, the host would reset a SYN-ACK from the node).
    let z = lab.ext_netns("mqz");
    let greeting = strake_lab::probe::tcp(&z, SocketAddrV4::new(p1, 80), T)
        .unwrap_or_else(|e| panic!("mqz to p1: {e:#}"));
    assert_eq!(greeting, "mq/p1");
    assert_eq!(
        strake_lab::probe::udp(&z, SocketAddrV4::new(p1, 80), T).unwrap(),
        "mq/p1"
    );
    strake_lab::probe::ping(&z, p1).unwrap();

    // Inside the cluster nothing is masqueraded: p2, on the other node,
    // sees p1's own address.
    let p2 = lab.pod_ip("mq", "p2").unwrap();
    tcp_peer_server(&lab.pod_netns("mq", "p2"), 7000);
    let peer = tcp_ask(&ns1, (p2, 7000)).unwrap();
    assert!(peer.starts_with(&format!("{p1}:")), "{peer}");
}
