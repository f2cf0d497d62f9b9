//! trafficDistribution: PreferClose in a real lab: the lab's Nodes carry
//! `topology.kubernetes.io/zone`, each node's agent fills its Service sets
//! with its own zone's endpoints, and falls back to every zone's when its
//! own has none. From a pod through the socket path (a client in the node's
//! cgroup) and through the packet path (a process outside every lab cgroup
//! in the pod's namespace: translated on the pod's veth). On the directory
//! source (zones from the pods' nodes) and on the stand-in API server (its
//! endpoints controller writes the endpoints' zones and PreferClose hints).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use strake_lab::LabSource;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

fn zoned_node(name: &str, cidr: &str, ip: &str, zone: &str) -> String {
    node_yaml(name, cidr, ip).replace(
        &format!("metadata: {{name: {name}}}"),
        &format!("metadata: {{name: {name}, labels: {{topology.kubernetes.io/zone: {zone}}}}}"),
    )
}

/// Node `<p>a` in zone-x with backends w1 and w3, node `<p>b` in zone-y
/// with w2; a client pod on each node; a PreferClose ClusterIP Service.
fn files(p: &str) -> Vec<(&'static str, String)> {
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    vec![
        (
            "nodes.yaml",
            zoned_node(&a, "10.244.1.0/24", "10.0.0.1", "zone-x")
                + "---\n"
                + &zoned_node(&b, "10.244.2.0/24", "10.0.0.2", "zone-y"),
        ),
        ("w1.yaml", pod_yaml(p, "w1", &a, "web", false)),
        ("w2.yaml", pod_yaml(p, "w2", &b, "web", false)),
        ("w3.yaml", pod_yaml(p, "w3", &a, "web", false)),
        ("ca.yaml", pod_yaml(p, "ca", &a, "client", false)),
        ("cb.yaml", pod_yaml(p, "cb", &b, "client", false)),
        (
            "svc.yaml",
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{namespace: {p}, name: web, annotations: {{lb.strake.dev/health-check: none}}}}\nspec:\n  clusterIP: {VIP}\n  trafficDistribution: PreferClose\n  selector: {{app: web}}\n  ports:\n  - {{name: http, port: 80, targetPort: http, protocol: TCP}}\n"
            ),
        ),
    ]
}

fn set_of(names: &[&str], p: &str) -> BTreeSet<String> {
    names.iter().map(|n| format!("{p}/{n}")).collect()
}

/// Backends answering `n` connections from pod `pod` by the socket path
/// and `n` by the packet path; panics on a failed connection.
fn spread(
    lab: &strake_lab::Lab,
    p: &str,
    pod: &str,
    n: usize,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let socket: BTreeSet<String> = client(lab, &format!("{p}/{pod}"), addr(VIP, 80), "tcp", n)
        .into_iter()
        .map(|a| {
            a.answer
                .clone()
                .unwrap_or_else(|| panic!("{pod}: a socket-path connect failed: {a:?}"))
        })
        .collect();
    let packet = tcp_spread(&lab.pod_netns(p, pod), addr(VIP, 80), n);
    assert!(
        !packet.contains_key("!error"),
        "{pod}: packet path {packet:?}"
    );
    (socket, packet.into_keys().collect())
}

/// Waits until both paths from `pod` reach exactly `want`.
fn expect(lab: &strake_lab::Lab, p: &str, pod: &str, want: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (socket, packet) = spread(lab, p, pod, 30);
        if &socket == want && &packet == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pod}: want {want:?}, socket path {socket:?}, packet path {packet:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn prefer_close(p: &str, source: LabSource) {
    let lab = yaml_lab_on(p, &files(p), Some(source));
    let b = format!("{p}b");
    // Each node's clients stay in their zone; w1 and w3 share zone-x.
    expect(&lab, p, "ca", &set_of(&["w1", "w3"], p));
    expect(&lab, p, "cb", &set_of(&["w2"], p));
    // zone-y loses its only endpoint: its clients use every zone's.
    std::fs::remove_file(lab.dir.join("w2.yaml")).unwrap();
    lab.del_pod(p, "w2", &b).unwrap();
    expect(&lab, p, "cb", &set_of(&["w1", "w3"], p));
    expect(&lab, p, "ca", &set_of(&["w1", "w3"], p));
    // It gets one back: the zone's clients return to it.
    std::fs::write(lab.dir.join("w4.yaml"), pod_yaml(p, "w4", &b, "web", false)).unwrap();
    lab.add_pod(&pod_spec(p, "w4", &b, "web")).unwrap();
    expect(&lab, p, "cb", &set_of(&["w4"], p));
}

#[test]
fn prefer_close_keeps_pods_in_their_zone_and_falls_back_to_all_zones() {
    if !strake_test_support::root() {
        return;
    }
    prefer_close("tz", LabSource::Dir);
}

#[test]
fn prefer_close_through_the_api_server_uses_the_controllers_zone_hints() {
    if !strake_test_support::root() {
        return;
    }
    prefer_close("tk", LabSource::Kube);
}
