//! `externalTrafficPolicy: Local` seen from inside the cluster, as
//! kube-proxy does it: a pod (socket path, or opted out to the packet path)
//! and a host-network process reaching the Service's LoadBalancer IP or
//! NodePort on their own node go to any endpoint, while an external host keeps getting only
//! the receiving node's endpoints.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 40);

/// Node `<p>a` with backends w1 and w2, node `<p>b` with w3, a client pod
/// and an opted-out (packet path) client pod on `<p>b`, an external host.
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
        ("w2.yaml", pod_yaml(p, "w2", &a, "web", false)),
        ("w3.yaml", pod_yaml(p, "w3", &b, "web", false)),
        ("client.yaml", pod_yaml(p, "client", &b, "client", false)),
        (
            "wire.yaml",
            pod_yaml(p, "wire", &b, "client", false).replace(
                "labels: {app: client}",
                "labels: {app: client}, annotations: {lb.strake.dev/socket-lb: \"false\"}",
            ),
        ),
        (
            "svc.yaml",
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{namespace: {p}, name: web, annotations: {{lb.strake.dev/health-check: none}}}}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  clusterIP: {VIP}\n  selector: {{app: web}}\n  ports:\n  - {{name: http, port: 80, targetPort: http, protocol: TCP, nodePort: 30080}}\nstatus:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}}}]\n"
            ),
        ),
        (
            "ext.yaml",
            format!("apiVersion: lab.strake.dev/v1\nkind: ExternalHost\nmetadata: {{name: {p}x}}\nspec: {{address: 10.0.0.100}}\n"),
        ),
    ]
}

fn names(p: &str, n: &[&str]) -> BTreeSet<String> {
    n.iter().map(|n| format!("{p}/{n}")).collect()
}

/// Backends answering 60 connections from `target` (`strake lab exec`:
/// its namespace and its node's cgroup, so the socket hooks see it).
fn by_socket(lab: &strake_lab::Lab, target: &str, to: SocketAddrV4) -> BTreeSet<String> {
    client(lab, target, to, "tcp", 60)
        .into_iter()
        .map(|a| {
            a.answer
                .clone()
                .unwrap_or_else(|| panic!("{target} -> {to}: a connect failed: {a:?}"))
        })
        .collect()
}

/// The same from a namespace by a process outside every lab cgroup: the
/// packet path.
fn by_packet(ns: &std::path::Path, to: SocketAddrV4) -> BTreeSet<String> {
    let m = tcp_spread(ns, to, 60);
    assert!(!m.contains_key("!error"), "{} -> {to}: {m:?}", ns.display());
    m.into_keys().collect()
}

#[test]
fn inside_clients_of_an_external_local_service_reach_every_endpoint_outside_ones_only_local() {
    if !strake_test_support::root() {
        return;
    }
    let p = "el";
    let lab = yaml_lab(p, &files(p));
    let all = names(p, &["w1", "w2", "w3"]);
    let lb = addr(LB_IP, 80);
    let np_a = addr("10.0.0.1".parse().unwrap(), 30080);
    let np_b = addr("10.0.0.2".parse().unwrap(), 30080);
    // From inside: a pod by socket, an opted-out pod by packet, the node's
    // own namespace; the LoadBalancer IP and the NodePort on the client's
    // own node.
    for to in [lb, np_b] {
        assert_eq!(
            by_socket(&lab, &format!("{p}/client"), to),
            all,
            "pod, socket path, {to}"
        );
        assert_eq!(
            by_packet(&lab.pod_netns(p, "wire"), to),
            all,
            "pod, packet path, {to}"
        );
        assert_eq!(
            by_socket(&lab, &format!("node/{p}b"), to),
            all,
            "host network, {to}"
        );
    }
    // The NodePort on another node's address leaves this node as it was
    // sent, and that node balances it as external traffic (kube-proxy does
    // the same for host-network clients, and for pods unless it knows the
    // cluster CIDR): its own endpoints.
    let local_a = names(p, &["w1", "w2"]);
    assert_eq!(by_socket(&lab, &format!("{p}/client"), np_a), local_a);
    assert_eq!(by_socket(&lab, &format!("node/{p}b"), np_a), local_a);
    // From outside: the receiving node's endpoints only.
    let ext = lab.ext_netns(&format!("{p}x"));
    assert_eq!(
        by_packet(&ext, np_a),
        names(p, &["w1", "w2"]),
        "external, node a"
    );
    assert_eq!(by_packet(&ext, np_b), names(p, &["w3"]), "external, node b");
}
