//! The compiled maps and the rule-by-rule explainer must agree, and both must
//! give the API's answers.

use std::net::Ipv4Addr;
use strake_policy::compile::compile;
use strake_policy::explain::{explain, Endpoint};
use strake_policy::model::{Direction, Model, TCP, UDP};
use strake_source::{ClusterState, ObjectKey};

fn standard_model(policies: &str) -> ClusterState {
    let mut y = String::new();
    for (i, ns) in ["x", "y", "z"].iter().enumerate() {
        y += &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n---\n");
        for (j, pod) in ["a", "b", "c"].iter().enumerate() {
            y += &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{namespace: {ns}, name: {pod}, labels: {{pod: {pod}}}}}\nspec:\n  nodeName: n{}\n  containers:\n  - name: c\n    ports:\n    - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}\n    - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}\n    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}\n    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}\nstatus: {{podIP: 10.244.{i}.{}}}\n---\n",
                j % 2,
                10 + j
            );
        }
    }
    y += policies;
    strake_source::dir::state_from_yaml(&y).unwrap()
}

fn pods() -> Vec<ObjectKey> {
    ["x", "y", "z"]
        .iter()
        .flat_map(|ns| ["a", "b", "c"].iter().map(move |p| ObjectKey::new(*ns, *p)))
        .collect()
}

/// Reachability by the compiled entries, as the programs decide it: every
/// pod is taken as local, with its identity's isolation and entries.
fn compiled_matrix(st: &ClusterState, port: u16, proto: u8) -> Vec<(String, String, bool)> {
    let model = Model::build(st, &[]);
    let c = compile(&model, &pods());
    let ip = |k: &ObjectKey| model.pod(k).unwrap().ip.unwrap();
    let allowed_dir = |pod: &ObjectKey, dir: Direction, remote: Ipv4Addr| {
        let id = c.identity_of(pod).expect("every pod has an identity");
        let iso = c.isolation(id);
        let isolated = if dir == Direction::Ingress {
            iso.0
        } else {
            iso.1
        };
        !isolated || remote == ip(pod) || c.lookup(id, remote, dir, proto, port).is_some()
    };
    let mut out = vec![];
    for s in pods() {
        for d in pods() {
            let ok = allowed_dir(&s, Direction::Egress, ip(&d))
                && allowed_dir(&d, Direction::Ingress, ip(&s));
            out.push((s.to_string(), d.to_string(), ok));
        }
    }
    out
}

fn explained_matrix(st: &ClusterState, port: u16, proto: u8) -> Vec<(String, String, bool)> {
    let model = Model::build(st, &[]);
    let mut out = vec![];
    for s in pods() {
        for d in pods() {
            let t = explain(
                &model,
                &Endpoint::Pod(s.clone()),
                &Endpoint::Pod(d.clone()),
                port,
                proto,
                &[],
            )
            .unwrap();
            out.push((s.to_string(), d.to_string(), t.allowed));
        }
    }
    out
}

fn check(policies: &str, expect: impl Fn(&str, &str, u16, u8) -> bool) {
    let st = standard_model(policies);
    for (port, proto) in [(80, TCP), (81, TCP), (80, UDP), (81, UDP)] {
        let c = compiled_matrix(&st, port, proto);
        let e = explained_matrix(&st, port, proto);
        assert_eq!(c, e, "compiled and explained disagree on {port}/{proto}");
        for (s, d, ok) in c {
            assert_eq!(
                ok,
                expect(&s, &d, port, proto),
                "{s} -> {d} on {port}/{proto}"
            );
        }
    }
}

#[test]
fn deny_all_ingress_in_a_namespace() {
    check(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x, name: deny}\nspec: {podSelector: {}}\n",
        |s, d, _, _| !d.starts_with("x/") || s == d,
    );
}

#[test]
fn namespace_and_pod_selectors_together_are_anded_separately_ored() {
    // x/a accepts from pods b in namespace y (AND) ...
    check(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x, name: and}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: b}}\n",
        |s, d, _, _| d != "x/a" || s == "y/b" || s == d,
    );
    // ... versus from every pod of y, or any pod b of x (OR).
    check(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x, name: or}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n    - podSelector: {matchLabels: {pod: b}}\n",
        |s, d, _, _| d != "x/a" || s.starts_with("y/") || s == "x/b" || s == d,
    );
}

#[test]
fn named_ports_end_ports_and_protocols() {
    // Ingress to x/a only on the port named serve-81-udp, and TCP 80-80 via endPort.
    check(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x, name: ports}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports:\n    - {port: serve-81-udp, protocol: UDP}\n    - {port: 79, endPort: 80}\n",
        |s, d, port, proto| d != "x/a" || s == d || (port == 81 && proto == UDP) || (port == 80 && proto == TCP),
    );
}

#[test]
fn egress_ip_blocks_with_except_and_match_expressions() {
    // z/* may only reach 10.244.0.0/16 except 10.244.1.0/24 (namespace y's pods).
    check(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: z, name: egress}\nspec:\n  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b, c]}]}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.0/24]}\n",
        |s, d, _, _| !s.starts_with("z/") || !d.starts_with("y/") || s == d,
    );
}

#[test]
fn stacked_policies_are_a_union_and_egress_is_judged_at_the_client() {
    let p = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x, name: one}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x, name: two}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: c}}}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: y, name: no-egress}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n";
    check(p, |s, d, _, _| {
        if s == d {
            return true;
        }
        if s.starts_with("y/") {
            return false; // y may send nothing
        }
        if !d.starts_with("x/") {
            return true;
        }
        s == "x/b" || (d == "x/a" && s == "x/c")
    });
}
